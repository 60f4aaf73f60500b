"""Model quality on the outcomes received so far, from grouped counts.

Inputs are additive counts (confusion matrix, probability histograms per outcome, sum of
squared errors), so any set of windows or versions can be merged by adding them before
the metrics are computed. ROC AUC is computed on ``PROB_BINS`` probability bins (pairs
in the same bin count one half): within 1/PROB_BINS of the exact figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nbpipeline.monitor.scan import PROB_BINS


@dataclass
class OutcomeCounts:
    """Additive sufficient statistics of labelled predictions."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    brier_sum: float = 0.0
    pos_hist: np.ndarray = field(default_factory=lambda: np.zeros(PROB_BINS))
    neg_hist: np.ndarray = field(default_factory=lambda: np.zeros(PROB_BINS))
    # regression models: outcomes with their predicted values (sums of errors, outcomes)
    values: int = 0
    error_sum: float = 0.0
    squared_error_sum: float = 0.0
    absolute_error_sum: float = 0.0
    outcome_sum: float = 0.0
    outcome_squared_sum: float = 0.0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn + self.values

    def add(self, other: OutcomeCounts) -> OutcomeCounts:
        """A new OutcomeCounts holding both."""
        return OutcomeCounts(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn,
            self.brier_sum + other.brier_sum, self.pos_hist + other.pos_hist,
            self.neg_hist + other.neg_hist, self.values + other.values,
            self.error_sum + other.error_sum, self.squared_error_sum + other.squared_error_sum,
            self.absolute_error_sum + other.absolute_error_sum,
            self.outcome_sum + other.outcome_sum,
            self.outcome_squared_sum + other.outcome_squared_sum,
        )


def binned_auc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties within a bin counted half."""
    return float(binned_auc_many(pos_hist[None, :], neg_hist[None, :])[0])


def binned_auc_many(pos_hist: np.ndarray, neg_hist: np.ndarray) -> np.ndarray:
    """:func:`binned_auc` of each row of [n, PROB_BINS] histograms (NaN without both classes)."""
    n_pos, n_neg = pos_hist.sum(axis=-1), neg_hist.sum(axis=-1)
    neg_below = np.cumsum(neg_hist, axis=-1) - neg_hist
    wins = np.sum(pos_hist * neg_below, axis=-1) + 0.5 * np.sum(pos_hist * neg_hist, axis=-1)
    pairs = (n_pos * n_neg).astype(float)
    return np.divide(wins, pairs, out=np.full(len(pairs), np.nan), where=pairs > 0)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def regression_metrics(c: OutcomeCounts) -> dict[str, float]:
    """RMSE, MAE, R² and bias of a regression model's labelled predictions."""
    n = c.values
    spread = c.outcome_squared_sum - c.outcome_sum ** 2 / n if n else 0.0
    return {
        "rmse": float(np.sqrt(c.squared_error_sum / n)) if n else float("nan"),
        "mae": _ratio(c.absolute_error_sum, n),
        "r2": 1.0 - c.squared_error_sum / spread if spread > 0 else float("nan"),
        "bias": _ratio(c.error_sum, n),
    }


def quality_metrics(c: OutcomeCounts) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC AUC, Brier score, rates (classification) and
    RMSE, MAE, R², bias (regression); NaN where undefined."""
    precision = _ratio(c.tp, c.tp + c.fp)
    recall = _ratio(c.tp, c.tp + c.fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision + recall > 0 and not np.isnan(precision + recall)
        else float("nan")
    )
    return {
        "labelled": float(c.n),
        "accuracy": _ratio(c.tp + c.tn, c.n - c.values),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": binned_auc(c.pos_hist, c.neg_hist),
        "brier": _ratio(c.brier_sum, c.n - c.values),
        "outcome_rate": _ratio(c.tp + c.fn, c.n - c.values),
        "decision_rate": _ratio(c.tp + c.fp, c.n - c.values),
        **regression_metrics(c),
    }
