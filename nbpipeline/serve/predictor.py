"""Model calls off the event loop, with micro-batching.

One worker thread runs every ``predict_proba``. Rows that arrive while it is busy are
gathered and scored in one call per model, so concurrent single-row requests share the
fixed cost of a pipeline call (DataFrame, encoders) instead of queueing behind it.
The thread runs the models single-threaded (OpenMP/BLAS pools limited to 1): a server
already has concurrency, and sklearn's thread pools on a busy machine turn a 1 ms call
into a 1 s tail.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nbpipeline.serve.schema import FeatureSchema

MAX_ROWS_PER_CALL = 4096


def frame(schema: FeatureSchema, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Validated rows as the DataFrame the model was trained on (numbers as float, None -> NaN)."""
    columns: dict[str, Any] = {}
    for name in schema.names:
        values = [row[name] for row in rows]
        if schema.kinds[name] == "number":
            columns[name] = np.array(values, dtype=np.float64)
        else:
            columns[name] = np.array(values, dtype=object)
    return pd.DataFrame(columns, columns=list(schema.names))


def score(model: Any, schema: FeatureSchema, rows: list[dict[str, Any]]) -> list[float]:
    """P(target == 1) for each row."""
    proba = model.predict_proba(frame(schema, rows))
    return [float(p) for p in np.asarray(proba)[:, 1]]


@dataclass
class _Job:
    version: str
    model: Any
    schema: FeatureSchema
    rows: list[dict[str, Any]]
    future: Future[list[float]] = field(default_factory=Future)


class Predictor:
    """The one thread that calls models; :meth:`submit` returns a future of probabilities."""

    def __init__(self, on_call: Callable[[str, int, float], None] | None = None) -> None:
        self._on_call = on_call  # (model version, rows, seconds) after each model call
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._limited: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="predictor", daemon=True)
        self._thread.start()

    def submit(
        self, version: str, model: Any, schema: FeatureSchema, rows: list[dict[str, Any]]
    ) -> Future[list[float]]:
        """Score ``rows`` with ``model``; the future gives P(target == 1) per row."""
        job = _Job(version, model, schema, rows)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _single_threaded(self, model: Any) -> None:
        """Limit the thread pools of every library loaded so far (a new model may load some).

        threadpoolctl only sees libraries already loaded, and OpenMP's limit is per calling
        thread, so this runs on this thread before a model's first call.
        """
        from threadpoolctl import threadpool_limits

        if id(model) not in self._limited:
            threadpool_limits(limits=1)
            self._limited.add(id(model))

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            count = len(job.rows)
            stop = False
            while count < MAX_ROWS_PER_CALL:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                count += len(nxt.rows)
            self._score(jobs)
            if stop:
                return

    def _score(self, jobs: list[_Job]) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.model), []).append(job)
        for group in groups.values():
            rows = [row for job in group for row in job.rows]
            try:
                self._single_threaded(group[0].model)
                start = time.perf_counter()
                probs = score(group[0].model, group[0].schema, rows)
                if self._on_call is not None:
                    self._on_call(group[0].version, len(rows), time.perf_counter() - start)
            except Exception as exc:
                if len(group) == 1:  # the request answers 500 naming the model
                    group[0].future.set_exception(exc)
                else:  # one bad request must not fail the others gathered with it
                    for job in group:
                        self._score([job])
                continue
            start = 0
            for job in group:
                job.future.set_result(probs[start:start + len(job.rows)])
                start += len(job.rows)
