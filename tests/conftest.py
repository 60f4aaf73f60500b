"""Shared fixtures: small real projects in temp dirs (see projects.py, release_project.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from projects import make_example_project
from release_project import make_release_project

# What `nbp run`, `nbp serve` and DVC put in a process's environment: no test inherits it.
RUN_ENVIRONMENT = ("NBPIPELINE_STAGE", "NBPIPELINE_ROOT", "NBPIPELINE_RUNNING",
                   "NBPIPELINE_REGISTRY", "NBPIPELINE_PREDLOG", "DVC_STAGE", "DVC_ROOT",
                   "NBP_DEBUG")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`, pyproject's addopts): a test file's tests
    run on one worker (its module fixtures are made once), unless a test names its own
    ``xdist_group``: a heavy unit (a long end-to-end test, or the tests sharing the ran
    example of projects.ran_example_project). Named groups are handed out first, then files
    with slow tests, so that no long test starts last and runs alone."""
    if not hasattr(config, "workerinput"):
        return

    def group(item: pytest.Item) -> str:
        named = [m.args[0] for m in item.iter_markers("xdist_group")]
        return named[0] if named else item.nodeid.split("::")[0]

    rank: dict[str, int] = {}
    for item in items:
        named = any(item.iter_markers("xdist_group"))
        if not named:
            item.add_marker(pytest.mark.xdist_group(group(item)))
        order = 0 if named else 1 if item.get_closest_marker("slow") else 2
        rank[group(item)] = min(order, rank.get(group(item), 2))
    items.sort(key=lambda item: rank[group(item)])  # stable: collection order within


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
