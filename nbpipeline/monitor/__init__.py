"""Monitoring: drift, quality on feedback, latency, ROI, alarms and automatic actions.

Entry point: :func:`run_monitor` (called by notebooks/monitor.ipynb, hence by
``nbp monitor`` and the DVC ``monitor`` stage). Modules, bottom-up: reference (binning),
scan (SQL over the prediction log), drift / quality / roi (statistics), analysis (tables),
alarms (limits, alarm log, webhook), actions (rollback, off switch, retrain trigger),
core (one run), replay (real rows through a running server), command (``nbp monitor``).
"""

from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.core import MonitorResult, run_monitor

__all__ = ["MonitorConfig", "MonitorResult", "run_monitor"]
