"""Turn the prediction log into tables: traffic, drift, quality, estimated quality and ROI.

:func:`analyze` is the monitor's one read of the log; everything the notebook shows, the
alarms judge and the widgets plot comes from its :class:`Analysis` (pandas DataFrames).
Drift is judged against the reference the settings choose: the given :class:`Reference`
(training rows or a slice of a table), or with ``reference: rolling`` the previous
``reference_windows`` windows of the log itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.drift import (
    chi_square_many,
    number_drift_many,
    pool_rare,
    psi_many,
    quantile_groups,
)
from nbpipeline.monitor.estimate import Calibration, baseline, estimate_table, fit_calibration
from nbpipeline.monitor.quality import OutcomeCounts, quality_metrics
from nbpipeline.monitor.reference import MISSING, Reference
from nbpipeline.monitor.roi import roi_figures
from nbpipeline.monitor.scan import (
    LATENCY_STEP_MS,
    PROB_BINS,
    CodeHistograms,
    OutcomeGroups,
    TrafficGroups,
    ValueGroups,
    WindowSpec,
    scan_log,
)


@dataclass
class Analysis:
    """Everything the monitor computed from the log (empty frames when there is no traffic)."""

    windows: pd.DataFrame  # one row per window
    traffic: pd.DataFrame  # one row per window x version x role
    drift: pd.DataFrame  # one row per window x monitored column
    quality: pd.DataFrame  # one row per window x version x role (labelled rows only)
    trailing: pd.DataFrame  # one row per version x role: latest >= min_feedback outcomes
    monitored: list[str]  # feature columns found in the log
    missing_features: list[str]  # model features with no column in the log
    # performance estimated without labels, per window (all model decisions)
    estimated: pd.DataFrame = field(default_factory=pd.DataFrame)
    baseline: dict[str, float] = field(default_factory=dict)  # the estimate on the reference
    calibration: Calibration | None = None
    reference_name: str = ""  # what drift was judged against, for messages
    outcomes: OutcomeGroups | None = None  # labelled decisions grouped (the A/B bootstrap)

    @property
    def has_traffic(self) -> bool:
        return not self.windows.empty

    def judged_window(self, min_rows: int) -> int | None:
        """The latest window with at least ``min_rows`` predictions (drift is judged there)."""
        ok = self.windows[self.windows["rows"] >= min_rows]
        return int(ok["window"].iloc[-1]) if len(ok) else None


def _traffic_tables(t: TrafficGroups) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.DataFrame({
        "window": t.window, "version": t.version, "role": t.role, "fallback": t.fallback,
        "lat_bin": t.latency_bin, "count": t.count, "lat_sum": t.latency_sum,
        "positive": t.positive, "ts_min": t.ts_min, "ts_max": t.ts_max, "decided": t.decided,
    })
    cols = ["window", "start", "end", "rows", "fallback_rows", "latency_mean_ms",
            "latency_p95_ms", "decision_rate", "fallback_rate"]
    if df.empty:
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=["version", "role", *cols])
    df["model_rows"] = df["decided"].where(df["fallback"] == 0, 0)  # decisions of a model
    df["model_positive"] = df["positive"].where(df["fallback"] == 0, 0)
    df["fallback_rows"] = df["count"].where(df["fallback"] == 1, 0)
    return _summarise(df, ["window"]), _summarise(df, ["window", "version", "role"])


def _summarise(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group: span, rows, fallbacks, mean and p95 latency, share of positive decisions."""
    g = df.groupby(keys)
    out = g.agg(start=("ts_min", "min"), end=("ts_max", "max"), rows=("count", "sum"),
                fallback_rows=("fallback_rows", "sum"), lat_sum=("lat_sum", "sum"),
                model_rows=("model_rows", "sum"), model_positive=("model_positive", "sum"))
    by_bin = df.groupby([*keys, "lat_bin"])["count"].sum().reset_index()
    by_bin["cum"] = by_bin.groupby(keys)["count"].cumsum()
    by_bin["total"] = by_bin.groupby(keys)["count"].transform("sum")
    p95 = by_bin[by_bin["cum"] >= 0.95 * by_bin["total"]].groupby(keys)["lat_bin"].first()
    out["latency_mean_ms"] = out["lat_sum"] / out["rows"]
    out["latency_p95_ms"] = (p95 + 1) * LATENCY_STEP_MS
    out["decision_rate"] = out["model_positive"] / out["model_rows"].where(out["model_rows"] > 0)
    out["fallback_rate"] = out["fallback_rows"] / out["rows"]
    out = out.drop(columns=["lat_sum", "model_rows", "model_positive"]).reset_index()
    out["rows"] = out["rows"].astype(int)
    out["fallback_rows"] = out["fallback_rows"].astype(int)
    return out


def _rolling(counts: np.ndarray, fixed: np.ndarray, n: int) -> np.ndarray:
    """Per window: the sum of the previous ``n`` windows' counts (``fixed`` for the first)."""
    before = np.vstack([np.zeros((1, counts.shape[1])), np.cumsum(counts, axis=0)])
    idx = np.arange(len(counts))
    summed = before[idx] - before[np.maximum(idx - n, 0)]
    empty = summed.sum(axis=1) == 0
    summed[empty] = fixed
    return summed


def _drift_table(
    ref: Reference, usable: list, hist: CodeHistograms, cfg: MonitorConfig
) -> pd.DataFrame:
    """One row per judged window and monitored column (all windows at once per column).

    A PSI above its limit flags drift only where the window's own test (KS, chi-square)
    has p < ``drift_pvalue``; categories too rare to be judged in a window are pooled
    (:func:`~nbpipeline.monitor.drift.pool_rare`): over few rows PSI is otherwise inflated
    by sampling noise alone.
    """
    cols = ["window", "feature", "kind", "rows", "psi", "statistic", "p_value", "test",
            "missing_ref", "missing_cur", "drifted"]
    frames = []
    for b in usable:
        cur, fixed = hist.counts[b.name].astype(float), ref.counts[b.name].astype(float)
        refc = (_rolling(cur, fixed, cfg.reference_windows) if cfg.reference == "rolling"
                else np.broadcast_to(fixed, cur.shape))
        missing = cur[:, MISSING] if b.kind != "output" else np.zeros(len(cur))
        ref_missing = refc[:, MISSING] if b.kind != "output" else np.zeros(len(cur))
        rows = cur[:, :MISSING].sum(axis=1) + missing
        if b.kind == "category":
            n = len(b.categories) + 1
            ref_all, cur_all = pool_rare(np.column_stack([refc[:, :n], ref_missing]),
                                         np.column_stack([cur[:, :n], missing]))
            value = psi_many(ref_all, cur_all)
            statistic, p_value = chi_square_many(ref_all, cur_all)
            drifted = ((value > cfg.psi_limit) & (p_value < cfg.drift_pvalue)) | (
                p_value < cfg.chi2_pvalue)
            test = "chi2"
        else:
            value, statistic, p_value = number_drift_many(
                refc[:, :MISSING], ref_missing, cur[:, :MISSING], missing,
                groups=quantile_groups(fixed[:MISSING]))
            limit = cfg.output_psi_limit if b.kind == "output" else cfg.psi_limit
            drifted = (value > limit) & (p_value < cfg.drift_pvalue)
            if b.kind == "number":
                drifted |= statistic > cfg.ks_limit
            test = "ks"
        ref_total = refc[:, :MISSING].sum(axis=1) + ref_missing
        frames.append(pd.DataFrame({
            "window": hist.windows.astype(int), "feature": b.name, "kind": b.kind,
            "rows": rows.astype(int), "psi": value, "statistic": statistic, "p_value": p_value,
            "test": test,
            "missing_ref": np.divide(ref_missing, ref_total, out=np.zeros_like(ref_total),
                                     where=ref_total > 0),
            "missing_cur": np.divide(missing, rows, out=np.zeros_like(rows), where=rows > 0),
            "drifted": drifted,
        })[rows >= cfg.min_rows])
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True).sort_values(["window", "feature"],
                                                            kind="stable")[cols]


def _outcome_counts(o: OutcomeGroups) -> dict[tuple[int, str, str], OutcomeCounts]:
    keys = list(zip(o.window.tolist(), o.version, o.role, strict=True))
    found: dict[tuple[int, str, str], OutcomeCounts] = {}
    for i, key in enumerate(keys):
        c = found.setdefault(key, OutcomeCounts())
        n, y, d = int(o.count[i]), int(o.outcome[i]), int(o.decision[i])
        if y and d:
            c.tp += n
        elif y:
            c.fn += n
        elif d:
            c.fp += n
        else:
            c.tn += n
        (c.pos_hist if y else c.neg_hist)[int(o.prob_bin[i])] += n
        c.brier_sum += float(o.brier_sum[i])
    return found


def _add_values(counts: dict[tuple[int, str, str], OutcomeCounts], v: ValueGroups) -> None:
    """Add a regression model's labelled predictions to ``counts``."""
    for i, key in enumerate(zip(v.window.tolist(), v.version, v.role, strict=True)):
        c = counts.setdefault(key, OutcomeCounts())
        c.values += int(v.count[i])
        c.error_sum += float(v.error_sum[i])
        c.squared_error_sum += float(v.squared_error_sum[i])
        c.absolute_error_sum += float(v.absolute_error_sum[i])
        c.outcome_sum += float(v.outcome_sum[i])
        c.outcome_squared_sum += float(v.outcome_squared_sum[i])


def _quality_row(key: tuple[int, str, str], c: OutcomeCounts, cfg: MonitorConfig) -> dict:
    return {
        "window": key[0], "version": key[1], "role": key[2],
        "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn,
        **quality_metrics(c), **roi_figures(c, cfg.value_model, cfg.cost_per_prediction),
    }


def _trailing(
    counts: dict[tuple[int, str, str], OutcomeCounts], cfg: MonitorConfig
) -> pd.DataFrame:
    """Per version and role: the latest windows merged until min_feedback outcomes are in."""
    rows = []
    for version, role in sorted({(k[1], k[2]) for k in counts}):
        keys = sorted((k for k in counts if k[1] == version and k[2] == role), reverse=True)
        total = OutcomeCounts()
        for k in keys:
            total = total.add(counts[k])
            if total.n >= cfg.min_feedback:
                break
        row = _quality_row((keys[0][0], version, role), total, cfg)
        row["first_window"] = k[0]
        row["enough"] = total.n >= cfg.min_feedback
        rows.append(row)
    return pd.DataFrame(rows)


def empty_analysis(ref: Reference | None = None) -> Analysis:
    """The analysis of a log with no traffic yet."""
    empty = pd.DataFrame()
    return Analysis(
        pd.DataFrame(columns=["window", "rows"]), empty,
        pd.DataFrame(columns=["window", "feature", "psi", "drifted"]), empty, empty,
        [], [],
    )


def analyze(
    cfg: MonitorConfig, ref: Reference, log_path: Path | str, since: float | None = None
) -> Analysis:
    """Scan the log at ``log_path`` (rows with ts >= ``since`` if given) and build the tables."""
    window = WindowSpec(cfg.window_by, cfg.window_size)
    scanned = scan_log(log_path, ref.binnings, window, since)
    if scanned is None:
        return empty_analysis(ref)
    usable, hist, outcomes, traffic = (
        scanned.binnings, scanned.codes, scanned.outcomes, scanned.traffic)
    windows, by_version = _traffic_tables(traffic)
    if windows.empty:
        return empty_analysis(ref)
    counts = _outcome_counts(outcomes)
    if scanned.values is not None:
        _add_values(counts, scanned.values)
    quality = pd.DataFrame([_quality_row(k, c, cfg) for k, c in sorted(counts.items())])
    usable_names = {b.name for b in usable}
    calibration, base = None, {}
    if ref.outputs is not None:
        calibration = fit_calibration(ref.outputs["probability"], ref.outputs["outcome"])
        base = baseline(ref.outputs["probability"], calibration)
    return Analysis(
        windows=windows,
        traffic=by_version,
        drift=_drift_table(ref, usable, hist, cfg),
        quality=quality,
        trailing=_trailing(counts, cfg) if counts else pd.DataFrame(),
        monitored=[b.name for b in ref.features if b.name in usable_names],
        missing_features=[b.name for b in ref.features if b.name not in usable_names],
        estimated=(estimate_table(scanned.predictions, calibration, cfg.value_model,
                                  cfg.cost_per_prediction)
                   if calibration is not None else pd.DataFrame()),
        baseline=base, calibration=calibration,
        reference_name=(f"the previous {cfg.reference_windows} windows"
                        if cfg.reference == "rolling" else ref.name),
        outcomes=outcomes,
    )


__all__ = ["Analysis", "analyze", "PROB_BINS"]
