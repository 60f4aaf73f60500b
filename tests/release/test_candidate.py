"""Candidate files: damaged metadata is a clear error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbpipeline.errors import NbpipelineError, RegistryError
from nbpipeline.release.candidate import load_candidate
from nbpipeline.release.registry import Registry


def _broken_candidate(tmp_path: Path) -> Path:
    directory = tmp_path / "candidate"
    directory.mkdir()
    (directory / "model.skops").write_bytes(b"not read")
    (directory / "metadata.json").write_text('{"features": [')
    return directory


def test_load_candidate_names_invalid_metadata(tmp_path: Path) -> None:
    with pytest.raises(NbpipelineError, match=r"metadata\.json: not valid JSON .*dvc repro train"):
        load_candidate(_broken_candidate(tmp_path))


def test_register_names_invalid_metadata(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"metadata\.json: not valid JSON"):
        Registry(tmp_path / "registry").register(
            _broken_candidate(tmp_path), None, force_reason=None, actor="t"
        )


def test_missing_candidate_says_to_run_train(tmp_path: Path) -> None:
    with pytest.raises(NbpipelineError, match=r"no candidate model .*`dvc repro train`"):
        load_candidate(tmp_path)


def test_same_model_saves_to_the_same_bytes(tmp_path: Path) -> None:
    """Two fits with one seed give byte-identical candidates (a DVC output that changes on
    every re-run re-runs every downstream stage), whatever share of the cores each fit had,
    and the file still loads."""
    from candidates import synthetic_candidate, synthetic_rows
    from threadpoolctl import threadpool_limits

    first = synthetic_candidate(tmp_path / "first", boosting=True)
    with threadpool_limits(limits=1, user_api="openmp"):
        second = synthetic_candidate(tmp_path / "second", boosting=True)
    for name in ("model.skops", "metadata.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    model, metadata = load_candidate(first)
    rows = synthetic_rows(20, seed=1)[metadata.contract.names]
    assert model.predict_proba(rows).shape == (20, 2)


def test_a_commit_does_not_change_the_candidate(tmp_path: Path, monkeypatch) -> None:
    """metadata.json once held the commit train ran at: the first run of train after any
    commit changed models/candidate (and dvc.lock, and every stage after it) though the
    model was the same. The commit is in the stage's report and the registry's lineage."""
    from candidates import synthetic_candidate
    from projects import sh

    monkeypatch.chdir(tmp_path)
    sh("git", "init", "-q", cwd=tmp_path)
    (tmp_path / "notes.txt").write_text("one\n")
    sh("git", "add", "notes.txt", cwd=tmp_path)
    sh("git", "commit", "-qm", "one", cwd=tmp_path)
    before = synthetic_candidate(tmp_path / "before", boosting=True)
    (tmp_path / "notes.txt").write_text("two\n")
    sh("git", "commit", "-qam", "two", cwd=tmp_path)
    after = synthetic_candidate(tmp_path / "after", boosting=True)
    assert (before / "metadata.json").read_bytes() == (after / "metadata.json").read_bytes()
