"""The prediction log's writer: the spool on the request path, SQLite behind it.

:meth:`LogWriter.append` runs on the predictor thread right after scoring (and on the
event loop for fallback decisions): it writes the rows to this server's spool segment
(nbpipeline/predlog/spool.py) and returns, and only then is the request answered. So a
``kill -9`` loses no answered prediction, and no request waits on SQLite.

The writer thread moves spooled rows into SQLite every FLUSH_SECONDS, in one transaction
per turn, and handles feedback and new feature columns (queued; each future resolves
after the work is committed). Feedback is handled after the spool is moved in, so an id
answered before its feedback arrived is always found. If SQLite fails (disk full, a
locked file), rows stay in the spool and are tried again next turn; /health reports it.
At start, rows that a crashed server left in the spool are moved into the log first.
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

from nbpipeline.errors import ServeError
from nbpipeline.predlog import spool
from nbpipeline.predlog import table as predlog
from nbpipeline.serve.batching import take_group

log = logging.getLogger("nbpipeline.serve")

MAX_GROUP = 1024  # queued operations handled per turn
FLUSH_SECONDS = 0.05  # spooled rows reach SQLite within about this long
MAX_INGEST_BYTES = 4 << 20  # spool bytes moved per transaction (~12,000 rows)


@dataclass
class _Op:
    kind: str  # "feedback" | "decision" | "schema"
    payload: Any
    future: Future[Any] = field(default_factory=Future)


@dataclass
class WriterStats:
    """Counters read by /metrics and /health."""

    rows: int = 0  # rows moved into SQLite
    commits: int = 0
    errors: int = 0  # failed attempts (a retry every turn counts each time)
    recovered: int = 0  # rows a crashed server had left in the spool, moved in at start
    # what fails now: the last error of each part (spool, ingest, feedback, schema), dropped
    # when that part next succeeds, so /health recovers once a transient lock has cleared
    failing: dict[str, str] = field(default_factory=dict)

    @property
    def last_error(self) -> str | None:
        """The most recent error of a part still failing, None when all work again."""
        current = list(self.failing.values())  # a copy: other threads update it
        return current[-1] if current else None


class LogWriter:
    """Owns this server's spool and the one write connection to the prediction log."""

    def __init__(
        self, path: Path, on_commit: Callable[[int, float], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.stats = WriterStats()
        self._on_commit = on_commit
        self._on_error = on_error  # after each failure (nbp_errors_total{kind="log"})
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._spool: spool.Spool | None = None
        self._columns: frozenset[str] = frozenset()  # feature columns (only we add them)

    def start(self) -> None:
        """Open the log and the spool (in the caller, so start-up errors surface), move in
        what a crashed server left, and start the thread."""
        self._conn = self._open(self.path)
        try:
            self._columns = frozenset(predlog.feature_columns(self._conn))
            recovered = spool.recover(self.path, self._conn)
            self._spool = spool.Spool(spool.spool_dir(self.path))
        except (sqlite3.Error, OSError) as exc:
            self._conn.close()
            raise _cannot_open(self.path, exc) from exc
        self.stats.recovered = recovered.rows
        if recovered.segments:
            log.info("prediction log %s: moved %d rows left in the spool by a server that "
                     "stopped abruptly", self.path, recovered.rows)
        self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        """The log, its tables created; ServeError naming the file if impossible."""
        try:
            conn = predlog.connect(path)
        except (sqlite3.Error, OSError) as exc:
            raise _cannot_open(path, exc) from exc
        try:
            predlog.ensure_schema(conn)
            spool.spool_dir(path).mkdir(parents=True, exist_ok=True)
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise _cannot_open(path, exc) from exc
        return conn

    @classmethod
    def check(cls, path: Path) -> None:
        """Open the log and create its tables and spool directory (ServeError naming the
        file if impossible). Moves nothing in: a dead server's spool is moved in (and
        counted for /health) when the server's own writer starts."""
        cls._open(path).close()

    def close(self, timeout: float = 10.0) -> None:
        """Move what is spooled into SQLite, then stop the thread and close the log."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def backlog_bytes(self) -> int:
        """Spooled bytes not yet in SQLite."""
        return self._spool.backlog() if self._spool is not None else 0

    # ------------------------------------------------------------------ requests
    def append(self, records: list[predlog.PredictionRecord]) -> None:
        """Make ``records`` durable now, on the calling thread (thread-safe); they reach
        SQLite within about FLUSH_SECONDS. Raises if they could not be written."""
        if self._spool is None or self._thread is None:
            raise ServeError(f"{self.path}: the prediction log writer is not running")
        try:
            self._spool.append(predlog.encode_rows(records, self._columns))
        except Exception as exc:
            self._error("spool", f"cannot spool {len(records)} rows", exc)
            raise
        if self.stats.failing:
            self._recovered("spool")

    def _submit(self, kind: str, payload: Any) -> Future[Any]:
        if self._thread is None:
            raise ServeError(f"{self.path}: the prediction log writer is not running")
        op = _Op(kind, payload)
        self._queue.put(op)
        return op.future

    def feedback(self, request_id: str, outcome: float, ts: float) -> Future[bool | None]:
        """Record an outcome; the future resolves to False for an unknown request id and
        None for an outcome that does not fit the logged decision."""
        return self._submit("feedback", (request_id, outcome, ts))

    def decision(self, request_id: str) -> Future[predlog.LoggedDecision | None]:
        """The logged decision ``request_id`` (None if unknown), read after the spool is
        moved in, so an id just answered is found."""
        return self._submit("decision", request_id)

    def ensure_features(self, kinds: Mapping[str, str]) -> Future[None]:
        """Add typed columns for a newly served model's features."""
        return self._submit("schema", dict(kinds))

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        assert self._conn is not None and self._spool is not None
        stop = False
        try:
            while not stop:
                ops, stop = take_group(self._queue, MAX_GROUP, timeout=FLUSH_SECONDS)
                for op in ops:
                    if op.kind == "schema":
                        self._settle(op, self._ensure_schema)
                feedback = [op for op in ops if op.kind in ("feedback", "decision")]
                caught_up = self._ingest(until_empty=bool(feedback) or stop)
                for op in feedback:
                    if caught_up:
                        self._settle(op, self._feedback if op.kind == "feedback" else
                                     self._decision)
                    else:
                        op.future.set_exception(ServeError(
                            f"the prediction log cannot be written: {self.stats.last_error}"))
        finally:
            left = self._spool.close()
            if left:
                log.warning("prediction log %s: %d spooled bytes not yet in the log; the next "
                            "`nbp serve` moves them in", self.path, left)
            self._conn.close()

    def _ingest(self, *, until_empty: bool) -> bool:
        """Move spooled rows into SQLite; False if that failed (they stay spooled)."""
        assert self._conn is not None and self._spool is not None
        while True:
            try:
                unread = self._spool.read(MAX_INGEST_BYTES)
                if unread is None:
                    self._recovered("ingest")
                    return True
                start = time.perf_counter()
                count = predlog.insert_encoded(self._conn, unread.rows, or_ignore=True)
            except Exception as exc:
                self._error("ingest", "cannot move spooled rows into the log (they stay "
                            "spooled and are tried again)", exc)
                return False
            self._spool.mark_done(unread)
            self._recovered("ingest")
            if count < unread.count:
                log.warning("prediction log %s: %d rows with a request_id already logged were "
                            "skipped", self.path, unread.count - count)
            self.stats.rows += count
            self.stats.commits += 1
            if self._on_commit is not None:
                self._on_commit(count, time.perf_counter() - start)
            if not until_empty:
                return True

    def _error(self, part: str, what: str, exc: Exception) -> None:
        """Count a failure of ``part`` and keep it for /health until ``part`` works again."""
        message = f"{type(exc).__name__}: {exc}"
        self.stats.errors += 1
        if self.stats.failing.get(part) != message:  # a retry every turn: log it once
            log.error("prediction log %s: %s: %s", self.path, what, message)
        self.stats.failing[part] = message
        if self._on_error is not None:
            self._on_error()

    def _recovered(self, part: str) -> None:
        """``part`` works again: its error no longer degrades /health."""
        if self.stats.failing.pop(part, None) is not None:
            log.info("prediction log %s: %s works again", self.path, part)

    def _ensure_schema(self, kinds: Mapping[str, str]) -> None:
        assert self._conn is not None
        predlog.ensure_schema(self._conn, kinds)
        self._columns = frozenset(predlog.feature_columns(self._conn))

    def _feedback(self, payload: tuple[str, float, float]) -> bool | None:
        assert self._conn is not None
        return predlog.record_feedback(self._conn, *payload)

    def _decision(self, request_id: str) -> predlog.LoggedDecision | None:
        assert self._conn is not None
        return predlog.logged_decision(self._conn, request_id)

    def _settle(self, op: _Op, action: Callable[[Any], Any]) -> None:
        try:
            result = action(op.payload)
        except Exception as exc:  # reported to the waiting request, which answers 503
            self._error(op.kind, f"{op.kind} failed", exc)
            op.future.set_exception(exc)
            return
        self._recovered(op.kind)
        op.future.set_result(result)


def _cannot_open(path: Path, exc: Exception) -> ServeError:
    return ServeError(
        f"{path}: cannot open the prediction log ({exc}); check the directory is writable "
        "and the file is an nbpipeline prediction log, or set $NBPIPELINE_PREDLOG"
    )
