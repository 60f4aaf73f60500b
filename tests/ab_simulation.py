"""Repeated looks at an A/B test whose truth is known (for tests/monitor/test_abtest_stats.py
and bench/abtest.py): many simulated canaries, each looked at by the monitor ``looks`` times
as outcomes accumulate, through nbpipeline.monitor.abtest's own functions.

Each look bootstraps every still-open run at once (``compare_many``) and decides it with
``decide``, once with the group-sequential boundary (``sequential``: what the monitor does)
and once with the naive rule it replaced (promote as soon as the ``1 - ab_alpha`` interval
lies above 0, roll back when the fixed-horizon outcomes are in). A run ends at its first
verdict other than "keep collecting", as a canary does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbpipeline.monitor import abtest
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.scan import PROB_BINS

RULES = ("sequential", "naive")


def coarse_population(separation: float = 0.0) -> np.ndarray:
    """Cell probabilities (outcome x decision x bin) held in ten bins only, so that a
    bootstrap draw is cheap: 30% positives, scores in bins 10, 30, ..., 90 (decision: bin
    >= 50); ``separation`` moves the positives' weight up (0: a ROC AUC of about 0.73)."""
    cells = np.zeros(abtest.CELLS)
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    for y, share, w in ((1, 0.3, weights + separation * np.arange(5)), (0, 0.7, weights[::-1])):
        for b, p in zip((10, 30, 50, 70, 90), w / w.sum() * share, strict=True):
            cells[y, int(b >= PROB_BINS // 2), b] = p
    return cells


def _naive(figures: dict[str, Any], cfg: MonitorConfig) -> tuple[dict[str, Any], int | None]:
    """The rule before the sequential boundary: the promote interval is the nominal one,
    and the horizon the fixed-sample size at ``ab_alpha``."""
    n = figures["champion_outcomes"] + figures["canary_outcomes"]
    fixed = abtest.outcomes_needed(figures["se"], n, alpha=cfg.ab_alpha, power=cfg.ab_power,
                                   min_effect=cfg.ab_min_effect)
    return {**figures, "boundary_low": figures["low"], "boundary_high": figures["high"],
            "planned_outcomes": fixed, "information": n / fixed, "boundary_z": 1.96,
            "boundary_level": 1 - cfg.ab_alpha}, max(0, fixed - n)


def simulate(champion: np.ndarray, canary: np.ndarray, cfg: MonitorConfig, *, runs: int,
             looks: int, step: int, seed: int = 0,
             resamples: int = 100) -> dict[str, dict[str, float]]:
    """Share of ``runs`` ending in each verdict (and still collecting after the last look),
    per rule; each arm gains ``step`` outcomes between looks."""
    rng = np.random.default_rng(seed)
    score = (np.arange(PROB_BINS) + 0.5) / PROB_BINS
    squared = np.stack([np.broadcast_to(score ** 2, (2, PROB_BINS)),
                        np.broadcast_to((1 - score) ** 2, (2, PROB_BINS))])
    totals = [np.zeros((runs, *abtest.CELLS)) for _ in range(2)]
    ended = {rule: np.full(runs, abtest.COLLECT, dtype=object) for rule in RULES}
    for look in range(looks):
        for total, cells in zip(totals, (champion, canary), strict=True):
            total += rng.multinomial(step, cells.ravel(), size=runs).reshape(total.shape)
        open_ = np.flatnonzero((ended["sequential"] == abtest.COLLECT)
                               | (ended["naive"] == abtest.COLLECT))
        if not len(open_):
            break
        champ, cand = (abtest.Arm(t[open_], t[open_] * squared) for t in totals)
        many = abtest.compare_many(champ, cand, "roc_auc", cfg, seed=[seed, look],
                                   resamples=resamples)
        for i, run in enumerate(open_.tolist()):
            figures = {k: v[i].item() for k, v in many.items()}
            if not np.isfinite(figures["se"]) or figures["se"] <= 0:
                continue
            if ended["sequential"][run] == abtest.COLLECT:
                seq = {**figures, **abtest.sequential(figures, cfg)}
                n = figures["champion_outcomes"] + figures["canary_outcomes"]
                still = max(0, seq["planned_outcomes"] - n)
                ended["sequential"][run] = abtest.decide(seq, "roc_auc", cfg, still)[0]
            if ended["naive"][run] == abtest.COLLECT:
                naive, still = _naive(figures, cfg)
                ended["naive"][run] = abtest.decide(naive, "roc_auc", cfg, still)[0]
    return {rule: {v: float(np.mean(ended[rule] == v))
                   for v in (abtest.PROMOTE, abtest.ROLL_BACK, abtest.COLLECT)}
            for rule in RULES}

