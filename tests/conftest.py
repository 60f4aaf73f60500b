"""Shared fixtures: small real projects in temp dirs (see projects.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from projects import make_example_project


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
