"""The prediction log's spool: where an answered prediction becomes durable.

`nbp serve` must not answer a prediction it could lose to a ``kill -9``, and must not make
requests wait on SQLite. So the predictor thread appends each micro-batch's log rows to
an append-only segment file with one ``write()`` (a few microseconds: the page cache
keeps the bytes if the process dies) and answers; the log writer thread moves the rows
into SQLite every FLUSH_SECONDS in large transactions (nbpipeline/serve/logwriter.py).

Layout: ``<log>.spool/<ns timestamp>-<pid>.seg``, each a run of frames::

    u32 length | u32 crc32 | payload (marshal of predlog.Encoded: plain values only)

A live server holds an exclusive ``flock`` on each of its segments and deletes a segment
once all of it is in SQLite. A segment nobody holds was left by a server that died:
:func:`recover` (run when a server starts, and by the monitor) inserts its rows with
``INSERT OR IGNORE`` (some may be in SQLite already) and deletes it. A torn last frame
(the process died inside ``write()``) belonged to a request that was never answered and
is dropped; a frame whose checksum fails keeps its segment, renamed ``*.corrupt``.
(marshal can hold only plain values; the spool is as trusted as the log next to it.)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import marshal
import os
import sqlite3
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from nbpipeline.predlog import table as predlog

log = logging.getLogger("nbpipeline.predlog.spool")

SEGMENT_BYTES = 16 << 20  # a new segment after this many bytes
_HEADER = struct.Struct("<II")
_MARSHAL_VERSION = 4


def spool_dir(log_path: Path | str) -> Path:
    """The spool directory of the prediction log at ``log_path``."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name + ".spool")


class SpoolCorrupt(Exception):
    """A frame that does not verify; ``rows`` holds the good rows before it, ``used`` the
    bytes they span."""

    def __init__(self, message: str, rows: predlog.Encoded, used: int) -> None:
        super().__init__(message)
        self.rows, self.used = rows, used


def encode_frame(encoded: predlog.Encoded) -> bytes:
    """One frame; ValueError if a value is not a plain Python value."""
    payload = marshal.dumps(encoded, _MARSHAL_VERSION)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_frames(data: bytes) -> tuple[predlog.Encoded, int]:
    """The rows of the complete frames at the start of ``data`` and the bytes they span.

    Stops before an incomplete frame; SpoolCorrupt at a frame that does not verify.
    """
    rows: predlog.Encoded = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data):
            break
        payload = data[offset + _HEADER.size:end]
        try:
            if zlib.crc32(payload) != crc:
                raise ValueError("checksum mismatch")
            rows += marshal.loads(payload)
        except (ValueError, EOFError, TypeError) as exc:
            raise SpoolCorrupt(f"bad frame at byte {offset} ({exc})", rows, offset) from None
        offset = end
    return rows, offset


@dataclass
class _Segment:
    path: Path
    fd: int  # read/append, flock'ed while this process owns the segment
    end: int = 0  # bytes appended (under Spool._lock)
    done: int = 0  # bytes moved into SQLite (the reader's thread only)
    sealed: bool = False  # no more appends


@dataclass
class Unread:
    """Rows read from the spool, not yet in SQLite; pass to :meth:`Spool.mark_done`."""

    rows: predlog.Encoded
    count: int
    progress: list[tuple[_Segment, int]] = field(default_factory=list)


class Spool:
    """This process's segments: appended by any thread, read by one (the log writer)."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None

    def append(self, encoded: predlog.Encoded) -> None:
        """Write one frame; when this returns the rows survive the process being killed."""
        frame = encode_frame(encoded)
        with self._lock:
            seg = self._current
            if seg is None or (seg.end and seg.end + len(frame) > self.segment_bytes):
                seg = self._open_segment()
            try:
                written = 0
                while written < len(frame):
                    written += os.write(seg.fd, frame[written:] if written else frame)
            except OSError:
                # Leave no torn frame for later ones to follow: cut it off, and start a
                # fresh segment next time in case that failed too.
                try:
                    os.ftruncate(seg.fd, seg.end)
                except OSError:
                    pass
                seg.sealed, self._current = True, None
                raise
            seg.end += len(frame)

    def _open_segment(self) -> _Segment:
        if self._current is not None:
            self._current.sealed = True
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}.seg"
        # Locked before it gets the name recover() looks for, so none can take it for a
        # dead server's.
        tmp = path.with_suffix(".new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        seg = _Segment(path, fd)
        self._segments.append(seg)
        self._current = seg
        return seg

    def backlog(self) -> int:
        """Bytes appended but not yet moved into SQLite."""
        with self._lock:
            return sum(seg.end - seg.done for seg in self._segments)

    def read(self, max_bytes: int) -> Unread | None:
        """Rows not yet in SQLite, whole frames of about ``max_bytes``; None if there are none."""
        with self._lock:
            pending = [(seg, seg.end) for seg in self._segments if seg.end > seg.done]
        unread = Unread([], 0)
        budget = max_bytes
        for seg, end in pending:
            if budget <= 0:
                break
            want = end - seg.done
            rows, used = decode_frames(os.pread(seg.fd, min(want, budget), seg.done))
            if used == 0:  # one frame larger than the budget: take it whole
                budget = want
                rows, used = decode_frames(os.pread(seg.fd, want, seg.done))
            if used == 0 or (want <= budget and used != want):  # `end` is frame-aligned
                where = f"{seg.path}: short frame at byte {seg.done + used}"
                raise SpoolCorrupt(where, rows, used)
            unread.rows += rows
            unread.count += sum(len(r) for _, r in rows)
            unread.progress.append((seg, seg.done + used))
            budget -= used
        return unread if unread.progress else None

    def mark_done(self, unread: Unread) -> None:
        """The rows of ``unread`` are committed to SQLite: drop finished segments."""
        for seg, end in unread.progress:
            seg.done = end
        with self._lock:
            finished = [s for s in self._segments if s.sealed and s.done == s.end]
            self._segments = [s for s in self._segments if s not in finished]
        for seg in finished:
            _remove(seg.path, seg.fd)

    def close(self) -> int:
        """Delete the segments fully moved into SQLite; returns bytes left for :func:`recover`."""
        with self._lock:
            segments, self._segments, self._current = self._segments, [], None
        left = 0
        for seg in segments:
            if seg.done == seg.end:
                _remove(seg.path, seg.fd)
            else:
                left += seg.end - seg.done
                os.close(seg.fd)  # releases the lock: the next start recovers it
        return left


def _remove(path: Path, fd: int) -> None:
    """Delete a segment whose rows are all in SQLite, then close (and so unlock) it. If
    deleting fails, a later recover() finds its rows logged already and only deletes it."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot delete spool segment %s (its rows are in the log): %s", path, exc)
    finally:
        os.close(fd)


@dataclass
class Recovery:
    """What :func:`recover` moved from dead servers' segments into the log."""

    rows: int = 0  # rows inserted (rows already in the log are not counted)
    segments: int = 0
    corrupt: list[str] = field(default_factory=list)  # problems, each naming its file


def orphans(log_path: Path | str) -> list[Path]:
    """Segments of ``log_path``'s spool (live ones included: only a lock tells them apart)."""
    directory = spool_dir(log_path)
    return sorted(directory.glob("*.seg")) if directory.is_dir() else []


def recover(log_path: Path | str, conn: sqlite3.Connection | None = None) -> Recovery:
    """Move the rows of segments no live server holds into the log at ``log_path``."""
    result = Recovery()
    own = conn is None
    try:
        for path in orphans(log_path):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # another process recovered it just now
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue  # a running server's
                raise
            try:
                if conn is None:
                    conn = predlog.connect(log_path)
                    predlog.ensure_schema(conn)
                kept = _recover_segment(path, fd, conn, result)
            except BaseException:
                os.close(fd)
                raise
            if kept is None:
                _remove(path, fd)
            else:
                os.close(fd)
    finally:
        if own and conn is not None:
            conn.close()
    return result


def _recover_segment(
    path: Path, fd: int, conn: sqlite3.Connection, result: Recovery
) -> Path | None:
    """Move one dead segment's rows in; the path it was kept under if corrupt, else None
    (the caller deletes it and closes ``fd``)."""
    size = os.fstat(fd).st_size
    try:
        rows, used = decode_frames(os.pread(fd, size, 0))
        problem = None
    except SpoolCorrupt as exc:
        rows, used, problem = exc.rows, exc.used, str(exc)
    predlog.ensure_columns(conn, rows)
    result.rows += predlog.insert_encoded(conn, rows, or_ignore=True)
    result.segments += 1
    if problem is None:
        if used < size:
            log.info("prediction log spool %s: dropped a torn last frame (%d bytes) of a "
                     "request that was never answered", path, size - used)
        return None
    kept = path.with_suffix(".corrupt")
    os.replace(path, kept)
    message = (f"{kept}: {problem}; the rows before it are in the log, the rest of this "
               "segment is kept for inspection")
    result.corrupt.append(message)
    log.warning("prediction log spool: %s", message)
    return kept
