"""Reading the prediction log: one SQL pass, binned in SQLite, counted with numpy.

The JSON ``features`` column is never parsed. One query over ``predictions LEFT JOIN
feedback`` returns, per logged row, only small integers:

* the window number (an SQL expression, see :class:`WindowSpec`);
* every monitored column's 7-bit code (see :mod:`nbpipeline.monitor.reference`), nine
  packed per 64-bit integer;
* a packed "meta" integer: model version (index into the log's versions), role,
  fallback flag, decision, outcome (none/0/1);
* time (ms), probability (millionths) and latency (µs) as integers.

For a large log the rowid range is split between worker processes (the per-row SQL work
is CPU-bound and holds the GIL between rows), rows are fetched in chunks into one int64
array, and everything else is numpy: a
histogram per window per column, traffic and latency per window/version/role, and
labelled decisions grouped for quality and ROI.

A *window* is a block of ``size`` consecutive logged predictions (``by="rows"``, in
insertion order) or a span of ``size`` seconds aligned to the Unix epoch (``by="seconds"``).
"""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbpipeline import threads
from nbpipeline.errors import MonitorError
from nbpipeline.monitor.reference import CODES, Binning
from nbpipeline.predlog import spool
from nbpipeline.predlog import table as predlog

log = logging.getLogger("nbpipeline.monitor")

PACK = 9  # 7-bit codes per 64-bit integer
PROB_BINS = 100
LATENCY_STEP_MS = 0.25
LATENCY_BINS = 8000  # 0.25 ms steps up to 2 s; slower requests land in the last bin
CHUNK = 65536
MAX_VERSIONS = 63
PARALLEL_MIN_ROWS = 200_000  # below this, worker start-up costs more than it saves
SINCE_SLACK_SECONDS = 600.0  # rows committed out of time order by at most this
ROLES = ("", "champion", "canary", "fallback")
_SEP = "\x1f"


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
class PredictionGroups:
    """Every model decision with a probability, labelled or not: one row per
    (window, decision, probability bin), for performance estimated without labels."""

    window: np.ndarray
    decision: np.ndarray
    prob_bin: np.ndarray
    count: np.ndarray
    prob_sum: np.ndarray


@dataclass
class ValueGroups:
    """Labelled predictions of regression models: one row per (window, version, role)
    with additive sums of the errors and outcomes (no probabilities to bin)."""

    window: np.ndarray
    version: list[str]
    role: list[str]
    count: np.ndarray
    error_sum: np.ndarray
    squared_error_sum: np.ndarray
    absolute_error_sum: np.ndarray
    outcome_sum: np.ndarray
    outcome_squared_sum: np.ndarray


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
    decided: np.ndarray  # rows with a probability: decisions (not regression values)


def open_log(path: Path | str) -> sqlite3.Connection | None:
    """Open the prediction log read-only; None when it does not exist yet (no traffic).

    Rows a server that died left in its spool are moved in first (a running server's
    spool is left to it), so the monitor sees every answered prediction.
    """
    path = Path(path)
    try:
        spool.recover(path)
    except (OSError, sqlite3.Error) as exc:
        log.warning("%s: cannot move rows left in %s into the log (%s); they are moved "
                    "in when `nbp serve` next starts", path, spool.spool_dir(path), exc)
    if not path.exists():
        return None
    try:
        conn = predlog.connect(path, readonly=True)
        conn.execute("SELECT 1 FROM predictions LIMIT 1").fetchall()
        conn.execute("SELECT 1 FROM feedback LIMIT 1").fetchall()
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


def log_versions(conn: sqlite3.Connection) -> list[str]:
    """Model versions present in the log (at most MAX_VERSIONS, most recent kept)."""
    rows = conn.execute(
        "SELECT model_version, MAX(rowid) FROM predictions WHERE model_version IS NOT NULL "
        "GROUP BY model_version ORDER BY 2"
    ).fetchall()
    return [str(v) for v, _ in rows][-MAX_VERSIONS:]


def first_rowid(conn: sqlite3.Connection, since: float | None) -> int:
    """The lowest rowid that can hold a row with ``ts >= since`` (1 without ``since``).

    The log has no index on ts (it would cost every insert): rows are appended in time
    order, give or take the delay of one commit, so a binary search over rowids finds
    where ``since`` starts; SINCE_SLACK_SECONDS of margin covers out-of-order commits and
    the query still filters on ts.
    """
    if since is None:
        return 1
    lo, hi = 1, (conn.execute("SELECT MAX(rowid) FROM predictions").fetchone()[0] or 0) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(
            "SELECT ts FROM predictions WHERE rowid >= ? ORDER BY rowid LIMIT 1", (mid,)
        ).fetchone()
        if row is None or row[0] >= since - SINCE_SLACK_SECONDS:
            hi = mid
        else:
            lo = mid + 1
    return max(1, lo - 1)


def _slot_code(column: str, values: list[str]) -> str:
    """SQL giving 1..len(values) for a value of ``values`` (0 for others/NULL)."""
    if not values:
        return "0"
    width = max(len(v) for v in values) + 3
    slots = "".join(f"{_SEP}{v}{_SEP}".ljust(width, "\x1e") for v in values).replace("'", "''")
    return (f"COALESCE((instr('{slots}', '{_SEP}' || {column} || '{_SEP}') + {width - 1})"
            f" / {width}, 0)")


def _query(binnings: list[Binning], window: WindowSpec, versions: list[str],
           since: float | None) -> tuple[str, int]:
    words = [binnings[i : i + PACK] for i in range(0, len(binnings), PACK)]
    packed = [" | ".join(f"({b.sql()} << {7 * j})" for j, b in enumerate(word)) for word in words]
    role = ("CASE p.role WHEN 'champion' THEN 1 WHEN 'canary' THEN 2 WHEN 'fallback' THEN 3 "
            "ELSE 0 END")
    meta = (f"({_slot_code('p.model_version', versions)}) | (({role}) << 6)"
            " | ((p.fallback != 0) << 8) | ((COALESCE(p.prediction, 0) != 0) << 9)"
            " | ((COALESCE(f.outcome, -1) + 1) << 10)")
    where = " AND p.ts >= ?" if since is not None else ""
    sql = (
        f"SELECT {window.sql('p')}, {meta}, CAST(ROUND(p.ts * 1000) AS INTEGER),"
        " CAST(ROUND(COALESCE(p.probability, -1) * 1000000) AS INTEGER),"
        " CAST(ROUND(COALESCE(p.latency_ms, 0) * 1000) AS INTEGER)"
        + "".join(f", {w}" for w in packed)
        # regression: predicted value and outcome in millionths, and whether one came back
        + ", CAST(ROUND(COALESCE(p.prediction, 0) * 1000000) AS INTEGER),"
        " CAST(ROUND(COALESCE(f.outcome, 0) * 1000000) AS INTEGER), f.outcome IS NOT NULL"
        + " FROM predictions p LEFT JOIN feedback f ON f.request_id = p.request_id"
        f" WHERE p.rowid BETWEEN ? AND ?{where}"
    )
    return sql, 5 + len(packed) + 3


def _fetch(path: Path, sql: str, width: int, lo: int, hi: int, since: float | None) -> np.ndarray:
    conn = predlog.connect(path, readonly=True)
    try:
        args: tuple[float, ...] = (lo, hi) if since is None else (lo, hi, since)
        cursor = conn.execute(sql, args)
        chunks = []
        while rows := cursor.fetchmany(CHUNK):
            chunks.append(np.array(rows, dtype=np.int64))
    finally:
        conn.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, width), dtype=np.int64)


@dataclass
class Scan:
    """Everything one pass over the log yields."""

    binnings: list[Binning]
    codes: CodeHistograms
    outcomes: OutcomeGroups
    traffic: TrafficGroups
    values: ValueGroups | None = None
    predictions: PredictionGroups | None = None


def scan_log(
    path: Path | str, binnings: list[Binning], window: WindowSpec, since: float | None = None,
    workers: int | None = None,
) -> Scan | None:
    """One pass over the log at ``path``; None when there is no log (no traffic yet)."""
    path = Path(path)
    conn = open_log(path)
    if conn is None:
        return None
    try:
        usable = present_binnings(conn, binnings)
        versions = log_versions(conn)
        last = conn.execute("SELECT MAX(rowid) FROM predictions").fetchone()[0] or 0
        first = first_rowid(conn, since)
    finally:
        conn.close()
    sql, width = _query(usable, window, versions, since)
    workers = workers or min(4, threads.current())  # its share of the cores
    if last < PARALLEL_MIN_ROWS or workers < 2:
        data = _fetch(path, sql, width, first, last, since)
    else:
        bounds = np.linspace(first - 1, last, workers + 1).astype(int)
        # fork: the workers need nothing but this module (spawn/forkserver would re-import
        # the caller's __main__, seconds in a notebook kernel)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            parts = pool.map(_fetch, [path] * workers, [sql] * workers, [width] * workers,
                             [int(b) + 1 for b in bounds[:-1]], [int(b) for b in bounds[1:]],
                             [since] * workers)
            data = np.concatenate(list(parts))
    return _count(data, usable, versions)


def _count(data: np.ndarray, binnings: list[Binning], versions: list[str]) -> Scan:
    windows, win = np.unique(data[:, 0], return_inverse=True)
    n_win = len(windows)
    meta, ts, prob, latency_us = data[:, 1], data[:, 2] / 1000.0, data[:, 3] / 1e6, data[:, 4]
    counts: dict[str, np.ndarray] = {}
    for i, b in enumerate(binnings):
        column = data[:, 5 + i // PACK]
        code = (column >> (7 * (i % PACK))) & 127
        counts[b.name] = np.bincount(win * CODES + code, minlength=n_win * CODES).reshape(
            n_win, CODES)
    names = ["", *versions]
    version_code, role_code = meta & 63, (meta >> 6) & 3
    fallback, decision, outcome = (meta >> 8) & 1, (meta >> 9) & 1, ((meta >> 10) & 3) - 1
    lat_bin = np.minimum(latency_us // int(LATENCY_STEP_MS * 1000), LATENCY_BINS - 1)

    # traffic: (window, version, role, fallback, latency bin)
    key = (((win * 64 + version_code) * 4 + role_code) * 2 + fallback) * LATENCY_BINS + lat_bin
    groups, inv, n = np.unique(key, return_inverse=True, return_counts=True)
    g_lat, rest = groups % LATENCY_BINS, groups // LATENCY_BINS
    g_fb, rest = rest % 2, rest // 2
    g_role, rest = rest % 4, rest // 4
    g_ver, g_win = rest % 64, rest // 64
    ts_min = np.full(len(groups), np.inf)
    ts_max = np.full(len(groups), -np.inf)
    np.minimum.at(ts_min, inv, ts)
    np.maximum.at(ts_max, inv, ts)
    traffic = TrafficGroups(
        windows[g_win], [names[v] for v in g_ver], [ROLES[r] for r in g_role], g_fb, g_lat, n,
        np.bincount(inv, weights=latency_us / 1000.0, minlength=len(groups)),
        np.bincount(inv, weights=decision * (prob >= 0), minlength=len(groups)).astype(np.int64),
        ts_min, ts_max,
        np.bincount(inv, weights=prob >= 0, minlength=len(groups)).astype(np.int64),
    )

    # labelled model decisions: (window, version, role, outcome, decision, probability bin)
    keep = (outcome >= 0) & (fallback == 0) & (prob >= 0)
    p, y = prob[keep], outcome[keep]
    pbin = np.clip((p * PROB_BINS).astype(np.int64), 0, PROB_BINS - 1)
    key = ((((win[keep] * 64 + version_code[keep]) * 4 + role_code[keep]) * 2 + y) * 2
           + decision[keep]) * PROB_BINS + pbin
    groups, inv, n = np.unique(key, return_inverse=True, return_counts=True)
    g_bin, rest = groups % PROB_BINS, groups // PROB_BINS
    g_dec, rest = rest % 2, rest // 2
    g_y, rest = rest % 2, rest // 2
    g_role, rest = rest % 4, rest // 4
    g_ver, g_win = rest % 64, rest // 64
    outcomes = OutcomeGroups(
        windows[g_win], [names[v] for v in g_ver], [ROLES[r] for r in g_role], g_y, g_dec,
        g_bin, n, np.bincount(inv, weights=(p - y) ** 2, minlength=len(groups)),
    )
    # all model decisions with a probability: (window, decision, probability bin)
    keep = (fallback == 0) & (prob >= 0)
    p = prob[keep]
    key = (win[keep] * 2 + decision[keep]) * PROB_BINS + np.clip(
        (p * PROB_BINS).astype(np.int64), 0, PROB_BINS - 1)
    groups, inv, n = np.unique(key, return_inverse=True, return_counts=True)
    predictions = PredictionGroups(
        windows[groups // PROB_BINS // 2], (groups // PROB_BINS) % 2, groups % PROB_BINS, n,
        np.bincount(inv, weights=p, minlength=len(groups)))
    # labelled regression predictions (no probability): sums per (window, version, role)
    value, truth, labelled = data[:, -3] / 1e6, data[:, -2] / 1e6, data[:, -1]
    keep = (labelled == 1) & (fallback == 0) & (prob < 0)
    key = (win[keep] * 64 + version_code[keep]) * 4 + role_code[keep]
    groups, inv = np.unique(key, return_inverse=True)
    g_role, rest = groups % 4, groups // 4
    g_ver, g_win = rest % 64, rest // 64
    err, y = value[keep] - truth[keep], truth[keep]

    def total(weights: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=weights, minlength=len(groups))

    values = ValueGroups(
        windows[g_win], [names[v] for v in g_ver], [ROLES[r] for r in g_role],
        np.bincount(inv, minlength=len(groups)), total(err), total(err ** 2),
        total(np.abs(err)), total(y), total(y ** 2),
    )
    return Scan(binnings, CodeHistograms(windows, counts), outcomes, traffic, values,
                predictions)


def scan_codes(
    conn: sqlite3.Connection, binnings: list[Binning], window: WindowSpec,
    since: float | None = None,
) -> CodeHistograms:
    """Histogram of every binning's codes per window, on an open connection (one thread)."""
    versions = log_versions(conn)
    sql, width = _query(binnings, window, versions, since)
    first = first_rowid(conn, since)
    args: tuple[float, ...] = (first, 2**62) if since is None else (first, 2**62, since)
    rows = conn.execute(sql, args).fetchall()
    data = np.array(rows, dtype=np.int64) if rows else np.zeros((0, width), dtype=np.int64)
    return _count(data, binnings, versions).codes
