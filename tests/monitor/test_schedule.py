"""`nbp schedule`: the cron entry and systemd units it prints or installs, the locked and
logged tick, failed and missed runs as monitor alarms and on the index, and (slow) the
generated entry run by the foreground runner: a failing run, then the monitor on the next
tick reporting it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from projects import REPO, project_env

from nbpipeline.cli import main
from nbpipeline.monitor.command import ALARM_EXIT, WARN_EXIT
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.core import run_monitor
from nbpipeline.monitor.scheduled import schedule_alarms
from nbpipeline.project import Project
from nbpipeline.report.index import build_index
from nbpipeline.schedule.entry import cron_fields, make_schedule, parse_every
from nbpipeline.schedule.runs import (
    FINDING_EXITS,
    LOCK_FILE,
    TICK_ENV,
    ScheduledRun,
    append_run,
    health,
    read_record,
    read_runs,
    running_since,
    runs_dir,
)
from nbpipeline.schedule.tick import tick

NBP = Path(sys.executable).parent / "nbp"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example's dvc.yaml, params.yaml and monitor notebook; no model, no traffic."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "monitor.ipynb", root / "notebooks")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def _set_params(root: Path, section: str, values: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run(start: datetime, exit_code: int | None, every: float = 3600.0,
         log: str = "logs/schedule/x.log") -> ScheduledRun:
    end = start + timedelta(seconds=5)
    return ScheduledRun(start.isoformat(), end.isoformat(), exit_code,
                        ScheduledRun.status_of(exit_code), log, every)


def test_cron_entry_from_params_and_options(project):
    _set_params(project, "schedule", {"every": "15m"})
    environ = {"NBP_SERVE_TOKEN": "a b%c", "DASK_SCHEDULER_ADDRESS": "tcp://h:8786",
               "HOME": "/home/x", "OTHER": "no"}
    schedule = make_schedule(Project(project), environ=environ)
    line = schedule.cron_line().splitlines()
    assert line[0] == f"# nbp schedule: {project.resolve()}"
    assert line[1].startswith(f"*/15 * * * * cd {project.resolve()} && mkdir -p logs/schedule "
                              f"&& PATH={NBP.parent}:")
    # the venv's own nbp by absolute path; NBP_*/DASK_* passed (quoted, % escaped), no others
    assert f"{NBP} schedule tick --every 15m" in line[1]
    assert "NBP_SERVE_TOKEN='a b\\%c'" in line[1]
    assert "DASK_SCHEDULER_ADDRESS=tcp://h:8786" in line[1]
    assert "OTHER" not in line[1] and "HOME" not in line[1]
    assert line[1].endswith(">>logs/schedule/cron.out 2>&1")
    # an option beats params; the shell command the runner runs is the cron line's
    hourly = make_schedule(Project(project), every="2h", environ={})
    assert hourly.cron_line().splitlines()[1].startswith("0 */2 * * * ")
    assert hourly.tick_command() in hourly.cron_line()
    assert [cron_fields(parse_every(p)) for p in ("1m", "30m", "1h", "1d")] == [
        "* * * * *", "*/30 * * * *", "0 * * * *", "0 0 * * *"]


def test_printed_entry_is_pipeable_and_says_whether_runs_retrain(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["schedule", "--every", "1h"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("# nbp schedule:") and len(out.splitlines()) == 2
    assert "logs/schedule/runs.jsonl" in err and "retrain_action is not `dvc`" in err
    params = yaml.safe_load((project / "params.yaml").read_text())
    _set_params(project, "monitor", {**params["monitor"], "retrain_action": "dvc"})
    assert main(["schedule", "--every", "1h"]) == 0
    assert "retrain_action" not in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--every", "7m"], "cron cannot run every 7m evenly"),
    (["--every", "soon"], "schedule period 'soon': write a number and a unit"),
    (["--cron", "* * *"], "give five (minute hour day month weekday)"),
])
def test_bad_period_is_one_line(project, monkeypatch, capsys, args, message):
    monkeypatch.chdir(project)
    assert main(["schedule", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_install_without_cron_says_what_is_missing(project, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no crontab on it
    assert main(["schedule", "--install"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no `crontab` command" in err and "crontab -e" in err and "nbp schedule run" in err


@pytest.fixture
def crontab():
    """The real `crontab` (.ci/run installs cron), the user's table put back afterwards."""
    assert shutil.which("crontab"), "no `crontab`: apt-get install cron (as .ci/run does)"
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    subprocess.run(["crontab", "-"], input="MAILTO=ana\n0 3 * * * backup\n", text=True, check=True)
    yield lambda: subprocess.run(["crontab", "-l"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    if before.returncode == 0:
        subprocess.run(["crontab", "-"], input=before.stdout, text=True, check=True)
    else:
        subprocess.run(["crontab", "-r"], capture_output=True)


def test_install_replaces_the_projects_previous_cron_entry_uninstall_removes_it(
        project, monkeypatch, capsys, crontab):
    monkeypatch.chdir(project)
    assert main(["schedule", "--every", "1h", "--install"]) == 0
    assert main(["schedule", "--every", "15m", "--install"]) == 0  # cron checked the table
    assert "installed in your crontab" in capsys.readouterr().err
    lines = crontab()
    assert lines[:2] == ["MAILTO=ana", "0 3 * * * backup"]  # the user's own lines kept
    assert lines[2] == f"# nbp schedule: {project.resolve()}" and len(lines) == 4
    assert lines[3].startswith("*/15 * * * * cd ")  # the 1h entry replaced, not added to
    # what cron runs: the line after its five fields, by /bin/sh, in cron's bare environment,
    # before any tick made logs/ (the shell refused the redirection there, and ran nothing)
    _set_params(project, "monitor", {"window_sise": 100})  # a quick, recorded failure
    command = lines[3].split(" ", 5)[5].replace("\\%", "%")
    ran = subprocess.run(["/bin/sh", "-c", command], env={"PATH": "/usr/bin:/bin", "HOME": "/"},
                         cwd="/", capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1, ran.stderr
    [failed] = read_runs(project)
    assert "unknown setting(s) window_sise" in (project / failed.log).read_text()
    assert (project / "logs" / "schedule" / "cron.out").is_file()
    assert main(["schedule", "--uninstall"]) == 0
    assert crontab() == ["MAILTO=ana", "0 3 * * * backup"]
    assert main(["schedule", "--uninstall"]) == 0
    assert "nothing to remove" in capsys.readouterr().err.splitlines()[-1]


def test_systemd_units_written_and_verified(project, monkeypatch, capsys, tmp_path):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NBP_SERVE_TOKEN", "secret")
    monkeypatch.chdir(project)
    code = main(["schedule", "--systemd", "--every", "90s", "--install"])
    err = capsys.readouterr().err
    units = sorted((home / ".config" / "systemd" / "user").iterdir())
    assert [u.suffix for u in units] == [".service", ".timer"]
    service = units[0].read_text()
    assert f"WorkingDirectory={project.resolve()}" in service
    assert f"ExecStart={NBP} schedule tick --every 90s" in service
    assert "Environment=NBP_SERVE_TOKEN=secret" in service
    assert "OnUnitActiveSec=90s" in units[1].read_text()
    if shutil.which("systemctl") and subprocess.run(
            ["systemctl", "--user", "is-system-running"], capture_output=True).returncode == 0:
        pytest.skip("a systemd user manager runs here: enabling would really install")
    assert code == 2, err  # no user bus here: one line saying how to enable by hand
    assert "systemctl --user enable --now" in err.splitlines()[-1]
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                                capture_output=True, text=True)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    assert main(["schedule", "--systemd", "--uninstall"]) == 0
    assert not list((home / ".config" / "systemd" / "user").iterdir())
    assert "removed" in capsys.readouterr().err


def test_health_failed_missed_and_alarms(project):
    root, now = project, datetime.now(UTC) - timedelta(hours=3)  # run_monitor: 3 h later
    assert health(root, now) is None and FINDING_EXITS == {ALARM_EXIT: "alarms",
                                                           WARN_EXIT: "warnings"}
    append_run(root, _run(now - timedelta(hours=3), 0))
    append_run(root, _run(now - timedelta(hours=2), ALARM_EXIT))  # findings: not a failure
    append_run(root, _run(now - timedelta(hours=1), 1, log="logs/schedule/bad.log"))
    (runs_dir(root) / "runs.jsonl").open("a").write("{damaged\n")
    found = health(root, now)
    assert [r.exit for r in found.failed] == [1] and found.missed_from is None
    later = health(root, now + timedelta(hours=2))  # no run for ~3 periods: missed
    assert later.missed_from is not None and later.missed_periods > 2

    cfg = MonitorConfig.from_params(yaml.safe_load((root / "params.yaml").read_text())["monitor"])
    result = run_monitor(cfg, root)  # no traffic: the schedule's health is still judged
    assert {a.kind for a in result.alarms} == {"schedule_failed", "schedule_missed"}
    assert result.level == "alarm" and "logs/schedule/bad.log" in result.lines()[1]
    summary = json.loads((root / "alarms" / "last_run.json").read_text())
    assert summary["level"] == "alarm" and len(summary["new_alarms"]) == 2
    assert len(run_monitor(cfg, root).new_alarms) == 0  # logged once


def test_tick_skips_while_the_previous_run_holds_the_lock(project):
    folder = runs_dir(project)
    folder.mkdir(parents=True)
    with open(folder / LOCK_FILE, "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write(json.dumps({"pid": os.getpid(), "start": "2026-11-30T10:00:00+00:00"}))
        held.flush()
        assert running_since(project) == datetime(2026, 11, 30, 10, tzinfo=UTC)
        lines: list[str] = []
        assert tick(Project(project), 60.0, echo=lines.append) == 0
    assert "skipped: the previous run still holds logs/schedule/lock" in lines[0]
    assert [(r.status, r.exit, r.log) for r in read_runs(project)] == [("skipped", None, "")]
    assert running_since(project) is None
    assert not list(folder.glob("*.log"))  # the monitor did not run


@pytest.mark.parametrize("ended_ago, running_ago, missed, why", [
    (1.5, 0.01, False, ""),  # the monitor inside a tick: the gap before that tick, 1.5 h
    (3.0, 0.01, True, "check that cron"),  # the scheduler came back after 3 h
    (3.0, 2.5, True, "is still going (hung?"),  # a run hung for 2.5 h; later ticks only skip
])
def test_missed_while_a_tick_runs(project, ended_ago, running_ago, missed, why):
    now = datetime.now(UTC)
    append_run(project, _run(now - timedelta(hours=ended_ago, seconds=5), 0))
    with open(runs_dir(project) / LOCK_FILE, "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        start = (now - timedelta(hours=running_ago)).isoformat()
        held.write(json.dumps({"pid": os.getpid(), "start": start}))
        held.flush()
        alarms = schedule_alarms(project, now)
    assert [a.kind for a in alarms] == (["schedule_missed"] if missed else [])
    assert not missed or why in alarms[0].message


def test_the_monitor_inside_a_long_tick_judges_the_gap_before_it(project, monkeypatch):
    """A tick running for longer than the limit is hung to everyone else, but not to the
    monitor it runs: that one judges the gap before its own tick (1.5 h: not missed)."""
    now = datetime.now(UTC)
    append_run(project, _run(now - timedelta(hours=4, seconds=5), 0))
    start = (now - timedelta(hours=2.5)).isoformat(timespec="seconds")
    with open(runs_dir(project) / LOCK_FILE, "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write(json.dumps({"pid": os.getpid(), "start": start}))
        held.flush()
        assert "is still going (hung?" in schedule_alarms(project, now)[0].message
        monkeypatch.setenv(TICK_ENV, start)
        assert schedule_alarms(project, now) == []


def test_missed_after_is_checked(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    for value, message in [("soon", "schedule.missed_after 'soon': write a number"),
                           ("30m", "shorter than the period 1h, so every run would count")]:
        _set_params(project, "schedule", {"every": "1h", "missed_after": value})
        assert main(["schedule"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_runner_runs_the_entry_a_failure_is_reported_by_the_next_tick(project):
    """Real processes: `nbp schedule run` runs the generated entry's command on its next tick;
    a broken monitor setting fails that run; the next tick's monitor reports it, and the
    gap between them too (schedule.missed_after 1s)."""
    env = project_env()

    def runner() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(NBP), "schedule", "run", "--every", "0.5s", "--ticks", "1"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)

    params = yaml.safe_load((project / "params.yaml").read_text())
    broken = {**params["monitor"], "window_sise": 100}
    _set_params(project, "monitor", broken)
    _set_params(project, "schedule", {"missed_after": "1s"})
    first = runner()
    assert first.returncode == 1, first.stdout + first.stderr
    [failed] = read_runs(project)
    assert (failed.status, failed.exit, failed.missed_after) == ("failed", 1, 1.0)
    assert "unknown setting(s) window_sise" in (project / failed.log).read_text()
    assert "tick 1: exit code 1, failed, log logs/schedule/" in first.stdout

    _set_params(project, "monitor", params["monitor"])  # fixed; the next tick runs the monitor
    gap = datetime.fromisoformat(failed.end) + timedelta(seconds=2) - datetime.now(UTC)
    time.sleep(max(0.0, gap.total_seconds()))  # more than missed_after without a run
    second = runner()
    assert second.returncode == ALARM_EXIT, second.stdout + second.stderr
    worked = read_runs(project)[-1]
    assert (worked.status, worked.exit) == ("alarms", ALARM_EXIT)
    log = (project / worked.log).read_text()
    assert "nbp: monitor: no traffic yet" in log
    assert "ALARM schedule_failed: 1 scheduled monitor run(s) failed" in log
    assert failed.log in log and "exit code 3 after" in log
    # missed, judged up to the second tick's start (not "hung": the monitor runs in it)
    assert "ALARM schedule_missed: no scheduled monitor run finished from" in log
    assert "check that cron" in log
    assert "schedule_failed" in (project / "reports" / "monitor.html").read_text()

    page = build_index(Project(project), compare_previous=False).read_text()
    assert "Scheduled monitor runs" in page and ">failed<" in page and ">alarms<" in page
    assert f'href="../{worked.log}"' in page and f'href="../{failed.log}"' in page


@pytest.mark.parametrize("damage", [
    b"[1]", b"\xff\xfe", b'{"start": "x", "end": "y", "exit": 1, "status": "failed", "log": "",'
    b' "every": 60}', b'{"start": "2026-11-30T10:00:00+00:00", "end": "2026-11-30T10:00:05+00:00"'
    b', "exit": 1, "status": "failed", "log": "", "every": 0}'])
def test_a_damaged_runs_record_is_skipped_not_raised(project, damage):
    """Regression: a line holding a list, bytes that are not UTF-8, a time that is not ISO or
    a period of 0 crashed `nbp monitor` (and `nbp report`) instead of being skipped."""
    now = datetime.now(UTC)
    append_run(project, _run(now - timedelta(hours=3), 1))
    with (runs_dir(project) / "runs.jsonl").open("ab") as fh:
        fh.write(damage + b"\n")
    naive = _run(now.replace(tzinfo=None) - timedelta(minutes=10), 0)  # a zone-less time is UTC
    append_run(project, naive)
    assert read_record(project).damaged == 1 and read_runs(project)[-1] == naive
    assert schedule_alarms(project, now) == []  # the last run (10 min ago) worked


@pytest.mark.slow
def test_a_factory_tick_monitors_every_segment_a_failing_one_is_reported(project):
    """A model factory's tick runs `nbp monitor --segment S` for each segment with a
    registry, each logged and recorded: north fails (its report folder is a file), south
    still runs, and its monitor reports north's failure; /health's section names north."""
    from nbpipeline.schedule.status import ScheduleStatus

    params = yaml.safe_load((project / "params.yaml").read_text())["monitor"]
    _set_params(project, "monitor", {**params, "predlog_path": "logs/{segment}/predictions.db",
                                     "registry_dir": "registry/{segment}",
                                     "alarm_log": "alarms/{segment}/alarms.jsonl",
                                     "retrain_marker": "retrain/{segment}/requested.json"})
    for segment in ("north", "south"):
        (project / "registry" / segment).mkdir(parents=True)
        (project / "registry" / segment / "events.jsonl").touch()
    (project / "reports").mkdir()
    (project / "reports" / "north").write_text("not a folder")
    lines: list[str] = []
    code = tick(Project(project), 3600.0, echo=lines.append)
    north, south = read_runs(project)
    assert code == north.exit and (north.status, north.segment) == ("failed", "north"), lines
    assert (south.status, south.exit, south.segment) == ("alarms", ALARM_EXIT, "south"), lines
    assert south.command.endswith("nbp monitor --segment south")
    assert [line.split(" (")[0] for line in lines] == [
        "nbp: schedule: segment north: failed", "nbp: schedule: segment south: alarms"]
    assert north.log.endswith("-north.log") and south.log.endswith("-south.log")
    log = (project / south.log).read_text()
    assert "nbp: monitor: no traffic yet" in log
    assert "ALARM schedule_failed: 1 scheduled monitor run(s) of segment north failed" in log
    assert (project / "alarms" / "south" / "last_run.json").is_file()

    later = _run(datetime.now(UTC), 0)  # a later run of south that worked hides nothing
    append_run(project, ScheduledRun(**{**later.__dict__, "segment": "south"}))
    assert [r.segment for r in health(project).failed] == ["north"]
    section = ScheduleStatus(project).section()
    assert (section["status"], section["failed_segments"]) == ("failed", ["north"])
    [alarm] = schedule_alarms(project)
    assert alarm.subject == f"run {north.start} north"
