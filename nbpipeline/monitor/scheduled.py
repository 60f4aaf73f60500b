"""The health of the scheduled runs (``nbp schedule``) as alarms of the monitor run.

A failed scheduled run (``schedule_failed``: ``nbp monitor`` exited with an error, e.g. a
broken setting) and missed runs (``schedule_missed``: none within two periods of the last,
or ``schedule.missed_after``) are alarms of the next monitor run: printed by ``nbp
monitor``, in its report, in the alarm log and sent to the webhook. They are level
``alarm`` (the watch itself is unwell) but neither roll back nor request a retrain. Their
subject names the failed run or the gap, so each is logged once. In a model factory each
segment whose last scheduled runs failed has its own alarm, raised by every segment's
monitor run (the failing segment's own may be what fails).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from nbpipeline.monitor.alarms import Alarm
from nbpipeline.schedule.runs import health, own_tick, period_text

FAILED, MISSED = "schedule_failed", "schedule_missed"


def _at(when: datetime | str) -> str:
    text = when if isinstance(when, str) else when.isoformat(timespec="seconds")
    return text[:19].replace("T", " ") + " UTC"


def schedule_alarms(root: Path, now: datetime | None = None) -> list[Alarm]:
    """Alarms for the last failed scheduled runs and for missed ones (none if all is well
    or if nothing was ever scheduled)."""
    found = health(root, now, tick=own_tick())
    if found is None:
        return []
    alarms = []
    for segment in dict.fromkeys(run.segment for run in found.failed):
        failed = [run for run in found.failed if run.segment == segment]
        last, count = failed[-1], len(failed)
        whose = f" of segment {segment}" if segment else ""
        alarms.append(Alarm(
            FAILED, f"run {last.start}" + (f" {segment}" if segment else ""), float(count), 0.0,
            "above", None,
            f"{count} scheduled monitor run(s){whose} failed since the last one that worked; "
            f"the last, at {_at(last.start)}, exited with code {last.exit}: read {last.log} and "
            "fix what it names (the next scheduled run retries).",
            statistic="failed runs"))
    if found.missed_from is not None and found.missed_to is not None:
        alarms.append(Alarm(
            MISSED, f"since {found.missed_from.isoformat(timespec='seconds')}",
            round(found.missed_periods, 2), 2.0, "above", None,
            f"no scheduled monitor run finished from {_at(found.missed_from)} to "
            f"{_at(found.missed_to)} ({found.missed_periods:.1f} periods of "
            f"{period_text(found.every)}): "
            + (f"the run started at {_at(found.running)} is still going (hung? see "
               "logs/schedule/lock for its pid)." if found.running is not None
               and found.running < found.missed_to else
               "check that cron, the systemd timer or `nbp schedule run` is still running "
               "(logs/schedule/runs.jsonl)."),
            statistic="periods without a run"))
    return alarms
