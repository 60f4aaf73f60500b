"""Replay a labelled table through a running model server, then send its outcomes.

``nbp replay`` takes the rows of a table (by default the project's golden split;
``--data FILE`` for any CSV or parquet file with the model's features and target),
in time order, optionally within ``--from``/``--to`` on the time column, and for each row:
POST /predict with the model's feature columns (one JSON row), remembers the request_id,
and then POST /feedback with the row's real outcome (the target, encoded as the model
contract says). The number of rows and the request rate are bounded; only 127.0.0.1-style
URLs are expected.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbpipeline.dataset import read_table
from nbpipeline.errors import MonitorError, NbpipelineError
from nbpipeline.monitor.reference import in_period
from nbpipeline.release.candidate import ModelContract

MAX_ROWS = 200_000
OUTCOME = "__outcome__"  # the encoded target column added by :func:`replay_rows`


def replay_rows(
    path: Path | str, contract: ModelContract, *, start: str | None = None,
    stop: str | None = None, rows: int | None = None, seed: int = 0,
) -> Any:
    """The rows of ``path`` to replay, in time order, with the encoded outcome.

    ``start``/``stop`` (dates) keep rows with ``start <= time < stop`` on the contract's
    time column; ``rows`` draws a random sample of that many (then re-sorts by time).
    """

    time_column = contract.time_column
    try:
        frame = read_table(path, [time_column] if time_column else [])
    except NbpipelineError as exc:
        raise MonitorError(str(exc)) from exc
    missing = [c for c in [*contract.names, contract.target] if c not in frame.columns]
    if missing:
        raise MonitorError(
            f"{path}: no column(s) {', '.join(missing)}; the served model takes "
            f"{', '.join(contract.names)} and predicts {contract.target}"
        )
    if (start or stop) and not time_column:
        raise MonitorError("--from/--to need a time column; the model contract has none")
    if time_column:
        frame = frame[in_period(frame[time_column], start=start, stop=stop)]
    frame = frame[frame[contract.target].notna()]
    if rows is not None and rows < len(frame):
        frame = frame.sample(rows, random_state=seed)
    if time_column:
        frame = frame.sort_values(time_column, kind="stable")
    frame = frame.reset_index(drop=True)
    frame[OUTCOME] = contract.outcome(frame[contract.target])
    return frame


def json_row(row: dict[str, Any], features: Sequence[str]) -> dict[str, Any]:
    """The JSON body of one /predict request: the features, NaN sent as null."""
    out: dict[str, Any] = {}
    for name in features:
        value: Any = row.get(name)
        if hasattr(value, "item"):  # numpy scalar -> Python
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[name] = value
    return out


@dataclass
class ReplayResult:
    """What a replay sent and what came back."""

    sent: int = 0
    predicted: int = 0
    feedback: int = 0
    errors: int = 0
    fallback: int = 0
    seconds: float = 0.0
    first_error: str | None = None

    def summary(self) -> str:
        return (
            f"replayed {self.predicted}/{self.sent} rows ({self.fallback} fallback decisions), "
            f"{self.feedback} outcomes sent, {self.errors} errors in {self.seconds:.1f}s"
        )


def replay(
    url: str, frame: Any, features: Sequence[str], *, target: str = OUTCOME,
    rate: float = 200.0, max_rows: int = MAX_ROWS, timeout: float = 10.0,
    send_feedback: bool = True, progress: Callable[[int], None] | None = None,
    concurrency: int = 4,
) -> ReplayResult:
    """POST each row of ``frame`` to ``url``/predict at most ``rate`` per second, then feedback.

    Row ``i`` is sent no earlier than ``i / rate`` seconds after the start, by one of
    ``concurrency`` workers (so a slow answer does not hold the rate down); outcomes are
    sent once every prediction is answered.
    """
    import httpx

    if len(frame) > max_rows:
        raise MonitorError(
            f"replay of {len(frame):,} rows refused: the bound is {max_rows:,}; pass fewer "
            "rows (--rows) or raise --max-rows"
        )
    if rate <= 0:
        raise MonitorError(f"replay rate {rate!r}/s must be > 0")
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise MonitorError(
            f"replay rows lack the model's feature(s) {', '.join(missing)}; the served "
            "model expects columns this table does not have"
        )
    base = url.rstrip("/")
    result = ReplayResult()
    lock = threading.Lock()
    records = frame[list(features) + [target]].to_dict("records")
    answered: list[tuple[str, int | float] | None] = [None] * len(records)
    started = time.perf_counter()

    def note_error(exc: Exception) -> None:
        with lock:
            result.errors += 1
            result.first_error = result.first_error or _describe(exc)

    def predict(client: httpx.Client, i: int) -> None:
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            resp = client.post(f"{base}/predict", json=json_row(records[i], features))
            resp.raise_for_status()
            body = resp.json()
        except httpx.ConnectError as exc:
            raise MonitorError(
                f"cannot reach the model server at {base} ({exc}); start it with "
                "`nbp serve` or pass its address with --url"
            ) from exc
        except (httpx.HTTPError, ValueError) as exc:
            note_error(exc)
            return
        outcome = records[i][target]
        answered[i] = (str(body["request_id"]),
                       int(outcome) if float(outcome).is_integer() else float(outcome))
        with lock:
            result.predicted += 1
            result.fallback += int(bool(body.get("fallback")))
            if progress and result.predicted % 500 == 0:
                progress(result.predicted)

    def feedback(client: httpx.Client, item: tuple[str, int | float]) -> None:
        try:
            resp = client.post(f"{base}/feedback",
                               json={"request_id": item[0], "outcome": item[1]})
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            note_error(exc)
            return
        with lock:
            result.feedback += 1

    limits = httpx.Limits(max_connections=concurrency)
    # the token a server started with $NBP_SERVE_TOKEN wants for /feedback
    # (nbpipeline/serve/security.py; monitor does not import serve)
    token = os.environ.get("NBP_SERVE_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with httpx.Client(timeout=timeout, limits=limits, headers=headers) as client, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
        result.sent = len(records)
        list(pool.map(lambda i: predict(client, i), range(len(records))))
        if send_feedback:
            done = [a for a in answered if a is not None]
            list(pool.map(lambda item: feedback(client, item), done))
    result.seconds = time.perf_counter() - started
    return result


def _describe(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return f"{type(exc).__name__}: {exc}"
