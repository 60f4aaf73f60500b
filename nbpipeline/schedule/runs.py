"""The record of scheduled runs (``logs/schedule/runs.jsonl``) and what it says of their health.

Each scheduled tick (``nbp schedule tick``, see :mod:`nbpipeline.schedule.tick`) appends one
JSON line when it ends: when it started and ended, the exit code of ``nbp monitor``, its
status, the log file holding its output (``logs/schedule/<UTC time>.log``) and the period
it was scheduled at (so the record says by itself when the next run was due). Lines are
appended under an exclusive flock and fsync'd; a damaged line is skipped by readers.
While a tick runs it holds an flock on ``logs/schedule/lock`` (the file says since when),
which is what keeps two ticks from overlapping and tells readers a run is in progress.

:func:`health` judges the record at a moment: the last finished run *failed* (an exit code
other than 0 and ``nbp monitor``'s two exit codes for findings; in a model factory, the
last run of any segment: one that works does not hide another that fails) or runs were
*missed* (none within two periods, and at least a minute, of the previous one).
``nbp monitor`` turns those into alarms (nbpipeline.monitor.scheduled); ``nbp report``
shows them on the index; the model server's ``GET /health`` shows them too
(nbpipeline.schedule.status).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RUNS_DIR = "logs/schedule"  # relative to the project root
RUNS_FILE = "runs.jsonl"
LOCK_FILE = "lock"
# `nbp monitor`'s exit codes for findings (nbpipeline.monitor.command ALARM_EXIT, WARN_EXIT):
# the run worked and found something; any other non-zero code is a failed run
FINDING_EXITS = {3: "alarms", 4: "warnings"}
MISSED_PERIODS = 2  # no run within this many periods of the previous one: missed
MISSED_MIN_SECONDS = 60.0  # ... and at least this long (a 2 s test period is not missed by jitter)
# set by a tick for the `nbp monitor` it runs (its start): that monitor judges the gap before
# its own tick, however long it has been running (the tick asking is not hung)
TICK_ENV = "NBP_SCHEDULE_TICK"


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}  # of a period: 30s, 15m, 1h, 1d


def period_text(seconds: float) -> str:
    """A period as ``nbp schedule --every`` takes it: 90 -> ``90s``, 3600 -> ``1h``."""
    for unit, size in reversed(UNITS.items()):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class ScheduledRun:
    """One line of runs.jsonl: a tick that ran ``nbp monitor`` (or was skipped)."""

    start: str  # ISO UTC
    end: str
    exit: int | None  # None: skipped (the previous run still held the lock)
    status: str  # ok | alarms | warnings | failed | skipped
    log: str  # the run's log, relative to the project root ("" when skipped)
    every: float  # the period it was scheduled at, in seconds
    command: str = ""
    # seconds without a finished run that count as missed (params.yaml schedule.missed_after);
    # None: MISSED_PERIODS periods, at least MISSED_MIN_SECONDS
    missed_after: float | None = None
    segment: str = ""  # a model factory's segment this run monitored ("": the project's model)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @staticmethod
    def status_of(exit_code: int | None) -> str:
        """The status a tick records for ``nbp monitor``'s exit code."""
        if exit_code is None:
            return "skipped"
        return "ok" if exit_code == 0 else FINDING_EXITS.get(exit_code, "failed")


_FIELDS = set(ScheduledRun.__dataclass_fields__)


def runs_dir(root: Path) -> Path:
    """Where the scheduled runs' logs, record and lock live."""
    return Path(root) / RUNS_DIR


def append_run(root: Path, run: ScheduledRun) -> None:
    """Append ``run`` to runs.jsonl (locked, fsync'd)."""
    path = runs_dir(root) / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.write(json.dumps(asdict(run), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class RunsRecord:
    """What runs.jsonl holds: the runs that could be read, and what could not."""

    runs: list[ScheduledRun]
    damaged: int = 0  # lines skipped: not JSON, not a run, or a time or period unreadable
    error: str | None = None  # the file exists but cannot be read (named relative to the root)


def _parse(raw: bytes) -> ScheduledRun | None:
    """One line of runs.jsonl as a run, or None if it is damaged."""
    try:
        data = json.loads(raw.decode("utf-8"))
        run = ScheduledRun(**{k: v for k, v in data.items() if k in _FIELDS})
        for when in (run.start, run.end):  # health() reads them: a bad one is damage here
            _when(when)
    except (ValueError, TypeError, AttributeError):  # also: not UTF-8, not an object
        return None
    texts = (run.start, run.end, run.status, run.log, run.command, run.segment)
    exit_ok = run.exit is None or (isinstance(run.exit, int) and not isinstance(run.exit, bool))
    seconds_ok = all(_positive(v) for v in (run.every, run.missed_after or 1.0))
    return run if exit_ok and seconds_ok and all(isinstance(t, str) for t in texts) else None


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and (
        math.isfinite(value) and value > 0)


def read_record(root: Path) -> RunsRecord:
    """runs.jsonl as it is now; damaged lines are counted and skipped, never raised."""
    path = runs_dir(root) / RUNS_FILE
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return RunsRecord([])
    except OSError as exc:
        return RunsRecord([], error=f"cannot read {RUNS_DIR}/{RUNS_FILE}: {exc.strerror or exc}")
    runs, damaged = [], 0
    for raw in filter(bytes.strip, lines):
        run = _parse(raw)
        if run is None:
            damaged += 1
        else:
            runs.append(run)
    return RunsRecord(runs, damaged)


def read_runs(root: Path) -> list[ScheduledRun]:
    """Every recorded run, oldest first; damaged lines are skipped."""
    return read_record(root).runs


class CachedRecord:
    """runs.jsonl read again only when it changed (its size, mtime or inode): for readers
    asked often, such as the model server's ``GET /health``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._key: tuple[int, int, int] | None = None
        self._record = RunsRecord([])

    def read(self) -> RunsRecord:
        try:
            st = os.stat(runs_dir(self.root) / RUNS_FILE)
        except OSError:
            return read_record(self.root)  # absent (or unreadable: says why); nothing cached
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._key:
            self._record, self._key = read_record(self.root), key
        return self._record


def running_since(root: Path) -> datetime | None:
    """When the tick now holding the lock started; None when no tick runs."""
    path = runs_dir(root) / LOCK_FILE
    try:
        fh = open(path, encoding="utf-8")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return _when(json.loads(fh.read())["start"])
            except (ValueError, KeyError, TypeError):  # also: not UTF-8, not an object
                return datetime.now(UTC)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None


def _when(iso: str) -> datetime:
    """An ISO time from the record; one without a zone is UTC (the record writes UTC)."""
    when = datetime.fromisoformat(iso)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ScheduleHealth:
    """What the record says at ``now``: the last runs, a failure, a gap of missed runs."""

    every: float
    runs: list[ScheduledRun]
    running: datetime | None
    # the failed runs since the last one that worked (a factory: of each segment), oldest first
    failed: list[ScheduledRun]
    missed_from: datetime | None  # the gap of missed runs: from the last activity ...
    missed_to: datetime | None  # ... to the run that ended it (or now)
    missed_after: float = 0.0  # seconds without a finished run that count as missed

    @property
    def missed_periods(self) -> float:
        if self.missed_from is None or self.missed_to is None:
            return 0.0
        return (self.missed_to - self.missed_from).total_seconds() / self.every


def own_tick() -> datetime | None:
    """The start of the tick that runs this process (``$NBP_SCHEDULE_TICK``), if any."""
    try:
        return _when(os.environ[TICK_ENV])
    except (KeyError, ValueError):
        return None


def health(root: Path, now: datetime | None = None, record: RunsRecord | None = None,
           tick: datetime | None = None) -> ScheduleHealth | None:
    """Judge the scheduled runs of the project at ``root`` (None: nothing scheduled ever ran).

    A gap is judged from the end of the last run that was not skipped. While a tick runs
    (the monitor it started calls this), the gap judged is the one before that tick began:
    a scheduler that came back after a day reports the day it missed. A run going on for
    longer than the limit (hung: the ticks after it only skip) is judged up to ``now``,
    unless it is ``tick``, the one the caller runs in (:func:`own_tick`).
    ``record``: runs.jsonl as already read (default: read it now).
    """
    runs = (record or read_record(root)).runs
    running = running_since(root)
    if not runs:
        return None
    now = now or datetime.now(UTC)
    every = float(runs[-1].every)
    failed: list[ScheduledRun] = []
    # each segment's own streak; the project's runs ("") end with any run that worked
    for segment in dict.fromkeys(r.segment for r in runs):
        for run in reversed([r for r in runs if r.segment in (segment, "")] if segment
                            else runs):
            if run.status == "skipped" or (run.failed and run.segment != segment):
                continue
            if not run.failed:
                break
            failed.append(run)
    failed.sort(key=lambda r: _when(r.start))
    done = [r for r in runs if r.status != "skipped"] or runs
    last = _when(done[-1].end)
    limit = runs[-1].missed_after or max(MISSED_PERIODS * every, MISSED_MIN_SECONDS)
    judged_at_start = running is not None and running >= last and (
        running == tick or (now - running).total_seconds() <= limit)
    point = running if judged_at_start and running is not None else now
    missed = (point - last).total_seconds() > limit
    return ScheduleHealth(every, runs, running, failed, last if missed else None,
                          point if missed else None, limit)
