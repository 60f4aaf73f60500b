"""The prediction-log format: the only thing `serve` and `monitor` share.

One SQLite database (WAL mode, so a ``kill -9`` of the server loses no committed
row and readers never block the writer). Two tables:

``predictions``
    request_id TEXT PRIMARY KEY, ts REAL (unix seconds), model_version TEXT,
    role TEXT ('champion' | 'canary' | 'fallback'), routing_key TEXT,
    prediction INTEGER, probability REAL, latency_ms REAL, fallback INTEGER (0/1),
    features TEXT (JSON object of the request row, as received after validation),
    plus one typed column ``f_<name>`` per model feature (REAL for numbers, TEXT for
    categories) so monitoring can aggregate a million rows in SQL without parsing JSON.
    Feature columns are added (never removed) when a model with new features is served.

``feedback``
    request_id TEXT PRIMARY KEY, ts REAL, outcome INTEGER (the real label).

Writers append; nobody updates or deletes rows except ``feedback`` upserts.
"""

from __future__ import annotations

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
_SAFE = re.compile(r"[^0-9A-Za-z_]")


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
    prediction: int | None
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
    conn.execute("CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts)")
    kinds = dict(features) if isinstance(features, Mapping) else dict.fromkeys(features, "number")
    present = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    for name, kind in kinds.items():
        col = feature_column(name)
        if col not in present:
            sql_type = "TEXT" if kind == "category" else "REAL"
            conn.execute(f"ALTER TABLE predictions ADD COLUMN {col} {sql_type}")


def feature_columns(conn: sqlite3.Connection) -> list[str]:
    """The typed feature columns present in the log."""
    return [
        row[1] for row in conn.execute("PRAGMA table_info(predictions)") if row[1].startswith("f_")
    ]


def insert_rows(
    conn: sqlite3.Connection,
    records: Iterable[PredictionRecord],
    *,
    present: Collection[str] | None = None,
) -> int:
    """Append ``records`` in one transaction; returns the number written.

    ``present``: the log's feature columns if the caller already knows them (a long-lived
    writer that alone adds columns), to save a schema query per transaction.
    """
    present = set(feature_columns(conn)) if present is None else present
    count = 0
    conn.execute("BEGIN")
    try:
        for rec in records:
            fcols = {feature_column(k): v for k, v in rec.features.items()}
            fcols = {col: v for col, v in fcols.items() if col in present}
            names = list(BASE_COLUMN_NAMES) + list(fcols)
            values = [
                rec.request_id,
                rec.ts,
                rec.model_version,
                rec.role,
                rec.routing_key,
                rec.prediction,
                rec.probability,
                rec.latency_ms,
                int(rec.fallback),
                json.dumps(dict(rec.features), separators=(",", ":"), default=str),
                *fcols.values(),
            ]
            marks = ",".join("?" * len(values))
            conn.execute(f"INSERT INTO predictions ({','.join(names)}) VALUES ({marks})", values)
            count += 1
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return count


def record_feedback(conn: sqlite3.Connection, request_id: str, outcome: int, ts: float) -> bool:
    """Store the real outcome of ``request_id``; False if no such prediction exists."""
    known = conn.execute(
        "SELECT 1 FROM predictions WHERE request_id = ?", (request_id,)
    ).fetchone()
    if known is None:
        return False
    conn.execute(
        "INSERT INTO feedback VALUES (?, ?, ?) "
        "ON CONFLICT(request_id) DO UPDATE SET ts = excluded.ts, outcome = excluded.outcome",
        (request_id, ts, int(outcome)),
    )
    return True
