"""The review page: ``reports/index.html`` from the pipeline's outputs.

One self-contained HTML file (inline CSS and SVG, no scripts, no external assets) linking
every stage's executed notebook (``reports/<stage>.html``) with when it ran (its run record,
not file mtimes), its params and metrics against the previous run, the gate decision, the
candidate against the production champion (every parameter, the gate metric first) and the
registry's recent events, what the candidate relies on (global importance and a few
explained golden rows: nbpipeline.report.explanations), and the scheduled monitor runs
(``nbp schedule``: health, logs).

The previous run is the one committed at git HEAD (nbpipeline.report.previous).
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from html import escape
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from nbpipeline import yamlio
from nbpipeline.errors import GateError, NbpipelineError
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.pipeline.stages import generates_stages
from nbpipeline.project import Project, write_text_atomic
from nbpipeline.record import flatten, read_run_record
from nbpipeline.release.gate import GATE_FILE, GateDecision, read_gate
from nbpipeline.release.lineage import model_params, read_lock
from nbpipeline.release.registry import ModelVersion, Registry
from nbpipeline.report.explanations import examples_card, read_examples
from nbpipeline.report.html import badge as _badge
from nbpipeline.report.html import delta as _delta
from nbpipeline.report.html import fmt as _fmt
from nbpipeline.report.html import table as _table
from nbpipeline.report.previous import PreviousRun, previous_run, read_json
from nbpipeline.schedule.runs import health as schedule_health
from nbpipeline.schedule.runs import period_text

__all__ = ["build_index", "registered_version", "schedule_section", "stages_section",
           "write_page"]

INDEX = "index.html"
# ----------------------------------------------------------------------------- sections
def registered_version(gate: GateDecision, reg: Registry) -> ModelVersion | None:
    """The version the registry holds of the gate's candidate (same model file), if any."""
    if not gate.candidate_sha256:
        return None
    return next((mv for mv in reg.versions() if mv.sha256 == gate.candidate_sha256), None)


def _registered_as(gate: GateDecision, reg: Registry) -> str | None:
    """What the registry made of the gate's candidate, once it holds it ("v3, champion")."""
    try:
        state = reg.state()
        version = registered_version(gate, reg)
    except NbpipelineError:
        return None
    if version is None:
        return None
    role = state.role(version.version)
    return f"{version.version}, " + (role or "registered, not serving")


def _gate_section(gate: GateDecision | None, problem: str = "", reg: Registry | None = None
                  ) -> str:
    if gate is None:
        return ('<div class="card"><h2>Gate decision ' + _badge("none", "not computed")
                + f'</h2><p class="muted">{escape(problem)}</p></div>')
    verdict = _badge("pass", "PASSED") if gate.passed else _badge("fail", "FAILED")
    champ = gate.champion_version or "none (first model)"
    rows = [[_badge("pass", "ok") if c.passed else _badge("fail", "fail"),
             f"<code>{escape(c.name)}</code>", _fmt(c.value), _fmt(c.threshold),
             escape(c.detail)]
            for c in gate.checks]
    table = _table(["", "check", "value", "threshold", "detail"], rows, {2, 3})
    registered = _registered_as(gate, reg) if reg is not None else None
    if registered:
        verdict += " " + _badge("none", f"registered as {registered}")
        hint = f"the registry holds this candidate as <b>{escape(registered)}</b>"
    elif gate.passed:
        hint = "<code>nbp promote</code> will register it"
    else:
        hint = "<code>nbp promote</code> will refuse it (override: <code>--force --reason</code>)"
    return (f'<div class="card"><h2>Gate decision {verdict}</h2>'
            f'<p class="muted">metric <code>{escape(str(gate.metric))}</code>, '
            f"compared with champion <b>{escape(str(champ))}</b>; {hint}.</p>{table}</div>")


def _production_section(reg: Registry) -> str:
    try:
        state = reg.state()
        events = reg.events()[-8:]
    except NbpipelineError as exc:
        return f'<div class="card"><h2>Production</h2><p class="fail">{escape(str(exc))}</p></div>'

    def describe(mv: ModelVersion | None) -> str:
        if mv is None:
            return '<span class="muted">none</span>'
        forced = " " + _badge("warn", "forced") if mv.forced_reason else ""
        return f"<b>{mv.version}</b> <code>{mv.sha256[:12]}</code>{forced}"

    off = (_badge("fail", f"switched off: {state.off_reason}") if state.switched_off
           else _badge("pass", "serving") if state.champion else _badge("none", "no model"))
    canary = describe(state.canary) + (f" at {state.canary_fraction:.0%}" if state.canary else "")
    kv = (f'<dl class="kv"><dt>status</dt><dd>{off}</dd><dt>champion</dt>'
          f"<dd>{describe(state.champion)}</dd><dt>canary</dt><dd>{canary}</dd><dt>versions</dt><dd>{len(reg.versions())}</dd></dl>")
    rows = [[str(e.seq), escape(e.ts[:19].replace("T", " ")), f"<code>{escape(e.kind)}</code>",
             escape(e.actor), escape(_event_text(e))] for e in reversed(events)]
    log = _table(["#", "when (UTC)", "event", "who", "what / why"], rows) if rows else (
        '<p class="muted">no events yet: <code>nbp promote</code> registers the first model.</p>')
    return f'<div class="card"><h2>Production (registry)</h2>{kv}<h3>Recent events</h3>{log}</div>'


def _event_text(event: Any) -> str:
    data = event.data
    what = {
        "register": lambda: f"registered {data.get('version')}",
        "promote": lambda: f"{data.get('version')} -> {data.get('role')}"
        + (f" {float(data.get('canary_fraction', 0)):.0%}" if data.get("role") == "canary" else ""),
        "rollback": lambda: (f"{data.get('role')} {data.get('from')} -> "
                             f"{data.get('to') or 'removed'}"),
    }.get(event.kind, lambda: "")()
    return f"{what}: {event.reason}" if what else event.reason


def _champion_section(project: Project, gate: dict[str, Any], reg: Registry) -> str:
    try:
        champion = reg.state().champion
    except NbpipelineError:
        champion = None
    candidate_meta = read_json(project.root / "models" / "candidate" / "metadata.json")
    if champion is None:
        return ('<div class="card"><h2>Candidate vs champion</h2><p class="muted">No champion yet: '
                "the gate applied the first-model criteria.</p></div>")
    cand = flatten(gate.get("metrics") or {})
    same_golden = flatten(gate.get("champion_metrics") or {}) if (
        gate.get("champion_version") == champion.version) else {}
    champ = {**flatten(champion.metrics), **same_golden}
    keys = _gate_first(sorted(set(cand) | set(champ)), gate.get("metric"))
    rows = [[f"<code>{escape(k)}</code>", _fmt(cand.get(k)), _fmt(champ.get(k)),
             _delta(k, cand.get(k), champ.get(k))]
            for k in keys if not k.endswith(".rows")]
    metrics = _table(["metric", "candidate", f"champion {champion.version}", "difference"], rows,
                     {1, 2, 3})
    ptable = _params_diff(
        model_params({n: (s.get("params") or {}).get("params.yaml") or {}
                      for n, s in read_lock(project).items()}, candidate_meta),
        model_params({n: s.get("params") or {}
                      for n, s in ((champion.lineage or {}).get("stages") or {}).items()},
                     champion.metadata),
        f"champion {champion.version}")
    cd, hd = candidate_meta.get("data", {}), champion.metadata.get("data", {})
    drow = [[escape(split), f"<code>{str(cd.get(split, {}).get('sha256', '–'))[:12]}</code>",
             f"<code>{str(hd.get(split, {}).get('sha256', '–'))[:12]}</code>",
             _badge("none", "same")
             if cd.get(split, {}).get("sha256") == hd.get(split, {}).get("sha256")
             else _badge("warn", "changed")]
            for split in sorted(set(cd) | set(hd))]
    note = ("" if same_golden else '<p class="muted">champion metrics as recorded at its '
            "registration; re-run <code>dvc repro -f -s evaluate</code> to score it on this "
            "golden set.</p>")
    links = _stored_reports(project, reg, champion)
    return (f'<div class="card wide"><h2>Candidate vs champion {champion.version}</h2>{note}'
            f'<div class="grid"><div>{metrics}</div><div><h3>Parameters</h3>{ptable}'
            f"<h3>Data versions</h3>{_table(['split', 'candidate', 'champion', ''], drow)}"
            f"{links}</div></div></div>")


def _params_diff(new: dict[str, Any], old: dict[str, Any], against: str) -> str:
    """Every parameter compared: the ones that differ listed, the count of the same."""
    keys = sorted(set(new) | set(old))
    differ = [k for k in keys if k not in new or k not in old or new[k] != old[k]]
    rows = [[f"<code>{escape(k)}</code>",
             escape(_fmt(new[k])) if k in new else '<span class="muted">not set</span>',
             escape(_fmt(old[k])) if k in old else '<span class="muted">not set</span>']
            for k in differ]
    same = len(keys) - len(differ)
    note = (f'<p class="muted">{len(keys)} parameters compared (params.yaml as dvc.lock '
            f"recorded it, and the model metadata): {len(differ)} differ, {same} the same</p>")
    return note + (_table(["param", "candidate", escape(against)], rows) if rows else "")


def _stored_reports(project: Project, reg: Registry, champion: ModelVersion) -> str:
    """Links to the executed notebooks stored with the champion when it was registered."""
    links = []
    for name, sha in sorted(champion.files.items()):
        if not name.startswith("reports/"):
            continue
        target = reg.object_path(sha, Path(name).suffix.lstrip("."))
        try:
            href = Path(os.path.relpath(target, project.reports)).as_posix()
        except ValueError:
            href = target.as_uri()
        links.append(f'<a href="{escape(href)}">{escape(Path(name).stem)}</a>')
    if not links:
        return ""
    return (f"<h3>Champion's executed notebooks</h3><p>{' &middot; '.join(links)} "
            f'<span class="muted">(as run when {champion.version} was registered)</span></p>')


def _importance_section(project: Project) -> str:
    """Permutation importance (bars) and the mean |tree-path contribution| per feature, from
    plots/evaluate/importance.csv and contributions.csv (the evaluate notebook's)."""
    folder = project.plots / "evaluate"
    importance = _numbers(_read_csv(folder / "importance.csv"), "importance")
    contributions = _numbers(_read_csv(folder / "contributions.csv"), "mean_abs_contribution")
    if not importance and not contributions:
        return ""
    order = importance or contributions
    features = sorted(order, key=lambda f: -order[f])
    top = max(order.values(), default=0.0) or 1.0
    headers = ["feature", "importance", "mean |contribution|",
               '<span style="display:inline-block;width:160px"></span>']
    rows = [[f"<code>{escape(f)}</code>",
             f"{importance[f]:.4f}" if f in importance else "",
             f"{contributions[f]:.4f}" if f in contributions else "",
             f'<div class="bar" style="width:{max(0.0, order[f]) / top * 100:.0f}%"></div>']
            for f in features[:15]]
    bars = "permutation importance" if importance else "mean |contribution|"
    return ('<div class="card"><h2>What the candidate relies on</h2><p class="muted">on golden: '
            "permutation importance (drop in the gate metric when a feature is shuffled) and "
            "mean |contribution| to the raw score along the trees' paths (what POST /explain "
            f"answers per row); bars: {bars}</p>" + _table(headers, rows, {1, 2}) + "</div>")


def _numbers(rows: list[dict[str, str]], column: str) -> dict[str, float]:
    """feature -> value of ``column`` ({} if the file lacks it or holds no number there)."""
    try:
        return {r["feature"]: float(r[column]) for r in rows if r.get("feature")}
    except (KeyError, TypeError, ValueError):
        return {}


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []


def _roc_svg(rows: list[dict[str, str]], series: list[tuple[str, str, str]]) -> str:
    """ROC curves as inline SVG: ``series`` of (column, label, style)."""
    size, pad = 240, 30
    paths = []
    for column, label, style in series:
        points = []
        for row in rows:
            try:
                x, y = float(row["fpr"]), float(row[column])
            except (KeyError, TypeError, ValueError):
                continue
            points.append(f"{pad + x * size:.1f},{pad + (1 - y) * size:.1f}")
        if points:
            paths.append(f'<polyline fill="none" {style} points="{" ".join(points)}">'
                         f"<title>{escape(label)}</title></polyline>")
    legend = "".join(
        f'<text x="{pad + size - 4}" y="{pad + size - 10 - 16 * i}" text-anchor="end" '
        f'font-size="11" {style.replace("stroke=", "fill=", 1)}>{escape(label)}</text>'
        for i, (_, label, style) in enumerate(reversed(series)))
    axes = (f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" '
            f'stroke="#c8d0db"/><line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" '
            f'stroke="#c8d0db" stroke-dasharray="4 4"/>'
            f'<text x="{pad + size / 2}" y="{pad + size + 22}" text-anchor="middle" '
            f'font-size="11" fill="#5f6b7a">false positive rate</text>'
            f'<text x="12" y="{pad + size / 2}" text-anchor="middle" font-size="11" '
            f'fill="#5f6b7a" transform="rotate(-90 12 {pad + size / 2})">true positive rate</text>')
    return (f'<svg class="roc" width="{size + 2 * pad}" height="{size + 2 * pad}" role="img" '
            f'aria-label="ROC curves">{axes}{"".join(paths)}{legend}</svg>')


def _confusion(rows: list[dict[str, str]], column: str) -> str:
    counts = {(a, p): 0 for a in ("0", "1") for p in ("0", "1")}
    for row in rows:
        key = (row.get("actual", ""), row.get(column, ""))
        if key in counts:
            counts[key] += 1
    cells = [[f"actual {a}", *(_fmt(counts[(a, p)]) for p in ("0", "1"))] for a in ("0", "1")]
    return _table(["", "predicted 0", "predicted 1"], cells, {1, 2})


def _curves_section(project: Project, champion: str | None) -> str:
    """The golden ROC and confusion of the candidate beside the champion's, drawn here
    (inline SVG and tables) from plots/evaluate/roc.csv and confusion.csv."""
    folder = project.plots / "evaluate"
    roc, confusion = _read_csv(folder / "roc.csv"), _read_csv(folder / "confusion.csv")
    if not roc and not confusion:
        return ""
    both = bool(roc) and "champion_tpr" in roc[0]
    series = [("tpr", "candidate", 'stroke="#2f6fde" stroke-width="2"')]
    if both:
        series.append(("champion_tpr", f"champion {champion or ''}".strip(),
                       'stroke="#a86400" stroke-width="2" stroke-dasharray="6 3"'))
    parts = [_roc_svg(roc, series)] if roc else []
    if confusion:
        tables = [f"<div><h3>Confusion: candidate</h3>{_confusion(confusion, 'predicted')}</div>"]
        if "champion_predicted" in confusion[0]:
            tables.append(f"<div><h3>Confusion: champion {escape(champion or '')}</h3>"
                          f"{_confusion(confusion, 'champion_predicted')}</div>")
        parts.append(f'<div class="pair">{"".join(tables)}</div>')
    note = "" if both else ('<p class="muted">the champion\'s curves appear once the evaluate '
                            "stage has scored a champion on these golden rows</p>")
    return (f'<div class="card"><h2>ROC and confusion (golden)</h2>{note}'
            f'{"".join(parts)}</div>')


def _slices_section(project: Project, gate: dict[str, Any]) -> str:
    """Per-slice gate metric of candidate and champion (plots/evaluate/slices.csv)."""
    rows = _read_csv(project.plots / "evaluate" / "slices.csv")
    metric = str(gate.get("metric") or "roc_auc")
    if not rows:
        return ""
    min_rows = float((gate.get("criteria") or {}).get("gate_min_slice_rows", 0))

    def num(text: str | None) -> float | None:
        try:
            return float(text) if text not in (None, "") else None
        except ValueError:
            return None

    out = []
    for row in sorted(rows, key=lambda r: (r.get("slice", ""), -(num(r.get("rows")) or 0))):
        n, cand = num(row.get("rows")), num(row.get(metric))
        champ = num(row.get(f"champion_{metric}"))
        judged = n is not None and n >= min_rows
        out.append([escape(row.get("slice", "")), f"<code>{escape(row.get('value', ''))}</code>",
                    _fmt(int(n)) if n is not None else "–", _fmt(cand), _fmt(champ),
                    _delta(metric, cand, champ) if judged
                    else '<span class="muted">too small</span>'])
    table = _table(["slice", "value", "rows", "candidate", "champion", "difference"], out[:40],
                   {2, 3, 4})
    return (f'<div class="card"><h2>Slices (golden, {escape(metric)})</h2><p class="muted">'
            f"slices under {int(min_rows):,} rows are not judged by the gate</p>{table}</div>")


def schedule_section(project: Project) -> str:
    """The scheduled monitor runs (nbp schedule): their health, the last runs, their logs."""
    found = schedule_health(project.root)
    if found is None:
        return ""

    def link(log: str) -> str:
        href = Path(os.path.relpath(project.root / log, project.reports)).as_posix()
        return f'<a href="{escape(href)}">{escape(Path(log).name)}</a>' if log else "–"

    kinds = {"ok": "pass", "alarms": "warn", "warnings": "warn", "skipped": "none"}
    rows = [[escape(r.start[:19].replace("T", " ")), _badge(kinds.get(r.status, "fail"), r.status),
             _fmt(r.exit), link(r.log)] for r in reversed(found.runs[-8:])]
    problems = []
    if found.failed:
        last = found.failed[-1]
        problems.append(_badge("fail", f"{len(found.failed)} failed") + f" last exit code "
                        f"{last.exit}, see {link(last.log)}")
    if found.missed_from is not None:
        problems.append(_badge("fail", "missed") + f" no run for {found.missed_periods:.1f} "
                        f"periods since {escape(found.missed_from.isoformat()[:19])} UTC")
    latest = next((r.log for r in reversed(found.runs) if r.log), "")
    state = "<br>".join(problems) or _badge("pass", "healthy")
    if found.running is not None:
        state += " " + _badge("none", f"running since {found.running.isoformat()[11:19]} UTC")
    return (f'<div class="card"><h2>Scheduled monitor runs</h2><p class="muted">every '
            f"{period_text(found.every)} (<code>nbp schedule</code>); latest log {link(latest)}"
            f"</p><p>{state}</p>{_table(['started (UTC)', 'status', 'exit', 'log'], rows)}</div>")


def _gate_first(keys: list[str], metric: str | None) -> list[str]:
    """``keys`` with the gate metric's entries first (golden before valid), the rest as given."""
    def rank(key: str) -> tuple[int, int]:
        leaf = key.rsplit(".", 1)[-1]
        if metric and leaf == metric:
            return (0, 0 if key.startswith("golden") else 1)
        return (1, 0)
    return sorted(keys, key=rank)


def _ran(html_path: Path) -> str:
    """When and how long the stage ran, from the run record in its page."""
    record = read_run_record(html_path)
    if record is None:
        return '<span class="when">no run record (run it again with this nbp)</span>'
    when = record["started"][:16].replace("T", " ")
    return (f'<span class="when">ran {escape(when)} UTC in {float(record["seconds"]):,.1f} s'
            + (f' at <code>{escape(str(record["git"]))}</code>' if record.get("git") else "")
            + "</span>")


def _stage_card(project: Project, name: str, params: dict[str, Any],
                previous: PreviousRun | str, gate_metric: str | None) -> str:
    html_path = project.reports / f"{name}.html"
    if html_path.is_file():
        link = f'<a class="stage-link" href="{escape(name)}.html">executed notebook &rarr;</a>'
        status = _ran(html_path)
    else:
        link, status = "", _badge("none", "not run")
    values = flatten(read_json(project.metrics / f"{name}.json"))
    old = (previous.metrics.get(f"metrics/{name}.json") or {}) if isinstance(
        previous, PreviousRun) else {}
    rows = [[f"<code>{escape(k)}</code>", _fmt(values[k]), _fmt(old.get(k)),
             _delta(k, values[k], old.get(k))]
            for k in _gate_first(list(values), gate_metric)]
    metrics = _table(["metric", "this run", "previous (HEAD)", "change"], rows, {1, 2, 3}) if rows \
        else '<p class="muted">no metrics recorded</p>'
    was = previous.params(name) if isinstance(previous, PreviousRun) else None
    current = flatten(params)
    prow = []
    for key in sorted(set(current) | set(was or {})):
        value = current.get(key)
        mark = ""
        if was is not None and (key not in was or was[key] != value):
            before = _fmt(was[key]) if key in was else "not set"
            mark = f' <span class="badge warn">was {escape(before)}</span>'
        prow.append([f"<code>{escape(key)}</code>", escape(_fmt(value)) + mark])
    ptable = _table(["param", "value"], prow) if prow else '<p class="muted">no params</p>'
    return (f'<div class="card"><h2>{escape(name)} {status}{link}</h2><div class="two">'
            f"<div><h3>Metrics</h3>{metrics}</div><div><h3>Params</h3>{ptable}</div></div></div>")


def _stages(project: Project) -> dict[str, dict[str, Any]]:
    """Stage name -> its params as dvc.lock recorded them (params.yaml sections if never run);
    for a factory's segment, the stages run per segment (foreach/matrix), else the others."""
    spec = yamlio.read(project.dvc_yaml, NbpipelineError) or {}
    lock = read_lock(project)
    try:
        params_yaml = yamlio.read(project.params_yaml, NbpipelineError) or {}
    except NbpipelineError:  # reported by `nbp check` and `nbp run`; the index still builds
        params_yaml = {}
    stages = {}
    for name, stage in (spec.get("stages") or {}).items():
        per_segment = generates_stages(stage)
        if per_segment != bool(project.segment):
            continue  # a factory's stage runs per segment: on its segment's page
        locked = (lock.get(f"{name}@{project.segment}" if project.segment else name) or {}
                  ).get("params", {}).get("params.yaml")  # a factory's segment: train@north
        if locked is None:
            locked = {}
            for key in stage.get("params", []) if isinstance(stage, dict) else []:
                if isinstance(key, str) and key.split(".")[0] in params_yaml:
                    locked[key] = flatten(params_yaml).get(key, params_yaml.get(key))
        stages[name] = locked
    return stages


def stages_section(project: Project, gate_metric: str | None, *,
                   compare_previous: bool = True) -> str:
    """The stage cards: each stage's run, metrics and params against the previous run."""
    previous = previous_run(project) if compare_previous else "not compared"
    prev_note = ""
    if isinstance(previous, str):
        prev_note = f'<p class="muted">previous run: not available ({escape(previous)})</p>'
    cards = "".join(_stage_card(project, name, params, previous, gate_metric)
                    for name, params in _stages(project).items())
    if not cards:
        return ""  # a factory whose stages all run per segment
    return f'<h2 style="font-size:16px;margin:8px 0 12px">Stages</h2>{prev_note}{cards}'


def build_index(project: Project, *, compare_previous: bool = True) -> Path:
    """Write reports/index.html (a factory's segment: reports/<segment>/index.html) and
    return its path."""
    try:
        gate, gate_problem = read_gate(project.metrics / GATE_FILE, "metrics/gate.json"), ""
    except GateError as exc:
        gate, gate_problem = None, str(exc)
    decision = dict(gate.raw or {}) if gate is not None else {}  # metrics, criteria as written
    reg = Registry(project.registry)
    metric = gate.metric if gate is not None else None
    body = (
        f'{_gate_section(gate, gate_problem, reg)}<div class="grid"><div>'
        f"{_production_section(reg)}{_slices_section(project, decision)}</div>"
        f"<div>{_curves_section(project, gate.champion_version if gate else None)}"
        f"{_importance_section(project)}"
        f"{examples_card(read_examples(project.plots / 'evaluate'))}</div></div>"
        f"{_champion_section(project, decision, reg)}"
        f"{schedule_section(project)}"
        f"{stages_section(project, metric, compare_previous=compare_previous)}"
    )
    return write_page(project, body)


def write_page(project: Project, body: str, title: str = "Pipeline review") -> Path:
    """The page ``body`` in the review template, as reports/[<segment>/]index.html."""
    rev = git_output(project.root, "rev-parse", "--short", "HEAD")
    meta = f"project <code>{escape(project.root.name)}</code>" + (
        f" &middot; git <code>{escape(rev)}</code>" if rev else "")
    if project.segment:
        meta += (f" &middot; segment <code>{escape(project.segment)}</code> &middot; "
                 '<a href="../index.html">all segments</a>')
    html = files("nbpipeline.report").joinpath("templates/index.html").read_text("utf-8")
    template = Template(html)
    page = template.substitute(
        title=escape(title), meta=meta, body=body,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    target = project.reports / INDEX
    write_text_atomic(target, page)
    return target
