"""The prediction log's spool and writer: durable on append, moved into SQLite behind the
request path, recovered after a crash (torn tail dropped, corruption kept aside)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from projects import REPO
from serve_fixtures import wait_for

from nbpipeline.predlog import spool
from nbpipeline.predlog import table as predlog
from nbpipeline.serve.logwriter import LogWriter


def record(request_id: str, x: float = 1.0) -> predlog.PredictionRecord:
    return predlog.PredictionRecord(
        request_id=request_id, ts=time.time(), model_version="v1", role="champion",
        prediction=1, probability=0.7, latency_ms=1.0, features={"x": x, "extra": "e"},
    )


def encoded(*ids: str) -> predlog.Encoded:
    return predlog.encode_rows([record(i) for i in ids], frozenset({"f_x"}))


def logged(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM predictions ORDER BY rowid")]
    finally:
        conn.close()


@pytest.fixture
def writer(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = LogWriter(tmp_path / "log.db")
    w.start()
    w.ensure_features({"x": "number"}).result(10)
    yield w
    w.close()


def test_appended_rows_reach_sqlite_and_the_spool_is_emptied_on_close(
    writer: LogWriter, tmp_path: Path
) -> None:
    writer.append([record(f"r{i}", float(i)) for i in range(5)])
    writer.append([record("r5")])
    assert wait_for(lambda: len(logged(tmp_path / "log.db")) == 6)
    assert writer.stats.rows == 6 and writer.backlog_bytes() == 0
    conn = predlog.connect(tmp_path / "log.db")
    assert predlog.logged_features(conn, "r3") == {"x": 3.0, "extra": "e"}
    conn.close()
    writer.close()
    assert spool.orphans(tmp_path / "log.db") == []


def test_feedback_finds_a_prediction_spooled_a_moment_ago(writer: LogWriter) -> None:
    writer.append([record("just-now")])
    assert writer.feedback("just-now", 1, time.time()).result(10) is True
    assert writer.feedback("never", 1, time.time()).result(10) is False


def test_appends_do_not_wait_for_a_locked_database(writer: LogWriter, tmp_path: Path) -> None:
    """Another process holds the database: requests keep being logged (spooled) and the
    rows reach SQLite once it is free."""
    blocker = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(200):  # would hang here if appending waited on SQLite
            writer.append([record(f"locked-{i}")])
        assert writer.backlog_bytes() > 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_for(lambda: len(logged(tmp_path / "log.db")) == 200)


def test_full_segments_are_deleted_once_in_sqlite(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path / "s", segment_bytes=300)
    for i in range(6):
        box.append(encoded(f"id{i}"))
    segments = sorted((tmp_path / "s").glob("*.seg"))
    assert len(segments) >= 3
    unread = box.read(1 << 20)
    assert unread is not None and unread.count == 6
    box.mark_done(unread)
    assert sorted((tmp_path / "s").glob("*.seg")) == segments[-1:]  # the open one stays
    assert box.read(1 << 20) is None
    assert box.close() == 0 and list((tmp_path / "s").glob("*.seg")) == []


def test_recover_moves_a_dead_servers_rows_in_once_and_drops_a_torn_last_frame(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    conn = predlog.connect(db)
    predlog.ensure_schema(conn, {"x": "number"})
    predlog.insert_encoded(conn, encoded("a"))  # moved in before the crash
    dead = spool.Spool(spool.spool_dir(db))
    dead.append(encoded("a", "b"))
    dead.append(encoded("c"))
    assert dead.close() > 0  # not moved in: the file stays, unlocked, as after kill -9
    [segment] = spool.orphans(db)
    torn = spool.encode_frame(encoded("never-answered"))
    with segment.open("ab") as f:
        f.write(torn[: len(torn) // 2])  # killed inside write()

    result = spool.recover(db, conn)
    assert (result.rows, result.segments, result.corrupt) == (2, 1, [])
    assert logged(db) == ["a", "b", "c"]
    assert spool.orphans(db) == []
    assert spool.recover(db, conn).segments == 0


def test_recover_leaves_live_segments_alone(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    live = spool.Spool(spool.spool_dir(db))
    live.append(encoded("live"))
    assert spool.recover(db).segments == 0  # its flock says a server still owns it
    assert len(spool.orphans(db)) == 1
    live.close()


def test_a_corrupt_frame_keeps_its_segment_aside_and_names_it(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    dead = spool.Spool(spool.spool_dir(db))
    dead.append(encoded("good"))
    dead.append(encoded("bad"))
    dead.append(encoded("after"))
    dead.close()
    [segment] = spool.orphans(db)
    data = bytearray(segment.read_bytes())
    second = len(spool.encode_frame(encoded("good")))
    data[second + 12] ^= 0xFF  # a flipped byte in the second frame's payload
    segment.write_bytes(bytes(data))

    result = spool.recover(db)
    assert result.rows == 1 and logged(db) == ["good"]
    [problem] = result.corrupt
    assert f"bad frame at byte {second}" in problem and ".corrupt" in problem
    assert spool.orphans(db) == [] and len(list(spool.spool_dir(db).glob("*.corrupt"))) == 1


def test_a_failed_write_leaves_no_torn_frame_and_later_appends_still_land(
    tmp_path: Path,
) -> None:
    """A real write failure: the file-size limit (as on a full disk, write() fails part-way).
    Run in a child process, since the limit applies to the whole process."""
    script = textwrap.dedent(f"""
        import json, os, resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from nbpipeline.predlog import spool
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        rows = [(("f_x",), [("id%d" % i, 1.0, "v1", "champion", None, 1, 0.5, 1.0, 0, "{{}}",
                              "x" * 200)]) for i in range(50)]
        box = spool.Spool({str(tmp_path / "s")!r})
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, hard))
        ok = failed = 0
        for frame in rows:
            try:
                box.append([frame])
                ok += 1
            except OSError:
                failed += 1
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        unread = box.read(1 << 20)
        sizes = sorted(p.stat().st_size for p in box.directory.glob("*.seg"))
        print(json.dumps({{"ok": ok, "failed": failed, "read": unread.count, "sizes": sizes}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": ""})
    result = json.loads(out.stdout)
    assert result["failed"] > 0 and result["ok"] > 0
    assert result["read"] == result["ok"]  # every acknowledged row, and nothing torn
    for path in (tmp_path / "s").glob("*.seg"):
        rows, used = spool.decode_frames(path.read_bytes())
        assert used == path.stat().st_size  # whole frames only


def test_the_monitor_moves_a_dead_servers_spool_in_before_reading(tmp_path: Path) -> None:
    from nbpipeline.monitor.scan import open_log

    db = tmp_path / "log.db"
    conn = predlog.connect(db)
    predlog.ensure_schema(conn, {"x": "number"})
    conn.close()
    dead = spool.Spool(spool.spool_dir(db))
    dead.append(encoded("spooled-only"))
    dead.close()
    reader = open_log(db)
    assert reader is not None
    assert reader.execute("SELECT request_id FROM predictions").fetchall() == [("spooled-only",)]
    reader.close()
    assert spool.orphans(db) == []


def test_reads_are_bounded_but_take_a_frame_larger_than_the_bound_whole(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path / "s")
    box.append(encoded(*(f"big{i}" for i in range(50))))  # one frame of 50 rows
    for i in range(10):
        box.append(encoded(f"small{i}"))
    seen = []
    while (unread := box.read(400)) is not None:  # smaller than the first frame
        seen += [row[0] for _, rows in unread.rows for row in rows]
        box.mark_done(unread)
    assert seen == [f"big{i}" for i in range(50)] + [f"small{i}" for i in range(10)]
    box.close()
