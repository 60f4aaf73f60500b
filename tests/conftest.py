"""Shared fixtures: small real projects in temp dirs (see projects.py, release_project.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from projects import make_example_project, remove_templates
from release_project import make_release_project

# What `nbp run`, `nbp serve` and DVC put in a process's environment: no test inherits it.
RUN_ENVIRONMENT = ("NBPIPELINE_STAGE", "NBPIPELINE_ROOT", "NBPIPELINE_RUNNING",
                   "NBPIPELINE_REGISTRY", "NBPIPELINE_PREDLOG", "DVC_STAGE", "DVC_ROOT",
                   "NBP_DEBUG")


@pytest.fixture(autouse=True, scope="session")
def _remove_templates() -> Iterator[None]:
    yield
    remove_templates()  # the example projects projects.py made once and copied


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in RUN_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def example_project(tmp_path: Path) -> Path:
    """A fresh git+DVC repo holding the small example pipeline."""
    return make_example_project(tmp_path / "project")


@pytest.fixture
def mini_project(tmp_path: Path) -> Iterator[Path]:
    """A one-stage project around tests/notebooks/<name>.ipynb, filled in by the test."""
    root = tmp_path / "mini"
    (root / "notebooks").mkdir(parents=True)
    yield root


@pytest.fixture
def release_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repo with a dvc.lock, a candidate and reports; the cwd, acted on by 'ana'."""
    root = make_release_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    monkeypatch.setenv("NBP_ACTOR", "ana")
    return root
