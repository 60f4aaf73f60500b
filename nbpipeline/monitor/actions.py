"""Automatic actions on alarms, each recorded in the registry's event log with its reason.

* **rollback** — a canary whose quality drops below its floor, or whose latency or error
  rate breaches its limit, is removed (``Registry.rollback(role="canary")``) while the
  champion keeps serving; a champion that breaches is replaced by the previous champion.
  Suspiciously *high* quality alarms but never rolls back (it needs a human).
* **off switch** — when ROI stays below ``roi_min`` for ``roi_windows`` consecutive windows
  (each with at least ``min_feedback`` outcomes) since the last production change, the
  model is switched off (``Registry.switch_off``): the server answers its configured
  fallback decision, flagged ``fallback``, until ``nbp promote`` lifts it.
* **retrain trigger** — a run whose alarms show the model suffering (its outputs moved,
  its estimated or realised quality or its ROI fell below the floor: ``IMPACT_KINDS``)
  writes the marker file ``retrain_marker`` once per window (JSON: the reason, those
  alarms, the drifted features with the statistic that fired, window, time) and records a
  ``retrain_requested`` event. Inputs that moved alone (warnings), serving problems
  (latency, errors), suspiciously high quality, a canary's own breaches and a run that
  rolled a version back (the rollback answers its alarms) request none. With
  ``retrain_action: dvc``, ``nbp monitor`` then retrains on the champion's labelled
  predictions with ``dvc exp run`` (:mod:`nbpipeline.monitor.retrain`; never inside a
  pipeline run, where DVC already holds its lock).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from nbpipeline.errors import RegistryError
from nbpipeline.monitor.alarms import IMPACT_KINDS, ROLLBACK_KINDS, Alarm
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.project import write_text_atomic
from nbpipeline.release.registry import Registry

ACTOR = "nbp-monitor"


@dataclass(frozen=True)
class Action:
    """An action taken (or refused) by the monitor."""

    kind: str  # rollback | switch_off | retrain_requested | refused
    reason: str
    role: str | None = None
    version: str | None = None
    event_seq: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        target = f" {self.role} {self.version}" if self.version else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"ACTION {self.kind}{target}: {self.reason}{extra}"


def rollbacks(alarms: list[Alarm], reg: Registry) -> list[Action]:
    """Roll back each serving version that breached a rollback limit (once per role)."""
    actions: list[Action] = []
    for role in ("canary", "champion"):
        state = reg.state()
        current = state.canary if role == "canary" else state.champion
        if current is None or (role == "champion" and state.switched_off):
            continue
        breaches = [a for a in alarms if a.kind in ROLLBACK_KINDS and a.role == role
                    and a.version == current.version]
        if not breaches:
            continue
        reason = "; ".join(a.message for a in breaches)
        try:
            event = reg.rollback(role=role, reason=f"automatic rollback: {reason}", actor=ACTOR)
        except RegistryError as exc:
            actions.append(Action("refused", f"rollback of {role} refused: {exc}", role,
                                  current.version))
            continue
        actions.append(Action("rollback", reason, role, current.version, event.seq,
                              f"now serving {event.data.get('to') or 'the champion only'}"))
    return actions


def off_switch(roi: pd.DataFrame, cfg: MonitorConfig, reg: Registry) -> list[Action]:
    """Switch the model off when the last ``roi_windows`` ROI windows are all below roi_min."""
    state = reg.state()
    if state.champion is None or state.switched_off or len(roi) < cfg.roi_windows:
        return []
    last = roi.tail(cfg.roi_windows)
    if not (last["roi_pct"] < cfg.roi_min).all():
        return []
    figures = ", ".join(f"{v:.1f}%" for v in last["roi_pct"])
    reason = (f"ROI below {cfg.roi_min:g}% for {cfg.roi_windows} consecutive windows "
              f"({figures}); the model costs more than it earns")
    event = reg.switch_off(reason=reason, actor=ACTOR)
    return [Action("switch_off", reason, "champion", state.champion.version, event.seq,
                   "the server now answers the fallback decision; `nbp promote` lifts it")]


def retrain_trigger(
    alarms: list[Alarm], cfg: MonitorConfig, root: Path, reg: Registry | None, *,
    rolled_back: bool = False,
) -> list[Action]:
    """Request a retrain when the alarms show the model suffering (see the module docstring):
    write the marker (once per window) and record the request. ``rolled_back``: this run
    rolled a version back, which answers its alarms (the next windows judge what serves)."""
    impact = [a for a in alarms if a.kind in IMPACT_KINDS and a.role != "canary"]
    if not impact or rolled_back or cfg.retrain_action == "none":
        return []
    marker = root / cfg.retrain_marker
    windows = [a.window for a in impact if a.window is not None]
    window = max(windows) if windows else None
    if marker.exists():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("window") == window:
                return []
        except ValueError:
            pass
    drifted = sorted((a for a in alarms if a.kind == "input_drift"), key=lambda a: a.subject)
    features = [a.subject for a in drifted]
    reason = (f"the model suffers in window {window}: "
              + ", ".join(f"{a.kind} ({a.fired()})" for a in impact))
    if drifted:
        reason += "; inputs drifted: " + ", ".join(f"{a.subject} ({a.fired()})" for a in drifted)
    payload = {
        "requested": datetime.now(UTC).isoformat(timespec="seconds"), "reason": reason,
        "window": window, "action": cfg.retrain_action, "features": features,
        "alarms": [a.to_dict() for a in impact], "drift": [a.to_dict() for a in drifted],
    }
    write_text_atomic(marker, json.dumps(payload, indent=2) + "\n")
    seq = None
    if reg is not None:
        seq = reg.append_event("retrain_requested", reason=reason, actor=ACTOR,
                               alarms=sorted({a.kind for a in impact}), features=features,
                               window=window, marker=str(cfg.retrain_marker),
                               action=cfg.retrain_action).seq
    return [Action("retrain_requested", reason, event_seq=seq,
                   detail=f"marker {cfg.retrain_marker}"
                   + ("; `nbp monitor` retrains with `dvc exp run`" if cfg.retrain_action == "dvc"
                      else ""))]
