"""Shared helpers of the monitor tests: a small real candidate and real logged traffic.

The candidate is the example's model shape (nbpipeline.modeling) fitted on a sample of
real nycflights13 rows of January-August; log rows carry real rows and the model's real
outputs, written with nbpipeline.predlog.table exactly as the server writes them.
:func:`nbp` runs the real CLI, :func:`write_gate` leaves a passed gate for `nbp promote`,
:func:`flights_project` makes the example's project around a small candidate and
:func:`nbp_serve` runs the real `nbp serve` in it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from candidates import flights_candidate
from flights import FEATURES, TARGET, load_flights, month_rows
from projects import REPO
from serve_fixtures import free_port, wait_ready

from nbpipeline.predlog import table as predlog
from nbpipeline.record import file_sha256

BIN = Path(sys.executable).parent

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


def nbp(*args: str, cwd: Path, check_code: int | None = 0) -> subprocess.CompletedProcess[str]:
    """Run the real `nbp` CLI in ``cwd`` (with no inherited stage environment)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NBPIPELINE_ROOT", "NBPIPELINE_STAGE", "NBPIPELINE_RUNNING", "NBP_DEBUG")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    proc = subprocess.run([str(BIN / "nbp"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    if check_code is not None:
        assert proc.returncode == check_code, f"nbp {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def write_gate(root: Path, champion: str | None) -> None:
    """A passed metrics/gate.json for models/candidate, so `nbp promote` accepts it."""
    gate = {"passed": True, "checks": [], "champion_version": champion,
            "candidate_sha256": file_sha256(root / "models/candidate/model.skops"),
            "metrics": {"golden": {"roc_auc": 0.7}}}
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "gate.json").write_text(json.dumps(gate))


def flights_project(root: Path, *, candidate: bool = True, **monitor: Any) -> dict[str, Any]:
    """The example's dvc.yaml and params.yaml (``monitor`` settings overridden, a fast-polling
    server) around a small real candidate in ``root`` (none without ``candidate``: the
    registry's models are served and monitored); returns the monitor settings."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["monitor"].update(monitor)
    params["serve"] = {"poll_seconds": 0.2, "fallback_prediction": 0}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if candidate:
        flights_candidate(root / "models" / "candidate", rows=8000, seed=0)
    return params["monitor"]


@contextmanager
def nbp_serve(root: Path) -> Iterator[str]:
    """The real `nbp serve` of the project at ``root`` on a free port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(BIN / "nbp"), "serve", "--port", str(port)], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, timeout=60, proc=server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


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
