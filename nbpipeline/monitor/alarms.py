"""Alarms: judging an Analysis against the limits, and where alarms go.

An :class:`Alarm` says what breached (kind + subject), which statistic fired (``PSI``,
``KS D``, ``chi-square p``, a quality metric, ``ROI %``), its value, the limit and the
direction (``above`` a ceiling or ``below`` a floor: ``value`` compared with ``limit`` in
that direction is the breach, so a consumer can re-check it), where (window, model
version, role), what it means (a sentence), and its level:

* ``warn`` — the inputs moved (``input_drift``) but that alone says nothing about the model;
* ``alarm`` — the model is affected or the service is unwell: output drift, estimated or
  realised quality, ROI, decision rate, latency, error rate.

Alarms are appended to ``alarms/alarms.jsonl`` (one JSON object per line, written under
an exclusive flock and fsync'd, so concurrent monitors never interleave lines); an alarm
whose id (kind, subject, version, role, window) is already in the log is not written
twice. They are printed by ``nbp monitor`` and, when ``webhook_url`` is set, POSTed to it
as ``{"alarms": [...]}`` — the same records in both places.
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
# kinds that only warn: the inputs moved, which alone does not mean the model suffers
WARN_KINDS = ("input_drift",)
# kinds that say the model itself suffers (its outputs moved, its quality or ROI is low):
# what a retrain can mend — unlike latency or errors (the service) or suspiciously high
# quality (leakage or a broken feedback feed: a human must look)
IMPACT_KINDS = ("output_drift", "estimated_quality_low", "quality_low", "roi_low")
# statistic names as alarms carry them (jsonl, webhook, report, widget)
PSI, KS_D, CHI2_P, ROI = "PSI", "KS D", "chi-square p", "ROI %"


@dataclass(frozen=True)
class Alarm:
    """One breached limit."""

    kind: str  # input_drift | output_drift | estimated_quality_low | decision_rate |
    #            quality_low | quality_high | latency | error_rate | roi_low | roi_high
    subject: str  # feature, metric or figure name
    value: float  # the value of ``statistic`` that fired
    limit: float
    direction: str  # "above" | "below": the value is above (below) the limit
    window: int | None
    message: str
    version: str | None = None
    role: str | None = None
    statistic: str = ""  # PSI | KS D | chi-square p | a quality metric | ROI %

    @property
    def level(self) -> str:
        """``warn`` (inputs moved) or ``alarm`` (the model or the service is affected)."""
        return "warn" if self.kind in WARN_KINDS else "alarm"

    @property
    def id(self) -> str:
        key = f"{self.kind}|{self.subject}|{self.version}|{self.role}|{self.window}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = self.id
        data["level"] = self.level
        data["value"] = _finite(self.value)
        return data

    def line(self) -> str:
        """One printable line."""
        return alarm_line(self.to_dict())

    def fired(self) -> str:
        """The statistic that fired against its limit, e.g. ``PSI 0.412 above 0.25``."""
        name = self.statistic or self.subject
        return f"{name} {self.value:.4g} {self.direction} {self.limit:.4g}"


def alarm_line(record: dict[str, Any]) -> str:
    """The printed line of an alarm record (an :meth:`Alarm.to_dict`, e.g. from last_run.json)."""
    where = f" [{record['version']} {record['role']}]" if record.get("version") else ""
    return f"{record.get('level', 'alarm').upper()} {record['kind']}{where}: {record['message']}"


def _breach(value: float, limit: float, direction: str) -> str:
    return f"{value:.4g} is {direction} the limit {limit:g}"


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _two_sided(
    kind_low: str, kind_high: str, subject: str, value: float, limits: list[float],
    window: int | None, what: str, version: str | None = None, role: str | None = None,
    *, unit: str = "", statistic: str = "", spec: str = ".4g",
) -> list[Alarm]:
    """``what`` names the figure and where it was measured, e.g. "roc_auc on 300 outcomes"."""
    statistic = statistic or subject
    low, high = float(limits[0]), float(limits[1])
    if value is None or not math.isfinite(value):
        return []
    if value < low:
        return [Alarm(kind_low, subject, value, low, "below", window,
                      f"{what} is {value:{spec}}{unit}, below the floor {low:g}{unit}.",
                      version, role, statistic)]
    if value > high:
        return [Alarm(kind_high, subject, value, high, "above", window,
                      f"{what} is {value:{spec}}{unit}, suspiciously above {high:g}{unit}: check "
                      "for label leakage or a broken feedback feed.", version, role, statistic)]
    return []


def fired_statistic(row: Any, cfg: MonitorConfig) -> tuple[str, float, float, str]:
    """(statistic, value, limit, direction) of the test that flagged a drift-table row.

    PSI is reported when it breached; otherwise the test that did: KS D (numbers, above
    ``ks_limit``) or the chi-square p-value (categories, below ``chi2_pvalue``).
    """
    psi_limit = cfg.output_psi_limit if row.kind == "output" else cfg.psi_limit
    if row.psi > psi_limit:
        return PSI, float(row.psi), psi_limit, "above"
    if row.test == "ks":
        return KS_D, float(row.statistic), cfg.ks_limit, "above"
    return CHI2_P, float(row.p_value), cfg.chi2_pvalue, "below"


def drift_alarms(analysis: Analysis, cfg: MonitorConfig) -> list[Alarm]:
    """Input drift (warn) and output drift (alarm) in the latest window with min_rows rows."""
    window = analysis.judged_window(cfg.min_rows)
    if window is None or analysis.drift.empty:
        return []
    rows = analysis.drift[(analysis.drift["window"] == window) & analysis.drift["drifted"]]
    alarms = []
    for r in rows.itertuples():
        statistic, value, limit, direction = fired_statistic(r, cfg)
        other = (f"KS D {r.statistic:.3f}" if r.test == "ks" else f"chi-square p {r.p_value:.3g}")
        if statistic != PSI:
            other = f"PSI {r.psi:.3f}"
        against = analysis.reference_name or "the reference"
        if r.kind == "output":
            alarms.append(Alarm(
                "output_drift", r.feature, value, limit, direction, window,
                f"The model's output distribution moved against {against}: {statistic} "
                f"{_breach(value, limit, direction)} over {r.rows} predictions ({other}).",
                statistic=statistic))
        else:
            alarms.append(Alarm(
                "input_drift", r.feature, value, limit, direction, window,
                f"Feature '{r.feature}' drifted against {against}: {statistic} "
                f"{_breach(value, limit, direction)} over {r.rows} rows ({other}).",
                statistic=statistic))
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
        cfg.decision_rate_limits, window, f"The share of positive decisions in window {window}")
    per_version = analysis.traffic[analysis.traffic["window"] == window]
    for r in per_version.itertuples():
        if r.role == "fallback":
            if not switched_off and r.rows / latest["rows"] > cfg.fallback_rate_max:
                rate = r.rows / latest["rows"]
                alarms.append(Alarm(
                    "error_rate", "fallback_rate", rate, cfg.fallback_rate_max, "above", window,
                    f"{rate:.1%} of requests got the fallback decision while the model is on, "
                    f"above the limit {cfg.fallback_rate_max:.1%} (model errors or no model "
                    "loaded).", statistic="fallback_rate"))
            continue
        if r.latency_p95_ms > cfg.latency_p95_ms:
            alarms.append(Alarm(
                "latency", "latency_p95_ms", r.latency_p95_ms, cfg.latency_p95_ms, "above",
                window, f"The p95 latency is {r.latency_p95_ms:.1f} ms, above the limit "
                f"{cfg.latency_p95_ms:g} ms.", r.version, r.role, "latency_p95_ms"))
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
                f"Realised {metric} on {int(r['labelled'])} outcomes", r["version"], r["role"])
    return alarms


def estimated_alarms(analysis: Analysis, cfg: MonitorConfig) -> list[Alarm]:
    """Performance estimated without labels in the judged window, for each metric of
    ``quality_limits``: below its floor, or more than ``max_estimated_drop`` below the
    same estimate on the reference."""
    window = analysis.judged_window(cfg.min_rows)
    if window is None or analysis.estimated.empty:
        return []
    at = analysis.estimated[analysis.estimated["window"] == window]
    if at.empty:
        return []
    row = at.iloc[0]
    alarms = []
    for metric, limits in cfg.quality_limits.items():
        value = float(row[metric]) if metric in row else float("nan")
        if not math.isfinite(value):
            continue
        floor, why = float(limits[0]), f"the floor {float(limits[0]):g}"
        base = analysis.baseline.get(metric)
        if base is not None and math.isfinite(base) and base - cfg.max_estimated_drop > floor:
            floor = base - cfg.max_estimated_drop
            why = (f"{floor:.4g} (the same estimate on the reference, {base:.4g}, minus "
                   f"max_estimated_drop {cfg.max_estimated_drop:g})")
        if value < floor:
            alarms.append(Alarm(
                "estimated_quality_low", metric, value, floor, "below", window,
                f"Estimated {metric} (from the model's probabilities, before any outcome) is "
                f"{value:.4g} over {int(row['predictions'])} predictions of window {window}, "
                f"below {why}.", statistic=f"estimated {metric}"))
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
                      f"ROI over {int(last['labelled'])} outcomes of window {int(last['window'])}",
                      unit="%", statistic=ROI, spec=".1f")


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
