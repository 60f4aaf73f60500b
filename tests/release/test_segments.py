"""A model factory's release: a registry per segment, promoted and rolled back alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from candidates import small_candidate
from release_project import gate_for, make_release_project
from serve_fixtures import register

from nbpipeline.errors import RegistryError
from nbpipeline.project import Project
from nbpipeline.release.promote import models_report, promote_candidate, rollback
from nbpipeline.release.registry import Registry


def segment_candidate(root: Path, segment: str) -> None:
    """models/<segment>/candidate and metrics/<segment>/gate.json, as train@ and evaluate@
    of that segment leave them (a passed gate, no champion yet)."""
    gate_for(root, 0.8, None)
    (root / "models" / segment).mkdir(parents=True, exist_ok=True)
    shutil.copytree(root / "models" / "candidate", root / "models" / segment / "candidate")
    (root / "metrics" / segment).mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "metrics" / "gate.json", root / "metrics" / segment / "gate.json")


def test_each_segment_is_promoted_listed_and_rolled_back_alone(tmp_path: Path) -> None:
    root = make_release_project(tmp_path / "p")
    project = Project(root)
    for segment in ("north", "south"):
        segment_candidate(root, segment)
        done = promote_candidate(project.for_segment(segment), actor="test")
        assert (done.model.version, done.role) == ("v1", "champion")
    north = Registry(root / "registry" / "north")
    second = register(north, small_candidate(tmp_path / "c2", c=0.01))
    assert second == "v2" and not (root / "registry" / "events.jsonl").exists()

    report = models_report(project)
    assert [line for line in report.splitlines() if line.startswith("segment ")] == [
        "segment north:", "segment south:"]
    assert "v2" in models_report(project.for_segment("north"))
    assert "v2" not in models_report(project.for_segment("south"))

    rollback(project.for_segment("north"), reason="test", actor="test")
    assert north.state().champion.version == "v1"  # type: ignore[union-attr]
    south = Registry(root / "registry" / "south").state()
    assert south.champion is not None and south.champion.version == "v1"
    assert [e.kind for e in Registry(root / "registry" / "south").events()] == [
        "register", "promote"]


def test_a_segment_without_a_registry_names_those_that_have_one(tmp_path: Path) -> None:
    root = make_release_project(tmp_path / "p")
    segment_candidate(root, "north")
    promote_candidate(Project(root).for_segment("north"), actor="test")
    with pytest.raises(RegistryError, match=r"segment 'west' has no registry \(registry/west\); "
                       "segments with models: north"):
        rollback(Project(root).for_segment("west"))
    assert not (root / "registry" / "west").exists()


def test_a_factory_without_a_segment_named_says_to_name_one(tmp_path: Path) -> None:
    root = make_release_project(tmp_path / "p")
    segment_candidate(root, "north")
    promote_candidate(Project(root).for_segment("north"), actor="test")
    (root / "metrics" / "gate.json").unlink()
    for action in (promote_candidate, rollback):
        with pytest.raises(RegistryError, match=r"^this project is a model factory \(segments: "
                           r"north\); name one with --segment NAME$"):
            action(Project(root))
