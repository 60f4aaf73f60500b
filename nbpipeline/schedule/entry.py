"""What ``nbp schedule`` prints or installs: a cron line or a systemd user timer.

Both run the same command, :func:`tick_command`: in the project's directory, with the
venv's own ``nbp`` (an absolute path: cron and systemd do not activate a venv), the venv's
``bin`` first on PATH (the monitor's retrain calls ``dvc``), and the ``NBP_*`` / ``DASK_*``
variables of the shell that ran ``nbp schedule`` (only those that are set), it runs
``nbp schedule tick --every PERIOD``. The tick takes the lock, runs ``nbp monitor`` (which
retrains when the monitor asks for it and ``monitor.retrain_action`` is ``dvc``), writes the
log and the runs record, and exits with the monitor's exit code.

The period comes from ``--every`` or params.yaml ``schedule.every`` (default ``1h``); cron's
time fields are derived from it (``*/15 * * * *`` for 15m) unless ``--cron`` or
``schedule.cron`` gives them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbpipeline.errors import ScheduleError
from nbpipeline.params import load_params
from nbpipeline.project import Project, write_text_atomic
from nbpipeline.schedule.runs import MISSED_MIN_SECONDS, RUNS_DIR, UNITS, period_text

SECTION = "schedule"  # params.yaml section read by `nbp schedule` only (not a stage's)
DEFAULT_EVERY = "1h"
PASSED_ENV = ("NBP_", "DASK_")  # prefixes of variables the entry carries when they are set
MARK = "# nbp schedule:"  # the comment line above our crontab entry (one per project)


def parse_every(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``1d`` in seconds; ScheduleError naming the fix otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(text))
    if not found or float(found.group(1)) <= 0:
        raise ScheduleError(f"schedule period {text!r}: write a number and a unit s, m, h or d "
                            "(e.g. --every 15m or params.yaml schedule.every: 1h)")
    return float(found.group(1)) * UNITS[found.group(2)]


def cron_fields(seconds: float) -> str:
    """Cron's five time fields for a period that divides an hour or a day evenly."""
    minutes, hours = seconds / 60, seconds / 3600
    if minutes == 1:
        return "* * * * *"
    if minutes.is_integer() and minutes < 60 and 60 % minutes == 0:
        return f"*/{int(minutes)} * * * *"
    if hours.is_integer() and hours < 24 and 24 % hours == 0:
        return "0 * * * *" if hours == 1 else f"0 */{int(hours)} * * *"
    if seconds == 86400:
        return "0 0 * * *"
    raise ScheduleError(f"cron cannot run every {period_text(seconds)} evenly: choose a period "
                        "that divides an hour or a day (1m..30m, 1h..12h, 1d), give the time "
                        "fields with --cron, or use --systemd (any period)")


@dataclass(frozen=True)
class Schedule:
    """One project's scheduled monitor run: where, how often, with which ``nbp``."""

    root: Path
    every: float
    nbp: Path
    env: dict[str, str]
    cron: str = ""  # cron time fields given by the user ("" = derived from ``every``)
    missed_after: float | None = None  # params.yaml schedule.missed_after (None: the default)

    @property
    def every_text(self) -> str:
        return period_text(self.every)

    @property
    def name(self) -> str:
        """The systemd unit name: the project's directory and a hash of its path."""
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", self.root.name).strip("-") or "project"
        return f"nbp-schedule-{slug}-{hashlib.sha1(str(self.root).encode()).hexdigest()[:8]}"

    def tick_argv(self) -> list[str]:
        """The tick's argument vector (what systemd's ExecStart runs)."""
        return [str(self.nbp), "schedule", "tick", "--every", self.every_text]

    def tick_command(self) -> str:
        """The whole command as one ``sh`` line: cd, the log folder, environment, the tick.
        The cron line appends cron's own output to the log folder, so the folder is made
        first: before the first tick there is none, and the shell would refuse the
        redirection (and not run the tick)."""
        assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        argv = " ".join(shlex.quote(a) for a in self.tick_argv())
        return (f"cd {shlex.quote(str(self.root))} && mkdir -p {shlex.quote(RUNS_DIR)} && "
                f"{assign} {argv}")

    def cron_line(self) -> str:
        """The crontab entry (a comment naming the project, then the line)."""
        fields = self.cron or cron_fields(self.every)
        out = shlex.quote(f"{RUNS_DIR}/cron.out")
        command = f"{self.tick_command()} >>{out} 2>&1".replace("%", "\\%")  # % ends a cron line
        return f"{MARK} {self.root}\n{fields} {command}\n"

    def systemd_units(self) -> dict[str, str]:
        """``<name>.service`` and ``<name>.timer`` for ``~/.config/systemd/user``."""
        env = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in self.env.items())
        service = (
            f"[Unit]\nDescription=nbp monitor of {self.root} (nbp schedule)\n\n"
            f"[Service]\nType=oneshot\nWorkingDirectory={self.root}\n{env}"
            f"ExecStart={' '.join(_systemd_quote(a) for a in self.tick_argv())}\n"
            # keep the monitor's exit codes for findings (3 alarms, 4 warnings) from
            # marking the unit failed; the runs record keeps every code
            "SuccessExitStatus=3 4\n"
        )
        timer = (
            f"[Unit]\nDescription=run {self.name}.service every {self.every_text}\n\n"
            f"[Timer]\nOnActiveSec={self.every:g}s\nOnUnitActiveSec={self.every:g}s\n"
            f"AccuracySec=1s\nUnit={self.name}.service\n\n[Install]\nWantedBy=timers.target\n"
        )
        return {f"{self.name}.service": service, f"{self.name}.timer": timer}


def _systemd_quote(word: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def own_nbp() -> Path:
    """This venv's ``nbp`` (beside the running interpreter), as an absolute path."""
    beside = Path(sys.executable).parent / "nbp"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("nbp")
    if found is None:
        raise ScheduleError("cannot find the `nbp` command beside this Python or on PATH; "
                            "install nbpipeline into the project's venv (make setup)")
    return Path(found).absolute()


def passed_env(environ: Mapping[str, str], nbp: Path) -> dict[str, str]:
    """PATH with the venv's bin first, then the ``NBP_*`` / ``DASK_*`` variables set."""
    env = {"PATH": f"{nbp.parent}:/usr/local/bin:/usr/bin:/bin"}
    env.update({k: v for k, v in sorted(environ.items()) if k.startswith(PASSED_ENV)})
    return env


def make_schedule(project: Project, *, every: str | None = None, cron: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Schedule:
    """The project's schedule: options first, then params.yaml ``schedule:``, then 1h."""
    section: Any = load_params(project.params_yaml).get(SECTION) or {}
    if not isinstance(section, Mapping) or set(section) - {"every", "cron", "missed_after"}:
        raise ScheduleError(f"params.yaml schedule: {section!r} may only set `every` (e.g. "
                            "1h), `cron` (five time fields) and `missed_after` (e.g. 3h)")
    period = parse_every(every or section.get("every") or DEFAULT_EVERY)
    fields = (cron or section.get("cron") or "").strip()
    if fields and len(fields.split()) != 5:
        raise ScheduleError(f"cron time fields {fields!r}: give five (minute hour day month "
                            "weekday), e.g. --cron '*/15 * * * *'")
    nbp = own_nbp()
    return Schedule(project.root.resolve(), period, nbp,
                    passed_env(os.environ if environ is None else environ, nbp), fields,
                    _missed_after(section.get("missed_after"), period))


def _missed_after(text: object, every: float) -> float | None:
    """params.yaml ``schedule.missed_after`` in seconds (None when not set)."""
    if text in (None, ""):
        return None
    how = ("write a number and a unit s, m, h or d (e.g. 3h), or leave it out for two "
           f"periods, at least {period_text(MISSED_MIN_SECONDS)}")
    try:
        seconds = parse_every(str(text))
    except ScheduleError:
        raise ScheduleError(f"params.yaml schedule.missed_after {text!r}: {how}") from None
    if seconds < every:
        raise ScheduleError(f"params.yaml schedule.missed_after {text!r} is shorter than the "
                            f"period {period_text(every)}, so every run would count as missed; "
                            f"{how}")
    return seconds


def _crontab_without(schedule: Schedule) -> tuple[list[str], bool]:
    """The user's crontab lines other than this project's entry, and whether it had one."""
    if shutil.which("crontab") is None:
        raise ScheduleError(
            "there is no `crontab` command here (cron is not installed); "
            "install cron (e.g. `apt-get install cron`) and add the line printed by "
            "`nbp schedule` with `crontab -e`, or run `nbp schedule run` under a supervisor")
    listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    kept, skip, found = [], False, False
    for line in (listed.stdout if listed.returncode == 0 else "").splitlines():
        if line == f"{MARK} {schedule.root}":
            skip = found = True  # our previous entry: the mark and the line after it
            continue
        if not skip:
            kept.append(line)
        skip = False
    return kept, found


def _write_crontab(lines: list[str], entry: str = "") -> None:
    """Replace the user's crontab (``crontab -`` checks the table before taking it)."""
    table = "".join(f"{line}\n" for line in lines) + entry
    done = subprocess.run(["crontab", "-"], input=table, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise ScheduleError(f"`crontab -` refused the table ({done.stderr.strip()}); edit "
                            "it with `crontab -e` (the line is printed by `nbp schedule`)")


def install_cron(schedule: Schedule) -> str:
    """Put the entry in the user's crontab (replacing this project's previous one)."""
    kept, _ = _crontab_without(schedule)
    _write_crontab(kept, schedule.cron_line())
    return "crontab"


def uninstall_cron(schedule: Schedule) -> bool:
    """Remove this project's entry from the user's crontab; False if there was none."""
    kept, found = _crontab_without(schedule)
    if found:
        _write_crontab(kept)
    return found


def write_units(schedule: Schedule, home: Path | None = None) -> list[Path]:
    """Write the timer and service to ``~/.config/systemd/user`` (atomically)."""
    folder = (home or Path.home()) / ".config" / "systemd" / "user"
    written = []
    for name, text in schedule.systemd_units().items():
        write_text_atomic(folder / name, text)
        written.append(folder / name)
    return written


def enable_timer(schedule: Schedule) -> None:
    """``systemctl --user daemon-reload`` and ``enable --now`` the timer."""
    how = (f"`systemctl --user daemon-reload && systemctl --user enable --now "
           f"{schedule.name}.timer` in a login session with a user manager")
    for args in (["daemon-reload"], ["enable", "--now", f"{schedule.name}.timer"]):
        try:
            done = subprocess.run(["systemctl", "--user", *args], capture_output=True,
                                  text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScheduleError(f"units written, but `systemctl --user` cannot run ({exc}); "
                                f"run {how}") from exc
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ScheduleError(f"units written, but `systemctl --user {' '.join(args)}` "
                                f"failed ({why}): there is no systemd user manager here; run "
                                f"{how}, or use `nbp schedule run` under a supervisor")


def remove_units(schedule: Schedule, home: Path | None = None) -> list[Path]:
    """Stop and disable the timer (when a user manager runs) and delete its unit files."""
    folder = (home or Path.home()) / ".config" / "systemd" / "user"
    units = [folder / name for name in schedule.systemd_units() if (folder / name).exists()]
    if units:
        try:  # without a user manager there is nothing enabled to stop
            subprocess.run(["systemctl", "--user", "disable", "--now", f"{schedule.name}.timer"],
                           capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for path in units:
        path.unlink()
    return units
