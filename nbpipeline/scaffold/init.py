"""``nbp init``: a new project around the user's own table.

Reads the table once to infer what it can (each column's kind, the task, the positive
label, the split dates), writes it all into params.yaml where the user can edit it, copies
the generic stage notebooks, writes dvc.yaml, and initialises git and DVC. The source file
is copied into ``data/raw/`` and tracked with ``dvc add``. Then ``dvc repro`` runs the
whole pipeline on it.

``segment_by=COLUMN`` makes a model factory (docs/contracts.md): one model per value of
the column, each stage a ``foreach`` over ``factory.segments`` running
``nbp run <stage>@<segment>``, each segment's files in its own folders.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from nbpipeline import yamlio
from nbpipeline.dataset import read_table
from nbpipeline.errors import InitError, NbpipelineError, SegmentError
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.notebook import read_notebook, write_notebook
from nbpipeline.pipeline.check import sync_notebooks
from nbpipeline.pipeline.plots import install as install_plots
from nbpipeline.pipeline.stages import SEGMENT_FIELD, segment_path
from nbpipeline.project import Project, check_segment

TEMPLATES = "nbpipeline.scaffold"
NOTEBOOKS = ("data", "train", "evaluate", "monitor")
MAX_CLASSES = 20  # more distinct integer values than this: a regression target
MAX_SEGMENTS = 50  # a factory of more models than this is a mistake of --segment-by
ID_NAMES = {"id", "rownames", "index", "unnamed: 0"}


@dataclass(frozen=True)
class Inferred:
    """What ``nbp init`` read off the table."""

    features: dict[str, str]
    datetime_columns: list[str]
    skipped: dict[str, str]  # column -> why it is not a feature
    task: str
    positive_label: Any
    rows: int
    committed: bool = False  # git commit of the new project (needs a git identity)


def _read(path: Path) -> Any:
    try:
        frame = read_table(path)
    except NbpipelineError as exc:
        raise InitError(str(exc)) from exc
    if frame.empty or not len(frame.columns):
        raise InitError(f"{path}: the table is empty; give a CSV or parquet file with rows")
    return frame


def _is_datetime(series: Any) -> bool:
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return False
    values = series.dropna().astype(str).head(200)
    if values.empty or not values.str.contains(r"\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4}").all():
        return False
    return bool(pd.to_datetime(values, errors="coerce", utc=True).notna().mean() > 0.95)


def infer(frame: Any, target: str, *, time: str | None, positive: str | None,
          task: str | None, source: str) -> Inferred:
    """Column kinds, task and positive label of ``frame`` (errors name column and fix)."""
    import pandas as pd

    if target not in frame.columns:
        raise InitError(f"{source}: no column {target!r} for --target; columns are "
                        f"{', '.join(map(str, frame.columns))}")
    if time is not None and time not in frame.columns:
        raise InitError(f"{source}: no column {time!r} for --time; columns are "
                        f"{', '.join(map(str, frame.columns))}")
    y = frame[target].dropna()
    if y.empty:
        raise InitError(f"{source}: target {target!r} has no values; pick another --target")
    if y.nunique() < 2:
        raise InitError(f"{source}: target {target!r} is constant ({y.iloc[0]!r} in every "
                        "row): nothing to learn; pick another --target")
    numeric_target = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    if task is None:
        integral = numeric_target and bool((y == y.round()).all())
        task = ("regression" if numeric_target and (not integral or y.nunique() > MAX_CLASSES)
                else "classification")
    if task == "regression" and not numeric_target:
        raise InitError(f"{source}: --task regression needs a numeric target; {target!r} is "
                        f"{y.dtype} — leave out --task for classification")
    label: Any = None
    if task == "classification":
        classes = list(y.value_counts().index)
        if positive is not None:
            matches = [c for c in classes if str(c) == str(positive)]
            if not matches:
                raise InitError(f"{source}: --positive {positive!r} is not a value of "
                                f"{target!r}; its values are {', '.join(map(str, classes[:10]))}")
            label = matches[0]
        elif len(classes) > 2:
            raise InitError(
                f"{source}: target {target!r} has {len(classes)} classes; multiclass models "
                f"are not supported: pass --positive VALUE to predict one class against the "
                f"rest, or --task regression for a numeric target")
        else:
            known = [c for c in classes if str(c).lower() in ("1", "true", "yes", "y")]
            label = known[0] if known else classes[-1]  # else the rarer class
        label = label.item() if hasattr(label, "item") else label
    features: dict[str, str] = {}
    skipped: dict[str, str] = {}
    dates: list[str] = []
    for column in frame.columns:
        name, series = str(column), frame[column]
        if name in (target, time):
            if name == time:
                dates.append(name)
            continue
        if name.lower() in ID_NAMES:
            skipped[name] = "a row id"
        elif series.isna().all():
            skipped[name] = "always empty"
        elif _is_datetime(series):
            dates.append(name)
            skipped[name] = "a date (derive numbers from it in notebooks/data.ipynb to use it)"
        elif pd.api.types.is_bool_dtype(series):
            features[name] = "category"
        elif pd.api.types.is_numeric_dtype(series):
            features[name] = "number"
        elif series.nunique() > max(50, len(frame) // 20):
            skipped[name] = f"{series.nunique():,} distinct values (free text or an id)"
        else:
            features[name] = "category"
    if not features:
        raise InitError(f"{source}: no usable feature column besides the target "
                        f"({', '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return Inferred(features, dates, skipped, task, label, len(frame))


def _split_params(frame: Any, time: str | None) -> dict[str, Any]:
    """Split settings: dates at the 60% and 80% points of the time column, or fractions."""
    import pandas as pd

    fractions = {"valid_fraction": 0.2, "golden_fraction": 0.2}  # used without a time column
    if not time:
        return {"valid_start": "", "golden_start": "", "end": "", **fractions}
    t = pd.to_datetime(frame[time], utc=True, errors="coerce").dropna()
    if t.empty:
        raise InitError(f"--time {time!r}: no value of that column reads as a date or time")
    day = lambda ts: ts.strftime("%Y-%m-%d")  # noqa: E731
    return {"valid_start": day(t.quantile(0.6)), "golden_start": day(t.quantile(0.8)),
            "end": day(t.max() + pd.Timedelta(days=1)), **fractions}


def project_params(inferred: Inferred, *, target: str, time: str | None, source: str,
                   frame: Any) -> dict[str, Any]:
    """The new project's params.yaml (as a dict)."""
    categorical = [n for n, k in inferred.features.items() if k == "category"]
    slices = [n for n in categorical if frame[n].nunique() <= 30][:2]
    classification = inferred.task == "classification"
    description = (f"{target} is {inferred.positive_label!r}" if classification
                   else f"the value of {target}")
    return {
        "common": {
            "seed": 42, "target": target, "task": inferred.task,
            "positive_label": inferred.positive_label if classification else None,
            "time_column": time or "", "segment_column": "", "target_description": description,
            "features": dict(inferred.features),
        },
        "paths": {"train_path": "data/train.parquet", "valid_path": "data/valid.parquet",
                  "golden_path": "data/golden.parquet",
                  "quarantine_path": "data/quarantine.parquet", "model_dir": "models/candidate"},
        "data": {"source": source, "datetime_columns": inferred.datetime_columns,
                 "required_columns": [target], "value_ranges": {}, "sample_fraction": 1.0,
                 **_split_params(frame, time), "feedback_path": "", "feedback_rows": 0},
        "train": {"max_iter": 200, "max_depth": [3, 6], "learning_rate": [0.05, 0.1],
                  "min_samples_leaf": 20, "cv_folds": 3, "search_rows": 50000,
                  "scoring": "roc_auc" if classification else "r2", "search_backend": "local",
                  "dask_scheduler": "", "dask_local": "cluster", "reference_rows": 20000},
        "evaluate": {
            "decision_threshold": 0.5, "gate_metric": "roc_auc" if classification else "r2",
            "gate_min": 0.6 if classification else 0.1, "gate_min_improvement": 0.0,
            "gate_max_slice_regression": 0.05, "gate_min_slice_rows": 100,
            "gate_too_good": 0.99, "gate_max_jump": 0.1, "gate_leak_alone_share": 0.85,
            "gate_leak_importance_share": 0.8, "slice_columns": slices,
            "importance_rows": 2000, "importance_repeats": 3,
        },
    }


# ROI needs the value of each decision outcome, which only the user knows: until they set
# monitor.value_model and cost_per_prediction, ROI is shown but neither alarms nor
# switches the model off.
MONITOR_PARAMS = {"window_size": 1000, "min_rows": 200, "min_feedback": 100,
                  "quality_limits": {"roc_auc": [0.55, 0.995], "accuracy": [0.5, 1.0]},
                  "value_model": {"tp": 1.0, "fp": -1.0, "tn": 0.0, "fn": 0.0},
                  "cost_per_prediction": 0.01, "roi_min": -1.0e9, "roi_max": 1.0e12,
                  "off_switch": False}
# `nbp monitor` retrains on the champion's labelled predictions (docs/monitor.md) once
# monitor.retrain_action is dvc; the data notebook makes them the golden window.
RETRAIN_PARAMS = {"min_feedback": 1000, "data_path": "retrain/feedback.parquet",
                  "set": {"data.feedback_path": "{path}", "data.feedback_rows": "{rows}"},
                  "canary": 0.1}
SERVE_PARAMS = {"fallback_prediction": 0, "fallback_probability": None, "poll_seconds": 0.5,
                "retry_seconds": 10.0, "max_batch_rows": 1000}


def _dvc_yaml(task: str) -> dict[str, Any]:
    contract = ["common.seed", "common.features", "common.target", "common.task",
                "common.positive_label", "common.time_column", "common.segment_column"]
    golden = "(golden rows)"
    plots: list[Any] = (
        [{"plots/evaluate/roc.csv": {"title": f"ROC curve {golden}", "x": "fpr", "y": "tpr",
                                     "x_label": "false positive rate",
                                     "y_label": "true positive rate"}},
         {"plots/evaluate/confusion.csv": {"title": f"Confusion matrix {golden}",
                                           "template": "confusion_counts",
                                           "x": "predicted", "y": "actual"}}]
        if task == "classification" else
        [{"plots/evaluate/predicted.csv": {"title": f"Predicted vs actual {golden}",
                                           "template": "scatter", "x": "actual",
                                           "y": "predicted"}}])
    plots += [{"plots/evaluate/importance.csv": {
                  "title": f"Permutation importance {golden}",
                  "template": "bar_horizontal_sorted", "x": "importance", "y": "feature"}},
              {"plots/evaluate/contributions.csv": {
                  "title": f"Mean |contribution| to the raw score per feature {golden}",
                  "template": "bar_horizontal_sorted", "x": "mean_abs_contribution",
                  "y": "feature"}},
              {"plots/evaluate/explanations.csv": {
                  "title": f"Contributions to the raw score of three examples {golden}",
                  "template": "bar_examples", "x": "contribution", "y": "feature"}},
              {"plots/evaluate/slices.csv": {
                  "title": f"Rows per slice {golden}, one panel per slice column",
                  "template": "bar_facets", "x": "rows", "y": "value"}}]
    return {"stages": {
        "data": {"cmd": "nbp run data",
                 "deps": ["notebooks/data.ipynb", "${data.source}"],
                 "params": [*contract, "data"],
                 "outs": ["${paths.train_path}", "${paths.valid_path}", "${paths.golden_path}",
                          "${paths.quarantine_path}", "reports/data.ipynb", "reports/data.html"],
                 "metrics": ["metrics/data.json"]},
        "train": {"cmd": "nbp run train",
                  "deps": ["notebooks/train.ipynb", "${paths.train_path}", "${paths.valid_path}"],
                  "params": ["common", "train"],
                  "outs": ["${paths.model_dir}", "metrics/train.artifacts.json",
                           "reports/train.ipynb", "reports/train.html"],
                  "metrics": ["metrics/train.json"]},
        "evaluate": {"cmd": "nbp run evaluate",
                     "deps": ["notebooks/evaluate.ipynb", "${paths.train_path}",
                              "${paths.valid_path}",
                              "${paths.golden_path}", "${paths.model_dir}"],
                     "params": ["common", "evaluate"],
                     "outs": ["metrics/gate.json", "metrics/evaluate.json",
                              "reports/evaluate.ipynb", "reports/evaluate.html"],
                     "metrics": ["metrics/evaluate.headline.json"],
                     "plots": plots},
    }}


def segment_values(frame: Any, column: str, source: str) -> list[str]:
    """The segments of a factory: the distinct values of ``column``, as folder names."""
    if column not in frame.columns:
        raise InitError(f"{source}: no column {column!r} for --segment-by; columns are "
                        f"{', '.join(map(str, frame.columns))}")
    values = sorted(frame[column].dropna().astype(str).unique())
    if not 2 <= len(values) <= MAX_SEGMENTS:
        raise InitError(f"--segment-by {column}: {len(values)} distinct value(s); a model "
                        f"factory needs 2 to {MAX_SEGMENTS} segments: pick another column")
    try:
        return [check_segment(v, f"--segment-by {column}: value") for v in values]
    except SegmentError as exc:
        raise InitError(str(exc)) from exc


def _per_segment(path: Any) -> str:
    """``path`` with a ``{segment}`` folder under its first one (models/candidate ->
    models/{segment}/candidate; a bare folder gets it inside: registry -> registry/{segment})."""
    head, _, rest = str(path).partition("/")
    return f"{head}/{SEGMENT_FIELD}/{rest}" if rest else f"{head}/{SEGMENT_FIELD}"


def make_factory(params: dict[str, Any], dvc: dict[str, Any], column: str,
                 segments: list[str]) -> None:
    """Turn a project's params and dvc.yaml (as dicts) into a model factory over ``column``:
    every stage a ``foreach`` over ``factory.segments``, each segment's files in its own
    folders (``data/<segment>/train.parquet``, ``models/<segment>/candidate``)."""
    params["common"]["segment_column"] = column
    params["common"]["features"].pop(column, None)  # one value per segment: no signal
    params["factory"] = {"segments": segments}
    evaluate = params["evaluate"]
    evaluate["slice_columns"] = [c for c in evaluate["slice_columns"] if c != column]
    paths = params["paths"]
    for name, path in paths.items():
        paths[name] = _per_segment(path)
    if "serve" in params:
        params["serve"]["segment_field"] = column
    monitor = params["monitor"]  # each segment's log, reference, registry and alarms
    for key in ("predlog_path", "registry_dir", "alarm_log", "retrain_marker"):
        monitor[key] = _per_segment(monitor[key])
    if "retrain" in params:  # each segment retrains on its own rows (docs/monitor.md)
        params["retrain"]["data_path"] = _per_segment(params["retrain"]["data_path"])
    monitor["reference_path"] = f"{paths['model_dir']}/reference.parquet"
    monitor["metadata_path"] = f"{paths['model_dir']}/metadata.json"
    if monitor.get("reference_data"):
        monitor["reference_data"] = paths["train_path"]

    def entry(item: Any) -> Any:
        if isinstance(item, dict):
            return {entry(k): v for k, v in item.items()}
        if item.startswith("${paths.") and item.endswith("}"):
            return paths[item[len("${paths."):-1]].replace(SEGMENT_FIELD, "${item}")
        if item.split("/")[0] in ("reports", "metrics", "plots"):
            return segment_path(item, "${item}")
        return item

    for name, stage in dvc["stages"].items():
        body = {key: [entry(i) for i in value] if key in ("deps", "outs", "metrics", "plots")
                else value for key, value in stage.items()}
        body["cmd"] = f"{stage['cmd']}@${{item}}"
        body["params"] = [*body["params"], "paths"]  # they reach notebooks, not dvc.yaml
        dvc["stages"][name] = {"foreach": "${factory.segments}", "do": body}


MONITORING_DVC_YAML = {"stages": {"monitor": {
    "wdir": "..", "cmd": "nbp monitor --exit-zero", "always_changed": True,
    "deps": ["notebooks/monitor.ipynb", "models/candidate"], "params": ["monitor"],
    "outs": ["metrics/monitor.json", "reports/monitor.ipynb", "reports/monitor.html"]}}}

GITIGNORE = """.ipynb_checkpoints/
__pycache__/
*.tmp
/registry/
/logs/
/alarms/
/retrain/
"""
DVCIGNORE = """# production state, not pipeline data (nbp promote, nbp serve, nbp monitor)
/registry/
/logs/
/alarms/
/retrain/
"""
README = """# {name}

A project made by `nbp init` from `{source}` (target `{target}`, {task}{time}).
Each stage is a notebook in `notebooks/`, run by `nbp run <stage>` under DVC with its
values from `params.yaml`:

```bash
dvc repro                 # data -> train -> evaluate; reports in reports/*.html
nbp report                # reports/index.html: params, metrics, gate, vs the champion
nbp promote               # register the candidate if its gate passed; it serves next
nbp serve &               # HTTP model server on 127.0.0.1:8000 (POST /predict, /feedback)
nbp replay --rows 500     # send the golden rows through it, with their outcomes
nbp monitor               # drift, quality, alarms (exit 3 on alarms, 4 on warnings)
```

Edit `params.yaml` to change the features (`common.features`: name -> number | category),
the target, the split, the quarantine rules (`data.required_columns`, `data.value_ranges`)
or the model's hyperparameters; `dvc repro` re-runs what the change affects. To change
what the model takes or predicts after a model is in production, retire the champion
(`nbp retire --reason "..."`) to start a new model line. For ROI alarms and the off
switch, set `monitor.value_model` (the value of a true/false positive/negative),
`monitor.cost_per_prediction`, `monitor.roi_min` and `monitor.off_switch: true`.
{skipped}"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# The programs `nbp init` runs, and how to get each one.
TOOLS = {"git": "install git (e.g. `apt install git`)",
         "dvc": "`pip install dvc` into the environment that has nbpipeline"}


def _require_tools() -> None:
    """InitError naming each program in :data:`TOOLS` not on PATH, before anything is written."""
    missing = [name for name in TOOLS if shutil.which(name) is None]
    if missing:
        raise InitError(
            f"`nbp init` needs {' and '.join(missing)} on PATH, not found: "
            + "; ".join(TOOLS[name] for name in missing)
            + " — or activate the virtual environment nbpipeline is installed in")


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[:1]
        raise InitError(f"`{' '.join(args)}` failed in {cwd}: {first[0] if first else ''}")


def init_project(
    directory: Path, *, data: Path, target: str, time: str | None = None,
    positive: str | None = None, task: str | None = None, segment_by: str | None = None,
) -> Inferred:
    """Create a project in ``directory`` around the table ``data``; return what was inferred
    (``segment_by``: a model factory, one model per value of that column)."""
    if task is not None and task not in ("classification", "regression"):
        raise InitError(f"--task {task!r}: give classification or regression")
    if directory.exists() and any(directory.iterdir()):
        raise InitError(f"{directory}: not empty; give a new directory for the project")
    _require_tools()
    frame = _read(data)
    segments = segment_values(frame, segment_by, str(data)) if segment_by else []
    inferred = infer(frame, target, time=time, positive=positive, task=task,
                     source=str(data))
    source = f"data/raw/{data.name}"
    params = project_params(inferred, target=target, time=time, source=source, frame=frame)
    params["monitor"] = {**MonitorConfig().as_dict(), **MONITOR_PARAMS}
    params["retrain"] = dict(RETRAIN_PARAMS)
    if inferred.task == "regression":  # judged on feedback: R² (scale-free), not AUC
        params["monitor"]["quality_limits"] = {"r2": [0.0, 0.999]}
    if inferred.task == "classification":
        params["serve"] = dict(SERVE_PARAMS)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data" / "raw").mkdir(parents=True)
    shutil.copyfile(data, directory / source)
    templates = files(TEMPLATES).joinpath("templates")
    for name in NOTEBOOKS:
        nb = read_notebook(templates.joinpath(f"{name}.ipynb"))  # type: ignore[arg-type]
        write_notebook(nb, directory / "notebooks" / f"{name}.ipynb")
    dvc = _dvc_yaml(inferred.task)
    if segment_by:
        make_factory(params, dvc, segment_by, segments)
    _write(directory / "params.yaml", yamlio.dump(params))
    _write(directory / "dvc.yaml", yamlio.dump(dvc))
    if not segment_by:  # the monitor stage watches one model (factory: nbp monitor --segment)
        _write(directory / "monitoring" / "dvc.yaml", yamlio.dump(MONITORING_DVC_YAML))
    _write(directory / ".gitignore", GITIGNORE)
    _write(directory / ".dvcignore", DVCIGNORE)
    skipped = "".join(f"\n- `{name}`: not a feature ({why})"
                      for name, why in inferred.skipped.items())
    _write(directory / "README.md", README.format(
        name=directory.name, source=data.name, target=target, task=inferred.task,
        time=f", in time order by `{time}`" if time else "",
        skipped=f"\nColumns left out of `common.features`:{skipped}\n" if skipped else ""))
    sync_notebooks(Project(directory.resolve()))
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"],
                 ["dvc", "config", "core.autostage", "true"], ["dvc", "add", "-q", source]):
        _run(args, directory)
    install_plots(Project(directory.resolve()))  # offline `dvc plots show`, its templates
    _run(["git", "add", "-A"], directory)
    commit = subprocess.run(["git", "commit", "-qm", f"nbp init from {data.name}"],
                            cwd=directory, capture_output=True, text=True)
    return dataclasses.replace(inferred, committed=commit.returncode == 0)
