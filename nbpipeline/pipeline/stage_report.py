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

The HTML page: title = stage name; code folded behind a "show code" toggle (a checkbox and
CSS, no script); prompts numbered in execution order (the .ipynb keeps none, so that it
diffs cleanly); the parameters cells left out (the summary shows them); stray reprs (an
expression's ``PosixPath(...)`` or ``<... at 0x...>`` echo) left out.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from nbpipeline import lean, threads
from nbpipeline.errors import NbpipelineError, StageError
from nbpipeline.notebook import (
    INJECTED_TAG,
    PARAMETERS_TAG,
    SUMMARY_TAG,
    add_run_summary,
    notebook_parameters,
)
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.pipeline.stages import NotebookStage
from nbpipeline.project import Project
from nbpipeline.record import VERDICT_MIME, file_sha256, flatten, run_record, run_record_block

__all__ = ["HtmlExporterLoader", "file_hashes", "summarise_run"]

MAX_METRICS = 16  # the summary's "key metrics"; the full set is in metrics/<stage>.json
_NOT_HASHED = ("notebooks/", "reports/", "metrics/", "plots/")
# An expression's echo that says nothing to a reader: a path object, an object address,
# matplotlib's return values (`Text(...)`, `[<matplotlib.lines.Line2D ...>]`).
_STRAY_REPR = re.compile(r"^(Posix|Windows)?Path\(|^Text\(|<[^<>]* at 0x[0-9a-f]+>", re.S)
_TOGGLE_CSS = """<style>
.nbp-toggle { position: sticky; top: 0; z-index: 10; display: block; margin: 0 0 8px;
  padding: 6px 12px; background: #f5f7fa; border-bottom: 1px solid #e3e7ee;
  font: 13px system-ui, sans-serif; color: #5f6b7a; cursor: pointer; }
#nbp-show-code:not(:checked) ~ .jp-CodeCell .jp-Cell-inputWrapper { display: none; }
#nbp-show-code { position: absolute; opacity: 0; }
#nbp-show-code:focus-visible + .nbp-toggle { outline: 2px solid #2f6fde; }
#nbp-show-code:checked + .nbp-toggle .nbp-show,
#nbp-show-code:not(:checked) + .nbp-toggle .nbp-hide { display: none; }
.jp-RenderedMarkdown table { margin-left: 0; }
</style>
"""


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


def _hash_table(title: str, hashes: Mapping[str, str]) -> list[str]:
    if not hashes:
        return []
    return [f"| {title} | sha256 |", "|---|---|",
            *(f"| `{rel}` | `{sha[:12]}` |" for rel, sha in hashes.items()), ""]


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
    lines += _hash_table("data and model files read", hashes)
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


# ----------------------------------------------------------------------------- the page
def _for_reading(nb: Any, record: Mapping[str, Any] | None) -> Any:
    """A copy of ``nb`` as the page shows it (the .ipynb itself is left as it is)."""
    page = copy.deepcopy(nb)
    summarised = any(SUMMARY_TAG in c.get("metadata", {}).get("tags", []) for c in page.cells)
    hidden = (PARAMETERS_TAG, INJECTED_TAG) if summarised else ()
    page.cells = [c for c in page.cells
                  if not set(c.get("metadata", {}).get("tags", [])) & set(hidden)]
    numbered = all(c.get("execution_count") is None for c in page.cells
                   if c.cell_type == "code")
    count = 0
    for cell in page.cells:
        if cell.cell_type != "code":
            if record and SUMMARY_TAG in cell.get("metadata", {}).get("tags", []):
                when = record["started"].replace("T", " ").replace("+00:00", " UTC")
                parts = cell.source.split("\n\n")  # heading, facts line, the rest
                parts[1] += f" · ran {when} · took {record['seconds']:,.1f} s"
                written = _hash_table("data and model files written",
                                      record["hashes"].get("written") or {})
                if written:
                    parts.append("\n".join(written).rstrip())
                if record.get("threads"):
                    parts.append(f"**Run settings.** {threads.describe(record['threads'])}")
                cell.source = "\n\n".join(parts)
            continue
        if numbered:  # a successful run: every code cell ran, in order
            count += 1
            cell.execution_count = count
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if output.get("output_type") == "execute_result" and set(data) == {"text/plain"} \
                    and _STRAY_REPR.search(str(data["text/plain"])):
                continue
            if numbered and "execution_count" in output:
                output["execution_count"] = count
            outputs.append(output)
        cell.outputs = outputs
    return page


def _decorate(body: str, record: Mapping[str, Any] | None, fold: bool) -> str:
    """The exported page with the code toggle and the run record."""
    toggle = (f'<input type="checkbox" id="nbp-show-code"{"" if fold else " checked"}>'
              '<label class="nbp-toggle" for="nbp-show-code"><span class="nbp-show">&#9656; show '
              'code</span><span class="nbp-hide">&#9662; hide code</span></label>\n')
    block = run_record_block(record) if record is not None else ""
    body = body.replace("</head>", _TOGGLE_CSS + "</head>", 1)
    return body.replace("<main>", "<main>\n" + block + toggle, 1)


def _warm_up_notebook() -> Any:
    """A tiny notebook that touches what a first render loads lazily: markdown, the
    IPython lexer, stream and HTML outputs."""
    v4 = lean.nbformat().v4
    output = v4.new_output("display_data", {"text/html": "<table><tr><td>1</td></tr></table>"})
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# title\n*a* `b`"),
        v4.new_code_cell("import os\nx = 1", outputs=[v4.new_output("stream", text="x\n"), output]),
    ])
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    return nb


def _stage_of(nb: Any) -> str:
    """The stage a notebook without a summary ran (a failed run's): its source's name."""
    for key in ("input_path", "output_path"):
        path = nb.metadata.get("papermill", {}).get(key)
        if isinstance(path, str) and path.endswith(".ipynb"):
            return Path(path).name.split(".")[0] or Path(path).name.split(".")[1]
    return "notebook"


class HtmlExporterLoader(threading.Thread):
    """Prepares nbconvert's HTML exporter while the kernel runs; renders stage pages.

    Importing nbconvert and compiling its templates (done by a first, empty render) take
    about a second; both happen here, off the critical path.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.exporter: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from nbconvert import HTMLExporter

            exporter = HTMLExporter(template_name="lab")
            exporter.from_notebook_node(_warm_up_notebook())
            self.exporter = exporter
        except BaseException as exc:  # reported when the HTML is needed
            self.error = exc

    def render(self, nb: Any, record: Mapping[str, Any] | None = None) -> str:
        """The page of ``nb``: titled by its stage, code folded when it ran to the end
        (a failed run's page shows its code), ``record`` embedded."""
        self.join()
        if self.exporter is None:
            raise StageError(f"cannot render HTML reports: {self.error}")
        failed = any(o.get("output_type") == "error" for c in nb.cells
                     for o in c.get("outputs", []))
        title = str(nb.metadata.get("nbpipeline", {}).get("stage") or _stage_of(nb))
        title += " (failed)" if failed else ""
        body, _ = self.exporter.from_notebook_node(
            _for_reading(nb, record), resources={"metadata": {"name": escape(title)}})
        return _decorate(str(body), record, fold=not failed)
