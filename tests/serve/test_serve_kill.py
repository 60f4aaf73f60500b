"""`nbp serve` as a real process, killed with SIGKILL under load: every answered prediction
is on disk (in the log or the spool), the next start moves the spool into the log, and the
database is intact."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from candidates import synthetic_candidate
from serve_fixtures import (
    free_port,
    hammer,
    make_project,
    register,
    spooled_ids,
    start_server_process,
    wait_ready,
)

from nbpipeline.predlog import spool
from nbpipeline.predlog import table as predlog
from nbpipeline.release.registry import Registry
from nbpipeline.serve.logwriter import LogWriter


def test_kill_9_under_load_loses_no_answered_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "proj")
    register(Registry(project.registry), synthetic_candidate(tmp_path / "cand"))
    port = free_port()
    proc = start_server_process(project, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
        ids: list[str] = []
        errors: list[int] = []
        load = threading.Thread(
            target=lambda: errors.append(asyncio.run(hammer(url, 20000, 8, ids, timeout=5)))
        )
        load.start()
        deadline = time.monotonic() + 30
        while len(ids) < 300 and time.monotonic() < deadline:  # well into the load
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        load.join(30)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not load.is_alive()
    assert proc.returncode == -signal.SIGKILL
    answered = set(ids)
    assert len(answered) >= 300 and errors and errors[0] >= 1  # cut off mid-load

    path = predlog.default_log_path(project.root)
    in_sqlite = logged_ids(path)
    # Durable when answered: each answered row is in SQLite or in the dead server's spool.
    spooled = spooled_ids(path)
    missing = answered - in_sqlite - spooled
    assert not missing, f"{len(missing)} answered predictions are neither in the log nor spooled"

    writer = LogWriter(path)  # what the next `nbp serve` does first: moves the spool in
    writer.start()
    writer.close()
    assert writer.stats.recovered == len(spooled - in_sqlite)  # shown in /health
    assert spool.orphans(path) == []
    logged = logged_ids(path)
    assert answered <= logged, f"{len(answered - logged)} answered predictions missing from the log"
    assert logged == in_sqlite | spooled
    # Rows logged but whose response was lost with the process are allowed (logged >= answered).
    assert len(logged) - len(answered) <= 64


def logged_ids(path: Path) -> set[str]:
    """The request ids in the log, after checking the database is intact."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {row[0] for row in conn.execute("SELECT request_id FROM predictions")}
    finally:
        conn.close()
