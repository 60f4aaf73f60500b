"""`nbp stage add`: turn an exploratory notebook into a pipeline stage.

Steps, each done only if needed (so a second run changes nothing):

1. the notebook: upgrade nbformat v2/v3 to v4, set a Python kernelspec if there is none,
   add ``nbp.init("<stage>")`` at the top, tag a ``parameters`` cell (the literal
   assignments found at the top, split off their cell if needed), clear outputs;
2. params.yaml: the parameters cell's defaults go under ``<stage>:``, except names that
   ``common:`` or ``paths:`` already provide;
3. dvc.yaml: the stage ``nbp run <stage>`` with the notebook as a dep, its params, its
   reports as outs, and the metrics/plots files it records. Entries already there are kept;
   missing ones are added. Other stages and top-level sections are not touched.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from nbpipeline.errors import NotebookError, ParamsError, StageError
from nbpipeline.lean import nbformat as lean_nbformat
from nbpipeline.notebook import (
    PARAMETERS_TAG,
    kernel_language,
    notebook_parameters,
    parameters_cell_index,
    read_notebook,
    stable_cell_ids,
    strip_outputs,
    write_notebook,
)
from nbpipeline.params import SHARED_SECTIONS
from nbpipeline.pipeline.stages import (
    PARAMS_FILE,
    DvcYaml,
    ParamRef,
    entry_path,
    nbp_stage_name,
    normalize,
    param_refs,
    resolve_path,
)
from nbpipeline.pipeline.yamledit import YamlDoc
from nbpipeline.project import Project

if TYPE_CHECKING:
    from nbformat import NotebookNode

STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_METRIC_CALL = re.compile(r"\brecord\.metrics?\s*\(")
_ARTIFACT_CALL = re.compile(r"\brecord\.artifact\s*\(")
_PLOT_CALL = re.compile(r"""\brecord\.plot\s*\(\s*(?:name\s*=\s*)?["']([\w.-]+)["']""")
_INIT_CALL = re.compile(r"\b(?:nbp|nbpipeline)\.init\s*\(")
EMPTY_PARAMETERS = (
    "# Parameters: `name = literal` lines only. `nbp run` injects the values from\n"
    "# params.yaml after this cell; `nbp sync` rewrites these defaults to match."
)


@dataclass
class AddResult:
    """What `nbp stage add` changed (empty ``changes``: everything was already in place)."""

    stage: str
    changes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Recorded:
    """Files a notebook writes through nbpipeline.record (found in its source)."""

    metrics: tuple[str, ...]
    plots: tuple[str, ...]
    outs: tuple[str, ...] = ()  # artifact records: hashes and formats are no metrics


def recorded_outputs(nb: NotebookNode, stage: str) -> Recorded:
    """metrics/<stage>.json, plots/<stage>/<name>.csv and metrics/<stage>.artifacts.json
    (a plain out: DVC would show its hashes as metrics) that it records."""
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    metrics = [f"metrics/{stage}.json"] if _METRIC_CALL.search(source) else []
    outs = [f"metrics/{stage}.artifacts.json"] if _ARTIFACT_CALL.search(source) else []
    plots = sorted({f"plots/{stage}/{name}.csv" for name in _PLOT_CALL.findall(source)})
    return Recorded(tuple(metrics), tuple(plots), tuple(outs))


def _python_only(lines: str) -> str:
    """Cell source with IPython magics and shell escapes blanked (for ast.parse)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in lines.splitlines())


def _is_setup(tree: ast.Module) -> bool:
    """A cell of imports and ``nbp.init(...)`` only."""
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        value = node.value if isinstance(node, (ast.Expr, ast.Assign)) else None
        if isinstance(value, ast.Call) and _INIT_CALL.search(ast.unparse(value)):
            continue
        return False
    return True


def _literal_assignment(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target, value = node.target, node.value
    else:
        return False
    try:
        ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return False
    return isinstance(target, ast.Name)


def _code_cell(source: str, tags: Sequence[str] = ()) -> NotebookNode:
    cell = lean_nbformat().v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def add_parameters_cell(nb: NotebookNode) -> str:
    """Tag (or create) the parameters cell from the literal assignments at the top.

    Skips leading import/``nbp.init`` cells; in the first other code cell the leading
    ``name = literal`` statements become the parameters cell (split off the rest of the
    cell). With none, an empty parameters cell is inserted there. Returns what was done.
    """
    position = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        position = index
        try:
            tree = ast.parse(_python_only(cell.source))
        except SyntaxError:
            break
        if _is_setup(tree):
            position = index + 1
            continue
        leading = []
        for node in tree.body:
            if not _literal_assignment(node):
                break
            leading.append(node)
        if not leading:
            break
        lines = cell.source.splitlines(keepends=True)
        end = leading[-1].end_lineno or len(lines)
        head, rest = "".join(lines[:end]).rstrip(), "".join(lines[end:]).strip("\n")
        names = ", ".join(n.targets[0].id if isinstance(n, ast.Assign) else n.target.id  # type: ignore[attr-defined]
                          for n in leading)
        if not rest.strip():
            cell.metadata.setdefault("tags", []).append(PARAMETERS_TAG)
            return f"tagged cell {index + 1} `parameters` ({names})"
        cell.source = rest
        nb.cells.insert(index, _code_cell(head, [PARAMETERS_TAG]))
        return (f"split the literal assignments ({names}) off cell {index + 1} into a "
                "`parameters` cell")
    nb.cells.insert(position, _code_cell(EMPTY_PARAMETERS, [PARAMETERS_TAG]))
    return (f"added an empty `parameters` cell as cell {position + 1} (no literal assignments "
            "at the top); move tunable values into it as `name = literal` lines")


def _prepare_notebook(path: Path, rel: str, stage: str) -> tuple[NotebookNode, list[str]]:
    """The notebook made stage-ready (not yet written), and the list of changes."""
    import json

    original = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    nb = read_notebook(path, upgrade=True, name=rel)
    changes: list[str] = []
    if isinstance(original, dict) and original.get("nbformat", 4) < 4:
        changes.append(f"upgraded from nbformat v{original['nbformat']} to v4")
    language = kernel_language(nb)
    if language not in (None, "python", "python3"):
        raise NotebookError(
            f"{rel}: a {language} notebook cannot be an nbpipeline stage (the parameters cell "
            "is parsed as Python and the stage runs in a Python kernel); port it to Python "
            "or keep it as a script stage in dvc.yaml"
        )
    spec = nb.metadata.get("kernelspec")
    if not isinstance(spec, dict) or not spec.get("name"):
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        changes.append("set the kernel to python3 (the notebook named none)")
    if not any(_INIT_CALL.search(c.source) for c in nb.cells if c.cell_type == "code"):
        first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(first, _code_cell(
            f'import nbpipeline as nbp\n\nroot = nbp.init("{stage}")  '
            "# cwd = project root, as under `nbp run`"))
        changes.append(f'added `nbp.init("{stage}")` (interactive runs see the project root)')
    try:
        parameters_cell_index(nb, rel)
    except NotebookError as exc:
        if "no cell tagged" not in str(exc):
            raise
        changes.append(add_parameters_cell(nb))
    with_outputs = sum(1 for c in nb.cells if c.cell_type == "code" and c.get("outputs"))
    if with_outputs or nb.metadata.get("widgets"):
        strip_outputs(nb)
        changes.append(f"cleared the outputs of {with_outputs} cells (executed copies go to "
                       f"reports/{stage}.ipynb)")
    return nb, [f"{rel}: {c}" for c in changes]


def _params_doc(project: Project, stage: str) -> YamlDoc:
    """params.yaml, checked before anything is written."""
    doc = YamlDoc.load(project.params_yaml, ParamsError)
    own = doc.doc.get(stage)
    if own is not None and not isinstance(own, dict):
        raise ParamsError(f"params.yaml: section '{stage}' must be a mapping of name: value")
    return doc


def _update_params(doc: YamlDoc, stage: str, declared: dict[str, Any]) -> tuple[
        dict[str, Any], list[str]]:
    """Put the notebook's defaults under ``<stage>:`` in params.yaml; return the tree."""
    own: Any = doc.doc.get(stage)
    provided = {k for s in SHARED_SECTIONS if isinstance(doc.doc.get(s), dict) for k in doc.doc[s]}
    section = CommentedMap(own or {})
    new = [name for name in declared if name not in section and name not in provided]
    for name in new:
        section[name] = declared[name]
    changes = []
    if new:
        doc.set_entry([stage], section if own is None else _merged(own, section))
        doc.save()
        changes.append(f"params.yaml: [{stage}] added {', '.join(new)} (the notebook's defaults)")
    return dict(doc.doc), changes


def _merged(existing: Any, section: CommentedMap) -> Any:
    for key, value in section.items():
        if key not in existing:
            existing[key] = value
    return existing


def _path_entry(path: str, paths: dict[str, Any]) -> str:
    """``${paths.<key>}`` when params.yaml names ``path`` under ``paths:``, else ``path``."""
    for key, value in paths.items():
        if isinstance(value, str) and normalize(value) == normalize(path):
            return "${paths." + str(key) + "}"
    return path


def _stage_params(stage: str, declared: dict[str, Any], params: dict[str, Any],
                  written: Sequence[str]) -> list[str]:
    own = params.get(stage) or {}
    entries = [stage] if own else []
    for section in SHARED_SECTIONS:
        values = params.get(section) or {}
        for name in declared:
            if name in values and name not in own and not any(
                    "${" + f"{section}.{name}" + "}" in w for w in written):
                entries.append(f"{section}.{name}")
    return entries


def _add_entries(spec: CommentedMap, kind: str, entries: Sequence[str],
                 have: set[str], context: dict[str, Any]) -> list[str]:
    added = []
    for entry in entries:
        key = resolve_path(entry, context) or entry
        if key in have:
            continue
        if spec.get(kind) is None:
            spec[kind] = CommentedSeq()
        spec[kind].append(entry)
        have.add(key)
        added.append(entry)
    return added


def add_stage(project: Project, notebook: Path | str, *, deps: Sequence[str] = (),
              outs: Sequence[str] = (), metrics: Sequence[str] = (),
              plots: Sequence[str] = ()) -> AddResult:
    """Make ``notebook`` (notebooks/<stage>.ipynb) a stage; see the module docstring."""
    path = Path(notebook)
    path = path if path.is_absolute() else Path.cwd() / path
    stage = path.stem
    rel = project.rel(path)
    if path.suffix != ".ipynb" or not STAGE_NAME.match(stage):
        raise StageError(f"{rel}: a stage notebook is notebooks/<name>.ipynb with a name of "
                         "letters, digits, _ and -; rename the file")
    if path.resolve() != project.notebook(stage).resolve():
        raise StageError(f"{rel}: `nbp run {stage}` runs notebooks/{stage}.ipynb; move the "
                         f"notebook there (git mv {rel} notebooks/{stage}.ipynb) and run again")
    if not path.is_file():
        raise NotebookError(f"{rel}: notebook not found; create it or fix the path")
    dvc = DvcYaml(project, editable=True)
    kind = dvc.stage_kind(stage)
    if kind == "generated":
        raise StageError(f"dvc.yaml: stage '{stage}' is a foreach/matrix stage (one stage per "
                         "segment: docs/contracts.md); edit its deps and outs in dvc.yaml")
    if kind == "other":
        raise StageError(f"dvc.yaml: stage '{stage}' already exists and is not `nbp run {stage}`;"
                         " rename the notebook or the existing stage")

    params_doc = _params_doc(project, stage)
    nb, changes = _prepare_notebook(path, rel, stage)
    declared = notebook_parameters(nb, rel)  # a broken parameters cell stops here: no writes
    if changes:
        write_notebook(stable_cell_ids(nb), path)
    params, params_changes = _update_params(params_doc, stage, declared)
    changes += params_changes
    paths: dict[str, Any] = params["paths"] if isinstance(params.get("paths"), dict) else {}

    spec = dvc.raw_stages.get(stage)
    spec = CommentedMap() if spec is None else spec
    before = repr(spec)
    if "cmd" not in spec or nbp_stage_name(spec["cmd"]) is None:
        spec["cmd"] = f"nbp run {stage}"
    context = dvc.context(spec)
    have = {k: _existing(spec, k, context) for k in ("deps", "outs")}
    have["outs"] |= _existing(spec, "metrics", context) | _existing(spec, "plots", context)
    recorded = recorded_outputs(nb, stage)
    added = [
        *_add_entries(spec, "deps", [rel, *(_path_entry(d, paths) for d in deps)],
                      have["deps"], context),
        *_add_entries(spec, "outs", [*(_path_entry(o, paths) for o in outs),
                                     *recorded.outs, f"reports/{stage}.ipynb",
                                     f"reports/{stage}.html"],
                      have["outs"], context),
        *_add_entries(spec, "metrics", [*recorded.metrics, *metrics], have["outs"], context),
        *_add_entries(spec, "plots", [*recorded.plots, *plots], have["outs"], context),
    ]
    written = [p for k in ("deps", "outs", "metrics", "plots")
               for p in (entry_path(e) for e in spec.get(k) or []) if p]
    refs = param_refs(spec.get("params"))
    for entry in _stage_params(stage, declared, params, written):
        if not any(r.covers(PARAMS_FILE, entry) for r in refs):
            spec.setdefault("params", CommentedSeq()).append(entry)
            refs.append(ParamRef(PARAMS_FILE, entry))
            added.append(f"params {entry}")
    if repr(spec) != before or stage not in dvc.raw_stages:
        _write_stage(dvc, stage, spec)
        changes.append(f"dvc.yaml: stage '{stage}' " + (
            f"added ({', '.join(added)})" if kind is None else f"now also has {', '.join(added)}"))
    return AddResult(stage, changes)


def _write_stage(dvc: DvcYaml, stage: str, spec: CommentedMap) -> None:
    """Write ``spec`` as ``stages.<stage>``; a new stage gets DVC's usual key order."""
    if stage not in dvc.raw_stages:
        order = ("cmd", "deps", "params", "outs", "metrics", "plots")
        spec = CommentedMap([(k, spec[k]) for k in (*order, *spec) if k in spec])
    assert dvc.file is not None, "DvcYaml(editable=True) needed"
    if not dvc.raw_stages:
        dvc.file.set_entry(["stages"], CommentedMap([(stage, spec)]))
    else:
        dvc.file.set_entry(["stages", stage], spec)
    dvc.file.save()


def _existing(spec: CommentedMap, kind: str, context: dict[str, Any]) -> set[str]:
    found = set()
    for entry in spec.get(kind) or []:
        path = entry_path(entry)
        if path is None:
            continue
        found.add(resolve_path(path, context) or path)
    return found
