"""ipywidgets views for JupyterLab: a model browser and a monitoring view.

    from nbpipeline.widgets import model_browser, monitor_view
    model_browser()     # registry versions, roles, metrics, gate checks; compare two
    monitor_view()      # drift and quality over time (plots), the latest alarms, and the
                        # serving canary against the champion (A/B verdict)

Both read the project found from the working directory (or the ``root`` given); they
only read (the monitoring view analyses the log without alarming or acting).
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import ipywidgets as w

from nbpipeline.project import find_project
from nbpipeline.release.gate import LOWER_IS_BETTER


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to dotted keys (metrics, params)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
    elif prefix:
        out[prefix[:-1]] = data
    return out


def _fmt(value: Any) -> str:
    """A number as people read it: 26,251 (not 2.625e+04), 0.7100, 1,234.5; text escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    counted = isinstance(value, float) and value.is_integer() and abs(value) >= 10  # 804.0 rows
    if isinstance(value, int) or counted:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"
    return html.escape(str(value))


class Difference:
    """``b - a`` of a metric, shown signed and coloured: green if better, red if worse."""

    def __init__(self, metric: str, a: Any, b: Any) -> None:
        self.value = b - a
        lower_is_better = metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER
        self.better = (self.value < 0) if lower_is_better else (self.value > 0)

    def html(self) -> str:
        if self.value == 0:
            return "0"
        color = "#1a7f37" if self.better else "#cf222e"
        text = _fmt(self.value) if self.value < 0 else "+" + _fmt(self.value)
        return f"<span style='color:{color};font-weight:600'>{text}</span>"


def _cell(value: Any) -> str:
    return value.html() if isinstance(value, Difference) else _fmt(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(h)}</th>"
                   for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<td style='padding:2px 8px;text-align:{_align(c)}'>{_cell(c)}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


def _align(value: Any) -> str:
    numeric = isinstance(value, (int, float, Difference)) and not isinstance(value, bool)
    return "right" if numeric else "left"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


class ModelBrowser(w.VBox):
    """Registry versions with role, metrics and gate; pick one for details, two to compare."""

    def __init__(self, root: Path | str | None = None) -> None:
        from nbpipeline.release.registry import Registry

        project = find_project(root)
        self.registry = Registry(project.registry)
        versions = self.registry.versions()
        state = self.registry.state()
        self.roles = {
            mv.version: state.role(mv.version) or "" for mv in versions
        }
        if state.switched_off and state.champion is not None:
            self.roles[state.champion.version] = "champion (switched off)"
        names = [mv.version for mv in versions]
        self.summary = w.HTML(self._summary_html(versions), layout=w.Layout(overflow="auto"))
        self.pick = w.Dropdown(options=names, description="version",
                               value=names[-1] if names else None)
        self.detail = w.HTML()
        self.left = w.Dropdown(options=names, description="compare",
                               value=names[-2] if len(names) > 1 else (names[0] if names else None))
        self.right = w.Dropdown(options=names, description="with",
                                value=names[-1] if names else None)
        self.comparison = w.HTML()
        for control in (self.pick, self.left, self.right):
            control.observe(lambda _change: self.refresh(), names="value")
        title = w.HTML(f"<h3>Model registry: {html.escape(str(self.registry.path))}</h3>")
        super().__init__([title, self.summary, w.HBox([self.left, self.right]),
                          self.comparison, self.pick, self.detail])
        self.refresh()

    def _summary_html(self, versions: list[Any]) -> str:
        if not versions:
            return "<p>No registered models yet: run <code>nbp promote</code>.</p>"
        rows = []
        for mv in versions:
            metrics = _flat(mv.metrics)
            key = next((k for k in metrics if k.endswith("roc_auc")), None)
            gate = "–" if mv.gate is None else ("passed" if mv.gate.get("passed") else "FAILED")
            rows.append([mv.version, self.roles.get(mv.version, ""), mv.created[:19], mv.actor,
                         f"{key}={_fmt(metrics[key])}" if key else "–",
                         gate + (" (forced)" if mv.forced_reason else ""), mv.reason])
        return _table(["version", "role", "created", "actor", "metric", "gate", "reason"], rows)

    def refresh(self) -> None:
        """Redraw the detail and the comparison for the current choices."""
        if self.pick.value:
            mv = self.registry.get(self.pick.value)
            checks = (mv.gate or {}).get("checks", [])
            gate_rows = [[c.get("name"), "pass" if c.get("passed") else "FAIL", c.get("value"),
                          c.get("threshold")] for c in checks]
            metrics = sorted(_flat(mv.metrics).items())
            params = sorted(_flat(mv.metadata.get("params", {})).items())
            self.detail.value = (
                f"<h4>{mv.version} ({html.escape(self.roles.get(mv.version) or 'not serving')})"
                f"</h4><p>sha256 {mv.sha256[:12]} · {html.escape(mv.reason)}</p>"
                + "<b>metrics</b>" + _table(["metric", "value"], [list(m) for m in metrics])
                + "<b>gate</b>" + (_table(["check", "result", "value", "threshold"], gate_rows)
                                    if gate_rows else "<p>no gate recorded</p>")
                + "<b>params</b>" + _table(["param", "value"], [list(p) for p in params])
            )
        if self.left.value and self.right.value:
            a, b = self.registry.get(self.left.value), self.registry.get(self.right.value)
            self.comparison.value = compare_html(a, b)


def compare_html(a: Any, b: Any) -> str:
    """Metrics and params of two versions side by side, with the difference b - a."""
    rows = []
    ma, mb = _flat(a.metrics), _flat(b.metrics)
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        diff = Difference(key, va, vb) if numbers else ""
        rows.append([key, va, vb, diff])
    pa, pb = _flat(a.metadata.get("params", {})), _flat(b.metadata.get("params", {}))
    for key in sorted(set(pa) | set(pb)):
        if pa.get(key) != pb.get(key):
            rows.append([f"param {key}", pa.get(key), pb.get(key), "changed"])
    return _table(["", a.version, b.version, f"{b.version} - {a.version}"], rows)


class MonitorView(w.VBox):
    """Drift and quality over time from the prediction log, with the alarms they raise."""

    def __init__(self, root: Path | str | None = None, config: Any = None) -> None:
        from nbpipeline.monitor.config import MonitorConfig
        from nbpipeline.params import load_params

        project = find_project(root)
        self.root = project.root
        section = load_params(project.params_yaml).get("monitor") or {}
        self.config = config or MonitorConfig.from_params(dict(section))
        self.metric = w.Dropdown(options=["roc_auc", "accuracy", "precision", "recall", "brier",
                                          "outcome_rate"], value="roc_auc", description="quality")
        self.drift_plot = w.Image(format="png")
        self.quality_plot = w.Image(format="png")
        self.status = w.HTML()
        self.alarms = w.HTML()
        self.ab = w.HTML()
        self.button = w.Button(description="Refresh", icon="refresh")
        self.button.on_click(lambda _b: self.refresh())
        self.metric.observe(lambda _c: self._draw_quality(), names="value")
        super().__init__([
            w.HTML("<h3>Monitoring</h3>"), w.HBox([self.button, self.metric]), self.status,
            w.HBox([self.drift_plot, self.quality_plot]), self.alarms, self.ab,
        ])
        self.result: Any = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the log and redraw (no alarms are logged and no action is taken); the
        button shows a spinner and is disabled meanwhile."""
        self.button.disabled, self.button.description = True, "Refreshing…"
        self.button.icon = "spinner spin"
        try:
            self._refresh()
        finally:
            self.button.disabled, self.button.description = False, "Refresh"
            self.button.icon = "refresh"

    def _refresh(self) -> None:
        from nbpipeline.monitor.core import run_monitor

        self.result = run_monitor(self.config, self.root, act_on_alarms=False,
                                  write_summary=False, log_alarms=False)
        a = self.result.analysis
        if not a.has_traffic:
            self.status.value = "<p><b>no traffic yet</b>: the prediction log is empty</p>"
        else:
            self.status.value = (
                f"<p>{int(a.windows['rows'].sum()):,} predictions in {len(a.windows)} windows "
                f"of {self.config.window_size:,} {self.config.window_by}; reference: "
                f"{html.escape(self.result.reference_source)}</p>")
        self._draw_drift()
        self._draw_quality()
        # the alarm records as jsonl and the webhook carry them: the statistic that fired
        rows = [[x.level, x.kind, x.version or "", x.subject, x.statistic, x.value,
                 x.direction, x.limit, x.message] for x in self.result.alarms]
        self.alarms.value = ("<b>warnings and alarms</b>" + _table(
            ["level", "kind", "version", "subject", "statistic", "value", "direction",
             "limit", "message"], rows) if rows else "<p>no warnings or alarms</p>"
        ) + "<p>" + html.escape(self.result.impact.get("advice", "")) + "</p>"
        self.ab.value = ab_html(self.result.ab)

    def _draw_drift(self) -> None:
        from matplotlib.figure import Figure

        from nbpipeline.monitor import plots

        fig = Figure(figsize=(6, 3.5))
        plots.plot_drift(fig.add_subplot(), self.result.analysis, self.config)
        self.drift_plot.value = _png(fig)

    def _draw_quality(self) -> None:
        from matplotlib.figure import Figure

        from nbpipeline.monitor import plots

        if self.result is None:
            return
        fig = Figure(figsize=(6, 3.5))
        plots.plot_quality(fig.add_subplot(), self.result.analysis, self.config, self.metric.value)
        self.quality_plot.value = _png(fig)


def ab_html(ab: Any) -> str:
    """The canary against the champion: the verdict sentence, then per window and overall
    the outcomes, the gate metric of each arm and their difference with its interval."""
    if ab is None:
        return "<p>no canary serving: nothing to compare (A/B)</p>"
    level = f"{1 - ab.alpha:.0%}"

    def row(label: Any, f: dict[str, Any]) -> list[Any]:
        interval = ("–" if f["low"] is None or f["low"] != f["low"]
                    else f"{f['low']:+.3f} to {f['high']:+.3f}")
        roi = ("–" if f["roi_low"] is None or f["roi_low"] != f["roi_low"]
               else f"{f['roi_difference']:+.1f} ({f['roi_low']:+.1f} to {f['roi_high']:+.1f})")
        return [label, f["canary_outcomes"], f["champion_outcomes"], f["champion"],
                f["canary"], Difference(ab.metric, f["champion"], f["canary"]), interval, roi]

    rows = [row(int(r["window"]), r) for r in ab.windows.to_dict("records")]
    rows.append(row("all", ab.overall))
    header = ["window", "canary outcomes", "champion outcomes", f"champion {ab.metric}",
              f"canary {ab.metric}", "difference", f"{level} interval",
              f"ROI points ({level} interval)"]
    needed = ("n/a" if ab.still_needed is None else f"{ab.still_needed:,}")
    return (f"<b>canary {html.escape(ab.canary)} vs champion {html.escape(ab.champion)} "
            f"(A/B): {html.escape(ab.verdict)}</b><p>{html.escape(ab.sentence())}</p>"
            + _table(header, rows) + f"<p>outcomes still needed to detect a {ab.metric} "
            f"difference of {ab.min_effect:g} with {ab.power:.0%} power: {needed}</p>"
            f"<p>sequential boundary: {html.escape(ab.look)}</p>")


def model_browser(root: Path | str | None = None) -> ModelBrowser:
    """The registry browser widget (display it, or leave it last in a cell)."""
    return ModelBrowser(root)


def monitor_view(root: Path | str | None = None, config: Any = None) -> MonitorView:
    """The monitoring widget (display it, or leave it last in a cell)."""
    return MonitorView(root, config)
