"""`nbp check` and `nbp sync`: dvc.yaml, params.yaml and the notebooks must agree.

For every notebook stage of dvc.yaml (``cmd: nbp run <stage>``), ``check_project`` reports
one :class:`Problem` (file + what + how to fix) for each of:

* the notebook is missing, unreadable, not Python, or its kernel is not installed;
* the source notebook carries outputs (executed copies belong in reports/);
* parameters cell vs params.yaml: unknown, missing or mistyped keys, and defaults that
  differ from params.yaml (an interactive run would not match `dvc repro`; `nbp sync`);
* params.yaml keys the stage receives that its dvc.yaml ``params:`` do not list (changing
  them would not re-run the stage: the classic silent bug), and listed keys it never uses;
* the notebook is not a dep; reports, recorded metrics and plots are not declared;
* ``${}`` references in deps/outs that cannot be resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbpipeline.errors import NbpipelineError, ParamsError
from nbpipeline.notebook import (
    kernel_language,
    kernel_name,
    notebook_parameters,
    parameters_cell_index,
    read_notebook,
    rewrite_parameters,
    write_notebook,
)
from nbpipeline.params import SHARED_SECTIONS, check_type, load_params, stage_values
from nbpipeline.pipeline.authoring import recorded_outputs
from nbpipeline.pipeline.lockfile import file_md5, follow_rewrite
from nbpipeline.pipeline.stages import PARAMS_FILE, DvcYaml, NotebookStage
from nbpipeline.project import Project

if TYPE_CHECKING:
    from nbformat import NotebookNode


@dataclass(frozen=True)
class Problem:
    """One disagreement: the file to edit and a message that says how."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def installed_kernels() -> list[str]:
    """Names of the Jupyter kernelspecs installed here."""
    from jupyter_client.kernelspec import KernelSpecManager

    return sorted(KernelSpecManager().find_kernel_specs())


def check_project(project: Project) -> list[Problem]:
    """Every problem found in the project's notebook stages (empty: all consistent)."""
    dvc = DvcYaml(project)
    problems: list[Problem] = []
    try:
        params: Mapping[str, Any] | None = load_params(project.params_yaml)
    except ParamsError as exc:
        problems.append(Problem("params.yaml", str(exc)))
        params = None
    kernels = installed_kernels()
    for stage in dvc.notebook_stages().values():
        problems += _check_declarations(project, stage, resolved=params is not None)
        nb = _check_notebook(project, stage, kernels, problems)
        if nb is not None:
            problems += _check_recorded(stage, nb)
            if params is not None:
                problems += _check_params(project, stage, nb, params)
    if params is not None:
        problems += _check_features(project, params)
    return sorted(problems, key=lambda p: p.file)  # grouped by the file to edit


def _check_features(project: Project, params: Mapping[str, Any]) -> list[Problem]:
    """``common.features`` and ``common.target`` against the columns of the data: the
    source table (``data.source``) when the project names one, else the train split.
    (A data notebook that derives columns from other tables has no source table.)"""
    common = params.get("common") or {}
    features = common.get("features")
    if not isinstance(features, Mapping):
        return []
    source = (params.get("data") or {}).get("source")
    train = (params.get("paths") or {}).get("train_path")
    table = project.root / str(source or train or "")
    if not (source or train) or not table.is_file():
        return []
    columns = _columns(table)
    if columns is None:
        return [Problem(project.rel(table), "cannot read its columns to check common.features")]
    wanted = [*features, *([common["target"]] if common.get("target") else [])]
    missing = [name for name in wanted if name not in columns]
    if not missing:
        return []
    fix = ("derive it in notebooks/data.ipynb or remove it from common.features"
           if source else "check the name, or run `dvc repro data` if the data stage makes it")
    return [Problem("params.yaml", f"[common] column(s) {', '.join(missing)} are not in "
                    f"{project.rel(table)} (its columns: {', '.join(columns)}); {fix}")]


def _columns(table: Path) -> list[str] | None:
    """Column names of a parquet or CSV file, read without loading its rows."""
    try:
        if table.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(table).names)
        import csv

        with open(table, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _check_notebook(project: Project, stage: NotebookStage, kernels: list[str],
                    problems: list[Problem]) -> NotebookNode | None:
    path = project.notebook(stage.runs)
    rel = project.rel(path)
    if not path.is_file():
        problems.append(Problem("dvc.yaml", f"stage '{stage.name}' runs `{stage.cmd}` but {rel} "
                                "does not exist; create the notebook or fix the cmd"))
        return None
    try:
        nb = read_notebook(path, name=rel)
    except NbpipelineError as exc:
        problems.append(Problem(rel, str(exc).removeprefix(f"{rel}: ")))
        return None
    language = kernel_language(nb)
    if language not in (None, "python", "python3"):
        problems.append(Problem(rel, f"a {language} notebook cannot be an nbpipeline stage "
                                "(parameters are Python literals); port it to Python"))
        return None
    try:
        name = kernel_name(nb, rel)
        if name not in kernels:
            problems.append(Problem(rel, f"kernel '{name}' is not installed (installed: "
                                    f"{', '.join(kernels) or 'none'}); pick one in JupyterLab "
                                    "(Kernel > Change Kernel) and save"))
    except NbpipelineError as exc:
        problems.append(Problem(rel, str(exc).removeprefix(f"{rel}: ")))
    with_outputs = [i + 1 for i, c in enumerate(nb.cells)
                    if c.cell_type == "code" and c.get("outputs")]
    if with_outputs:
        problems.append(Problem(rel, f"source notebook carries outputs (cells "
                                f"{_numbers(with_outputs)}); clear them (JupyterLab: Edit > "
                                f"Clear Outputs of All Cells, or `jupyter nbconvert "
                                f"--clear-output --inplace {rel}`): executed copies are "
                                f"reports/{stage.runs}.ipynb"))
    return nb


def _numbers(items: list[int]) -> str:
    shown = ", ".join(map(str, items[:8]))
    return shown + (f" and {len(items) - 8} more" if len(items) > 8 else "")


def _check_declarations(project: Project, stage: NotebookStage, *,
                        resolved: bool = True) -> list[Problem]:
    """Notebook and reports declared; ``${}`` resolved (unless params.yaml is broken:
    then every ``${paths.x}`` is unresolved and params.yaml's own line says why)."""
    problems = []
    where = f"stage '{stage.name}'"
    notebook = f"notebooks/{stage.runs}.ipynb"
    if not stage.declares_dep(notebook):
        problems.append(Problem("dvc.yaml", f"{where}: {notebook} is not among its deps, so "
                                f"editing the notebook would not re-run it; add `- {notebook}` "
                                "under deps:"))
    for suffix in ("ipynb", "html"):
        report = f"reports/{stage.runs}.{suffix}"
        if not stage.declares_out(report):
            problems.append(Problem("dvc.yaml", f"{where}: {report} (written by nbp run) is "
                                    f"not among its outs; add `- {report}` under outs:"))
    for text in stage.unresolved if resolved else ():
        problems.append(Problem("dvc.yaml", f"{where}: cannot resolve `{text}` (no such name in "
                                "params.yaml or vars:); fix the reference"))
    return problems


def _check_recorded(stage: NotebookStage, nb: NotebookNode) -> list[Problem]:
    recorded = recorded_outputs(nb, stage.runs)
    return [
        Problem("dvc.yaml", f"stage '{stage.name}': the notebook records {path} but dvc.yaml "
                f"does not declare it; add `- {path}` under {kind}:")
        for kind, paths in (("metrics", recorded.metrics), ("outs", recorded.outs),
                            ("plots", recorded.plots))
        for path in paths if not stage.declares_out(path)
    ]


def _source_of(name: str, stage: str, params: Mapping[str, Any]) -> str | None:
    for section in (stage, *SHARED_SECTIONS):
        values = params.get(section)
        if isinstance(values, Mapping) and name in values:
            return section
    return None


def _check_params(project: Project, stage: NotebookStage, nb: NotebookNode,
                  params: Mapping[str, Any]) -> list[Problem]:
    rel = project.rel(project.notebook(stage.runs))
    try:
        declared = notebook_parameters(nb, rel)
    except NbpipelineError as exc:
        return [Problem(rel, str(exc).removeprefix(f"{rel}: "))]
    problems: list[Problem] = []
    section_values = params.get(stage.runs)
    own: Mapping[str, Any] = section_values if isinstance(section_values, Mapping) else {}
    for key in own:
        if key not in declared:
            problems.append(Problem("params.yaml", f"[{stage.runs}] {key} is not in {rel}'s "
                                    f"parameters cell; add `{key} = ...` there or remove it"))
    used: dict[str, str] = {}
    for name, default in declared.items():
        section = _source_of(name, stage.runs, params)
        if section is None:
            problems.append(Problem("params.yaml", f"[{stage.runs}] missing {name} (declared in "
                                    f"{rel}); add `{name}: {default!r}` under `{stage.runs}:` "
                                    f"or run `nbp stage add {rel}`"))
            continue
        used[name] = section
        value = params[section][name]
        try:
            value = check_type(name, default, value, where=f"params.yaml [{section}]")
        except ParamsError as exc:
            problems.append(Problem("params.yaml", str(exc).removeprefix("params.yaml ")))
            continue
        if value != default or type(value) is not type(default):
            problems.append(Problem(rel, f"default {name} = {default!r} but params.yaml "
                                    f"[{section}] has {value!r}; run `nbp sync` to rewrite the "
                                    "parameters cell (interactive runs would differ from "
                                    "`dvc repro`)"))
    problems += _check_param_list(stage, used, params)
    return problems


def _check_param_list(stage: NotebookStage, used: Mapping[str, str],
                      params: Mapping[str, Any]) -> list[Problem]:
    where = f"stage '{stage.name}'"
    problems = []
    unlisted = [
        f"{section}.{name}" for name, section in used.items()
        if not any(r.covers(PARAMS_FILE, f"{section}.{name}") for r in stage.params)
        and not any("${" + f"{section}.{name}" + "}" in w for w in stage.written)
    ]
    if unlisted:
        own = [u for u in unlisted if u.startswith(f"{stage.runs}.")]
        entry = f"- {stage.runs}" if own else f"- {unlisted[0]}"
        problems.append(Problem("dvc.yaml", f"{where}: params {', '.join(unlisted)} reach the "
                                "notebook but are not in its `params:` list, so changing them "
                                f"would not re-run the stage; add `{entry}` under params:"))
    for ref in stage.params:
        if ref.file != PARAMS_FILE or ref.key is None:
            continue
        section, _, name = ref.key.partition(".")
        if section not in (stage.runs, *SHARED_SECTIONS):
            continue
        values = params.get(section)
        exists = isinstance(values, Mapping) and (not name or name.split(".")[0] in values)
        if not exists:
            problems.append(Problem("dvc.yaml", f"{where}: params lists `{ref.key}`, which "
                                    "params.yaml does not define (dvc repro would fail); remove "
                                    "it or add it to params.yaml"))
        elif name and section != stage.runs and used.get(name.split(".")[0]) != section:
            problems.append(Problem("dvc.yaml", f"{where}: params lists `{ref.key}` but the "
                                    "notebook does not use it (a change would re-run the stage "
                                    "for nothing); remove it from params:"))
    return problems


def sync_notebooks(project: Project) -> list[str]:
    """Rewrite each notebook stage's parameters cell defaults from params.yaml.

    Where dvc.lock recorded a notebook as it was before, it records the synced one
    (:mod:`nbpipeline.pipeline.lockfile`): injected params override the defaults, so the
    stage's results cannot change. Returns one line per changed notebook. Unknown or
    missing params raise ParamsError (fix those first: the notebook and params.yaml must
    declare the same names).
    """
    params = load_params(project.params_yaml)
    changed = []
    for stage in DvcYaml(project).notebook_stages().values():
        path: Path = project.notebook(stage.runs)
        if not path.is_file():
            continue
        rel = project.rel(path)
        nb = read_notebook(path, name=rel)
        declared = notebook_parameters(nb, rel)
        values = stage_values(params, stage.runs, declared, notebook=rel)
        index = parameters_cell_index(nb, rel)
        source = rewrite_parameters(nb.cells[index].source, values)
        if source != nb.cells[index].source:
            names = [n for n in declared if values[n] != declared[n]
                     or type(values[n]) is not type(declared[n])]
            nb.cells[index].source = source
            before = file_md5(path)
            write_notebook(nb, path)
            kept = (" (dvc.lock follows: only defaults changed, the stage stays up to date)"
                    if follow_rewrite(project, rel, before) else "")
            changed.append(f"{rel}: parameters cell now has params.yaml's {', '.join(names)}"
                           f"{kept}")
    return changed
