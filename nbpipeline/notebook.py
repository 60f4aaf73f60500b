"""Reading and writing .ipynb files, and the ``parameters`` cell contract.

The parameters cell is the cell tagged ``parameters``. It may hold only assignments of
literals (``name = 42``, ``name: float = 0.1``, lists, dicts, strings, None) and
comments; it is parsed with :func:`ast.literal_eval`, never executed.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from nbpipeline.errors import NotebookError
from nbpipeline.project import write_text_atomic

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"

# Per-cell and notebook metadata that changes on every run and makes reports diff noisily.
_VOLATILE_CELL_META = ("execution", "papermill", "ExecuteTime", "collapsed", "scrolled")
_VOLATILE_NB_PAPERMILL = ("start_time", "end_time", "duration", "input_path", "output_path")


def read_notebook(path: Path) -> NotebookNode:
    """Read ``path`` as an nbformat v4 notebook, with errors that name the file and the fix."""
    if not path.is_file():
        raise NotebookError(f"{path}: notebook not found; create it or fix the stage name")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotebookError(
            f"{path}: not a notebook (invalid JSON: {exc}); restore it from git or re-save it "
            "from JupyterLab"
        ) from exc
    if not isinstance(raw, dict) or "nbformat" not in raw:
        raise NotebookError(f"{path}: not a notebook (no 'nbformat' field)")
    major = raw.get("nbformat")
    if not isinstance(major, int) or major < 4:
        raise NotebookError(
            f"{path}: nbformat v{major} is too old to run; upgrade it with "
            f"`jupyter nbconvert --to notebook --inplace {path}` (writes v4)"
        )
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as exc:  # nbformat raises several unrelated types
        raise NotebookError(f"{path}: unreadable notebook ({exc})") from exc
    return nb


def write_notebook(nb: NotebookNode, path: Path) -> None:
    """Write ``nb`` atomically."""
    write_text_atomic(path, nbformat.writes(nb) + "\n")


def parameters_cell_index(nb: NotebookNode, path: Path | str = "notebook") -> int:
    """Index of the single code cell tagged ``parameters``."""
    found = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])
    ]
    if not found:
        raise NotebookError(
            f"{path}: no cell tagged '{PARAMETERS_TAG}'; tag the code cell that holds the "
            "default values (JupyterLab: property inspector > Cell Tags) or run "
            f"`nbp stage add {path}`"
        )
    if len(found) > 1:
        cells = ", ".join(str(i + 1) for i in found)
        raise NotebookError(
            f"{path}: cells {cells} are all tagged '{PARAMETERS_TAG}'; keep the tag on one cell"
        )
    return found[0]


def parse_parameters(source: str, where: str = "parameters cell") -> dict[str, Any]:
    """The ``name -> default`` literals assigned in a parameters cell's source."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookError(f"{where} line {exc.lineno}: syntax error: {exc.msg}") from exc
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            raise NotebookError(
                f"{where} line {node.lineno}: only `name = literal` assignments are allowed "
                "in the parameters cell; move other code to the next cell"
            )
        if not isinstance(target, ast.Name):
            raise NotebookError(
                f"{where} line {node.lineno}: assign to a plain name (found "
                f"`{ast.unparse(target)}`)"
            )
        try:
            values[target.id] = ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            raise NotebookError(
                f"{where} line {node.lineno}: `{target.id}` must be a literal "
                f"(number, string, bool, None, list, dict), found `{ast.unparse(value)}`"
            ) from exc
    return values


def notebook_parameters(nb: NotebookNode, path: Path | str = "notebook") -> dict[str, Any]:
    """The defaults declared by ``nb``'s parameters cell."""
    index = parameters_cell_index(nb, path)
    return parse_parameters(nb.cells[index].source, f"{path} cell {index + 1} (parameters)")


def kernel_name(nb: NotebookNode, path: Path | str = "notebook") -> str:
    """The kernelspec name the notebook asks for."""
    spec = nb.metadata.get("kernelspec") or {}
    name = spec.get("name")
    if not name:
        raise NotebookError(
            f"{path}: no kernelspec in the notebook metadata; open it in JupyterLab and "
            "choose a kernel (e.g. Python 3), then save"
        )
    return str(name)


def stable_cell_ids(nb: NotebookNode) -> NotebookNode:
    """Give cells without an id a deterministic one (``cell-<n>``) and mark the notebook
    nbformat 4.5, so executed copies do not get random ids that differ on every run."""
    seen: set[str] = set()
    for number, cell in enumerate(nb.cells, start=1):
        cid = cell.get("id")
        if not cid or cid in seen:
            cid = f"cell-{number}"
        cell["id"] = cid
        seen.add(cid)
    nb.nbformat, nb.nbformat_minor = 4, max(5, int(nb.get("nbformat_minor", 5)))
    return nb


def strip_volatile(nb: NotebookNode) -> NotebookNode:
    """Remove timestamps, durations and execution counts so reports diff cleanly."""
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        for tag in meta.get("tags", []):
            if tag in (INJECTED_TAG, "papermill-error-cell-tag"):
                cell["id"] = tag
        for key in _VOLATILE_CELL_META:
            meta.pop(key, None)
        if cell.cell_type == "code":
            cell.execution_count = None
            for output in cell.get("outputs", []):
                if "execution_count" in output:
                    output["execution_count"] = None
    papermill = nb.metadata.get("papermill", {})
    for key in _VOLATILE_NB_PAPERMILL:
        papermill.pop(key, None)
    return nb


def strip_outputs(nb: NotebookNode) -> NotebookNode:
    """Remove all outputs and execution counts (for committed source notebooks)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return strip_volatile(nb)
