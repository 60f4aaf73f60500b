"""Reading the prediction log in SQL: per-window histograms, outcomes and traffic.

Three queries, each one pass over the log, none of which parses the JSON ``features``:

* :func:`scan_codes` — every monitored column binned in SQL (see
  :mod:`nbpipeline.monitor.reference`), nine 7-bit codes packed per integer, fetched in
  chunks and counted with numpy: a histogram per window per column;
* :func:`scan_outcomes` — predictions joined with feedback, grouped by window, model
  version, role, outcome, decision and probability bin (for quality and ROI);
* :func:`scan_traffic` — rows, time span, latency histogram and fallbacks per window,
  model version and role.

A *window* is either a block of ``size`` consecutive logged predictions (``by="rows"``,
by insertion order) or a span of ``size`` seconds aligned to the Unix epoch
(``by="seconds"``). The window number is an SQL expression, so grouping costs nothing extra.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbpipeline import predlog
from nbpipeline.errors import MonitorError
from nbpipeline.monitor.reference import CODES, Binning

PACK = 9  # 7-bit codes per 64-bit integer
PROB_BINS = 100
LATENCY_STEP_MS = 0.25
LATENCY_BINS = 8000  # 0.25 ms steps up to 2 s; slower requests land in the last bin
CHUNK = 65536


@dataclass(frozen=True)
class WindowSpec:
    """How rows are cut into windows."""

    by: str  # "rows" | "seconds"
    size: int

    def sql(self, table: str = "") -> str:
        """SQL expression for the window number of a row of ``predictions``."""
        prefix = f"{table}." if table else ""
        if self.by == "rows":
            return f"(({prefix}rowid - 1) / {int(self.size)})"
        if self.by == "seconds":
            return f"CAST({prefix}ts / {float(self.size)!r} AS INTEGER)"
        raise MonitorError(
            f"params.yaml monitor.window_by: '{self.by}' is not a window kind; "
            "use 'rows' (blocks of window_size predictions) or 'seconds'"
        )


@dataclass
class CodeHistograms:
    """``counts[name]`` is an array [n_windows, 128] of code counts; ``windows`` their numbers."""

    windows: np.ndarray
    counts: dict[str, np.ndarray]


@dataclass
class OutcomeGroups:
    """Labelled predictions grouped: one row per (window, version, role, outcome, decision, bin)."""

    window: np.ndarray
    version: list[str]
    role: list[str]
    outcome: np.ndarray
    decision: np.ndarray
    prob_bin: np.ndarray
    count: np.ndarray
    brier_sum: np.ndarray


@dataclass
class TrafficGroups:
    """Traffic grouped: one row per (window, version, role, fallback, latency bin)."""

    window: np.ndarray
    version: list[str]
    role: list[str]
    fallback: np.ndarray
    latency_bin: np.ndarray
    count: np.ndarray
    latency_sum: np.ndarray
    positive: np.ndarray
    ts_min: np.ndarray
    ts_max: np.ndarray


def open_log(path: Path | str) -> sqlite3.Connection | None:
    """Open the prediction log read-only; None when it does not exist yet (no traffic)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        conn = predlog.connect(path, readonly=True)
        conn.execute("SELECT 1 FROM predictions LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        if "no such table" in str(exc):
            return None
        raise MonitorError(
            f"{path}: not a readable prediction log ({exc}); point monitor.predlog_path "
            "(params.yaml) at the database `nbp serve` writes"
        ) from exc
    return conn


def present_binnings(conn: sqlite3.Connection, binnings: list[Binning]) -> list[Binning]:
    """The binnings whose feature column exists in the log (output always does)."""
    present = set(predlog.feature_columns(conn))
    return [b for b in binnings if b.kind == "output" or b.column in present]


def _since(since: float | None, table: str = "") -> tuple[str, tuple[float, ...]]:
    if since is None:
        return "", ()
    prefix = f"{table}." if table else ""
    return f" WHERE {prefix}ts >= ?", (since,)


def scan_codes(
    conn: sqlite3.Connection, binnings: list[Binning], window: WindowSpec,
    since: float | None = None,
) -> CodeHistograms:
    """Histogram of every binning's codes per window (one pass, packed codes)."""
    words = [binnings[i : i + PACK] for i in range(0, len(binnings), PACK)]
    packed = [
        " | ".join(f"({b.sql()} << {7 * j})" for j, b in enumerate(word)) for word in words
    ]
    where, args = _since(since)
    sql = f"SELECT {window.sql()}, {', '.join(packed) or '0'} FROM predictions{where}"
    cursor = conn.execute(sql, args)
    chunks: list[np.ndarray] = []
    while rows := cursor.fetchmany(CHUNK):
        chunks.append(np.array(rows, dtype=np.int64))
    data = np.concatenate(chunks) if chunks else np.zeros((0, 1 + len(words)), dtype=np.int64)
    windows, win_index = np.unique(data[:, 0], return_inverse=True)
    n_win = len(windows)
    counts: dict[str, np.ndarray] = {}
    for w, word in enumerate(words):
        column = data[:, 1 + w]
        for j, b in enumerate(word):
            code = (column >> (7 * j)) & 127
            flat = np.bincount(win_index * CODES + code, minlength=n_win * CODES)
            counts[b.name] = flat.reshape(n_win, CODES)
    return CodeHistograms(windows, counts)


def scan_outcomes(
    conn: sqlite3.Connection, window: WindowSpec, since: float | None = None
) -> OutcomeGroups:
    """Labelled model decisions grouped for quality and ROI (fallback rows excluded)."""
    where, args = _since(since, "p")
    where = (where + " AND" if where else " WHERE") + " p.fallback = 0"
    sql = (
        f"SELECT {window.sql('p')} AS w, COALESCE(p.model_version, ''), p.role, f.outcome,"
        f" COALESCE(p.prediction, 0), MIN(MAX(CAST(p.probability * {PROB_BINS} AS INTEGER), 0),"
        f" {PROB_BINS - 1}) AS b, COUNT(*),"
        " SUM((p.probability - f.outcome) * (p.probability - f.outcome))"
        f" FROM predictions p JOIN feedback f ON f.request_id = p.request_id{where}"
        " GROUP BY 1, 2, 3, 4, 5, 6"
    )
    rows = conn.execute(sql, args).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [()] * 8
    return OutcomeGroups(
        np.array(cols[0], dtype=np.int64), list(cols[1]), list(cols[2]),
        np.array(cols[3], dtype=np.int64), np.array(cols[4], dtype=np.int64),
        np.array(cols[5], dtype=np.int64), np.array(cols[6], dtype=np.int64),
        np.array([v or 0.0 for v in cols[7]], dtype=float),
    )


def scan_traffic(
    conn: sqlite3.Connection, window: WindowSpec, since: float | None = None
) -> TrafficGroups:
    """Rows, time span, latency bins, decisions and fallbacks per window/version/role."""
    where, args = _since(since)
    sql = (
        f"SELECT {window.sql()}, COALESCE(model_version, ''), role, fallback,"
        f" MIN(CAST(COALESCE(latency_ms, 0) / {LATENCY_STEP_MS!r} AS INTEGER), {LATENCY_BINS - 1}),"
        " COUNT(*), SUM(latency_ms), SUM(COALESCE(prediction, 0)), MIN(ts), MAX(ts)"
        f" FROM predictions{where} GROUP BY 1, 2, 3, 4, 5"
    )
    rows = conn.execute(sql, args).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [()] * 10
    ints = [np.array(c, dtype=np.int64) for c in (cols[0], cols[3], cols[4], cols[5], cols[7])]
    return TrafficGroups(
        ints[0], list(cols[1]), list(cols[2]), ints[1], ints[2], ints[3],
        np.array([v or 0.0 for v in cols[6]], dtype=float), ints[4],
        np.array(cols[8], dtype=float), np.array(cols[9], dtype=float),
    )


def scan_all(
    path: Path | str, binnings: list[Binning], window: WindowSpec, since: float | None = None
) -> tuple[list[Binning], CodeHistograms, OutcomeGroups, TrafficGroups] | None:
    """Run the three scans concurrently (SQLite releases the GIL); None if no log yet."""
    conn = open_log(path)
    if conn is None:
        return None
    try:
        usable = present_binnings(conn, binnings)
    finally:
        conn.close()

    def run(fn, *args):  # type: ignore[no-untyped-def]
        c = open_log(path)
        assert c is not None
        try:
            return fn(c, *args)
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = pool.submit(run, scan_codes, usable, window, since)
        outcomes = pool.submit(run, scan_outcomes, window, since)
        traffic = pool.submit(run, scan_traffic, window, since)
        return usable, codes.result(), outcomes.result(), traffic.result()
