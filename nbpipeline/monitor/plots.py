"""Matplotlib views of an Analysis (drawn on axes the caller owns: notebook or widget).

Each function draws one figure's worth onto ``ax`` and returns it; nothing here keeps
pyplot state, so the monitor notebook and the widgets can share them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from nbpipeline.monitor.analysis import Analysis
from nbpipeline.monitor.config import MonitorConfig


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _time_axis(ax: Any, analysis: Analysis, ticks: int = 8) -> None:
    """Label the window axis with each window's first prediction time (UTC), not its number."""
    windows = analysis.windows
    if windows.empty:
        return
    starts = pd.to_datetime(windows["start"].astype(float), unit="s", utc=True)
    span = starts.max() - starts.min()
    fmt = ("%Y-%m-%d" if span > pd.Timedelta(days=3) else
           "%m-%d %H:%M" if span > pd.Timedelta(hours=1) else "%H:%M:%S")
    step = max(1, -(-len(windows) // ticks))
    ax.set_xticks([int(x) for x in windows["window"].iloc[::step]],
                  [t.strftime(fmt) for t in starts.iloc[::step]], rotation=30, ha="right")
    ax.set_xlabel("window start (UTC)")


def drift_table(analysis: Analysis, value: str = "psi", last: int = 12) -> pd.DataFrame:
    """Feature x window table of ``value`` (psi, statistic, p_value) for the last windows."""
    if analysis.drift.empty:
        return pd.DataFrame()
    table = analysis.drift.pivot(index="feature", columns="window", values=value)
    return table[table.columns[-last:]]


def plot_drift(ax: Any, analysis: Analysis, cfg: MonitorConfig, top: int = 6) -> Any:
    """PSI over windows of the most drifted features, with the alarm limit."""
    table = drift_table(analysis, last=10_000)
    ax.set_title("Input/output drift (PSI) per window")
    if table.empty:
        ax.text(0.5, 0.5, "no traffic yet", ha="center", va="center", transform=ax.transAxes)
        return ax
    worst = table.max(axis=1).sort_values(ascending=False).index[:top]
    for feature in worst:
        ax.plot(table.columns, table.loc[feature], marker="o", label=feature)
    ax.axhline(cfg.psi_limit, color="red", linestyle="--", label=f"limit {cfg.psi_limit:g}")
    ax.set_ylabel("PSI (log scale)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(1e-3, float(table.min().min()) / 2))
    _time_axis(ax, analysis)
    ax.legend(fontsize="small", ncol=2)
    return ax


def plot_quality(ax: Any, analysis: Analysis, cfg: MonitorConfig, metric: str = "roc_auc") -> Any:
    """``metric`` on the received outcomes per window, one line per version and role."""
    ax.set_title(f"{metric} on feedback per window")
    q = analysis.quality
    if q.empty:
        ax.text(0.5, 0.5, "no feedback yet", ha="center", va="center", transform=ax.transAxes)
        return ax
    for (version, role), group in q.groupby(["version", "role"]):
        group = group[group["labelled"] >= min(cfg.min_feedback, group["labelled"].max())]
        ax.plot(group["window"], group[metric], marker="o", label=f"{version} ({role})")
    limits = cfg.quality_limits.get(metric)
    if limits:
        for limit in limits:
            ax.axhline(limit, color="red", linestyle="--")
    ax.set_ylabel(metric)
    _time_axis(ax, analysis)
    ax.legend(fontsize="small")
    return ax


def plot_roi(ax: Any, roi: pd.DataFrame, cfg: MonitorConfig,
             analysis: Analysis | None = None) -> Any:
    """ROI % per window with the off-switch threshold (windows labelled by their start time
    when ``analysis`` is given)."""
    ax.set_title("ROI per window (%)")
    if roi.empty:
        ax.text(0.5, 0.5, "no feedback yet", ha="center", va="center", transform=ax.transAxes)
        return ax
    colors = ["tab:red" if v < cfg.roi_min else "tab:green" for v in roi["roi_pct"]]
    ax.bar(roi["window"], roi["roi_pct"], color=colors)
    ax.axhline(cfg.roi_min, color="red", linestyle="--", label=f"roi_min {cfg.roi_min:g}%")
    ax.set_xlabel("window")
    ax.set_ylabel("ROI %")
    _integer_x(ax)
    if analysis is not None:
        _time_axis(ax, analysis)
    ax.legend(fontsize="small")
    return ax


def plot_estimated(ax: Any, analysis: Analysis, cfg: MonitorConfig, metric: str = "roc_auc") -> Any:
    """``metric`` estimated without labels per window, against the same estimate on the
    reference and the drop that alarms; realised figures (on feedback) as points."""
    ax.set_title(f"{metric}: estimated (no labels) and realised per window")
    est = analysis.estimated
    if est.empty or metric not in est:
        ax.text(0.5, 0.5, "no estimate (no traffic, or no probabilities)", ha="center",
                va="center", transform=ax.transAxes)
        return ax
    ax.plot(est["window"], est[metric], marker="o", label="estimated")
    if not analysis.quality.empty:
        for (version, role), group in analysis.quality.groupby(["version", "role"]):
            ax.plot(group["window"], group[metric], "x", label=f"realised {version} ({role})")
    base = analysis.baseline.get(metric)
    if base is not None:
        ax.axhline(base, color="grey", linestyle=":", label=f"reference {base:.3f}")
        ax.axhline(base - cfg.max_estimated_drop, color="red", linestyle="--",
                   label=f"alarm below {base - cfg.max_estimated_drop:.3f}")
    ax.set_ylabel(metric)
    _time_axis(ax, analysis)
    ax.legend(fontsize="small")
    return ax
