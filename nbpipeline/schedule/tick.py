"""One scheduled run (``nbp schedule tick``) and the foreground runner (``nbp schedule run``).

:func:`tick` is what the cron line and the systemd service run: it takes the project's
lock without waiting (a tick that finds the previous run still going records itself as
``skipped`` and exits 0, so runs never overlap), runs ``nbp monitor`` with its output in
``logs/schedule/<UTC time>.log``, appends the run to ``logs/schedule/runs.jsonl`` and exits
with the monitor's exit code. Only the newest :data:`KEEP_LOGS` logs are kept. A model
factory's tick runs ``nbp monitor --segment S`` for every segment with a registry, one
after the other, each with its own log (``<UTC time>-<segment>.log``) and record line; a
segment that fails does not keep the others from running.

:func:`run_forever` is the scheduler for machines without cron or a systemd user manager
(containers, a supervisor such as supervisord or a Kubernetes pod): every period, on the
period's boundaries like cron, it runs the very command the cron entry holds
(:meth:`Schedule.tick_command`) with ``sh``.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from nbpipeline.params import load_params
from nbpipeline.pipeline.stages import segment_templated
from nbpipeline.project import ROOT_ENV, RUNNING_ENV, STAGE_ENV, Project
from nbpipeline.release.registry import segment_registries
from nbpipeline.schedule.entry import Schedule, own_nbp
from nbpipeline.schedule.runs import (
    FINDING_EXITS,
    LOCK_FILE,
    TICK_ENV,
    ScheduledRun,
    append_run,
    read_runs,
    runs_dir,
)

KEEP_LOGS = 200
# variables `nbp run` sets for the stage it runs: a tick started from inside a stage must
# not hand them to the monitor it starts
PIPELINE_ENV = (ROOT_ENV, STAGE_ENV, RUNNING_ENV)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def _log_path(folder: Path, started: datetime, segment: str | None = None) -> Path:
    stem = started.strftime("%Y%m%dT%H%M%SZ") + (f"-{segment}" if segment else "")
    path, n = folder / f"{stem}.log", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.log"
    return path


def _prune(folder: Path) -> None:
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)


def monitored_segments(project: Project) -> list[str | None]:
    """What a tick monitors: ``[None]`` (the project's model), or for a model factory (its
    ``monitor:`` values name ``{segment}``) every segment with a registry."""
    if not segment_templated(load_params(project.params_yaml).get("monitor")):
        return [None]
    # none promoted yet: plain `nbp monitor` fails saying to name a segment
    return list(segment_registries(project.registry)) or [None]


def _worst(codes: list[int]) -> int:
    """One exit code for a tick's runs: a failure's, else alarms, else warnings, else 0."""
    failed = [c for c in codes if ScheduledRun.status_of(c) == "failed"]
    alarms = [c for c in codes if FINDING_EXITS.get(c) == "alarms"]
    return next(iter(failed + alarms + [c for c in codes if c]), 0)


def tick(project: Project, every: float, *, missed_after: float | None = None,
         echo: Callable[[str], None] = print) -> int:
    """Run ``nbp monitor`` once under the lock (a model factory: once per segment, each
    with its own log and record line, one failing segment not stopping the others);
    record it (with the period and the gap that counts as missed, so the record says when
    the next run is due); return its exit code (a factory: the worst of them)."""
    folder = runs_dir(project.root)
    folder.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    command = [str(own_nbp()), "monitor"]
    with open(folder / LOCK_FILE, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            append_run(project.root, ScheduledRun(_iso(started), _iso(datetime.now(UTC)), None,
                                                  "skipped", "", every, " ".join(command),
                                                  missed_after))
            echo(f"nbp: schedule: skipped: the previous run still holds {project.rel(lock.name)}"
                 f" ({holder or 'no details'})")
            return 0
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "start": _iso(started)}) + "\n")
        lock.flush()
        env = {k: v for k, v in os.environ.items() if k not in PIPELINE_ENV}
        env[TICK_ENV] = _iso(started)
        runs = [_monitor(project, segment, command, env, every, missed_after)
                for segment in monitored_segments(project)]
    _prune(folder)
    for run in runs:
        echo(f"nbp: schedule: {f'segment {run.segment}: ' if run.segment else ''}{run.status} "
             f"(exit code {run.exit}); log {run.log}")
    return _worst([run.exit or 0 for run in runs])


def _monitor(project: Project, segment: str | None, command: list[str], env: dict[str, str],
             every: float, missed_after: float | None) -> ScheduledRun:
    """One ``nbp monitor`` of a tick, logged and recorded."""
    started = datetime.now(UTC)
    command = [*command, *(["--segment", segment] if segment else [])]
    log = _log_path(runs_dir(project.root), started, segment)
    clock = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        out.write(f"nbp schedule tick: {' '.join(command)} in {project.root} at "
                  f"{_iso(started)} (every {every:g}s)\n")
        out.flush()
        try:
            code = subprocess.run(command, cwd=project.root, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  check=False).returncode
        except OSError as exc:
            out.write(f"cannot start {command[0]}: {exc}\n")
            code = 127
        out.write(f"nbp schedule tick: exit code {code} after "
                  f"{time.monotonic() - clock:.1f} s\n")
    run = ScheduledRun(_iso(started), _iso(datetime.now(UTC)), code,
                       ScheduledRun.status_of(code), project.rel(log), every,
                       " ".join(command), missed_after, segment or "")
    append_run(project.root, run)
    return run


def run_forever(schedule: Schedule, *, ticks: int | None = None,
                echo: Callable[[str], None] = print) -> int:
    """Run the entry's command every period (``ticks`` times, or until interrupted);
    returns the last tick's exit code."""
    command = schedule.tick_command()
    echo(f"nbp: schedule: every {schedule.every_text} (next tick in {schedule.every:g}s), "
         f"running: {command}")
    due, done, code = time.time() + schedule.every, 0, 0
    while ticks is None or done < ticks:
        time.sleep(max(0.0, due - time.time()))
        code = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                              check=False).returncode
        done += 1
        runs = read_runs(schedule.root)
        last = runs[-1] if runs else None
        echo(f"nbp: schedule: tick {done}: exit code {code}"
             + (f", {last.status}, log {last.log or '-'}" if last else ""))
        now = time.time()
        while due <= now:  # a tick longer than the period: wait for the next boundary
            due += schedule.every
    return code
