"""Shared helpers of the monitor tests: a small real candidate and real logged traffic.

The candidate is the example's own pipeline (nbpipeline.modeling) fitted on a sample of
real nycflights13 rows of January-August; log rows carry real rows and the model's real
outputs, written with nbpipeline.predlog exactly as the server writes them.
"""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from nbpipeline import predlog
from nbpipeline.datasets import FEATURES, TARGET


@functools.cache
def flights() -> Any:
    from nbpipeline.datasets import load_flights

    return load_flights()


def months(ms: list[int], rows: int | None = None, seed: int = 0) -> Any:
    from nbpipeline.monitor.replay import month_rows

    return month_rows(ms, rows=rows, seed=seed, frame=flights())


def make_candidate(directory: Path, *, rows: int = 12000, seed: int = 0) -> tuple[Any, dict]:
    """Fit and save a candidate (model.skops, metadata.json, reference.parquet)."""
    from nbpipeline.modeling import build_pipeline, save_candidate

    train = months(list(range(1, 9)), rows=rows, seed=seed)
    model = build_pipeline(max_iter=40, min_samples_leaf=40, seed=seed, max_depth=5)
    model.fit(train[FEATURES], train[TARGET])
    reference = train.sample(min(5000, len(train)), random_state=seed)[FEATURES + [TARGET]]
    reference = reference.assign(probability=model.predict_proba(reference[FEATURES])[:, 1])
    metadata = save_candidate(
        model, directory, train=train, reference=reference, params={"seed": seed},
        data_paths={}, search={},
    )
    return model, metadata


_CANDIDATES: dict[tuple[int, int], tuple[Any, dict, Path]] = {}


def candidate(tmp_root: Path, *, seed: int = 0) -> tuple[Any, dict, Path]:
    """A cached candidate per seed (fitting takes ~1 s), saved under ``tmp_root``."""
    key = (seed, id(tmp_root))
    if (seed, 0) not in _CANDIDATES:
        directory = tmp_root / f"candidate-{seed}"
        model, metadata = make_candidate(directory, seed=seed)
        _CANDIDATES[(seed, 0)] = (model, metadata, directory)
    del key
    return _CANDIDATES[(seed, 0)]


def log_traffic(
    conn: Any, model: Any, frame: Any, *, version: str, role: str = "champion",
    ts0: float | None = None, spacing: float = 0.01, feedback: bool = True,
    threshold: float = 0.35, latency_ms: float = 4.0, fallback: bool = False,
    feature_kinds: dict[str, str] | None = None,
) -> list[str]:
    """Log one prediction per row of ``frame`` (real model outputs) plus its outcome."""
    ts0 = time.time() if ts0 is None else ts0
    if feature_kinds is not None:
        predlog.ensure_schema(conn, feature_kinds)
    proba = model.predict_proba(frame[FEATURES])[:, 1] if not fallback else np.zeros(len(frame))
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
