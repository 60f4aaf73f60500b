"""The review page: ``reports/index.html`` from the pipeline's outputs.

One self-contained HTML file (inline CSS, no scripts, no external assets) linking every
stage's executed notebook (``reports/<stage>.html``) with its params and metrics, the gate
decision, the candidate against the production champion, the change against the previous
run (``dvc metrics diff`` / ``dvc params diff`` against git HEAD) and the registry's
recent events.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from html import escape
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from nbpipeline import yamlio
from nbpipeline.errors import GateError, NbpipelineError
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.project import Project, write_text_atomic
from nbpipeline.release.gate import GATE_FILE, GateDecision, read_gate
from nbpipeline.release.lineage import read_lock
from nbpipeline.release.registry import ModelVersion, Registry

__all__ = ["build_index", "previous_run_diff"]

INDEX = "index.html"
LOWER_IS_BETTER = ("log_loss", "brier", "latency")
HIGHER_IS_BETTER = ("roc_auc", "average_precision", "accuracy", "precision", "recall", "f1",
                    "roi")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return "–" if value is None else str(value)


def _delta(name: str, new: Any, old: Any) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (new, old))
    if not numbers:
        return '<span class="same">–</span>'
    diff = float(new) - float(old)
    if abs(diff) < 1e-12:
        return '<span class="same">=</span>'
    leaf = name.rsplit(".", 1)[-1]
    if any(k in leaf for k in LOWER_IS_BETTER):
        kind = "up" if diff < 0 else "down"
    elif any(k in leaf for k in HIGHER_IS_BETTER):
        kind = "up" if diff > 0 else "down"
    else:
        kind = "same"  # a count or a chosen value: neither good nor bad
    return f'<span class="{kind}">{diff:+.4f}</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>"
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(kind: str, text: str) -> str:
    return f'<span class="badge {kind}">{escape(text)}</span>'


def _dvc(project: Project, *args: str) -> dict[str, Any] | str:
    """Run a dvc command that prints JSON; its parsed output, or why it failed."""
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    try:
        out = subprocess.run([exe, *args, "--json"], cwd=project.root, capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"dvc could not run ({exc})"
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        return lines[-1] if lines else f"dvc exited {out.returncode}"
    try:
        data = json.loads(out.stdout or "{}")
    except ValueError:
        return "dvc printed no JSON"
    return data if isinstance(data, dict) else {}


def previous_run_diff(project: Project) -> tuple[dict[str, Any] | str, dict[str, Any] | str]:
    """(metrics diff, params diff) of the workspace against git HEAD, as DVC computes them."""
    if not (project.root / ".dvc").is_dir():
        reason = "not a DVC repository (no .dvc/)"
        return reason, reason
    with ThreadPoolExecutor(2) as pool:  # each dvc start-up costs seconds: run both at once
        metrics = pool.submit(_dvc, project, "metrics", "diff", "--all")
        params = pool.submit(_dvc, project, "params", "diff")
        return metrics.result(), params.result()


# ----------------------------------------------------------------------------- sections
def _gate_section(gate: GateDecision | None, problem: str = "") -> str:
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
    hint = ("<code>nbp promote</code> will register it" if gate.passed else
            "<code>nbp promote</code> will refuse it (override: <code>--force --reason</code>)")
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
    candidate_meta = _read_json(project.root / "models" / "candidate" / "metadata.json")
    if champion is None:
        return ('<div class="card"><h2>Candidate vs champion</h2><p class="muted">No champion yet: '
                "the gate applied the first-model criteria.</p></div>")
    cand = _flat(gate.get("metrics") or {})
    same_golden = _flat(gate.get("champion_metrics") or {}) if (
        gate.get("champion_version") == champion.version) else {}
    champ = {**_flat(champion.metrics), **same_golden}
    rows = [[f"<code>{escape(k)}</code>", _fmt(cand.get(k)), _fmt(champ.get(k)),
             _delta(k, cand.get(k), champ.get(k))]
            for k in sorted(set(cand) | set(champ)) if not k.endswith(".rows")]
    metrics = _table(["metric", "candidate", f"champion {champion.version}", "difference"], rows,
                     {1, 2, 3})

    def params(meta: dict[str, Any]) -> dict[str, Any]:
        return _flat(meta.get("search", {}).get("best_params") or meta.get("params", {}))

    cp, hp = params(candidate_meta), params(champion.metadata)
    prow = [[f"<code>{escape(k)}</code>", escape(_fmt(cp.get(k))), escape(_fmt(hp.get(k)))]
            for k in sorted(set(cp) | set(hp)) if cp.get(k) != hp.get(k)]
    ptable = _table(["param", "candidate", "champion"], prow) if prow else (
        '<p class="muted">same parameters</p>')
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
            f'<div class="grid"><div>{metrics}</div><div><h3>Parameters that differ</h3>{ptable}'
            f"<h3>Data versions</h3>{_table(['split', 'candidate', 'champion', ''], drow)}"
            f"{links}</div></div></div>")


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
    path = project.plots / "evaluate" / "importance.csv"
    if not path.is_file():
        return ""
    import csv

    with open(path, encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("feature")]
    try:
        values = [(r["feature"], float(r["importance"])) for r in rows]
    except (KeyError, ValueError):
        return ""
    values.sort(key=lambda fv: -fv[1])
    top = max((v for _, v in values), default=0.0) or 1.0
    bars = [[f"<code>{escape(f)}</code>", f"{v:.4f}",
             f'<div class="bar" style="width:{max(0.0, v) / top * 100:.0f}%"></div>']
            for f, v in values[:15]]
    headers = ["feature", "importance", '<span style="display:inline-block;width:180px"></span>']
    return ('<div class="card"><h2>What the candidate relies on</h2><p class="muted">permutation '
            "importance on golden (drop in the gate metric when a feature is shuffled)</p>"
            + _table(headers, bars, {1}) + "</div>")


def _slices_section(project: Project, gate: dict[str, Any]) -> str:
    """Per-slice gate metric of candidate and champion (plots/evaluate/slices.csv)."""
    path = project.plots / "evaluate" / "slices.csv"
    metric = str(gate.get("metric") or "roc_auc")
    if not path.is_file():
        return ""
    import csv

    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
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


def _stage_card(project: Project, name: str, params: dict[str, Any],
                metrics_diff: dict[str, Any] | str, params_diff: dict[str, Any] | str) -> str:
    html_path = project.reports / f"{name}.html"
    if html_path.is_file():
        when = datetime.fromtimestamp(html_path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
        link = f'<a class="stage-link" href="{escape(name)}.html">executed notebook &rarr;</a>'
        status = f'<span class="when">ran {when}</span>'
    else:
        link, status = "", _badge("none", "not run")
    metric_file = project.metrics / f"{name}.json"
    values = _flat(_read_json(metric_file))
    old: dict[str, Any] = {}
    if isinstance(metrics_diff, dict):
        for key, entry in (metrics_diff.get(f"metrics/{name}.json") or {}).items():
            old[key] = entry.get("old") if isinstance(entry, dict) else None
    rows = [[f"<code>{escape(k)}</code>", _fmt(v), _fmt(old.get(k)), _delta(k, v, old.get(k))]
            for k, v in values.items()]
    metrics = _table(["metric", "this run", "previous (HEAD)", "change"], rows, {1, 2, 3}) if rows \
        else '<p class="muted">no metrics recorded</p>'
    changed = {}
    if isinstance(params_diff, dict):
        changed = {k: v for k, v in (params_diff.get("params.yaml") or {}).items()
                   if k.split(".")[0] in params or k in params}
    prow = []
    for key, value in _flat(params).items():
        was = changed.get(key)
        mark = f' <span class="badge warn">was {escape(_fmt(was.get("old")))}</span>' if was else ""
        prow.append([f"<code>{escape(key)}</code>", escape(_fmt(value)) + mark])
    ptable = _table(["param", "value"], prow) if prow else '<p class="muted">no params</p>'
    return (f'<div class="card"><h2>{escape(name)} {status}{link}</h2><div class="two">'
            f"<div><h3>Metrics</h3>{metrics}</div><div><h3>Params</h3>{ptable}</div></div></div>")


def _stages(project: Project) -> dict[str, dict[str, Any]]:
    """Stage name -> its params as dvc.lock recorded them (params.yaml sections if never run)."""
    spec = yamlio.read(project.dvc_yaml, NbpipelineError) or {}
    lock = read_lock(project)
    try:
        params_yaml = yamlio.read(project.params_yaml, NbpipelineError) or {}
    except NbpipelineError:  # reported by `nbp check` and `nbp run`; the index still builds
        params_yaml = {}
    stages = {}
    for name, stage in (spec.get("stages") or {}).items():
        locked = (lock.get(name) or {}).get("params", {}).get("params.yaml")
        if locked is None:
            locked = {}
            for key in stage.get("params", []) if isinstance(stage, dict) else []:
                if isinstance(key, str) and key.split(".")[0] in params_yaml:
                    locked[key] = _flat(params_yaml).get(key, params_yaml.get(key))
        stages[name] = locked
    return stages


def build_index(project: Project, *, compare_previous: bool = True) -> Path:
    """Write reports/index.html and return its path."""
    try:
        gate, gate_problem = read_gate(project.metrics / GATE_FILE, "metrics/gate.json"), ""
    except GateError as exc:
        gate, gate_problem = None, str(exc)
    decision = dict(gate.raw or {}) if gate is not None else {}  # metrics, criteria as written
    reg = Registry(project.registry)
    stages = _stages(project)
    metrics_diff, params_diff = (previous_run_diff(project) if compare_previous
                                 else ("not compared", "not compared"))
    prev_note = ""
    if isinstance(metrics_diff, str):
        prev_note = (f'<p class="muted">previous run: not available ({escape(metrics_diff)})</p>')
    cards = "".join(_stage_card(project, name, params, metrics_diff, params_diff)
                    for name, params in stages.items())
    body = (
        f'{_gate_section(gate, gate_problem)}<div class="grid"><div>'
        f"{_production_section(reg)}{_slices_section(project, decision)}</div>"
        f"<div>{_importance_section(project)}</div></div>"
        f"{_champion_section(project, decision, reg)}"
        f'<h2 style="font-size:16px;margin:8px 0 12px">Stages</h2>{prev_note}'
        f"{cards}"
    )
    rev = git_output(project.root, "rev-parse", "--short", "HEAD")
    meta = f"project <code>{escape(project.root.name)}</code>" + (
        f" &middot; git <code>{escape(rev)}</code>" if rev else "")
    html = files("nbpipeline.report").joinpath("templates/index.html").read_text("utf-8")
    template = Template(html)
    page = template.substitute(
        title="Pipeline review", meta=meta, body=body,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    target = project.reports / INDEX
    write_text_atomic(target, page)
    return target
