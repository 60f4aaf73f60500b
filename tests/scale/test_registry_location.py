"""Where the registry is for a stage run by a queued or ``--temp`` DVC experiment."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbpipeline.project import Project


def test_an_experiment_copy_uses_the_registry_of_the_repository_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"  # git root; the DVC project is its subdirectory 'flights'
    copy = repo / "flights" / ".dvc" / "tmp" / "exps" / "tmpab12" / "flights"
    (copy / ".dvc").mkdir(parents=True)
    # what DVC puts in the environment of every stage of a queued or --temp experiment
    monkeypatch.setenv("DVC_ROOT", str(repo / "flights"))
    assert Project(copy).registry == repo / "flights" / "registry"
    assert Project(copy / "sub").registry == repo / "flights" / "sub" / "registry"


def test_in_the_workspace_and_outside_dvc_the_registry_is_the_projects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / ".dvc").mkdir()
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert Project(tmp_path).registry == tmp_path / "registry"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # `dvc repro` in the workspace
    assert Project(tmp_path).registry == tmp_path / "registry"
    monkeypatch.setenv("NBPIPELINE_REGISTRY", str(tmp_path / "shared"))
    assert Project(tmp_path).registry == tmp_path / "shared"
