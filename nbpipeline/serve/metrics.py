"""Engineering metrics for GET /metrics (Prometheus text format).

Each app has its own CollectorRegistry (several apps may live in one test process),
with the process collector for memory and CPU.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)


class ServerMetrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "nbp_http_requests", "HTTP requests by endpoint and status code",
            ["endpoint", "status"], registry=r,
        )
        self.predictions = Counter(
            "nbp_predictions", "rows answered, by model version and role",
            ["model_version", "role"], registry=r,
        )
        self.errors = Counter(
            "nbp_errors", "failures by kind (validation, model, log, reload)", ["kind"], registry=r,
        )
        self.latency = Histogram(
            "nbp_predict_latency_seconds",
            "time from request received to response ready (incl. the log write), by model version",
            ["model_version", "role"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_rows = Histogram(
            "nbp_predict_rows", "rows per /predict request", buckets=(1, 2, 5, 10, 50, 100, 1000),
            registry=r,
        )
        self.model_calls = Histogram(
            "nbp_model_call_seconds", "one predict_proba call (rows of concurrent requests "
            "scored together), by model version", ["model_version"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_call_rows = Histogram(
            "nbp_model_call_rows", "rows per predict_proba call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096), registry=r,
        )
        self.log_rows = Counter(
            "nbp_log_rows", "prediction rows moved from the spool into the log", registry=r,
        )
        self.log_commit = Histogram(
            "nbp_log_commit_seconds", "time of one transaction moving spooled rows into the log",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.model_info = Gauge(
            "nbp_model_serving", "1 for each model version serving, by role",
            ["model_version", "role"], registry=r,
        )
        self.canary_fraction = Gauge(
            "nbp_canary_fraction", "share of traffic routed to the canary", registry=r,
        )
        self.switched_off = Gauge(
            "nbp_switched_off", "1 while the off switch answers the fallback decision", registry=r,
        )
        self.reload_failures = Counter(
            "nbp_model_load_failures", "models that could not be loaded from the registry",
            registry=r,
        )

    def on_commit(self, rows: int, seconds: float) -> None:
        """Called by the log writer thread after each transaction."""
        self.log_rows.inc(rows)
        self.log_commit.observe(seconds)

    def on_model_call(self, version: str, rows: int, seconds: float) -> None:
        """Called by the predictor thread after each model call."""
        self.model_calls.labels(version).observe(seconds)
        self.model_call_rows.observe(rows)

    def serving(self, snapshot_models: dict[str, str | None], fraction: float, off: bool) -> None:
        """Publish which versions serve (role -> version)."""
        self.model_info.clear()
        for role, version in snapshot_models.items():
            if version is not None:
                self.model_info.labels(version, role).set(1)
        self.canary_fraction.set(fraction)
        self.switched_off.set(1 if off else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
