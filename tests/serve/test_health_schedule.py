"""The model server's ``GET /health`` says how the scheduled monitor runs (``nbp schedule``)
are doing, read from logs/schedule/runs.jsonl: over real HTTP (a real uvicorn on
loopback), through the states the record goes through, a damaged and an unreadable one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from serve_fixtures import make_project, running_server

from nbpipeline.schedule.runs import (
    RUNS_FILE,
    CachedRecord,
    ScheduledRun,
    append_run,
    runs_dir,
)


def _run(start: datetime, exit_code: int, log: str = "logs/schedule/a.log") -> ScheduledRun:
    end = start + timedelta(seconds=5)
    return ScheduledRun(start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds"),
                        exit_code, ScheduledRun.status_of(exit_code), log, 3600.0, "/x/nbp monitor")


def test_health_shows_scheduled_runs_ok_failed_missed_damaged_and_unreadable(tmp_path: Path):
    project = make_project(tmp_path / "proj")
    record = runs_dir(project.root) / RUNS_FILE
    now = datetime.now(UTC)

    with running_server(project) as url:
        def section() -> dict:
            resp = httpx.get(f"{url}/health", timeout=5)
            assert resp.status_code == 200 and str(project.root) not in resp.text
            return resp.json()["schedule"]

        assert section() == {"status": "none", "record": "logs/schedule/runs.jsonl",
                             "damaged_lines": 0, "error": None}

        append_run(project.root, _run(now - timedelta(minutes=30), 3))  # findings: it worked
        ok = section()
        assert ok["status"] == "ok" and ok["every"] == "1h" and ok["every_seconds"] == 3600
        assert ok["last_run"] == {"start": (now - timedelta(minutes=30)).isoformat(
            timespec="seconds"), "end": ok["last_run"]["end"], "exit": 3, "status": "alarms",
            "log": "logs/schedule/a.log", "segment": ""}
        assert ok["missed_since"] is None and ok["running_since"] is None
        assert ok["missed_after_seconds"] == 7200

        append_run(project.root, _run(now - timedelta(minutes=5), 1, "logs/schedule/b.log"))
        with record.open("ab") as fh:  # damage: not JSON, not an object, not UTF-8, bad time
            fh.write(b"{torn\n[1]\n\xff\xfe\n" + json.dumps(
                {**json.loads(record.read_text().splitlines()[0]), "end": "later"}).encode()
                + b"\n")
        failed = section()
        assert failed["status"] == "failed" and failed["failed_runs"] == 1
        assert failed["failed_segments"] == []
        assert failed["last_run"]["exit"] == 1 and failed["last_run"]["log"].endswith("b.log")
        assert failed["damaged_lines"] == 4 and "4 damaged line(s) skipped" in failed["error"]

        record.write_text("")  # the scheduler stopped 3 h ago: missed beats the old failure
        append_run(project.root, _run(now - timedelta(hours=3), 1))
        missed = section()
        assert missed["status"] == "missed" and missed["failed_runs"] == 1
        assert missed["missed_since"] == missed["last_run"]["end"]

        record.unlink()
        record.mkdir()  # unreadable: said in the section, never a 5xx
        broken = section()
        assert broken["status"] == "unknown"
        assert broken["error"].startswith("cannot read logs/schedule/runs.jsonl: ")


def test_the_record_is_parsed_again_only_when_it_changed(tmp_path: Path):
    root, now = tmp_path, datetime.now(UTC)
    cache = CachedRecord(root)
    assert cache.read().runs == []
    append_run(root, _run(now, 0))
    first = cache.read()
    assert cache.read() is first and len(first.runs) == 1  # unchanged: not read again
    append_run(root, _run(now, 1))
    assert [r.exit for r in cache.read().runs] == [0, 1]
