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
