"""One monitor run: read reference and log, judge, alarm, act, and leave a summary.

:func:`run_monitor` is what notebooks/monitor.ipynb calls (and so ``nbp monitor`` and the
DVC ``monitor`` stage). It never raises because of what it *finds*: findings become alarms
(level ``warn`` for input drift, ``alarm`` for impact) and actions; it raises MonitorError
only when its inputs or settings are unusable.
The summary (``alarms/last_run.json``) is how ``nbp monitor`` learns the outcome of the
notebook run (to print alarms, retrain with ``dvc exp run`` when a retrain was requested
and ``retrain_action`` is ``dvc``, and exit non-zero).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from nbpipeline.errors import RegistryError
from nbpipeline.monitor import abtest
from nbpipeline.monitor import actions as act
from nbpipeline.monitor import alarms as al
from nbpipeline.monitor import impact as im
from nbpipeline.monitor.analysis import Analysis, analyze, empty_analysis
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.reference import Reference, load_reference, slice_reference
from nbpipeline.monitor.scheduled import schedule_alarms
from nbpipeline.project import write_text_atomic
from nbpipeline.record import json_value
from nbpipeline.release.registry import ProductionState, Registry

SUMMARY_NAME = "last_run.json"
STATE_KINDS = ("promote", "rollback", "switch_off", "switch_on")


@dataclass
class MonitorResult:
    """What one monitor run found and did."""

    status: str  # "no traffic yet" | "ok" | "warnings" | "alarms"
    analysis: Analysis
    roi: pd.DataFrame
    alarms: list[al.Alarm] = field(default_factory=list)
    new_alarms: list[al.Alarm] = field(default_factory=list)
    actions: list[act.Action] = field(default_factory=list)
    reference_source: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    webhook_error: str | None = None
    since_window: int | None = None
    impact: dict[str, Any] = field(default_factory=dict)
    ab: abtest.ABResult | None = None  # the serving canary against the champion

    @property
    def level(self) -> str:
        """``ok``, ``warn`` (inputs moved, no impact) or ``alarm``."""
        return im.level(self.alarms)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (written to alarms/last_run.json)."""
        windows = self.analysis.windows
        return json_value({
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": self.status,
            "level": self.level,
            "impact": self.impact,
            "windows": int(len(windows)),
            "predictions": int(windows["rows"].sum()) if len(windows) else 0,
            "reference": self.reference_source,
            "state": self.state,
            "alarms": [a.to_dict() for a in self.alarms],
            "new_alarms": [a.id for a in self.new_alarms],
            "actions": [a.to_dict() for a in self.actions],
            "webhook_error": self.webhook_error,
            "missing_features": self.analysis.missing_features,
            "ab": self.ab.to_dict() if self.ab is not None else None,
        })

    def lines(self) -> list[str]:
        """Human-readable report lines (printed by the notebook and by `nbp monitor`)."""
        if self.status == "no traffic yet":
            return ["no traffic yet: the prediction log has no predictions to monitor",
                    *(a.line() for a in self.alarms)]  # only a scheduled run's (nbp schedule)
        out = [a.line() for a in self.alarms] + [a.line() for a in self.actions]
        if self.webhook_error:
            out.append(f"WARNING {self.webhook_error}")
        return out + im.summary_lines(self.impact) + ([self.ab.sentence()] if self.ab else [])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _state_dict(state: ProductionState | None) -> dict[str, Any]:
    if state is None:
        return {"champion": None, "canary": None, "switched_off": False}
    return {
        "champion": state.champion.version if state.champion else None,
        "canary": state.canary.version if state.canary else None,
        "canary_fraction": state.canary_fraction, "switched_off": state.switched_off,
        "off_reason": state.off_reason,
    }


def model_reference(cfg: MonitorConfig, root: Path, reg: Registry | None) -> tuple[Reference, str]:
    """The serving champion's stored reference if any, else the candidate's files."""
    if reg is not None:
        state = reg.state()
        if state.champion is not None:
            try:
                path = reg.reference_path(state.champion.version)
                ref = load_reference(path, metadata=dict(state.champion.metadata))
                return ref, f"registry {state.champion.version} (champion)"
            except RegistryError:
                pass
    ref = load_reference(root / cfg.reference_path, root / cfg.metadata_path)
    return ref, cfg.reference_path


def choose_reference(cfg: MonitorConfig, root: Path, reg: Registry | None) -> tuple[Reference, str]:
    """The model's reference (bins, outputs, calibration), its inputs from the chosen slice
    with ``reference: slice`` (``rolling`` is applied per window by the analysis)."""
    ref, source = model_reference(cfg, root, reg)
    if cfg.reference == "slice":
        ref = slice_reference(ref, root / cfg.reference_data, start=cfg.reference_from,
                              stop=cfg.reference_to, months=cfg.reference_months,
                              shown=cfg.reference_data)
        source = f"{source}; inputs: {ref.name}"
    elif cfg.reference == "rolling":
        source = f"{source}; inputs: the previous {cfg.reference_windows} windows"
    return ref, source


def has_traffic(log_path: Path) -> bool:
    """True when the prediction log exists and holds at least one prediction."""
    from nbpipeline.monitor.scan import open_log

    conn = open_log(log_path)
    if conn is None:
        return False
    try:
        return conn.execute("SELECT 1 FROM predictions LIMIT 1").fetchone() is not None
    finally:
        conn.close()


def since_window(analysis: Analysis, reg: Registry | None) -> int | None:
    """First window that starts after the last production change (promote/rollback/off)."""
    if reg is None or analysis.windows.empty:
        return None
    changes = [e for e in reg.events() if e.kind in STATE_KINDS]
    if not changes:
        return None
    t = _epoch(changes[-1].ts)
    later = analysis.windows[analysis.windows["start"] >= t]
    return int(later["window"].iloc[0]) if len(later) else int(analysis.windows["window"].max()) + 1


def run_monitor(
    cfg: MonitorConfig, root: Path | str, *, registry: Registry | None = None,
    act_on_alarms: bool = True, write_summary: bool = True, log_alarms: bool = True,
) -> MonitorResult:
    """Analyse the log, raise alarms (log, webhook), act on them, write the summary.

    With ``log_alarms``, ``act_on_alarms`` and ``write_summary`` all False it only reads
    (what the monitoring widget does).
    """
    root = Path(root)
    reg = registry
    if reg is None and (root / cfg.registry_dir).is_dir():
        reg = Registry(root / cfg.registry_dir)
    if not has_traffic(root / cfg.predlog_path):
        # nothing to compare yet: do not even require a trained model (fresh clone)
        ref, source, analysis = None, "", empty_analysis()
    else:
        ref, source = choose_reference(cfg, root, reg)
        analysis = analyze(cfg, ref, root / cfg.predlog_path)
    state = reg.state() if reg is not None else None
    schedule = schedule_alarms(root)  # a failed or missed scheduled run (nbp schedule)
    result = MonitorResult("no traffic yet", analysis, al.roi_series(analysis, cfg),
                           reference_source=source, state=_state_dict(state))
    if analysis.has_traffic:
        since = since_window(analysis, reg)
        result.since_window = since
        roi_since = result.roi if since is None else result.roi[result.roi["window"] >= since]
        result.alarms = (
            al.drift_alarms(analysis, cfg)
            + al.estimated_alarms(analysis, cfg)
            + al.traffic_alarms(analysis, cfg, bool(state and state.switched_off))
            + al.quality_alarms(analysis, cfg, since)
            + al.roi_alarms(roi_since, cfg)
            + schedule
        )
        if log_alarms:
            result.new_alarms = al.AlarmLog(root / cfg.alarm_log).append(result.alarms)
        if log_alarms and cfg.webhook_url and result.new_alarms:
            result.webhook_error = al.post_webhook(cfg.webhook_url, result.new_alarms)
        if act_on_alarms:
            if reg is not None and cfg.auto_rollback:
                result.actions += act.rollbacks(result.alarms, reg)
            if reg is not None and cfg.off_switch:
                result.actions += act.off_switch(roi_since, cfg, reg)
            # only alarms showing the model suffering request one (not moved inputs alone)
            rolled_back = any(a.kind == "rollback" for a in result.actions)
            result.actions += act.retrain_trigger(result.alarms, cfg, root, reg,
                                                  rolled_back=rolled_back)
        result.ab = abtest.compare(analysis.outcomes, state, cfg)
        if result.ab is not None and act_on_alarms and cfg.canary_auto and reg is not None:
            result.actions += abtest.carry_out(result.ab, reg)
        result.status = {"ok": "ok", "warn": "warnings", "alarm": "alarms"}[result.level]
        if reg is not None:
            result.state = _state_dict(reg.state())
    elif schedule:  # no traffic to judge, but the scheduled runs are unwell
        result.alarms = schedule
        if log_alarms:
            result.new_alarms = al.AlarmLog(root / cfg.alarm_log).append(schedule)
    result.impact = im.impact(analysis, result.roi, cfg, result.alarms)
    if write_summary:
        path = (root / cfg.alarm_log).parent / SUMMARY_NAME
        write_text_atomic(path, json.dumps(result.summary(), indent=2) + "\n")
    return result
