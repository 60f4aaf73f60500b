"""Alarms: judging an Analysis against the limits, and where alarms go.

An :class:`Alarm` says what breached (kind + subject), by how much (value vs limit and
direction: ``below`` a floor or ``above`` a ceiling — limits are two-sided where a jump
is as suspicious as a drop), where (window, model version, role) and what it means.

Alarms are appended to ``alarms/alarms.jsonl`` (one JSON object per line, written under
an exclusive flock and fsync'd, so concurrent monitors never interleave lines); an alarm
whose id (kind, subject, version, role, window) is already in the log is not written
twice. They are printed by ``nbp monitor`` and, when ``webhook_url`` is set, POSTed to it
as ``{"alarms": [...]}``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbpipeline.errors import MonitorError
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.quality import OutcomeCounts
from nbpipeline.monitor.roi import roi_figures

if TYPE_CHECKING:
    import pandas as pd

    from nbpipeline.monitor.analysis import Analysis

# kinds whose breach by a model version can trigger its automatic rollback
ROLLBACK_KINDS = ("quality_low", "latency", "error_rate")


@dataclass(frozen=True)
class Alarm:
    """One breached limit."""

    kind: str  # input_drift | output_drift | decision_rate | quality_low | quality_high |
    #            latency | error_rate | roi_low | roi_high
    subject: str  # feature, metric or figure name
    value: float
    limit: float
    direction: str  # "above" | "below"
    window: int | None
    message: str
    version: str | None = None
    role: str | None = None

    @property
    def id(self) -> str:
        key = f"{self.kind}|{self.subject}|{self.version}|{self.role}|{self.window}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = self.id
        data["value"] = _finite(self.value)
        return data

    def line(self) -> str:
        """One printable line."""
        where = f" [{self.version} {self.role}]" if self.version else ""
        return f"ALARM {self.kind}{where}: {self.message}"


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _two_sided(
    kind_low: str, kind_high: str, subject: str, value: float, limits: list[float],
    window: int | None, what: str, version: str | None = None, role: str | None = None,
) -> list[Alarm]:
    low, high = float(limits[0]), float(limits[1])
    if value is None or not math.isfinite(value):
        return []
    if value < low:
        return [Alarm(kind_low, subject, value, low, "below", window,
                      f"{what} {value:.4g} dropped below {low:g}", version, role)]
    if value > high:
        return [Alarm(kind_high, subject, value, high, "above", window,
                      f"{what} {value:.4g} is suspiciously high (above {high:g}); check for "
                      "label leakage or a broken feedback feed", version, role)]
    return []


def drift_alarms(analysis: Analysis, cfg: MonitorConfig) -> list[Alarm]:
    """Input and output drift in the latest window with at least min_rows predictions."""
    window = analysis.judged_window(cfg.min_rows)
    if window is None or analysis.drift.empty:
        return []
    rows = analysis.drift[(analysis.drift["window"] == window) & analysis.drift["drifted"]]
    alarms = []
    for r in rows.itertuples():
        test = "KS D" if r.test == "ks" else "chi-square p"
        shown = r.statistic if r.test == "ks" else r.p_value
        if r.kind == "output":
            alarms.append(Alarm(
                "output_drift", r.feature, r.psi, cfg.output_psi_limit, "above", window,
                f"model output distribution moved: PSI {r.psi:.3f} > {cfg.output_psi_limit:g} "
                f"({r.rows} predictions, KS D {r.statistic:.3f})"))
        else:
            alarms.append(Alarm(
                "input_drift", r.feature, r.psi, cfg.psi_limit, "above", window,
                f"feature '{r.feature}' drifted: PSI {r.psi:.3f} (limit {cfg.psi_limit:g}), "
                f"{test} {shown:.3g} over {r.rows} rows"))
    return alarms


def traffic_alarms(analysis: Analysis, cfg: MonitorConfig, switched_off: bool) -> list[Alarm]:
    """Decision rate (two-sided), latency p95 and error (fallback) rate per version."""
    window = analysis.judged_window(cfg.min_rows)
    if window is None:
        return []
    alarms: list[Alarm] = []
    latest = analysis.windows[analysis.windows["window"] == window].iloc[0]
    alarms += _two_sided(
        "decision_rate", "decision_rate", "decision_rate", latest["decision_rate"],
        cfg.decision_rate_limits, window, "share of positive decisions")
    per_version = analysis.traffic[analysis.traffic["window"] == window]
    for r in per_version.itertuples():
        if r.role == "fallback":
            if not switched_off and r.rows / latest["rows"] > cfg.fallback_rate_max:
                rate = r.rows / latest["rows"]
                alarms.append(Alarm(
                    "error_rate", "fallback_rate", rate, cfg.fallback_rate_max, "above", window,
                    f"{rate:.1%} of requests got the fallback decision while the model is on "
                    "(model errors or no model loaded)"))
            continue
        if r.latency_p95_ms > cfg.latency_p95_ms:
            alarms.append(Alarm(
                "latency", "latency_p95_ms", r.latency_p95_ms, cfg.latency_p95_ms, "above",
                window, f"p95 latency {r.latency_p95_ms:.1f} ms above {cfg.latency_p95_ms:g} ms",
                r.version, r.role))
    return alarms


def quality_alarms(analysis: Analysis, cfg: MonitorConfig, since_window: int | None) -> list[Alarm]:
    """Each version's quality over its latest >= min_feedback outcomes, two-sided."""
    if analysis.trailing.empty:
        return []
    alarms: list[Alarm] = []
    for r in analysis.trailing.to_dict("records"):
        if not r["enough"] or (since_window is not None and r["first_window"] < since_window):
            continue
        for metric, limits in cfg.quality_limits.items():
            alarms += _two_sided(
                "quality_low", "quality_high", metric, r[metric], limits, int(r["window"]),
                f"{metric} on {int(r['labelled'])} outcomes", r["version"], r["role"])
    return alarms


def roi_series(analysis: Analysis, cfg: MonitorConfig) -> pd.DataFrame:
    """ROI per window over all model decisions (champion + canary) with enough outcomes."""
    import pandas as pd

    if analysis.quality.empty:
        return pd.DataFrame(columns=["window", "labelled", "value", "cost", "roi_pct"])
    sums = analysis.quality.groupby("window")[["tp", "fp", "tn", "fn"]].sum().reset_index()
    rows = []
    for r in sums.itertuples():
        c = OutcomeCounts(int(r.tp), int(r.fp), int(r.tn), int(r.fn))
        if c.n >= cfg.min_feedback:
            rows.append({"window": int(r.window), "labelled": c.n,
                         **roi_figures(c, cfg.value_model, cfg.cost_per_prediction)})
    return pd.DataFrame(rows, columns=["window", "labelled", "value", "cost", "roi_pct"])


def roi_alarms(roi: pd.DataFrame, cfg: MonitorConfig) -> list[Alarm]:
    """The latest ROI window against [roi_min, roi_max]."""
    if roi.empty:
        return []
    last = roi.iloc[-1]
    return _two_sided("roi_low", "roi_high", "roi_pct", float(last["roi_pct"]),
                      [cfg.roi_min, cfg.roi_max], int(last["window"]),
                      f"ROI {last['roi_pct']:.1f}% over {int(last['labelled'])} outcomes")


class AlarmLog:
    """``alarms/alarms.jsonl``: append-only, locked, fsync'd, de-duplicated by alarm id."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise MonitorError(
                        f"{self.path}:{number}: not a JSON alarm ({exc}); the alarm log is "
                        "append-only — remove the damaged line"
                    ) from exc
        return out

    def append(self, alarms: list[Alarm]) -> list[Alarm]:
        """Write the alarms not logged before; returns those written."""
        if not alarms:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                fh.seek(0)
                seen = set()
                for line in fh.read().splitlines():
                    try:
                        seen.add(json.loads(line).get("id"))
                    except ValueError:
                        continue
                new = [a for a in alarms if a.id not in seen]
                for alarm in new:
                    fh.write(json.dumps({"ts": now, **alarm.to_dict()}, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return new


def post_webhook(url: str, alarms: list[Alarm], *, timeout: float = 5.0) -> str | None:
    """POST ``{"alarms": [...]}`` as JSON; returns an error text instead of raising."""
    body = json.dumps({"alarms": [a.to_dict() for a in alarms]}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            if response.status >= 300:
                return f"webhook {url} answered HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"webhook {url} failed: {exc}"
    return None
