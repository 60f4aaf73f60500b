"""Return on investment of the model's decisions, from a value model in params.yaml.

``value_model`` gives the value (money, minutes, any unit) of each decision outcome:
``tp``, ``fp``, ``tn``, ``fn``; ``cost_per_prediction`` is what serving one prediction
costs in the same unit. Over the labelled predictions of a window::

    value gained = tp*V_tp + fp*V_fp + tn*V_tn + fn*V_fn
    cost         = (tp + fp + tn + fn) * cost_per_prediction   (decisions; not regression values)
    ROI %        = (value gained - cost) / cost * 100
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nbpipeline.errors import MonitorError
from nbpipeline.monitor.quality import OutcomeCounts

OUTCOMES = ("tp", "fp", "tn", "fn")


def check_value_model(value_model: Mapping[str, float], cost_per_prediction: float) -> None:
    """Raise MonitorError naming the params.yaml field when the value model is unusable."""
    missing = [k for k in OUTCOMES if k not in value_model]
    unknown = sorted(set(value_model) - set(OUTCOMES))
    if missing or unknown:
        raise MonitorError(
            "params.yaml monitor.value_model: needs exactly the keys tp, fp, tn, fn "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})"
        )
    if not cost_per_prediction > 0:
        raise MonitorError(
            f"params.yaml monitor.cost_per_prediction: {cost_per_prediction!r} must be > 0 "
            "(ROI divides by the serving cost)"
        )


def _roi(counts: Mapping[str, Any], value_model: Mapping[str, float],
         cost_per_prediction: float) -> tuple[Any, Any, Any]:
    """(value gained, cost, ROI %) by the module's formula; ``counts`` maps tp/fp/tn/fn to
    numbers or to arrays of the same shape (then each figure is an array). Only decisions
    cost: regression values are not counted. ROI is NaN where nothing was decided."""
    decided = {k: np.asarray(counts[k], dtype=float) for k in OUTCOMES}
    value = sum(decided[k] * float(value_model[k]) for k in OUTCOMES)
    cost = sum(decided.values()) * cost_per_prediction
    roi = np.divide(value - cost, cost, out=np.full(np.shape(cost), np.nan),
                    where=cost > 0) * 100
    return value, cost, roi


def roi_figures(
    c: OutcomeCounts, value_model: Mapping[str, float], cost_per_prediction: float
) -> dict[str, float]:
    """Value gained, cost and ROI % of the labelled predictions in ``c``."""
    value, cost, roi = _roi({k: getattr(c, k) for k in OUTCOMES}, value_model,
                            cost_per_prediction)
    return {"value": float(value), "cost": float(cost), "roi_pct": float(roi)}


def roi_pct_many(
    counts: Mapping[str, np.ndarray], value_model: Mapping[str, float], cost_per_prediction: float
) -> np.ndarray:
    """ROI % of many sets of decisions at once: ``counts`` maps tp/fp/tn/fn to arrays."""
    return np.asarray(_roi(counts, value_model, cost_per_prediction)[2])
