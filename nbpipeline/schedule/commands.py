"""What ``nbp schedule`` does (the CLI only parses flags and calls :func:`schedule_command`).

``nbp schedule`` prints the cron entry (``--systemd``: the two unit files) on stdout, so it
can be piped, and what it does on stderr; ``--install`` installs it and ``--uninstall``
removes it. ``nbp schedule tick`` is one scheduled run; ``nbp schedule run`` the foreground
runner (nbpipeline.schedule.tick).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from nbpipeline.errors import ScheduleError
from nbpipeline.params import load_params
from nbpipeline.project import Project
from nbpipeline.schedule import entry
from nbpipeline.schedule.runs import RUNS_DIR, RUNS_FILE
from nbpipeline.schedule.tick import run_forever, tick


def _note(text: str) -> None:
    print(f"nbp: schedule: {text}", file=sys.stderr)


def _retrain_action(project: Project) -> object:
    """params.yaml ``monitor.retrain_action`` as written (the monitor validates it)."""
    section = load_params(project.params_yaml).get("monitor")
    return section.get("retrain_action") if isinstance(section, dict) else None


def schedule_command(
    project: Project, *, action: str | None = None, every: str | None = None,
    cron: str | None = None, systemd: bool = False, install: bool = False,
    uninstall: bool = False, ticks: int | None = None, echo: Callable[[str], None] = print,
    note: Callable[[str], None] = _note,
) -> int:
    """Print or install the entry (no ``action``), or run a ``tick`` or the ``run`` loop."""
    schedule = entry.make_schedule(project, every=every, cron=cron)
    if action == "tick":
        return tick(project, schedule.every, missed_after=schedule.missed_after, echo=echo)
    if action == "run":
        if ticks is not None and ticks < 1:
            raise ScheduleError(f"--ticks {ticks}: give a number of ticks >= 1 (or leave it "
                                "out to run until stopped)")
        return run_forever(schedule, ticks=ticks, echo=echo)
    if systemd and cron:
        raise ScheduleError("--cron gives cron's time fields; a systemd timer runs on the "
                            "period (--every): give one of them")
    if install and uninstall:
        raise ScheduleError("--install and --uninstall: give one of them")
    if uninstall:
        note(_uninstall(schedule, systemd=systemd))
        return 0
    logs = (f"each run logs to {RUNS_DIR}/<UTC time>.log and appends to {RUNS_DIR}/{RUNS_FILE}"
            " (`nbp report` links them; `nbp monitor` alarms on failed or missed runs)")
    done = _print_or_install(schedule, systemd=systemd, install=install, echo=echo, note=note)
    note(done + logs)
    if _retrain_action(project) != "dvc":
        note("monitor.retrain_action is not `dvc`: scheduled runs leave the retrain marker but "
             "do not retrain; set it to `dvc` to close the loop (docs/monitor.md, Retraining)")
    return 0


def _uninstall(schedule: entry.Schedule, *, systemd: bool) -> str:
    """Remove what ``--install`` put in place; says what it removed."""
    if systemd:
        removed = entry.remove_units(schedule)
        return (f"disabled {schedule.name}.timer and removed {', '.join(map(str, removed))}"
                if removed else f"no {schedule.name} units in ~/.config/systemd/user: "
                "nothing to remove")
    if entry.uninstall_cron(schedule):
        return f"removed the entry for {schedule.root} from your crontab"
    return f"your crontab has no entry for {schedule.root}: nothing to remove"


def _print_or_install(schedule: entry.Schedule, *, systemd: bool, install: bool,
                      echo: Callable[[str], None], note: Callable[[str], None]) -> str:
    """Print or install the entry; returns what was done, for the closing note."""
    if systemd:
        if install:
            for path in entry.write_units(schedule):
                note(f"wrote {path}")
            entry.enable_timer(schedule)
            return f"enabled {schedule.name}.timer: `nbp monitor` every {schedule.every_text}; "
        for name, text in schedule.systemd_units().items():
            echo(f"# ~/.config/systemd/user/{name}\n{text}")
        return (f"`nbp monitor` every {schedule.every_text} in {schedule.root}; install with "
                f"--install (or write these files and `systemctl --user enable --now "
                f"{schedule.name}.timer`); ")
    if install:
        entry.install_cron(schedule)
        return f"installed in your crontab: `nbp monitor` every {schedule.every_text}; "
    echo(schedule.cron_line().rstrip("\n"))
    return (f"`nbp monitor` every {schedule.every_text} in {schedule.root}; add the lines "
            "above with `crontab -e` (or --install); ")
