"""The scheduled runs' health as a JSON section, for the model server's ``GET /health``.

:class:`ScheduleStatus` answers with what :func:`nbpipeline.schedule.runs.health` judges:
``status`` is ``ok`` (the last run worked, whatever it found), ``failed`` (the last runs
failed), ``missed`` (no run for longer than the limit; it wins over ``failed``: the watch
is not running at all; ``failed_segments`` names a model factory's failing segments),
``none`` (nothing scheduled ever ran) or ``unknown`` (the record cannot be read, or
holds no readable run: ``error`` says why). Damaged lines are counted and skipped, never
raised. runs.jsonl is parsed again only when it changed, so the
section costs a ``stat`` and the lock check per request. Paths are relative to the
project (``names`` maps anything else to what callers may see).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbpipeline.schedule.runs import (
    RUNS_DIR,
    RUNS_FILE,
    CachedRecord,
    health,
    period_text,
)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


class ScheduleStatus:
    """The ``schedule`` section of ``GET /health`` for the project at ``root``."""

    def __init__(self, root: Path, names: Callable[[str], str] = str) -> None:
        self.root = Path(root)
        self.names = names
        self.record = CachedRecord(self.root)

    def section(self, now: datetime | None = None) -> dict[str, Any]:
        """What the record says at ``now`` (default: the current time)."""
        record = self.record.read()
        body: dict[str, Any] = {"status": "none", "record": f"{RUNS_DIR}/{RUNS_FILE}",
                                "damaged_lines": record.damaged, "error": None}
        if record.error is not None:
            body["error"] = self.names(record.error)
        elif record.damaged:
            body["error"] = (f"{RUNS_DIR}/{RUNS_FILE}: {record.damaged} damaged line(s) "
                             "skipped (not a run that `nbp schedule tick` writes)")
        found = health(self.root, now or datetime.now(UTC), record)
        if found is None:
            if body["error"] is not None:
                body["status"] = "unknown"
            return body
        done = [r for r in found.runs if r.status != "skipped"] or found.runs
        last = done[-1]
        body.update({
            "status": "missed" if found.missed_from is not None else (
                "failed" if found.failed else "ok"),
            "every": period_text(found.every), "every_seconds": found.every,
            "missed_after_seconds": found.missed_after,
            "last_run": {"start": last.start, "end": last.end, "exit": last.exit,
                         "status": last.status, "log": self.names(last.log),
                         "segment": last.segment},
            "failed_runs": len(found.failed),
            "failed_segments": sorted({r.segment for r in found.failed if r.segment}),
            "missed_since": _iso(found.missed_from),
            "running_since": _iso(found.running),
        })
        return body
