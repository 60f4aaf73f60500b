"""The review page of a model factory: every segment on one page.

A model factory (docs/contracts.md) keeps each segment's reports, metrics, gate and
registry in a ``<segment>/`` folder of each. ``nbp report`` there writes each segment's
page (``reports/<segment>/index.html``, what ``nbp report --segment S`` writes) and
``reports/index.html``: one row per segment with its gate verdict, the gate metric of its
candidate and of its champion on the same golden rows, what serves (champion, canary, off
switch), the registry's last event and links to the segment's reports; then the scheduled
monitor runs and the stages that do not run per segment. In a project without segments it
writes the one review page (nbpipeline.report.index).

The segments are the ones the pipeline ran (``<stage>@<segment>`` in dvc.lock), that have a
gate (``metrics/<segment>/gate.json``) or a registry (``registry/<segment>/``): no DVC
import, so the page builds in the time of the plain one.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

from nbpipeline.errors import GateError, NbpipelineError
from nbpipeline.pipeline.stages import split_stage
from nbpipeline.project import Project
from nbpipeline.record import flatten
from nbpipeline.release.gate import GATE_FILE, GateDecision, read_gate
from nbpipeline.release.lineage import read_lock
from nbpipeline.release.registry import Registry, segment_registries
from nbpipeline.report.html import badge, delta, fmt, table
from nbpipeline.report.index import (
    INDEX,
    build_index,
    registered_version,
    schedule_section,
    stages_section,
    write_page,
)

__all__ = ["build_review", "factory_segments"]

# a segment's reports in pipeline order first, then any other by name
_REPORT_ORDER = ("data", "train", "evaluate", "monitor")


def factory_segments(project: Project) -> list[str]:
    """The segments of the model factory at ``project`` ([] for a project without)."""
    base = project.for_segment(None)
    found = {segment for name in read_lock(base) if (segment := split_stage(name)[1])}
    found.update(segment_registries(base.registry))
    if base.metrics.is_dir():
        found.update(d.name for d in base.metrics.iterdir() if (d / GATE_FILE).is_file())
    return sorted(found)


def build_review(project: Project, *, compare_previous: bool = True) -> Path:
    """`nbp report`: the review page of ``project`` (of its segment when it names one); in
    a model factory without a segment, every segment's page and the factory's. Returns the
    path of the page written last (reports/index.html, or the segment's)."""
    segments = [] if project.segment else factory_segments(project)
    if not segments:
        return build_index(project, compare_previous=compare_previous)
    for segment in segments:
        build_index(project.for_segment(segment), compare_previous=compare_previous)
    rows = [_segment_row(project.for_segment(segment)) for segment in segments]
    metrics = {row["metric"] for row in rows if row["metric"]}
    metric = metrics.pop() if len(metrics) == 1 else None
    body = (_segments_card(project, rows, metric)
            + schedule_section(project)
            + stages_section(project, metric, compare_previous=compare_previous))
    return write_page(project, body, f"Model factory review: {len(segments)} segments")


def _segment_row(seen: Project) -> dict[str, Any]:
    """One segment's gate, registry and reports, as the table shows them."""
    try:
        gate: GateDecision | None = read_gate(seen.metrics / GATE_FILE)
        problem = ""
    except GateError as exc:
        gate, problem = None, str(exc)
    raw = dict(gate.raw or {}) if gate is not None else {}
    metric = gate.metric if gate is not None else None
    key = f"golden.{metric}"
    row: dict[str, Any] = {"segment": seen.segment, "gate": gate, "metric": metric,
                           "candidate": flatten(raw.get("metrics") or {}).get(key),
                           "state": None, "registered": None, "champion_value": None,
                           "reports": _reports(seen)}
    try:
        reg = Registry(seen.registry)
        row["state"] = state = reg.state()
        version = registered_version(gate, reg) if gate is not None else None
        row["registered"] = version.version if version is not None else None
    except NbpipelineError as exc:
        problem = problem or str(exc)
        state = None
    if state is not None and state.champion is not None:  # scored on these golden rows, or
        scored = (raw.get("champion_metrics") if gate is not None  # as at its registration
                  and gate.champion_version == state.champion.version else None)
        row["champion_value"] = flatten(scored or state.champion.metrics).get(key)
    row["problem"] = problem
    return row


def _reports(seen: Project) -> list[str]:
    """The segment's report pages (file names in reports/<segment>/), its index first."""
    names = ([p.name for p in seen.reports.glob("*.html") if p.name != INDEX]
             if seen.reports.is_dir() else [])
    order = {f"{stage}.html": i for i, stage in enumerate(_REPORT_ORDER)}
    names.sort(key=lambda n: (order.get(n, len(order)), n))
    return [INDEX, *names] if (seen.reports / INDEX).is_file() else names


def _serving(state: Any) -> str:
    if state is None:
        return badge("fail", "registry unreadable")
    if state.switched_off:
        return badge("fail", "switched off")
    if state.champion is None:
        return badge("none", "no model")
    canary = (f" + canary <b>{state.canary.version}</b> at {state.canary_fraction:.0%}"
              if state.canary else "")
    return f"{badge('pass', 'serving')} <b>{state.champion.version}</b>{canary}"


def _last_event(state: Any) -> str:
    event = getattr(state, "last_event", None)
    if event is None:
        return '<span class="muted">none</span>'
    return (f"<code>{escape(event.kind)}</code> {escape(event.ts[:16].replace('T', ' '))}: "
            f"{escape(event.reason)}")


def _segments_card(project: Project, rows: list[dict[str, Any]], metric: str | None) -> str:
    cells = []
    for row in rows:
        gate, state, folder = row["gate"], row["state"], f"{row['segment']}/"
        if gate is None:
            verdict = badge("none", "not computed")
        else:
            verdict = badge("pass", "PASSED") if gate.passed else badge("fail", "FAILED")
            failed = ", ".join(c.name for c in gate.failed)
            verdict += f' <span class="muted">{escape(failed)}</span>' if failed else ""
        registered = (f' <span class="muted">{escape(row["registered"])}</span>'
                      if row["registered"] else "")
        champion = state.champion.version if state is not None and state.champion else None
        links = " &middot; ".join(
            f'<a href="{escape(folder + name)}">{escape(Path(name).stem)}</a>'
            for name in row["reports"]) or '<span class="muted">no reports yet</span>'
        cells.append([
            f"<b>{escape(row['segment'])}</b>", verdict, fmt(row["candidate"]) + registered,
            (f'{fmt(row["champion_value"])} <span class="muted">{escape(champion)}</span>'
             if champion else '<span class="muted">none</span>'),
            delta(metric or "", row["candidate"], row["champion_value"]) if champion else "",
            _serving(state), _last_event(state), links])
    problems = "".join(f'<p class="muted">{escape(r["segment"])}: {escape(r["problem"])}</p>'
                       for r in rows if r["problem"])
    shown = escape(metric or "gate metric")
    relative = os.path.relpath(project.reports, project.root)
    return (f'<div class="card"><h2>Segments ({len(rows)})</h2><p class="muted">one model per '
            f"segment, each gated, registered and served on its own (<code>nbp promote "
            f"--segment NAME</code>); golden {shown} of the candidate (and the version it was "
            "registered as) against the serving champion (scored on the same rows, else as "
            f"at its registration); each segment's page: <code>{escape(relative)}/&lt;segment"
            f"&gt;/index.html</code> (<code>nbp report --segment NAME</code>)</p>"
            + table(["segment", "gate", f"candidate {shown}", f"champion {shown}",
                     "difference", "serving", "last registry event", "reports"], cells,
                    {2, 3, 4})
            + problems + "</div>")
