"""The canary against the champion on live outcomes: difference, confidence, verdict.

While a canary serves, every labelled decision of the canary and of the champion (in the
windows the canary served, so both arms saw the same traffic) is one draw from its arm.
:func:`compare` gives, per window and overall, the difference canary - champion in the gate
metric (the one evaluate's gate judged the canary by, read from its registry entry) and in
ROI (percentage points, from ``monitor.value_model``), each with a two-sided
``1 - ab_alpha`` percentile bootstrap interval, and the number of outcomes still needed to
detect a difference of ``ab_min_effect`` with probability ``ab_power``.

The bootstrap resamples each arm's outcomes with replacement ``RESAMPLES`` times, from a
fixed seed, so a report re-run on the same log is byte-identical. It works on the grouped
counts the scan already holds (outcome x decision x probability bin, the sufficient
statistics of the binned ROC AUC, the confusion matrix and ROI): drawing n rows with
replacement from them is one multinomial draw of n, so it costs the same for 100 or
1,000,000 outcomes. (Why a bootstrap and not a two-sample test: docs/monitor.md.)

The verdict (:func:`decide`): the gate metric decides, ROI can veto. ``promote`` when the
interval of the gate-metric difference lies above 0 (better) and ROI is not significantly
worse; ``roll back`` when it lies below 0, when ROI is significantly worse, or when the
outcomes the power asks for are in and no gain was shown; otherwise ``keep collecting``
(also while an arm has fewer than ``min_feedback`` outcomes). With ``canary_auto`` the
monitor carries it out (:func:`carry_out`) and records an ``ab_verdict`` event with the
figures; without it the verdict comes with the exact command to run.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from nbpipeline.errors import RegistryError
from nbpipeline.monitor.actions import ACTOR, Action
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.quality import binned_auc_many
from nbpipeline.monitor.roi import roi_pct_many
from nbpipeline.monitor.scan import PROB_BINS, OutcomeGroups
from nbpipeline.release.gate import DEFAULT_CRITERIA, LOWER_IS_BETTER
from nbpipeline.release.registry import AB_VERDICT, ProductionState, Registry

RESAMPLES = 2000
SEED = 20130101
CELLS = (2, 2, PROB_BINS)  # outcome x decision x probability bin
METRICS = ("roc_auc", "accuracy", "precision", "recall", "f1", "brier")
PROMOTE, ROLL_BACK, COLLECT = "promote", "roll back", "keep collecting"


@dataclass
class Arm:
    """One arm's labelled decisions: counts and summed squared errors per cell."""

    count: np.ndarray  # CELLS
    brier: np.ndarray  # CELLS

    @property
    def n(self) -> int:
        return int(self.count.sum())

    def add(self, other: Arm) -> Arm:
        return Arm(self.count + other.count, self.brier + other.brier)


def empty_arm() -> Arm:
    return Arm(np.zeros(CELLS), np.zeros(CELLS))


def arms(groups: OutcomeGroups, version: str, role: str) -> dict[int, Arm]:
    """Per window, the labelled decisions ``version`` made in ``role``."""
    mask = (np.asarray(groups.version) == version) & (np.asarray(groups.role) == role)
    out: dict[int, Arm] = {}
    for window in np.unique(groups.window[mask]).tolist():
        pick = mask & (groups.window == window)
        arm = empty_arm()
        cell = (groups.outcome[pick], groups.decision[pick], groups.prob_bin[pick])
        np.add.at(arm.count, cell, groups.count[pick])
        np.add.at(arm.brier, cell, groups.brier_sum[pick])
        out[int(window)] = arm
    return out


def metric_values(count: np.ndarray, brier_mean: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of each of [k, *CELLS] count arrays (NaN where undefined)."""
    tp, fn = count[:, 1, 1].sum(-1), count[:, 1, 0].sum(-1)
    fp, tn = count[:, 0, 1].sum(-1), count[:, 0, 0].sum(-1)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)

    if metric == "roc_auc":
        return binned_auc_many(count[:, 1].sum(1), count[:, 0].sum(1))
    return {
        "accuracy": lambda: ratio(tp + tn, tp + tn + fp + fn),
        "precision": lambda: ratio(tp, tp + fp),
        "recall": lambda: ratio(tp, tp + fn),
        "f1": lambda: ratio(2 * tp, 2 * tp + fp + fn),
        "brier": lambda: ratio((count * brier_mean).sum((1, 2, 3)), tp + tn + fp + fn),
    }[metric]()


def roi_values(count: np.ndarray, cfg: MonitorConfig) -> np.ndarray:
    """ROI % of each of [k, *CELLS] count arrays."""
    outcomes = {"tp": count[:, 1, 1], "fn": count[:, 1, 0], "fp": count[:, 0, 1],
                "tn": count[:, 0, 0]}
    return roi_pct_many({k: v.sum(-1) for k, v in outcomes.items()}, cfg.value_model,
                        cfg.cost_per_prediction)


def resample(arm: Arm, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """``resamples`` bootstrap copies of the arm's counts: [resamples, *CELLS]."""
    flat = arm.count.ravel()
    n = int(flat.sum())
    if n == 0:
        return np.zeros((resamples, *CELLS))
    return rng.multinomial(n, flat / n, size=resamples).reshape(resamples, *CELLS)


def outcomes_needed(se: float, n: int, *, alpha: float, power: float, min_effect: float) -> int:
    """Outcomes (all arms, at the current split) at which a two-sided test at ``alpha``
    detects a true difference of ``min_effect`` with probability ``power``, given the
    standard error ``se`` of the difference over the ``n`` outcomes so far (se ~ 1/sqrt(n)):
    ``n * ((z[1-alpha/2] + z[power]) * se / min_effect)**2``."""
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil(n * (z * se / min_effect) ** 2)


def _interval(diffs: np.ndarray, alpha: float) -> tuple[float, float, float]:
    finite = diffs[np.isfinite(diffs)]
    if len(finite) < len(diffs) * 0.9:  # an arm without both outcomes in many resamples
        return math.nan, math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), float(finite.std(ddof=1))


def compare_arms(champion: Arm, canary: Arm, metric: str, cfg: MonitorConfig,
                 seed: int | list[int] = SEED, resamples: int = RESAMPLES) -> dict[str, Any]:
    """Both arms' gate metric and ROI, their differences (canary - champion) with
    intervals, and the outcomes in each arm."""
    rng = np.random.default_rng(seed)
    a, b = resample(champion, rng, resamples), resample(canary, rng, resamples)
    observed = np.stack([champion.count, canary.count])
    mean_a = np.divide(champion.brier, champion.count, out=np.zeros(CELLS),
                       where=champion.count > 0)
    mean_b = np.divide(canary.brier, canary.count, out=np.zeros(CELLS), where=canary.count > 0)
    value = [metric_values(observed[i : i + 1], m, metric)[0]
             for i, m in enumerate((mean_a, mean_b))]
    roi = roi_values(observed, cfg)
    low, high, se = _interval(metric_values(b, mean_b, metric) - metric_values(a, mean_a, metric),
                              cfg.ab_alpha)
    roi_low, roi_high, roi_se = _interval(roi_values(b, cfg) - roi_values(a, cfg), cfg.ab_alpha)
    return {
        "champion_outcomes": champion.n, "canary_outcomes": canary.n,
        "champion": float(value[0]), "canary": float(value[1]),
        "difference": float(value[1] - value[0]), "low": low, "high": high, "se": se,
        "champion_roi_pct": float(roi[0]), "canary_roi_pct": float(roi[1]),
        "roi_difference": float(roi[1] - roi[0]), "roi_low": roi_low, "roi_high": roi_high,
    }


def decide(figures: dict[str, Any], metric: str, cfg: MonitorConfig,
           still_needed: int | None) -> tuple[str, str]:
    """The verdict and its reason (see the module docstring)."""
    n = min(figures["champion_outcomes"], figures["canary_outcomes"])
    if n < cfg.min_feedback:
        short = "canary" if figures["canary_outcomes"] <= figures["champion_outcomes"] else \
            "champion"
        return COLLECT, (f"the {short} has {n:,} outcomes; each arm needs min_feedback "
                         f"{cfg.min_feedback:,} before a verdict")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    low, high = sorted((sign * figures["low"], sign * figures["high"]))
    level = f"{1 - cfg.ab_alpha:.0%}"
    if math.isnan(low):
        return COLLECT, f"{metric} is undefined in too many resamples (one outcome class only)"
    if high < 0:
        return ROLL_BACK, f"the canary's {metric} is worse than the champion's ({level} interval)"
    if figures["roi_high"] < 0:
        return ROLL_BACK, f"the canary earns less than the champion (ROI, {level} interval)"
    if low > 0:
        return PROMOTE, f"the canary's {metric} is better than the champion's ({level} interval)"
    if still_needed == 0:
        return ROLL_BACK, (f"no gain of {cfg.ab_min_effect:g} in {metric} shown after the "
                           f"outcomes a power of {cfg.ab_power:.0%} needs; the champion stays")
    more = f"{still_needed:,} more outcomes" if still_needed is not None else "more outcomes"
    return COLLECT, (f"{more} to detect a {metric} difference of {cfg.ab_min_effect:g} with "
                     f"{cfg.ab_power:.0%} power")


@dataclass
class ABResult:
    """The comparison of the serving canary with the champion."""

    champion: str
    canary: str
    canary_fraction: float
    metric: str
    windows: pd.DataFrame  # one row per window the canary served
    overall: dict[str, Any]
    still_needed: int | None
    verdict: str
    reason: str
    alpha: float
    power: float
    min_effect: float
    done: str = ""  # what carry_out did (the registry events)

    @property
    def command(self) -> str | None:
        """The command that carries the verdict out (None while collecting)."""
        why = shlex.quote(f"A/B verdict: {self.figures_text()}")
        if self.verdict == PROMOTE:
            return f"nbp promote --version {self.canary} --reason {why}"
        if self.verdict == ROLL_BACK:
            return f"nbp rollback --canary --reason {why}"
        return None

    def figures_text(self) -> str:
        f, level = self.overall, f"{1 - self.alpha:.0%}"

        def figure(name: str, spec: str, unit: str = "") -> str:
            value = f[name]
            low, high = (f[name.replace("difference", end)] for end in ("low", "high"))
            if not math.isfinite(value):
                return "n/a"
            interval = (f" ({level} CI {low:{spec}} to {high:{spec}})"
                        if math.isfinite(low) else "")
            return f"{value:{spec}}{unit}{interval}"

        return (f"{self.metric} {figure('difference', '+.3f')}, ROI "
                f"{figure('roi_difference', '+.1f', ' points')} on "
                f"{f['canary_outcomes']:,} canary / {f['champion_outcomes']:,} champion outcomes")

    def sentence(self) -> str:
        """The console line: figures, verdict, reason, and what to run."""
        head = f"A/B canary {self.canary} vs champion {self.champion}: {self.figures_text()}"
        tail = f"; verdict: {self.verdict} - {self.reason}"
        if self.done:
            tail += f"; done: {self.done}"
        elif self.command:
            tail += f"; run `{self.command}`"
        return head + tail

    def event_data(self) -> dict[str, Any]:
        """What the registry's ``ab_verdict`` event records."""
        keep = ("difference", "low", "high", "roi_difference", "roi_low", "roi_high",
                "champion_outcomes", "canary_outcomes", "champion", "canary")
        return {"verdict": self.verdict, "canary": self.canary, "champion": self.champion,
                "metric": self.metric, "alpha": self.alpha,
                "figures": {k: _finite(self.overall[k]) for k in keep}}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the run summary's ``ab``)."""
        return {
            "champion": self.champion, "canary": self.canary,
            "canary_fraction": self.canary_fraction, "metric": self.metric,
            "overall": {k: _finite(v) for k, v in self.overall.items()},
            "still_needed": self.still_needed, "verdict": self.verdict, "reason": self.reason,
            "command": self.command, "sentence": self.sentence(),
            "windows": [{k: _finite(v) for k, v in row.items()}
                        for row in self.windows.to_dict("records")],
        }


def _finite(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


def gate_metric(state: ProductionState) -> str:
    """The metric evaluate's gate judged the canary by (its registry entry), else the
    champion's, if the monitor can compute it from outcomes; else the gate's default."""
    for mv in (state.canary, state.champion):
        metric = (mv.gate or {}).get("metric") if mv is not None else None
        if metric in METRICS:
            return str(metric)
    return str(DEFAULT_CRITERIA["gate_metric"])


def compare(groups: OutcomeGroups | None, state: ProductionState | None,
            cfg: MonitorConfig) -> ABResult | None:
    """Canary vs champion on the labelled decisions in ``groups``; None without a canary
    (or for a regression canary: no probabilities, no decisions to compare)."""
    if state is None or state.canary is None or state.champion is None or groups is None:
        return None
    if state.canary.metadata.get("task") == "regression":
        return None
    metric = gate_metric(state)
    champ_arms = arms(groups, state.champion.version, "champion")
    canary_arms = arms(groups, state.canary.version, "canary")
    rows = []
    champion, canary = empty_arm(), empty_arm()
    for window in sorted(canary_arms):
        a, b = champ_arms.get(window, empty_arm()), canary_arms[window]
        champion, canary = champion.add(a), canary.add(b)
        rows.append({"window": window, **compare_arms(a, b, metric, cfg, [SEED, window])})
    overall = compare_arms(champion, canary, metric, cfg)
    n = champion.n + canary.n
    still = (None if not math.isfinite(overall["se"]) or overall["se"] == 0 else max(
        0, outcomes_needed(overall["se"], n, alpha=cfg.ab_alpha, power=cfg.ab_power,
                           min_effect=cfg.ab_min_effect) - n))
    verdict, reason = decide(overall, metric, cfg, still)
    columns = ["window", *overall]
    return ABResult(state.champion.version, state.canary.version, state.canary_fraction,
                    metric, pd.DataFrame(rows, columns=columns), overall, still, verdict,
                    reason, cfg.ab_alpha, cfg.ab_power, cfg.ab_min_effect)


def carry_out(ab: ABResult, reg: Registry) -> list[Action]:
    """Promote or roll back the canary as ``ab`` says (if it still serves), and record an
    ``ab_verdict`` event with the figures."""
    state = reg.state()
    if ab.verdict == COLLECT or state.canary is None or state.canary.version != ab.canary:
        return []
    reason = f"A/B verdict {ab.verdict}: {ab.reason}; {ab.figures_text()}"
    try:
        if ab.verdict == PROMOTE:
            event = reg.promote(ab.canary, canary_fraction=None, reason=reason, actor=ACTOR)
            kind, detail = "promote", f"{ab.canary} is the champion now"
        else:
            event = reg.rollback(role="canary", reason=reason, actor=ACTOR)
            kind, detail = "rollback", f"now serving champion {ab.champion} only"
    except RegistryError as exc:
        return [Action("refused", f"A/B verdict {ab.verdict} refused: {exc}", "canary",
                       ab.canary)]
    record = reg.append_event(AB_VERDICT, reason=reason, actor=ACTOR, event_seq=event.seq,
                              **ab.event_data())
    ab.done = f"{detail} (registry events {event.seq} and {record.seq})"
    return [Action(kind, f"A/B verdict: {ab.reason}", "canary", ab.canary, event.seq,
                   f"{detail}; figures in registry event {record.seq}")]
