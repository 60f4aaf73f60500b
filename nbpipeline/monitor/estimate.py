"""Performance estimated without labels, from the model's own probabilities.

Confidence-based performance estimation (CBPE, as NannyML names it): if the model's
probabilities are calibrated, a decision made with probability ``p`` is a true positive
with probability ``p`` (when the decision is positive) and a false negative with
probability ``p`` (when it is negative). Summing these expectations over a window gives
an expected confusion matrix — hence expected accuracy, precision, recall and ROI — and
an expected ROC AUC (each prediction counts ``p`` as a positive and ``1 - p`` as a
negative at its score). It needs no outcome, so it is known as soon as the window is
served, long before feedback arrives; it does not see concept drift (the same inputs
now meaning another outcome), which only realised performance shows.

Calibration: the reference sample holds the model's probabilities with the true
outcomes. When its expected calibration error (ECE, on ``ECE_BINS`` equal-width bins)
exceeds :data:`CALIBRATION_ECE`, probabilities are first mapped through an isotonic
(monotone) fit of outcome rate on probability bin, as NannyML does. Everything works on
the ``PROB_BINS`` probability bins the scan already counts.

The *baseline* is the same estimate on the reference sample itself, so estimated
figures are compared like with like: a drop means the model's scores moved to where it
is less sure, whatever its in-sample optimism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nbpipeline.monitor.quality import OutcomeCounts, binned_auc, quality_metrics
from nbpipeline.monitor.roi import roi_figures
from nbpipeline.monitor.scan import PROB_BINS, PredictionGroups

CALIBRATION_ECE = 0.02  # calibrate when the reference's ECE is above this
ECE_BINS = 10
ESTIMATED_METRICS = ("roc_auc", "accuracy", "precision", "recall", "outcome_rate")


@dataclass(frozen=True)
class Calibration:
    """Probability per PROB_BINS bin, fitted on the reference (used when ``applied``)."""

    probability: np.ndarray
    applied: bool
    ece: float  # of the raw probabilities on the reference

    def describe(self) -> str:
        if self.applied:
            return (f"probabilities calibrated (isotonic, on the reference; raw ECE "
                    f"{self.ece:.3f} > {CALIBRATION_ECE:g})")
        return f"probabilities used as they are (ECE {self.ece:.3f} on the reference)"


def _bin(p: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(p, dtype=float) * PROB_BINS).astype(np.int64), 0, PROB_BINS - 1)


def isotonic(rate: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of ``rate`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for r, w in zip(rate.tolist(), weight.tolist(), strict=True):
        blocks.append([r, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks])


def fit_calibration(probability: Any, outcome: Any) -> Calibration:
    """Calibration of the model's reference probabilities against its reference outcomes."""
    p, y = np.asarray(probability, dtype=float), np.asarray(outcome, dtype=float)
    keep = ~(np.isnan(p) | np.isnan(y))
    p, y = p[keep], y[keep]
    centres = (np.arange(PROB_BINS) + 0.5) / PROB_BINS
    if len(p) == 0:
        return Calibration(centres, False, float("nan"))
    coarse = np.clip((p * ECE_BINS).astype(int), 0, ECE_BINS - 1)
    n = np.bincount(coarse, minlength=ECE_BINS)
    gap = np.abs(np.bincount(coarse, weights=p - y, minlength=ECE_BINS))
    ece = float(gap.sum() / n.sum())
    bins = _bin(p)
    count = np.bincount(bins, minlength=PROB_BINS).astype(float)
    positives = np.bincount(bins, weights=y, minlength=PROB_BINS)
    seen = count > 0
    fitted = isotonic(positives[seen] / count[seen], count[seen])
    probability = np.interp(centres, centres[seen], fitted)
    return Calibration(probability, ece > CALIBRATION_ECE, ece)


def expected_counts(
    count: np.ndarray, prob_sum: np.ndarray, calibration: Calibration
) -> OutcomeCounts:
    """Expected outcome counts of decisions binned as ``count[decision, bin]``."""
    count = np.asarray(count, dtype=float)
    raw = np.divide(prob_sum, count, out=np.zeros_like(count), where=count > 0)
    q = np.broadcast_to(calibration.probability, count.shape) if calibration.applied else raw
    positive, negative = count * q, count * (1 - q)
    return OutcomeCounts(
        tp=float(positive[1].sum()), fp=float(negative[1].sum()),  # type: ignore[arg-type]
        tn=float(negative[0].sum()), fn=float(positive[0].sum()),  # type: ignore[arg-type]
        brier_sum=float(np.sum(positive * (1 - raw) ** 2 + negative * raw ** 2)),
        pos_hist=positive.sum(axis=0), neg_hist=negative.sum(axis=0),
    )


def baseline(probability: Any, calibration: Calibration) -> dict[str, float]:
    """The estimate on the reference sample itself (threshold-free figures only)."""
    p = np.asarray(probability, dtype=float)
    p = p[~np.isnan(p)]
    bins = _bin(p)
    count = np.bincount(bins, minlength=PROB_BINS).astype(float)
    q = (calibration.probability if calibration.applied
         else np.divide(np.bincount(bins, weights=p, minlength=PROB_BINS), count,
                        out=np.zeros(PROB_BINS), where=count > 0))
    return {"roc_auc": binned_auc(count * q, count * (1 - q)),
            "outcome_rate": float(np.sum(count * q) / count.sum()) if count.sum() else np.nan}


def estimate_table(
    groups: PredictionGroups | None, calibration: Calibration,
    value_model: dict[str, float], cost_per_prediction: float,
) -> pd.DataFrame:
    """Per window: decisions, estimated metrics and estimated ROI (all model decisions)."""
    columns = ["window", "predictions", *ESTIMATED_METRICS, "roi_pct"]
    if groups is None or len(groups.window) == 0:
        return pd.DataFrame(columns=columns)
    rows = []
    for window in np.unique(groups.window):
        at = groups.window == window
        count = np.zeros((2, PROB_BINS))
        prob_sum = np.zeros((2, PROB_BINS))
        np.add.at(count, (groups.decision[at], groups.prob_bin[at]), groups.count[at])
        np.add.at(prob_sum, (groups.decision[at], groups.prob_bin[at]), groups.prob_sum[at])
        c = expected_counts(count, prob_sum, calibration)
        metrics = quality_metrics(c)
        rows.append({"window": int(window), "predictions": int(count.sum()),
                     **{m: metrics[m] for m in ESTIMATED_METRICS},
                     "roi_pct": roi_figures(c, value_model, cost_per_prediction)["roi_pct"]})
    return pd.DataFrame(rows, columns=columns)
