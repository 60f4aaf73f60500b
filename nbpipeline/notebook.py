"""Reading and writing .ipynb files, and the ``parameters`` cell contract.

The parameters cell is the cell tagged ``parameters``. It may hold only assignments of
literals (``name = 42``, ``name: float = 0.1``, lists, dicts, strings, None) and
comments; it is parsed with :func:`ast.literal_eval`, never executed.
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbpipeline.errors import NotebookError
from nbpipeline.lean import nbformat as _lean_nbformat
from nbpipeline.project import write_text_atomic

if TYPE_CHECKING:
    import nbformat
    from nbformat import NotebookNode
else:  # nbformat without jsonschema's slow, unused format extras (see nbpipeline.lean)
    nbformat = _lean_nbformat()
    NotebookNode = nbformat.NotebookNode

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"

# Per-cell and notebook metadata that changes on every run and makes reports diff noisily.
_VOLATILE_CELL_META = ("execution", "papermill", "ExecuteTime", "collapsed", "scrolled")
_VOLATILE_NB_PAPERMILL = ("start_time", "end_time", "duration", "input_path", "output_path")


def read_notebook(
    path: Path, *, upgrade: bool = False, name: str | None = None
) -> NotebookNode:
    """Read ``path`` as an nbformat v4 notebook, with errors that name the file and the fix.

    Older formats (v2, v3) are refused unless ``upgrade`` (they are then converted to v4
    in memory); a notebook that breaks the nbformat schema is refused with the JSON path
    of the first problem. Messages name the file as ``name`` (default: ``path``).
    """
    shown = name or path
    if not path.is_file():
        raise NotebookError(f"{shown}: notebook not found; create it or fix the stage name")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotebookError(
            f"{shown}: not a notebook (invalid JSON: {exc}); restore it from git or re-save it "
            "from JupyterLab"
        ) from exc
    if not isinstance(raw, dict) or "nbformat" not in raw:
        raise NotebookError(f"{shown}: not a notebook (no 'nbformat' field)")
    major = raw.get("nbformat")
    if not isinstance(major, int) or major < 4 and not (upgrade and major in (2, 3)):
        raise NotebookError(
            f"{shown}: nbformat v{major} is too old to run; upgrade it with "
            f"`nbp stage add {shown}` or `jupyter nbconvert --to notebook --inplace {shown}`"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing cell ids etc.: repaired on write
            nb = nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as exc:  # nbformat raises several unrelated types
        raise NotebookError(f"{shown}: unreadable notebook ({exc})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise NotebookError(
            f"{shown}: invalid notebook at {where}: {exc.message}; fix that field or "
            "re-save the notebook from JupyterLab"
        ) from exc
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


_LITERAL_TYPES = (type(None), bool, int, float, str, list, tuple, dict)


def _unusable(value: Any) -> str | None:
    """The first item of ``value`` params.yaml cannot hold (a set, bytes, complex, ...)."""
    if not isinstance(value, _LITERAL_TYPES):
        return type(value).__name__
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else (
        value if isinstance(value, (list, tuple)) else [])
    return next((found for found in map(_unusable, items) if found), None)


def parse_parameters(source: str, where: str = "parameters cell") -> dict[str, Any]:
    """The ``name -> default`` literals assigned in a parameters cell's source.

    Refused (NotebookError, one line naming ``where`` and the line): anything but
    ``name = literal`` statements, a name assigned twice, and literals params.yaml cannot
    hold (sets, bytes, complex numbers, ``...``).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        line = exc.lineno or source.count("\n", 0, max(source.find("\0"), 0)) + 1
        raise NotebookError(f"{where} line {line}: syntax error: {exc.msg}") from exc
    except (ValueError, UnicodeError, RecursionError, MemoryError) as exc:
        raise NotebookError(f"{where}: cannot parse it ({type(exc).__name__}: {exc}); "
                            "write plain `name = literal` lines") from exc
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
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
        if target.id in lines:
            raise NotebookError(
                f"{where} line {node.lineno}: `{target.id}` is already assigned at line "
                f"{lines[target.id]}; keep one of the two"
            )
        try:
            values[target.id] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
            raise NotebookError(
                f"{where} line {node.lineno}: `{target.id}` must be a literal "
                f"(number, string, bool, None, list, dict), found `{ast.unparse(value)[:60]}`"
            ) from exc
        unusable = _unusable(values[target.id])
        if unusable:
            raise NotebookError(
                f"{where} line {node.lineno}: `{target.id}` holds a {unusable}, which "
                "params.yaml cannot hold; use a number, string, bool, None, list or dict"
            )
        lines[target.id] = node.lineno
    return values


def notebook_parameters(nb: NotebookNode, path: Path | str = "notebook") -> dict[str, Any]:
    """The defaults declared by ``nb``'s parameters cell."""
    index = parameters_cell_index(nb, path)
    return parse_parameters(nb.cells[index].source, f"{path} cell {index + 1} (parameters)")


def kernel_name(nb: NotebookNode, path: Path | str = "notebook") -> str:
    """The kernelspec name the notebook asks for."""
    spec = nb.metadata.get("kernelspec") or {}
    name = spec.get("name") if isinstance(spec, dict) else None
    if not name:
        raise NotebookError(
            f"{path}: no kernelspec in the notebook metadata; open it in JupyterLab and "
            "choose a kernel (e.g. Python 3), then save"
        )
    return str(name)


def kernel_language(nb: NotebookNode) -> str | None:
    """The notebook's language in lower case (kernelspec, then language_info), if recorded."""
    for key in ("kernelspec", "language_info"):
        meta = nb.metadata.get(key)
        if isinstance(meta, dict):
            language = meta.get("language") if key == "kernelspec" else meta.get("name")
            if language:
                return str(language).lower()
    return None


def literal_source(value: Any) -> str:
    """Python source for a parameter value (strings in double quotes, as people write them)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal_source(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{literal_source(k)}: {literal_source(v)}" for k, v in value.items()]
        flat = "{" + ", ".join(items) + "}"
        if len(flat) <= 80 or any("\n" in item for item in items):
            return flat
        return "{\n" + "".join(f"    {item},\n" for item in items) + "}"  # one per line
    return repr(value)


def rewrite_parameters(source: str, values: dict[str, Any]) -> str:
    """``source`` of a parameters cell with the literals of ``values`` put in.

    Only the value expressions whose literal differs are replaced; names, type annotations,
    comments and layout stay as they were. Names not in ``values`` are kept unchanged.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode("utf-8")))
    raw = source.encode("utf-8")
    edits: list[tuple[int, int, str]] = []
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if not isinstance(target, ast.Name) or value is None or target.id not in values:
            continue
        try:
            same = ast.literal_eval(value) == values[target.id]
            same = same and type(ast.literal_eval(value)) is type(values[target.id])
        except (ValueError, SyntaxError):
            same = False
        if not same:
            start = offsets[value.lineno - 1] + value.col_offset
            end = offsets[value.end_lineno - 1] + value.end_col_offset  # type: ignore[operator]
            edits.append((start, end, literal_source(values[target.id])))
    for start, end, text in reversed(edits):
        raw = raw[:start] + text.encode("utf-8") + raw[end:]
    return raw.decode("utf-8")


RAISES_TAG = "raises-exception"
ERROR_BANNER_TAG = "papermill-error-cell-tag"


def without_error_banners(nb: NotebookNode) -> NotebookNode:
    """``nb`` without the markdown banners papermill inserts around a failing cell."""
    nb.cells = [c for c in nb.cells
                if ERROR_BANNER_TAG not in c.get("metadata", {}).get("tags", [])]
    return nb


def first_unexpected_error(nb: NotebookNode) -> tuple[int, Any] | None:
    """(cell index, error output) of the first error not in a cell tagged ``raises-exception``.

    A cell that papermill marked as failed without an error output counts too; ``sys.exit()``
    and ``sys.exit(0)`` do not (as in papermill).
    """
    for index, cell in enumerate(nb.cells):
        if RAISES_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and not (
                    output.get("ename") == "SystemExit" and output.get("evalue") in ("", "0")):
                return index, output
        if cell.get("metadata", {}).get("papermill", {}).get("exception") is True:
            return index, {"ename": "CellExecutionError", "evalue": "", "traceback": []}
    return None


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


SUMMARY_TAG = "nbp-run-summary"


def add_run_summary(nb: NotebookNode, summary: str, stage: str | None = None) -> NotebookNode:
    """Put the report's summary first: a markdown cell (tagged ``nbp-run-summary``) holding
    ``summary`` (see nbpipeline.pipeline.stage_report); ``stage`` goes to
    ``metadata.nbpipeline.stage``. Nothing in it may change between identical runs (the
    .ipynb is byte-stable): when the run happened, how long it took and with how many
    threads (which depends on the machine's load) belong to the run record instead."""
    if stage:
        nb.metadata.setdefault("nbpipeline", {})["stage"] = stage
    cell = _lean_nbformat().v4.new_markdown_cell(summary.rstrip(), metadata={"tags": [SUMMARY_TAG]})
    cell["id"] = SUMMARY_TAG
    nb.cells = [c for c in nb.cells if SUMMARY_TAG not in c.get("metadata", {}).get("tags", [])]
    nb.cells.insert(0, cell)
    return nb
