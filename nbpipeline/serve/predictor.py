"""Model calls (and the logging of their decisions) off the event loop, micro-batched.

One worker thread runs every model call (a :data:`nbpipeline.serve.scorer.Scorer`: compiled
trees, or ``predict_proba`` on a DataFrame). Rows that arrive while it is busy are
gathered and scored in one call per model, so concurrent single-row requests share the
fixed cost of a call instead of queueing behind it.
The thread runs the models single-threaded (OpenMP/BLAS pools limited to 1): a server
already has concurrency, and sklearn's thread pools on a busy machine turn a 1 ms call
into a 1 s tail.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from nbpipeline.predlog import table as predlog
from nbpipeline.serve.batching import take_group
from nbpipeline.serve.scorer import Scorer

MAX_ROWS_PER_CALL = 4096


Finish = Callable[[list[float]], list[predlog.PredictionRecord]]
Sink = Callable[[list[predlog.PredictionRecord]], object]  # makes log records durable


class ModelFailed(Exception):
    """The model raised (or returned garbage) on rows that passed validation."""


@dataclass
class _Job:
    version: str
    scorer: Scorer
    rows: list[dict[str, Any]]
    finish: Finish  # probabilities -> log records (run on the predictor thread)
    future: Future[None] = field(default_factory=Future)


class Predictor:
    """The one thread that calls models and then logs their decisions.

    :meth:`submit` takes rows and a ``finish`` function turning their probabilities into
    log records; the thread scores the rows (micro-batched with other requests), calls
    ``finish``, hands all records of the batch to ``sink`` (the log's spool: one write)
    and only then resolves the futures. Scoring and logging on one thread spares each
    request a round trip through the event loop between the two.
    """

    def __init__(
        self, *, sink: Sink | None = None, on_call: Callable[[str, int, float], None] | None = None
    ) -> None:
        self._sink = sink
        self._on_call = on_call  # (model version, rows, seconds) after each model call
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._limited: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="predictor", daemon=True)
        self._thread.start()

    def submit(
        self, version: str, scorer: Scorer, rows: list[dict[str, Any]], finish: Finish,
    ) -> Future[None]:
        """Score and log ``rows``; the future fails with ModelFailed or the sink's error."""
        job = _Job(version, scorer, rows, finish)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _single_threaded(self, scorer: Scorer) -> None:
        """Limit the thread pools of every library loaded so far (a new model may load some).

        threadpoolctl only sees libraries already loaded, and OpenMP's limit is per calling
        thread, so this runs on this thread before a model's first call.
        """
        from threadpoolctl import threadpool_limits

        if id(scorer) not in self._limited:
            threadpool_limits(limits=1)
            self._limited.add(id(scorer))

    def _run(self) -> None:
        while True:
            jobs, stop = take_group(self._queue, MAX_ROWS_PER_CALL, lambda job: len(job.rows))
            if not jobs:
                return
            try:
                self._score(jobs)
            except Exception as exc:  # never let the thread die: fail what is unanswered
                for unanswered in jobs:
                    if not unanswered.future.done():
                        unanswered.future.set_exception(exc)
            if stop:
                return

    def _score(self, jobs: list[_Job]) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(id(job.scorer), []).append(job)
        done: list[tuple[_Job, list[predlog.PredictionRecord]]] = []
        for group in groups.values():
            done += self._score_group(group)
        if not done:
            return
        if self._sink is not None:
            try:
                self._sink([rec for _, records in done for rec in records])
            except Exception:
                # One bad request must not fail the others: log each on its own.
                for job, records in done:
                    try:
                        self._sink(records)
                    except Exception as exc:
                        job.future.set_exception(exc)
                    else:
                        job.future.set_result(None)
                return
        for job, _ in done:
            job.future.set_result(None)

    def _score_group(self, group: list[_Job]) -> list[tuple[_Job, list[predlog.PredictionRecord]]]:
        """Score jobs of one model in one call; failed jobs get their exception set."""
        rows = [row for job in group for row in job.rows]
        try:
            self._single_threaded(group[0].scorer)
            start = time.perf_counter()
            probs = [float(p) for p in group[0].scorer(rows)]
            if self._on_call is not None:
                self._on_call(group[0].version, len(rows), time.perf_counter() - start)
            if not all(map(math.isfinite, probs)):
                raise ValueError("the model returned a probability that is not a finite number")
        except Exception as exc:
            if len(group) > 1:  # one bad request must not fail the others gathered with it
                return [item for job in group for item in self._score_group([job])]
            group[0].future.set_exception(ModelFailed(f"{type(exc).__name__}: {exc}"))
            return []
        done = []
        offset = 0
        for job in group:
            try:
                done.append((job, job.finish(probs[offset:offset + len(job.rows)])))
            except Exception as exc:  # a bug in building the records: fail this request only
                job.future.set_exception(exc)
            offset += len(job.rows)
        return done
