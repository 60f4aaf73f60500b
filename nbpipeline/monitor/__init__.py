"""Monitoring: drift, quality on feedback, latency, ROI, alarms and automatic actions.

Entry point: :func:`run_monitor` (called by notebooks/monitor.ipynb, hence by
``nbp monitor`` and the DVC ``monitor`` stage). Modules, bottom-up: reference (binning),
scan (SQL over the prediction log), drift / quality / roi (statistics), analysis (tables),
alarms (limits, alarm log, webhook), actions (rollback, off switch, retrain trigger),
abtest (the canary against the champion: A/B verdict), core (one run), replay (real
rows through a running server), command (``nbp monitor``), scheduled (failed or missed
``nbp schedule`` runs as alarms).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MonitorConfig", "MonitorResult", "run_monitor"]


def __getattr__(name: str) -> Any:
    # lazy: `nbp` imports nbpipeline.monitor.command without pulling in pandas/scipy
    if name == "MonitorConfig":
        from nbpipeline.monitor.config import MonitorConfig

        return MonitorConfig
    if name in ("MonitorResult", "run_monitor"):
        from nbpipeline.monitor import core

        return getattr(core, name)
    raise AttributeError(f"module 'nbpipeline.monitor' has no attribute {name!r}")
