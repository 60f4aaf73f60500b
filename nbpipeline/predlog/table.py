"""The prediction-log format: the only thing `serve` and `monitor` share.

One SQLite database (WAL mode, so a ``kill -9`` of the server loses no committed
row and readers never block the writer). Two tables:

``predictions``
    request_id TEXT PRIMARY KEY, ts REAL (unix seconds), model_version TEXT,
    role TEXT ('champion' | 'canary' | 'fallback'), routing_key TEXT,
    prediction INTEGER, probability REAL, latency_ms REAL, fallback INTEGER (0/1),
    features TEXT (JSON object of the request's features that have no typed column;
    ``{}`` when, as usual, all do), plus one typed column ``f_<name>`` per model feature
    (REAL for numbers, TEXT for categories) so monitoring can aggregate a million rows in
    SQL without parsing JSON. Feature columns are added (never removed) when a model with
    new features is served, before its first row. (Logs written by earlier versions hold
    every feature in ``features`` too; storing them twice made each insert ~40% dearer.)
    :func:`logged_features` gives a row's features either way.

``feedback``
    request_id TEXT PRIMARY KEY, ts REAL, outcome INTEGER (the real label).

Writers append; nobody updates or deletes rows except ``feedback`` upserts. A server
writes its rows to a spool first (``<log>.spool/``, nbpipeline/predlog/spool.py) and moves them
in within about 50 ms; rows a crashed server left there are moved in by the next
``nbp serve`` or ``nbp monitor``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
LOG_ENV = "NBPIPELINE_PREDLOG"

_BASE_COLUMNS = (
    ("request_id", "TEXT PRIMARY KEY"),
    ("ts", "REAL NOT NULL"),
    ("model_version", "TEXT"),
    ("role", "TEXT NOT NULL"),
    ("routing_key", "TEXT"),
    ("prediction", "INTEGER"),
    ("probability", "REAL"),
    ("latency_ms", "REAL"),
    ("fallback", "INTEGER NOT NULL DEFAULT 0"),
    ("features", "TEXT NOT NULL"),
)
BASE_COLUMN_NAMES = tuple(name for name, _ in _BASE_COLUMNS)
_NAME_KEY = "feature_name:"  # meta key prefix: typed column -> the feature's real name
_SAFE = re.compile(r"[^0-9A-Za-z_]")


@functools.lru_cache(maxsize=4096)  # called per feature per logged row
def feature_column(name: str) -> str:
    """The typed column that holds feature ``name`` (``f_`` + a SQL-safe name)."""
    return "f_" + _SAFE.sub("_", name)


def default_log_path(project_root: Path) -> Path:
    """$NBPIPELINE_PREDLOG, else ``<root>/logs/predictions.db``."""
    env = os.environ.get(LOG_ENV)
    return Path(env) if env else project_root / "logs" / "predictions.db"


@dataclass
class PredictionRecord:
    """One logged decision."""

    request_id: str
    ts: float
    model_version: str | None
    role: str
    prediction: float | None  # the decision (0/1), or a regression's predicted value
    probability: float | None
    latency_ms: float
    features: Mapping[str, Any]
    routing_key: str | None = None
    fallback: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the log with the pragmas every reader and writer must use."""
    path = Path(path)
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def ensure_schema(
    conn: sqlite3.Connection, features: Mapping[str, str] | Iterable[str] = ()
) -> None:
    """Create the tables and add a typed column for each feature not yet present.

    ``features`` maps feature name -> 'number' | 'category' (an iterable of names
    means all numbers).
    """
    cols = ", ".join(f"{name} {decl}" for name, decl in _BASE_COLUMNS)
    conn.execute(f"CREATE TABLE IF NOT EXISTS predictions ({cols})")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS feedback "
        "(request_id TEXT PRIMARY KEY, ts REAL NOT NULL, outcome INTEGER NOT NULL)"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute(
        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
    # No index on ts: it cost each insert ~20%. Rows are appended in time order, so
    # readers find a time range by rowid (nbpipeline.monitor.scan.first_rowid).
    kinds = dict(features) if isinstance(features, Mapping) else dict.fromkeys(features, "number")
    present = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    for name, kind in kinds.items():
        col = feature_column(name)
        if col not in present:
            _add_column(conn, col, kind)
        # The column name is SQL-safe; keep the feature's real name beside it.
        conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (_NAME_KEY + col, name))


def _add_column(conn: sqlite3.Connection, col: str, kind: str) -> None:
    sql_type = "TEXT" if kind == "category" else "REAL"
    conn.execute(f"ALTER TABLE predictions ADD COLUMN {col} {sql_type}")


def feature_columns(conn: sqlite3.Connection) -> list[str]:
    """The typed feature columns present in the log."""
    return [
        row[1] for row in conn.execute("PRAGMA table_info(predictions)") if row[1].startswith("f_")
    ]


Encoded = list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]
"""Rows ready to insert: (typed feature columns, rows of values in column order), one entry
per feature-column set. Plain Python values only, so the spool can store them as they are."""


def encode_rows(records: Iterable[PredictionRecord], present: frozenset[str]) -> Encoded:
    """``records`` as rows of column values; ``present``: the log's typed feature columns
    (features without one go into the JSON ``features`` column)."""
    batches: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for rec in records:
        fcols, typed = _column_plan(tuple(rec.features), present)
        values = tuple(rec.features.values())
        if len(typed) == len(values):  # the usual case: every feature has its column
            rest = "{}"
        else:
            rest_names = [n for i, n in enumerate(rec.features) if i not in typed]
            rest = json.dumps({n: rec.features[n] for n in rest_names},
                              separators=(",", ":"), default=str)
            values = tuple(values[i] for i in typed)
        batches.setdefault(fcols, []).append((
            rec.request_id,
            rec.ts,
            rec.model_version,
            rec.role,
            rec.routing_key,
            rec.prediction,
            rec.probability,
            rec.latency_ms,
            int(rec.fallback),
            rest,
            *values,
        ))
    return list(batches.items())


@functools.lru_cache(maxsize=256)  # one entry per feature set and log schema
def _column_plan(
    names: tuple[str, ...], present: frozenset[str]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(typed columns, positions of the features that have one) for features ``names``."""
    typed = tuple(i for i, name in enumerate(names) if feature_column(name) in present)
    return tuple(feature_column(names[i]) for i in typed), typed


def insert_rows(
    conn: sqlite3.Connection,
    records: Iterable[PredictionRecord],
    *,
    present: Collection[str] | None = None,
) -> int:
    """Append ``records`` in one transaction; returns the number written.

    ``present``: the log's feature columns if the caller already knows them, to save a
    schema query.
    """
    columns = frozenset(feature_columns(conn) if present is None else present)
    return insert_encoded(conn, encode_rows(records, columns))


def ensure_columns(conn: sqlite3.Connection, encoded: Encoded) -> None:
    """Add the typed feature columns ``encoded`` uses that the log lacks (rows spooled for
    a log that was since replaced); the type follows the values (text -> TEXT, else REAL)."""
    present = set(feature_columns(conn))
    base = len(BASE_COLUMN_NAMES)
    for fnames, rows in encoded:
        for j, col in enumerate(fnames):
            if col not in present:
                text = any(isinstance(row[base + j], str) for row in rows)
                _add_column(conn, col, "category" if text else "number")
                present.add(col)


def insert_encoded(conn: sqlite3.Connection, encoded: Encoded, *, or_ignore: bool = False) -> int:
    """Insert :func:`encode_rows` output in one transaction; returns the rows inserted.

    ``or_ignore``: skip rows whose request_id is already logged (replaying a spool that
    may have been partly moved into the log before a crash).
    """
    # One multi-row INSERT per column set rather than a statement per row: fewer calls
    # into SQLite, and sqlite3 releases and retakes the GIL around each.
    statements = [
        (fnames, rows[i:i + MAX_ROWS_PER_INSERT])
        for fnames, rows in encoded
        for i in range(0, len(rows), MAX_ROWS_PER_INSERT)
    ]
    if not statements:
        return 0
    before = conn.total_changes
    conn.execute("BEGIN")
    try:
        for fnames, rows in statements:
            sql = _insert_sql(fnames, len(rows), or_ignore)
            conn.execute(sql, [v for row in rows for v in row])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conn.total_changes - before


MAX_ROWS_PER_INSERT = 256  # x ~25 columns: well under SQLite's 32766 bound parameters


@functools.lru_cache(maxsize=1024)
def _insert_sql(feature_cols: tuple[str, ...], rows: int, or_ignore: bool = False) -> str:
    names = ",".join((*BASE_COLUMN_NAMES, *feature_cols))
    marks = "(" + ",".join("?" * (len(BASE_COLUMN_NAMES) + len(feature_cols))) + ")"
    verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
    return f"{verb} INTO predictions ({names}) VALUES " + ",".join([marks] * rows)


@dataclass(frozen=True)
class LoggedDecision:
    """One logged decision as read back (features: a missing value is left out)."""

    request_id: str
    ts: float
    model_version: str | None
    role: str
    prediction: float | None
    probability: float | None
    features: dict[str, Any]


def logged_decision(conn: sqlite3.Connection, request_id: str) -> LoggedDecision | None:
    """The decision logged for ``request_id``, or None."""
    cursor = conn.execute("SELECT * FROM predictions WHERE request_id = ?", (request_id,))
    row = cursor.fetchone()
    if row is None:
        return None
    values = dict(zip([d[0] for d in cursor.description], row, strict=True))
    return LoggedDecision(
        request_id, values["ts"], values["model_version"], values["role"],
        values["prediction"], values["probability"], _features(conn, cursor, row),
    )


def logged_features(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    """The features logged for ``request_id`` (typed columns + the JSON rest), or None."""
    decision = logged_decision(conn, request_id)
    return None if decision is None else decision.features


def _features(conn: sqlite3.Connection, cursor: sqlite3.Cursor, row: Any) -> dict[str, Any]:
    """A row's features: its typed columns (NULL left out) and the JSON rest."""
    names = dict(conn.execute(
        "SELECT substr(key, ?1 + 1), value FROM meta WHERE substr(key, 1, ?1) = ?2",
        (len(_NAME_KEY), _NAME_KEY),
    ).fetchall())
    found: dict[str, Any] = {}
    for (column, *_), value in zip(cursor.description, row, strict=True):
        if column.startswith("f_") and value is not None:
            found[names.get(column, column[2:])] = value
    rest = json.loads(row[[d[0] for d in cursor.description].index("features")] or "{}")
    return {**found, **rest}


def record_feedback(
    conn: sqlite3.Connection, request_id: str, outcome: float, ts: float,
) -> bool | None:
    """Store the real outcome of ``request_id``; False if no such prediction exists, None
    if the outcome does not fit it (a classification decision's outcome is 0 or 1)."""
    known = conn.execute(
        "SELECT probability FROM predictions WHERE request_id = ?", (request_id,)
    ).fetchone()
    if known is None:
        return False
    if known[0] is not None and outcome not in (0, 1):
        return None
    conn.execute(
        "INSERT INTO feedback VALUES (?, ?, ?) "
        "ON CONFLICT(request_id) DO UPDATE SET ts = excluded.ts, outcome = excluded.outcome",
        (request_id, ts, int(outcome) if float(outcome).is_integer() else float(outcome)),
    )
    return True
