"""The prediction log's one connection, its writer thread, and group commit.

Model decisions are committed by the predictor thread right after scoring, one
transaction per micro-batch (:meth:`LogWriter.commit`). Everything else (fallback
decisions, feedback, new feature columns) is queued to the writer thread, which handles
all that is queued since its last turn in one go. Either way a future is resolved only
after the commit, and the response waits for it: a ``kill -9`` loses no answered
prediction (SQLite WAL, see nbpipeline/predlog.py), and the event loop never waits on
SQLite.

WAL checkpoints (copying the WAL back into the database, with an fsync) run on a thread
of their own every CHECKPOINT_SECONDS, not inside whichever commit crosses SQLite's
page limit: there they stalled that commit's requests for milliseconds.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbpipeline import predlog
from nbpipeline.errors import ServeError
from nbpipeline.serve.batching import take_group

log = logging.getLogger("nbpipeline.serve")

MAX_GROUP = 1024  # queued operations handled per commit
CHECKPOINT_SECONDS = 0.5


@dataclass
class _Op:
    kind: str  # "write" | "feedback" | "schema"
    payload: Any
    future: Future[Any] = field(default_factory=Future)


@dataclass
class WriterStats:
    """Counters read by /metrics and /health (written by the writer thread only)."""

    rows: int = 0
    commits: int = 0
    errors: int = 0
    last_error: str | None = None


class LogWriter:
    """Owns the one write connection to the prediction log."""

    def __init__(self, path: Path, on_commit: Callable[[int, float], None] | None = None) -> None:
        self.path = Path(path)
        self.stats = WriterStats()
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._columns: frozenset[str] = frozenset()  # feature columns (only we add them)
        self._lock = threading.Lock()  # the connection is used by this thread and the predictor
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None

    def start(self) -> None:
        """Open the database (in the caller, so start-up errors surface) and start the thread."""
        try:
            self._conn = predlog.connect(self.path)
            predlog.ensure_schema(self._conn)
            self._columns = frozenset(predlog.feature_columns(self._conn))
            self._conn.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_loop
            checkpoints = predlog.connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise ServeError(
                f"{self.path}: cannot open the prediction log ({exc}); check the directory is "
                "writable and the file is an nbpipeline prediction log, or set $NBPIPELINE_PREDLOG"
            ) from exc
        self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)
        self._thread.start()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(checkpoints,), name="predlog-checkpoint",
            daemon=True,
        )
        self._checkpointer.start()

    @classmethod
    def check(cls, path: Path) -> None:
        """Open the log and create its tables once (ServeError naming the file if impossible)."""
        writer = cls(path)
        writer.start()
        writer.close()

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread and close the database."""
        self._stopping.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout)
            self._checkpointer = None
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    # ------------------------------------------------------------------ requests
    def _submit(self, kind: str, payload: Any) -> Future[Any]:
        if self._thread is None:
            raise ServeError(f"{self.path}: the prediction log writer is not running")
        op = _Op(kind, payload)
        self._queue.put(op)
        return op.future

    def write(self, records: list[predlog.PredictionRecord]) -> Future[int]:
        """Append ``records``; the future resolves once they are committed."""
        return self._submit("write", records)

    def feedback(self, request_id: str, outcome: int, ts: float) -> Future[bool]:
        """Record an outcome; the future resolves to False for an unknown request id."""
        return self._submit("feedback", (request_id, outcome, ts))

    def ensure_features(self, kinds: Mapping[str, str]) -> Future[None]:
        """Add typed columns for a newly served model's features."""
        return self._submit("schema", dict(kinds))

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        assert self._conn is not None
        stop = False
        while not stop:
            ops, stop = take_group(self._queue, MAX_GROUP)
            if ops:
                self._handle(ops)
        self._conn.close()

    def _checkpoint_loop(self, conn: sqlite3.Connection) -> None:
        """Copy committed WAL frames into the database, off the request path.

        PASSIVE never blocks the writer; frames a reader still needs wait for the next
        turn. (The last connection to close checkpoints what is left.)
        """
        done = -1
        try:
            while not self._stopping.wait(CHECKPOINT_SECONDS):
                if self.stats.commits == done:
                    continue
                done = self.stats.commits
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # e.g. disk full: the commits report it too
                    log.warning("prediction log %s: checkpoint failed: %s", self.path, exc)
        finally:
            conn.close()

    def _handle(self, ops: list[_Op]) -> None:
        writes = [op for op in ops if op.kind == "write"]
        for op in ops:
            if op.kind == "schema":
                self._settle(op, self._ensure_schema)
        if writes:
            self._commit(writes)
        for op in ops:
            if op.kind == "feedback":
                self._settle(op, self._feedback)

    def _ensure_schema(self, kinds: Mapping[str, str]) -> None:
        assert self._conn is not None
        with self._lock:
            predlog.ensure_schema(self._conn, kinds)
            self._columns = frozenset(predlog.feature_columns(self._conn))

    def _feedback(self, payload: tuple[str, int, float]) -> bool:
        assert self._conn is not None
        with self._lock:
            return predlog.record_feedback(self._conn, *payload)

    def commit(self, records: list[predlog.PredictionRecord]) -> int:
        """Append ``records`` in one transaction now, on the calling thread (thread-safe).

        The predictor thread calls this right after scoring (see predictor.py); queued
        :meth:`write` calls end up here on the writer thread. Raises if the write failed.
        """
        assert self._conn is not None
        start = time.perf_counter()
        try:
            with self._lock:
                count = predlog.insert_rows(self._conn, records, present=self._columns)
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("prediction log %s: cannot append %d rows: %s", self.path, len(records), exc)
            raise
        self.stats.rows += count
        self.stats.commits += 1
        if self._on_commit is not None:
            self._on_commit(count, time.perf_counter() - start)
        return count

    def _commit(self, writes: list[_Op]) -> None:
        try:
            self.commit([rec for op in writes for rec in op.payload])
        except Exception:
            # One bad group must not fail the others: retry each request on its own.
            for op in writes:
                self._settle(op, self.commit)
            return
        for op in writes:
            op.future.set_result(len(op.payload))

    def _settle(self, op: _Op, action: Callable[[Any], Any]) -> None:
        try:
            result = action(op.payload)
        except Exception as exc:  # reported to the waiting request, which answers 503
            if op.kind != "write":  # commit() has counted and logged it already
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("prediction log %s: %s failed: %s", self.path, op.kind, exc)
            op.future.set_exception(exc)
            return
        op.future.set_result(result)
