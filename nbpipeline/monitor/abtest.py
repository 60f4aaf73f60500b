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

The verdict (:func:`decide`): the gate metric decides, ROI can veto. ``roll back`` when the
``1 - ab_alpha`` interval of the gate-metric difference lies below 0, when ROI is
significantly worse, or when the planned outcomes are in and no gain was shown; ``promote``
when the difference clears the sequential boundary below; otherwise ``keep collecting``
(also while an arm has fewer than ``min_feedback`` outcomes). With ``canary_auto`` the
monitor carries it out (:func:`carry_out`) and records an ``ab_verdict`` event with the
figures and the boundary; without it the verdict comes with the exact command to run.

Repeated looks (:func:`sequential`). The monitor looks at a canary on every run (every 15
minutes when scheduled); promoting at the first look whose fixed ``1 - ab_alpha`` interval
clears 0 would promote an equal canary far more often than ``ab_alpha/2`` (16% of 1,000
simulated ones looked at 20 times: bench/abtest.py). So a promote must clear a
group-sequential boundary of the O'Brien-Fleming type on the information fraction ``t = n /
planned`` (``planned``: the outcomes at which the final boundary detects ``ab_min_effect``
with ``ab_power``, from the measured standard error): ``|difference| / se > z[1 -
ab_alpha/4] / sqrt(min(t, 1))``, i.e. the two-sided interval ``difference +- z * se`` at
level ``2 Phi(z) - 1`` clears 0 (99.95% at t = 0.42, 97.5% at t = 1). It is the boundary
whose alpha-spending function ``alpha(t) = 2 - 2 Phi(z[1 - ab_alpha/4] / sqrt(t))``
(Lan-DeMets, O'Brien-Fleming type) is its exact crossing probability under *continuous*
monitoring (the reflection principle of Brownian motion), so it holds the false-promote rate
at ``ab_alpha/2`` for any number and timing of looks (in the normal limit, with the
information known): the monitor keeps no record of its past looks and needs none. Measured
with the information estimated: 2.8% +- 0.5% of the same 1,000 equal canaries; 3.5% +- 0.9%
of 400 looked at 100 times (naive: 21%). The boundary interval is normal-theory with the
bootstrap standard error, not a percentile one: a 99.99% percentile interval would need far
more than ``RESAMPLES`` resamples. Harm is judged on every look at the nominal level:
stopping for it can only lower the false-promote rate, and a false roll back keeps the
champion serving.
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
# what the ab_verdict event names as the promote boundary (module docstring)
METHOD = "O'Brien-Fleming-type alpha spending, continuous-monitoring boundary"


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
    if metric == "roc_auc":  # (adding the two decisions beats a strided sum 4 to 1)
        return binned_auc_many(count[:, 1, 0] + count[:, 1, 1], count[:, 0, 0] + count[:, 0, 1])
    totals = count.sum(-1)  # [k, outcome, decision]
    tp, fn, fp, tn = totals[:, 1, 1], totals[:, 1, 0], totals[:, 0, 1], totals[:, 0, 0]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)

    return {
        "accuracy": lambda: ratio(tp + tn, tp + tn + fp + fn),
        "precision": lambda: ratio(tp, tp + fp),
        "recall": lambda: ratio(tp, tp + fn),
        "f1": lambda: ratio(2 * tp, 2 * tp + fp + fn),
        "brier": lambda: ratio((count * brier_mean).sum((1, 2, 3)), tp + tn + fp + fn),
    }[metric]()


def roi_values(count: np.ndarray, cfg: MonitorConfig) -> np.ndarray:
    """ROI % of each of [k, *CELLS] count arrays."""
    totals = count.sum(-1)  # [k, outcome, decision]
    outcomes = {"tp": totals[:, 1, 1], "fn": totals[:, 1, 0], "fp": totals[:, 0, 1],
                "tn": totals[:, 0, 0]}
    return roi_pct_many(outcomes, cfg.value_model, cfg.cost_per_prediction)


def resample(count: np.ndarray, rng: np.random.Generator,
             resamples: int = RESAMPLES) -> np.ndarray:
    """``resamples`` bootstrap copies of each of [k, *CELLS] arms' counts:
    [k, resamples, *CELLS] (one multinomial draw of each arm's n per copy, over the cells
    some arm holds: an empty cell stays empty)."""
    flat = count.reshape(len(count), -1)
    held = flat.any(0)
    flat = flat[:, held]
    n = flat.sum(-1)
    p = np.divide(flat, n[:, None], out=np.full(flat.shape, 1 / max(1, flat.shape[1])),
                  where=n[:, None] > 0)
    out = np.zeros((len(flat), resamples, held.size))
    if held.any():
        out[..., held] = rng.multinomial(n.astype(np.int64)[:, None], p[:, None, :],
                                         size=(len(flat), resamples))
    return out.reshape(len(flat), resamples, *CELLS)


def outcomes_needed(se: float, n: int, *, alpha: float, power: float, min_effect: float) -> int:
    """Outcomes (all arms, at the current split) at which a two-sided test at ``alpha``
    detects a true difference of ``min_effect`` with probability ``power``, given the
    standard error ``se`` of the difference over the ``n`` outcomes so far (se ~ 1/sqrt(n)):
    ``n * ((z[1-alpha/2] + z[power]) * se / min_effect)**2``."""
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return math.ceil(n * (z * se / min_effect) ** 2)


def _intervals(diffs: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of [k, resamples] differences: the percentile interval (numpy's default,
    linear, over the finite values) and the bootstrap standard error; NaN for a row
    without both outcomes in many resamples (a metric undefined in over 10% of them)."""
    finite = np.isfinite(diffs)
    m = finite.sum(-1)
    ok = m >= diffs.shape[-1] * 0.9
    ranked = np.sort(diffs, axis=-1)  # NaN sorts last: row i's finite values are [:m[i]]
    rows, last = np.arange(len(diffs)), np.maximum(m - 1, 0)

    def quantile(q: float) -> np.ndarray:
        at = q * last
        below = np.floor(at).astype(int)
        lo, hi = ranked[rows, below], ranked[rows, np.minimum(below + 1, last)]
        return np.where(ok, lo + (hi - lo) * (at - below), np.nan)

    kept = np.where(finite & ok[:, None], diffs, np.nan)
    se = np.full(len(diffs), np.nan)
    se[ok] = np.nanstd(kept[ok], axis=-1, ddof=1)
    return quantile(alpha / 2), quantile(1 - alpha / 2), se


def _values(count: np.ndarray, brier_mean: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of [k, resamples, *CELLS] counts, with [k, *CELLS] mean squared errors:
    [k, resamples]."""
    k, resamples = count.shape[:2]
    flat = count.reshape(k * resamples, *CELLS)
    mean = np.broadcast_to(brier_mean[:, None], count.shape).reshape(flat.shape) \
        if metric == "brier" else brier_mean[0]
    return metric_values(flat, mean, metric).reshape(k, resamples)


def compare_many(champion: Arm, canary: Arm, metric: str, cfg: MonitorConfig,
                 seed: int | list[int] = SEED,
                 resamples: int = RESAMPLES) -> dict[str, np.ndarray]:
    """:func:`compare_arms` of k pairs of arms at once (``Arm`` arrays stacked as
    [k, *CELLS]): each figure an array of k (the sequential simulation's workhorse)."""
    rng = np.random.default_rng(seed)
    a, b = resample(champion.count, rng, resamples), resample(canary.count, rng, resamples)

    def brier_mean(arm: Arm) -> np.ndarray:
        return np.divide(arm.brier, arm.count, out=np.zeros(arm.count.shape),
                         where=arm.count > 0)

    mean_a, mean_b = brier_mean(champion), brier_mean(canary)
    value_a = _values(champion.count[:, None], mean_a, metric)[:, 0]
    value_b = _values(canary.count[:, None], mean_b, metric)[:, 0]
    roi_a, roi_b = roi_values(champion.count, cfg), roi_values(canary.count, cfg)
    low, high, se = _intervals(_values(b, mean_b, metric) - _values(a, mean_a, metric),
                               cfg.ab_alpha)
    k = len(champion.count)
    roi_low, roi_high, _ = _intervals(
        (roi_values(b.reshape(-1, *CELLS), cfg) - roi_values(a.reshape(-1, *CELLS), cfg))
        .reshape(k, resamples), cfg.ab_alpha)
    return {
        "champion_outcomes": champion.count.reshape(k, -1).sum(-1).astype(int),
        "canary_outcomes": canary.count.reshape(k, -1).sum(-1).astype(int),
        "champion": value_a, "canary": value_b, "difference": value_b - value_a,
        "low": low, "high": high, "se": se,
        "champion_roi_pct": roi_a, "canary_roi_pct": roi_b, "roi_difference": roi_b - roi_a,
        "roi_low": roi_low, "roi_high": roi_high,
    }


def compare_arms(champion: Arm, canary: Arm, metric: str, cfg: MonitorConfig,
                 seed: int | list[int] = SEED, resamples: int = RESAMPLES) -> dict[str, Any]:
    """Both arms' gate metric and ROI, their differences (canary - champion) with
    intervals, and the outcomes in each arm."""
    many = compare_many(Arm(champion.count[None], champion.brier[None]),
                        Arm(canary.count[None], canary.brier[None]), metric, cfg, seed,
                        resamples)
    return {k: (int(v[0]) if k.endswith("outcomes") else float(v[0]))
            for k, v in many.items()}


def boundary_z(information: float, alpha: float) -> float:
    """The z (difference / standard error) a promote needs at information fraction
    ``information`` = n / planned outcomes: ``z[1 - alpha/4] / sqrt(t)``, t capped at 1."""
    return NormalDist().inv_cdf(1 - alpha / 4) / math.sqrt(min(1.0, information))


def sequential(figures: dict[str, Any], cfg: MonitorConfig) -> dict[str, Any]:
    """The group-sequential look of :func:`compare_arms`' ``figures``: the planned
    outcomes (those the final boundary needs for ``ab_power``), the information fraction,
    and the promote boundary: its z, its two-sided interval level and that interval of the
    gate-metric difference (difference +- z * bootstrap standard error). NaN (and planned
    None) while the standard error is unknown."""
    se, n = figures["se"], figures["champion_outcomes"] + figures["canary_outcomes"]
    if not math.isfinite(se) or se <= 0 or n == 0:
        return {"planned_outcomes": None, "information": math.nan, "boundary_z": math.nan,
                "boundary_level": math.nan, "boundary_low": math.nan,
                "boundary_high": math.nan}
    # the final look (t = 1) is a two-sided test at ab_alpha / 2: z[1 - ab_alpha/4]
    planned = max(1, outcomes_needed(se, n, alpha=cfg.ab_alpha / 2, power=cfg.ab_power,
                                     min_effect=cfg.ab_min_effect))
    information = n / planned
    z = boundary_z(information, cfg.ab_alpha)
    return {"planned_outcomes": planned, "information": information, "boundary_z": z,
            "boundary_level": 2 * NormalDist().cdf(z) - 1,
            "boundary_low": figures["difference"] - z * se,
            "boundary_high": figures["difference"] + z * se}


def level_text(level: float) -> str:
    """A confidence level with as many digits as it takes: 97.5%, 99.96%, >99.9999%."""
    miss = (1 - level) * 100
    if miss < 1e-4:
        return ">99.9999%"
    digits = max(1, -math.floor(math.log10(miss)))
    return f"{100 - miss:.{digits}f}%"


def look_text(figures: dict[str, Any]) -> str:
    """The boundary in use, e.g. "look at 42% of the planned 4,753 outcomes: a promote
    needs the 99.95% interval (3.46 standard errors) clear of 0"."""
    if figures.get("planned_outcomes") is None:
        return "no sequential boundary yet (the difference's standard error is unknown)"
    return (f"look at {min(1.0, figures['information']):.0%} of the planned "
            f"{figures['planned_outcomes']:,} outcomes: a promote needs the "
            f"{level_text(figures['boundary_level'])} interval "
            f"({figures['boundary_z']:.2f} standard errors) clear of 0")


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
    # harm is judged at the nominal level on every look: stopping early for it can only
    # lower the false-promote rate, and a false roll back keeps the champion serving
    if high < 0:
        return ROLL_BACK, f"the canary's {metric} is worse than the champion's ({level} interval)"
    if figures["roi_high"] < 0:
        return ROLL_BACK, f"the canary earns less than the champion (ROI, {level} interval)"
    look = look_text(figures)
    b_low, _ = sorted((sign * figures["boundary_low"], sign * figures["boundary_high"]))
    if b_low > 0:
        return PROMOTE, f"the canary's {metric} is better than the champion's ({look})"
    if still_needed == 0:
        return ROLL_BACK, (f"no gain of {cfg.ab_min_effect:g} in {metric} shown after the "
                           f"outcomes a power of {cfg.ab_power:.0%} needs; the champion stays")
    more = f"{still_needed:,} more outcomes" if still_needed is not None else "more outcomes"
    return COLLECT, (f"{more} to detect a {metric} difference of {cfg.ab_min_effect:g} with "
                     f"{cfg.ab_power:.0%} power; {look}")


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

    @property
    def look(self) -> str:
        """The sequential boundary in use (:func:`look_text`)."""
        return look_text(self.overall)

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
        look = ("planned_outcomes", "information", "boundary_z", "boundary_level",
                "boundary_low", "boundary_high")
        return {"verdict": self.verdict, "canary": self.canary, "champion": self.champion,
                "metric": self.metric, "alpha": self.alpha,
                "figures": {k: _finite(self.overall[k]) for k in keep},
                "boundary": {"method": METHOD, "look": self.look,
                             **{k: _finite(self.overall[k]) for k in look}}}

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
    columns = ["window", *overall]
    overall.update(sequential(overall, cfg))
    planned = overall["planned_outcomes"]
    still = None if planned is None else max(0, planned - champion.n - canary.n)
    verdict, reason = decide(overall, metric, cfg, still)
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
