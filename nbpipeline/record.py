"""Record metrics, plots and artifacts from inside a stage notebook (stdlib only).

Files written (paths relative to the project root, each write atomic):

* ``metrics/<stage>.json``        — ``metric("valid.roc_auc", 0.71)`` nests on dots, so
  ``dvc metrics show`` / ``dvc exp show`` display ``valid.roc_auc``;
* ``plots/<stage>/<name>.csv``    — ``plot("roc", rows)`` for ``dvc plots show``;
* ``metrics/<stage>.artifacts.json`` — ``artifact(path, ...)``: path, sha256, size, meta.

The stage is the one set by ``nbp run`` or ``nbpipeline.init(stage)``. Under
``nbp run <stage>@<segment>`` (a model factory's segment, ``$NBPIPELINE_SEGMENT``) each
file goes to the segment's folder: ``metrics/<segment>/<stage>.json``,
``plots/<segment>/<stage>/<name>.csv`` (as nbpipeline.project.Project does).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nbpipeline.project import (  # stdlib only: no import cost in kernels
    ROOT_ENV,
    SEGMENT_ENV,
    STAGE_ENV,
)

__all__ = ["artifact", "flatten", "metric", "metrics", "plot", "read_metrics", "json_value",
           "read_run_record", "run_record", "run_record_block"]


def _stage(stage: str | None) -> str:
    name = stage or os.environ.get(STAGE_ENV)
    if not name:
        raise RuntimeError(
            "nbpipeline.record: unknown stage; call nbpipeline.init('<stage>') at the top of "
            "the notebook (nbp run sets it automatically) or pass stage='...'"
        )
    return name


def _root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path.cwd())


def _folder(kind: str) -> Path:
    """``metrics`` or ``plots`` of the project, in the segment's folder under a segment."""
    return _root() / kind / os.environ.get(SEGMENT_ENV, "")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_value(value: Any) -> Any:
    """Convert numpy/pandas scalars and containers to plain JSON values (NaN -> None)."""
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_value(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys (``{"valid": {"auc": 1}}`` ->
    ``{"valid.auc": 1}``): how metrics and params are compared and shown. A value that is
    not a mapping, at the top and without ``prefix``, gives {}."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree} if prefix else {}


def _metrics_path(stage: str | None) -> Path:
    return _folder("metrics") / f"{_stage(stage)}.json"


def read_metrics(stage: str | None = None) -> dict[str, Any]:
    """The metrics recorded so far for ``stage`` (empty if none)."""
    path = _metrics_path(stage)
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def metrics(values: Mapping[str, Any], *, stage: str | None = None, reset: bool = False) -> None:
    """Record several metrics at once; dotted names nest (``valid.auc`` -> {valid: {auc}})."""
    data = {} if reset else read_metrics(stage)
    for name, value in values.items():
        node = data
        *parents, leaf = name.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = json_value(value)
    _write_atomic(_metrics_path(stage), json.dumps(data, indent=2, sort_keys=True) + "\n")


def metric(name: str, value: Any, *, stage: str | None = None) -> None:
    """Record one metric (see :func:`metrics`)."""
    metrics({name: value}, stage=stage)


def plot(name: str, rows: Any, *, stage: str | None = None) -> Path:
    """Write plot data for ``dvc plots show`` to ``plots/<stage>/<name>.csv``.

    ``rows`` is a pandas DataFrame or an iterable of mappings with the same keys.
    """
    path = _folder("plots") / _stage(stage) / f"{name}.csv"
    if hasattr(rows, "to_csv"):
        text = rows.to_csv(index=False)
    else:
        records = [dict(r) for r in rows]
        buf = io.StringIO()
        fields = list(records[0]) if records else []
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buf.getvalue()
    _write_atomic(path, text)
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact(path: str | os.PathLike[str], *, stage: str | None = None, **meta: Any) -> None:
    """Record a produced file (e.g. a model) and its hash in metrics/<stage>.artifacts.json."""
    root = _root()
    target = Path(path)
    rel = os.path.relpath(target if target.is_absolute() else root / target, root)
    index_path = _folder("metrics") / f"{_stage(stage)}.artifacts.json"
    index: dict[str, Any] = {}
    if index_path.exists():
        index = json.loads(index_path.read_text(encoding="utf-8"))
    index[rel] = {
        "sha256": file_sha256(root / rel),
        "size": (root / rel).stat().st_size,
        **json_value(meta),
    }
    _write_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")


def rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain-JSON copies of ``records`` (helper for plot data built from numpy values)."""
    return [json_value(dict(r)) for r in records]


RUN_RECORD_FIELDS = ("stage", "started", "seconds", "git", "params", "hashes", "threads")


def run_record(stage: str, *, started: str, seconds: float, git: str | None,
               params: Mapping[str, Any], hashes: Mapping[str, Mapping[str, str]],
               threads: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stage run's record, as ``nbp run`` writes it into the stage's HTML report.

    ``started`` is the UTC start as ISO 8601, ``seconds`` the wall time of the run, ``git``
    the short revision (None outside git), ``params`` the values the notebook got,
    ``hashes`` ``{"read": {path: sha256}, "written": {...}}`` of its data and model files,
    ``threads`` the BLAS/OpenMP thread settings it ran with (nbpipeline.threads). The
    review page reads run times from here, never from file mtimes (which ``dvc checkout``
    resets).
    """
    return {"stage": stage, "started": started, "seconds": round(float(seconds), 1),
            "git": git, "params": json_value(dict(params)),
            "hashes": {kind: dict(files) for kind, files in hashes.items()},
            "threads": json_value(dict(threads)) if threads is not None else None}


def parse_run_record(raw: Any) -> dict[str, Any] | None:
    """``raw`` if it is a run record (see :func:`run_record`), else None."""
    if not isinstance(raw, dict) or any(key not in raw for key in RUN_RECORD_FIELDS):
        return None
    if not isinstance(raw["started"], str) or not isinstance(raw["seconds"], int | float):
        return None
    return raw


# A cell's verdict (e.g. the evaluate stage's gate), displayed with this MIME type next to
# its text/markdown form: {"title", "passed", "headline", "failing": [one line per check],
# "metric": the metric it judged (optional; listed first among the key metrics)}.
# The stage report lifts it into the summary (nbpipeline.pipeline.stage_report).
VERDICT_MIME = "application/vnd.nbpipeline.verdict+json"

RUN_RECORD_ID = "nbpipeline-run-record"
_RECORD_BLOCK = re.compile(
    rf'<script type="application/json" id="{RUN_RECORD_ID}">(.*?)</script>', re.S)


def run_record_block(record: Mapping[str, Any]) -> str:
    """The run record as the inert JSON data block that a stage's page carries."""
    data = json.dumps(dict(record), sort_keys=True).replace("</", "<\\/")
    return f'<script type="application/json" id="{RUN_RECORD_ID}">{data}</script>\n'


def read_run_record(html: Path) -> dict[str, Any] | None:
    """The run record in a stage's HTML report; None for a page without one."""
    try:
        text = html.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _RECORD_BLOCK.search(text)
    if match is None:
        return None
    try:
        return parse_run_record(json.loads(match.group(1)))
    except ValueError:
        return None
