"""The monitor's settings: the ``monitor:`` section of params.yaml (one schema).

The same names are the parameters of notebooks/monitor.ipynb, so ``nbp monitor`` and
``nbp run monitor`` (and ``dvc repro``) pass them straight through. Limits are two-sided
where a suspiciously good figure is as alarming as a bad one (``[low, high]``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nbpipeline.errors import MonitorError
from nbpipeline.monitor.roi import check_value_model

RETRAIN_ACTIONS = ("none", "marker", "dvc")
# what drift is judged against (docs/monitor.md "Choosing the reference")
REFERENCES = ("training", "slice", "rolling")


def _default_quality() -> dict[str, list[float]]:
    return {"roc_auc": [0.6, 0.9], "accuracy": [0.6, 0.95]}


def _default_value() -> dict[str, float]:
    return {"tp": 40.0, "fp": -15.0, "tn": 0.0, "fn": 0.0}


@dataclass
class MonitorConfig:
    """Paths, window, limits, value model and actions of one monitor run."""

    predlog_path: str = "logs/predictions.db"
    reference_path: str = "models/candidate/reference.parquet"
    metadata_path: str = "models/candidate/metadata.json"
    registry_dir: str = "registry"
    alarm_log: str = "alarms/alarms.jsonl"
    reference: str = "training"
    reference_data: str = ""
    reference_from: str = ""
    reference_to: str = ""
    reference_months: list[int] = field(default_factory=list)
    reference_windows: int = 3
    window_by: str = "rows"
    window_size: int = 2000
    min_rows: int = 500
    min_feedback: int = 200
    psi_limit: float = 0.25
    ks_limit: float = 0.1
    chi2_pvalue: float = 1e-6
    drift_pvalue: float = 0.01
    output_psi_limit: float = 0.25
    decision_rate_limits: list[float] = field(default_factory=lambda: [0.02, 0.6])
    quality_limits: dict[str, list[float]] = field(default_factory=_default_quality)
    max_estimated_drop: float = 0.05
    latency_p95_ms: float = 250.0
    fallback_rate_max: float = 0.05
    value_model: dict[str, float] = field(default_factory=_default_value)
    cost_per_prediction: float = 1.0
    roi_min: float = 0.0
    roi_max: float = 1000.0
    roi_windows: int = 3
    webhook_url: str = ""
    auto_rollback: bool = True
    off_switch: bool = True
    retrain_action: str = "marker"
    retrain_marker: str = "retrain/requested.json"
    # canary against champion on live outcomes (nbpipeline.monitor.abtest)
    ab_alpha: float = 0.05
    ab_power: float = 0.8
    ab_min_effect: float = 0.02
    canary_auto: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> MonitorConfig:
        """Build from a mapping (params.yaml's ``monitor:`` or notebook parameters)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MonitorError(
                f"params.yaml monitor: unknown setting(s) {', '.join(unknown)}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]) -> MonitorConfig:
        """Pick this config's names out of a namespace (a notebook's ``globals()``)."""
        return cls(**{f.name: namespace[f.name] for f in fields(cls) if f.name in namespace})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise MonitorError naming the params.yaml field and the fix."""
        def bad(name: str, why: str) -> MonitorError:
            return MonitorError(f"params.yaml monitor.{name}: {getattr(self, name)!r} {why}")

        if self.reference not in REFERENCES:
            raise bad("reference", f"must be one of {', '.join(REFERENCES)}")
        if self.reference == "slice" and not self.reference_data:
            raise bad("reference_data", "must name a table (CSV or parquet) with the model's "
                      "features and time column when reference is 'slice'")
        if self.reference == "slice" and not (
                self.reference_from or self.reference_to or self.reference_months):
            raise bad("reference_months", "is empty and so are reference_from/reference_to: "
                      "a slice reference needs months (e.g. [3, 4, 5]) or a date range")
        if not (isinstance(self.reference_months, list)
                and all(isinstance(m, int) and 1 <= m <= 12 for m in self.reference_months)):
            raise bad("reference_months", "must be a list of calendar months 1..12")
        if not 0 < self.drift_pvalue <= 1:
            raise bad("drift_pvalue", "must be in (0, 1]; 1 lets PSI alone flag drift")
        if not self.max_estimated_drop >= 0:
            raise bad("max_estimated_drop", "must be >= 0")
        if self.window_by not in ("rows", "seconds"):
            raise bad("window_by", "must be 'rows' or 'seconds'")
        for name in ("window_size", "roi_windows", "reference_windows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a whole number >= 1")
        for name in ("min_rows", "min_feedback"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name, limits in [("decision_rate_limits", self.decision_rate_limits),
                             *((f"quality_limits.{k}", v) for k, v in self.quality_limits.items())]:
            if not (isinstance(limits, (list, tuple)) and len(limits) == 2
                    and float(limits[0]) <= float(limits[1])):
                raise MonitorError(
                    f"params.yaml monitor.{name}: {limits!r} must be [low, high] with low <= high"
                )
        from nbpipeline.monitor.quality import OutcomeCounts, quality_metrics

        metrics = set(quality_metrics(OutcomeCounts()))
        for metric in self.quality_limits:
            if metric not in metrics:
                raise MonitorError(
                    f"params.yaml monitor.quality_limits: unknown metric '{metric}'; "
                    f"use one of {', '.join(sorted(metrics))}"
                )
        if self.retrain_action not in RETRAIN_ACTIONS:
            raise bad("retrain_action", f"must be one of {', '.join(RETRAIN_ACTIONS)}")
        if self.roi_min > self.roi_max:
            raise bad("roi_min", f"is above roi_max ({self.roi_max})")
        check_value_model(self.value_model, self.cost_per_prediction)
        for name in ("ab_alpha", "ab_power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise bad(name, "must be a probability strictly between 0 and 1 (e.g. "
                          f"{MonitorConfig.__dataclass_fields__[name].default})")
        if (isinstance(self.ab_min_effect, bool) or not isinstance(self.ab_min_effect, int | float)
                or not self.ab_min_effect > 0):
            raise bad("ab_min_effect", "must be > 0: the smallest difference in the gate metric "
                      "worth acting on (e.g. 0.02 of ROC AUC)")
        if not isinstance(self.canary_auto, bool):
            raise bad("canary_auto", "must be true or false")
