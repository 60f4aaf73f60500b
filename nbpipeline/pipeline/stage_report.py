"""A stage's report: the executed notebook as one HTML page that opens with its summary.

The summary is the first cell of ``reports/<stage>.ipynb`` (a markdown cell tagged
``nbp-run-summary``, see :func:`nbpipeline.notebook.add_run_summary`): the stage, its
parameters once as a table (value and notebook default), the sha256 of the data and model
files it read and wrote, the git revision, its key metrics and, when a cell displayed one,
the verdict (evaluate's gate) with its failing checks. It holds nothing that changes
between identical runs, so the .ipynb stays byte-stable. When and how long the stage ran
is the run record (:func:`nbpipeline.record.run_record`), written into the HTML page as a
JSON data block (:func:`nbpipeline.record.run_record_block`): ``dvc checkout`` and the
run-cache restore it with the page, and the review page (nbpipeline.report.index) reads run
times from it (:func:`nbpipeline.record.read_run_record`), never from file mtimes.

The HTML page made from it is nbpipeline.pipeline.stage_page's job.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbpipeline.errors import NbpipelineError
from nbpipeline.notebook import add_run_summary, notebook_parameters
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.pipeline.stage_page import hash_table
from nbpipeline.pipeline.stages import NotebookStage
from nbpipeline.project import Project
from nbpipeline.record import VERDICT_MIME, file_sha256, flatten, run_record

__all__ = ["file_hashes", "summarise_run", "verdicts"]

MAX_METRICS = 16  # the summary's "key metrics"; the full set is in metrics/<stage>.json
_NOT_HASHED = ("notebooks/", "reports/", "metrics/", "plots/")


# ----------------------------------------------------------------------------- summary
def _tree_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def file_hashes(project: Project, declared: NotebookStage | None) -> dict[str, dict[str, str]]:
    """sha256 of the data and model files the stage declares in dvc.yaml, as ``{"read":
    {path: sha256} (deps), "written": {...} (outs)}`` (notebooks, reports, metrics and plots
    left out); a folder hashes its files' names and hashes. Empty when dvc.yaml does not
    define the stage (``declared`` is None)."""
    hashes: dict[str, dict[str, str]] = {"read": {}, "written": {}}
    if declared is None:
        return hashes
    for kind, paths in (("read", declared.deps), ("written", declared.outs)):
        for rel in dict.fromkeys(paths):
            path = project.root / rel
            if rel.startswith(_NOT_HASHED) or not path.exists():
                continue
            hashes[kind][rel] = _tree_sha256(path) if path.is_dir() else file_sha256(path)
    return hashes


def _cell_text(value: Any) -> str:
    """A value for a markdown table cell: numbers with separators (plain text), anything else
    as code, without pipes or newlines."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = value if isinstance(value, str) else str(value) if isinstance(value, bool) or \
        value is None else json.dumps(value)
    return "`" + text.replace("|", "\\|").replace("\n", " ").replace("`", "'") + "`"


def verdicts(nb: Any) -> list[dict[str, Any]]:
    """Verdicts displayed by the notebook's cells (outputs of type ``VERDICT_MIME``)."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get(VERDICT_MIME)
            if isinstance(data, dict) and "passed" in data:
                found.append(dict(data))
    return found


def _summary_markdown(stage: str, params: Mapping[str, Any], defaults: Mapping[str, Any],
                      hashes: Mapping[str, str], git: str | None, metrics: Mapping[str, Any],
                      found: list[dict[str, Any]]) -> str:
    lines = [f"## Stage `{stage}`", ""]
    facts = [f"git `{git}`" if git else "no git revision (not a git repository, or no commit)"]
    lines += [" · ".join(facts), ""]
    for verdict in found:
        word = "PASSED" if verdict["passed"] else "FAILED"
        lines.append(f"**{verdict.get('title') or 'Verdict'}: {word}**"
                     + (f" — {verdict['headline']}" if verdict.get("headline") else ""))
        lines += [f"- failing: {line}" for line in verdict.get("failing") or []]
        lines.append("")
    if params:
        lines += ["| parameter | value | notebook default |", "|---|---|---|"]
        for name, value in params.items():
            default = _cell_text(defaults[name]) if name in defaults else "–"
            same = name in defaults and defaults[name] == value
            lines.append(f"| `{name}` | {_cell_text(value)} | {'same' if same else default} |")
        lines.append("")
    if metrics:
        judged = {v["metric"] for v in found if v.get("metric")}
        flat = sorted(flatten(dict(metrics)).items(),
                      key=lambda kv: kv[0].rsplit(".", 1)[-1] not in judged)  # stable
        lines += ["| key metric | value |", "|---|---:|"]
        lines += [f"| `{k}` | {_cell_text(v)} |" for k, v in flat[:MAX_METRICS]]
        if len(flat) > MAX_METRICS:
            lines.append(f"| … | {len(flat) - MAX_METRICS} more in `metrics/{stage}.json` |")
        lines.append("")
    # files written (a model records when it was made) are in the run record, not here
    lines += hash_table("data and model files read", hashes)
    return "\n".join(lines)


def summarise_run(project: Project, stage: str, nb: Any, thread_record: dict[str, Any],
                  parameters: Mapping[str, Any], started: float,
                  declared: NotebookStage | None) -> dict[str, Any]:
    """Put the summary cell first in the executed ``nb``; return the run's record.

    ``started`` is the run's start on :func:`time.perf_counter`'s clock; ``declared`` the
    dvc.yaml stage (None without one), whose deps and outs are hashed.
    """
    seconds = time.perf_counter() - started
    began = datetime.fromtimestamp(time.time() - seconds, UTC)
    try:
        defaults = notebook_parameters(nb, f"reports/{stage}.ipynb")
    except NbpipelineError:
        defaults = {}
    metrics_path = project.metrics / f"{stage}.json"
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    hashes = file_hashes(project, declared)
    git = git_output(project.root, "rev-parse", "--short", "HEAD")
    text = _summary_markdown(stage, {**defaults, **parameters}, defaults, hashes["read"], git,
                             metrics if isinstance(metrics, dict) else {}, verdicts(nb))
    add_run_summary(nb, text, stage)
    return run_record(stage, started=began.isoformat(timespec="seconds"), seconds=seconds,
                      git=git, params={**defaults, **parameters}, hashes=hashes,
                      threads=thread_record)
