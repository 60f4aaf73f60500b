"""The verdict of one monitor run: impact apart from input drift, and what to do.

Input drift says the inputs moved; it does not say the model suffers. :func:`impact`
gathers, for the judged window, what does: output drift, performance estimated without
labels, realised performance on the outcomes received, and ROI; :func:`level` ranks the
run (``ok`` < ``warn`` < ``alarm``) and :func:`advice` ends the console summary with one
sentence on what to do.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from nbpipeline.monitor.alarms import Alarm
from nbpipeline.monitor.estimate import ESTIMATED_METRICS

if TYPE_CHECKING:
    import pandas as pd

    from nbpipeline.monitor.analysis import Analysis
    from nbpipeline.monitor.config import MonitorConfig

LEVELS = ("ok", "warn", "alarm")


def level(alarms: list[Alarm]) -> str:
    """``alarm`` if any alarm is one, ``warn`` if only inputs moved, else ``ok``."""
    return max((a.level for a in alarms), key=LEVELS.index, default="ok")


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def impact(
    analysis: Analysis, roi: pd.DataFrame, cfg: MonitorConfig, alarms: list[Alarm]
) -> dict[str, Any]:
    """JSON-ready figures of the judged window (None where there is nothing yet)."""
    window = analysis.judged_window(cfg.min_rows)
    shown = list(cfg.quality_limits)  # the metrics the user judges the model by
    out: dict[str, Any] = {
        "level": level(alarms), "window": window, "reference": analysis.reference_name,
        "output_psi": None, "output_psi_limit": cfg.output_psi_limit,
        "estimated": None, "baseline": {k: _number(v) for k, v in analysis.baseline.items()},
        "calibration": analysis.calibration.describe() if analysis.calibration else None,
        "realised": None, "roi_pct": None, "roi_window": None,
        "drifted_inputs": sorted({a.subject for a in alarms if a.kind == "input_drift"}),
    }
    drift = analysis.drift
    if window is not None and not drift.empty:
        output = drift[(drift["window"] == window) & (drift["kind"] == "output")]
        if len(output):
            out["output_psi"] = _number(output["psi"].iloc[0])
    est = analysis.estimated
    if window is not None and not est.empty and (est["window"] == window).any():
        row = est[est["window"] == window].iloc[0]
        out["estimated"] = {"predictions": int(row["predictions"]), "roi_pct": _number(
            row["roi_pct"]), **{m: _number(row[m]) for m in shown if m in ESTIMATED_METRICS}}
    trailing = analysis.trailing
    if not trailing.empty:
        enough = trailing[trailing["enough"]]
        if len(enough):
            row = enough.sort_values("role", key=lambda r: r != "champion").iloc[0]
            out["realised"] = {"version": row["version"], "role": row["role"],
                               "labelled": int(row["labelled"]),
                               **{m: _number(row.get(m)) for m in shown}}
    if len(roi):
        out["roi_pct"] = _number(roi["roi_pct"].iloc[-1])
        out["roi_window"] = int(roi["window"].iloc[-1])
    out["advice"] = (advice(alarms, out) if analysis.has_traffic
                     else "no traffic yet: nothing to judge.")
    return out


def _fix(alarm: Alarm, figures: dict[str, Any]) -> str:
    kind, metric = alarm.kind, alarm.subject
    if kind == "quality_low":
        return (f"realised {metric} {alarm.value:.3f} is below {alarm.limit:g}: roll back to "
                "the previous champion or retrain")
    if kind == "estimated_quality_low":
        base = (figures["baseline"] or {}).get(metric)
        fell = f" fell {base - alarm.value:.2f}" if base is not None else f" is {alarm.value:.3f}"
        moved = figures["drifted_inputs"]
        if moved:
            return (f"estimated {metric}{fell} while {', '.join(moved)} moved: check that feed "
                    "for a broken input first; if the inputs are right, retrain on recent data")
        return f"estimated {metric}{fell}: retrain on recent data"
    if kind == "roi_low":
        return (f"ROI {alarm.value:.1f}% is below {alarm.limit:g}%: review the decision "
                "threshold and the value model, or switch the model off")
    if kind == "output_drift":
        return (f"the model's outputs moved ({alarm.statistic} {alarm.value:.3f}): check the "
                "inputs; retrain if estimated or realised quality follows")
    if kind in ("quality_high", "roi_high"):
        return f"{alarm.statistic} is suspiciously high: check the feedback feed for leaked labels"
    if kind.startswith("schedule_"):  # the message says what to read and fix
        return alarm.message.rstrip(".")
    return f"{alarm.message.rstrip('.')}: check the server and the model"


def advice(alarms: list[Alarm], figures: dict[str, Any]) -> str:
    """One sentence on what to do, from the most serious finding."""
    order = ("quality_low", "estimated_quality_low", "roi_low", "output_drift", "error_rate",
             "latency", "decision_rate", "quality_high", "roi_high")
    serious = sorted((a for a in alarms if a.level == "alarm"),
                     key=lambda a: order.index(a.kind) if a.kind in order else len(order))
    if serious:
        return _fix(serious[0], figures) + "."
    if figures["drifted_inputs"]:
        return (f"inputs moved ({', '.join(figures['drifted_inputs'])}); model performance "
                "unchanged: no action.")
    return "no drift and no impact: no action."


def _fmt(value: float | None, spec: str = ".3f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _metrics(figures: dict[str, Any], skip: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items() if k not in skip)


def summary_lines(figures: dict[str, Any]) -> list[str]:
    """The console summary: quality, estimated quality, ROI, output drift, what to do."""
    real, est, base = figures.get("realised"), figures.get("estimated"), figures.get("baseline")
    quality = ("quality: no window has enough outcomes yet" if real is None else
               f"quality: {_metrics(real, ('version', 'role', 'labelled'))} on "
               f"{real['labelled']:,} outcomes ({real['version']} {real['role']})")
    if est is None:
        estimated = "estimated quality: n/a (no judged window, or no reference outcomes)"
    else:
        ref = ", ".join(f"{k} {_fmt(v)}" for k, v in (base or {}).items() if k in est)
        estimated = (f"estimated quality: {_metrics(est, ('predictions', 'roi_pct'))} over "
                     f"{est['predictions']:,} predictions of window {figures['window']}"
                     + (f" (on the reference: {ref})" if ref else ""))
    roi = ("ROI: no window has enough outcomes yet" if figures.get("roi_pct") is None else
           f"ROI: {figures['roi_pct']:+.1f}% (window {figures['roi_window']})")
    roi += f"; estimated {_fmt(est['roi_pct'] if est else None, '+.1f', '%')}"
    output = (f"output drift: PSI {_fmt(figures.get('output_psi'))} (limit "
              f"{figures['output_psi_limit']:g}) against {figures['reference'] or 'the reference'}")
    return [quality, estimated, roi, output, f"what to do: {figures['advice']}"]
