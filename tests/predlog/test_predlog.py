"""The prediction-log format: each feature stored once, read back under its real name."""

from __future__ import annotations

import time
from pathlib import Path

from nbpipeline.predlog import table as predlog


def record(request_id: str, features: dict[str, object]) -> predlog.PredictionRecord:
    return predlog.PredictionRecord(
        request_id=request_id, ts=time.time(), model_version="v1", role="champion",
        prediction=1, probability=0.7, latency_ms=1.0, features=features,
    )


def test_features_with_a_column_are_stored_once_and_others_as_json(tmp_path: Path) -> None:
    conn = predlog.connect(tmp_path / "log.db")
    predlog.ensure_schema(conn, {"wind speed": "number", "carrier": "category"})
    rows = [
        record("a", {"wind speed": 3.5, "carrier": "AA"}),
        record("b", {"wind speed": None, "carrier": "B6", "gate": "C7"}),  # 'gate': no column
    ]
    assert predlog.insert_rows(conn, rows) == 2
    stored = dict(conn.execute("SELECT request_id, features FROM predictions").fetchall())
    assert stored == {"a": "{}", "b": '{"gate":"C7"}'}
    typed = conn.execute("SELECT f_wind_speed FROM predictions WHERE request_id = 'a'")
    assert typed.fetchone() == (3.5,)
    # Read back under the real names (the column name had to be made SQL-safe).
    assert predlog.logged_features(conn, "a") == {"wind speed": 3.5, "carrier": "AA"}
    assert predlog.logged_features(conn, "b") == {"carrier": "B6", "gate": "C7"}  # NULL left out
    assert predlog.logged_features(conn, "nope") is None


def test_logs_of_the_older_format_read_the_same(tmp_path: Path) -> None:
    """Older logs kept every feature in the JSON column as well."""
    conn = predlog.connect(tmp_path / "log.db")
    predlog.ensure_schema(conn, {"carrier": "category"})
    conn.execute(
        "INSERT INTO predictions (request_id, ts, role, features, f_carrier) "
        "VALUES ('old', 1.0, 'champion', '{\"carrier\":\"AA\"}', 'AA')"
    )
    assert predlog.logged_features(conn, "old") == {"carrier": "AA"}


def test_large_groups_and_mixed_feature_sets_commit_together(tmp_path: Path) -> None:
    conn = predlog.connect(tmp_path / "log.db")
    predlog.ensure_schema(conn, {"x": "number", "y": "number"})
    many = [record(f"a{i}", {"x": float(i)}) for i in range(2 * predlog.MAX_ROWS_PER_INSERT + 5)]
    other = [record(f"b{i}", {"x": 1.0, "y": 2.0}) for i in range(3)]
    assert predlog.insert_rows(conn, many + other) == len(many) + 3
    assert conn.execute("SELECT count(*), sum(f_x) FROM predictions").fetchone() == (
        len(many) + 3, sum(range(len(many))) + 3.0)
    # One transaction: a duplicate id anywhere rolls back the whole group.
    import sqlite3

    import pytest

    with pytest.raises(sqlite3.IntegrityError):
        predlog.insert_rows(conn, [record("new", {"x": 0.0}), *many[:1]])
    assert predlog.logged_features(conn, "new") is None
