"""The FastAPI application: endpoints, lifespan and the registry poller.

Endpoints (see docs/serve.md): POST /predict, POST /feedback, GET /health, GET /ready,
GET /metrics, GET /schema. Every endpoint is ``async``; model calls run on the
predictor thread and log writes on the writer thread, so the event loop only parses,
validates, routes and answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from nbpipeline import predlog
from nbpipeline.errors import NbpipelineError
from nbpipeline.project import Project
from nbpipeline.registry import Registry
from nbpipeline.serve.holder import ModelHolder, ServedModel, Snapshot
from nbpipeline.serve.logwriter import LogWriter
from nbpipeline.serve.metrics import CONTENT_TYPE, ServerMetrics
from nbpipeline.serve.predictor import Predictor
from nbpipeline.serve.routing import ROUTING_HEADER
from nbpipeline.serve.schema import BodyError, parse_body, parse_feedback
from nbpipeline.serve.settings import ServeSettings, load_settings

log = logging.getLogger("nbpipeline.serve")

MAX_PROBLEMS = 20  # validation problems reported per request
ROW_BYTES = 16384  # body bytes allowed per row (a row of features is well under 1 KB)

# Request ids: random 128-bit UUIDs from a generator seeded once from the OS. uuid.uuid4()
# makes a getrandom syscall per call, which the profiler showed at 0.2 ms per request on
# this busy VM. Unique with overwhelming probability; not meant as secrets.
_ids = random.Random(os.urandom(32))


def new_request_id() -> str:
    """A fresh request id (32 hex digits, UUID version 4 layout)."""
    return uuid.UUID(int=_ids.getrandbits(128), version=4).hex


@dataclass
class _Row:
    index: int
    request_id: str
    served: ServedModel | None
    role: str
    features: dict[str, Any]
    routing_key: str | None
    probability: float | None = None


@dataclass
class ServerState:
    """Everything the endpoints share; built by the lifespan."""

    settings: ServeSettings
    holder: ModelHolder
    metrics: ServerMetrics
    predictor: Predictor | None = None
    writer: LogWriter | None = None
    registry_error: str | None = None
    started: float = field(default_factory=time.time)
    logged_features: set[str] = field(default_factory=set)


def _json(status: int, body: Any) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status,
        media_type="application/json",
    )


def create_app(
    project: Project,
    *,
    settings: ServeSettings | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """The model server of ``project``: serves the registry's champion (+ canary)."""
    settings = settings or load_settings(project)
    state = ServerState(
        settings=settings,
        holder=ModelHolder(registry or Registry(project.registry), settings.decision_threshold),
        metrics=ServerMetrics(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.log and settings.log_path is not None:
            state.writer = LogWriter(settings.log_path, on_commit=state.metrics.on_commit)
            await asyncio.to_thread(state.writer.start)
        state.predictor = Predictor(on_call=state.metrics.on_model_call)
        await _refresh(state)
        poller = asyncio.create_task(_poll(state), name="registry-poller")
        try:
            yield
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            await asyncio.to_thread(state.predictor.close)
            if state.writer is not None:
                await asyncio.to_thread(state.writer.close)

    app = FastAPI(
        title="nbpipeline model server", lifespan=lifespan, docs_url="/docs", redoc_url=None,
    )
    app.state.server = state

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        state.metrics.errors.labels("internal").inc()
        state.metrics.requests.labels(request.url.path, "500").inc()
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _json(500, {"detail": f"internal error ({type(exc).__name__}); see the server log"})

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """One row (a JSON object of features) or {"rows": [...]}; see docs/serve.md."""
        return await _predict(state, request)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        """{"request_id": ..., "outcome": 0|1}: the real outcome of an earlier prediction."""
        return await _feedback(state, request)

    @app.get("/health")
    async def health() -> Response:
        """Liveness, what serves, and the last model/log/registry error."""
        return _json(200, _health(state))

    @app.get("/ready")
    async def ready() -> Response:
        """200 once a model is loaded (or the off switch answers), else 503."""
        snap = state.holder.snapshot
        body = {"ready": snap.ready, **snap.describe()}
        return _json(200 if snap.ready else 503, body)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/schema")
    async def schema() -> Response:
        """JSON schema of one row for each serving model."""
        snap = state.holder.snapshot
        body = {
            role: {"version": m.version, "row": m.schema.json_schema()}
            for role, m in (("champion", snap.champion), ("canary", snap.canary)) if m is not None
        }
        return _json(200, body)

    return app


# ---------------------------------------------------------------------- registry
async def _refresh(state: ServerState) -> None:
    """Rebuild the snapshot from the registry (loads run on a worker thread)."""
    holder = state.holder
    failures = holder.load_failures
    try:
        snap = await asyncio.to_thread(holder.build)
    except NbpipelineError as exc:
        state.registry_error = str(exc)
        state.metrics.errors.labels("reload").inc()
        log.error("cannot read the registry: %s; still serving %s", exc, holder.snapshot.describe())
        return
    state.registry_error = None
    if holder.load_failures > failures:
        state.metrics.reload_failures.inc()
        state.metrics.errors.labels("reload").inc()
    for served in (snap.champion, snap.canary):
        if served is not None and served.version not in state.logged_features:
            if state.writer is not None:
                state.writer.ensure_features(served.schema.kinds)  # queued before any row
            state.logged_features.add(served.version)
    holder.install(snap)
    state.metrics.serving(
        {"champion": snap.champion.version if snap.champion else None,
         "canary": snap.canary.version if snap.canary else None},
        snap.canary_fraction, snap.switched_off,
    )


async def _poll(state: ServerState) -> None:
    """Follow the registry: rebuild on every change, retry a failed load now and then."""
    holder, settings = state.holder, state.settings
    seen, attempted = holder.snapshot.token, time.monotonic()
    while True:
        await asyncio.sleep(settings.poll_seconds)
        try:
            token = await asyncio.to_thread(holder.registry.token)
        except OSError as exc:
            state.registry_error = f"cannot read {holder.registry.events_path}: {exc}"
            continue
        failing = holder.error is not None or state.registry_error is not None
        if token != seen or (failing and time.monotonic() - attempted >= settings.retry_seconds):
            seen, attempted = token, time.monotonic()
            await _refresh(state)


# ---------------------------------------------------------------------- predict
async def _predict(state: ServerState, request: Request) -> Response:
    start = time.perf_counter()
    metrics = state.metrics
    snap = state.holder.snapshot
    if not snap.ready:
        metrics.requests.labels("/predict", "503").inc()
        return _json(503, {"detail": _not_ready(state)})
    try:
        raw = await _read_body(request, state.settings.max_batch_rows * ROW_BYTES)
        rows = _validate(snap, raw, request.headers.get(ROUTING_HEADER),
                         state.settings.max_batch_rows)
    except BodyTooLarge as exc:
        metrics.requests.labels("/predict", "413").inc()
        metrics.errors.labels("validation").inc()
        return _json(413, {"detail": str(exc)})
    except BodyError as exc:
        metrics.requests.labels("/predict", "422").inc()
        metrics.errors.labels("validation").inc()
        return _json(422, {"detail": exc.detail})
    failure = await _score(state, rows)
    if failure is not None:
        metrics.requests.labels("/predict", "500").inc()
        metrics.errors.labels("model").inc()
        return _json(500, {"detail": failure})
    answers, records = _decide(state, rows, start)
    if state.writer is not None:
        try:
            await asyncio.wrap_future(state.writer.write(records))
        except Exception as exc:
            metrics.requests.labels("/predict", "503").inc()
            metrics.errors.labels("log").inc()
            return _json(503, {"detail": (
                f"the prediction could not be logged ({type(exc).__name__}: {exc}), so it is "
                f"not answered; check {state.settings.log_path} (disk space, permissions)"
            )})
    seconds = time.perf_counter() - start
    versions = {(r.served.version if r.served else "fallback", r.role) for r in rows}
    for version, role in versions:
        metrics.latency.labels(version, role).observe(seconds)
    for answer in answers:
        metrics.predictions.labels(answer["model_version"] or "fallback", answer["role"]).inc()
    metrics.batch_rows.observe(len(rows))
    metrics.requests.labels("/predict", "200").inc()
    body: Any = {"predictions": answers} if rows[0].index >= 0 else answers[0]
    return _json(200, body)


class BodyTooLarge(Exception):
    """The body exceeds what a request of the allowed size can need."""


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) beyond ``limit`` bytes without reading it all into memory."""
    declared = request.headers.get("content-length")
    too_large = BodyTooLarge(
        f"body larger than {limit} bytes; send fewer rows per request (serve.max_batch_rows)"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _validate(snap: Snapshot, raw: bytes, key: str | None, max_rows: int) -> list[_Row]:
    """Parse, route and validate each row against the schema of the model that answers it."""
    raw_rows, is_batch = parse_body(raw, max_rows)
    rows: list[_Row] = []
    problems: list[dict[str, Any]] = []
    for i, raw_row in enumerate(raw_rows):
        request_id = new_request_id()
        served, role = snap.route(key or request_id)
        loc: tuple[str | int, ...] = ("body", "rows", i) if is_batch else ("body",)
        schema_of = served or snap.champion
        try:
            if schema_of is not None:
                features = schema_of.schema.validate_row(raw_row, loc)
            elif isinstance(raw_row, dict):  # switched off and no model ever loaded
                features = {k: v for k, v in raw_row.items() if _scalar(v)}
            else:
                raise BodyError([{"loc": list(loc), "msg": "a row must be a JSON object",
                                  "type": "dict_type"}])
        except BodyError as exc:
            problems.extend(exc.detail)
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        rows.append(_Row(i if is_batch else -1, request_id, served, role, features, key))
    if problems:
        raise BodyError(problems[:MAX_PROBLEMS])
    return rows


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)


async def _score(state: ServerState, rows: list[_Row]) -> str | None:
    """Fill each row's probability; returns an error message if a model failed."""
    assert state.predictor is not None
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        if row.served is not None:
            groups.setdefault(row.served.version, []).append(row)
    if not groups:
        return None
    futures = [
        asyncio.wrap_future(state.predictor.submit(
            version, served.model, served.schema, [r.features for r in group]
        ))
        for version, group in groups.items()
        if (served := group[0].served) is not None
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    for (version, group), result in zip(groups.items(), results, strict=True):
        if not isinstance(result, BaseException) and not all(map(math.isfinite, result)):
            result = ValueError("the model returned a probability that is not a finite number")
        if isinstance(result, BaseException):
            log.error("model %s failed: %s: %s", version, type(result).__name__, result)
            return (f"model {version} failed on this input ({type(result).__name__}: {result}); "
                    "this is a bug in the model or its feature schema, not in the request")
        for row, probability in zip(group, result, strict=True):
            row.probability = probability
    return None


def _decide(
    state: ServerState, rows: list[_Row], start: float
) -> tuple[list[dict[str, Any]], list[predlog.PredictionRecord]]:
    """The answers and the log records of scored rows."""
    settings = state.settings
    latency_ms = (time.perf_counter() - start) * 1000.0
    now = time.time()
    answers: list[dict[str, Any]] = []
    records: list[predlog.PredictionRecord] = []
    for row in rows:
        if row.served is None:
            prediction, probability, version = (
                settings.fallback_prediction, settings.fallback_probability, None,
            )
        else:
            probability = row.probability
            assert probability is not None
            prediction, version = int(probability >= row.served.threshold), row.served.version
        fallback = row.served is None
        answers.append({
            "request_id": row.request_id, "prediction": prediction, "probability": probability,
            "model_version": version, "role": row.role, "fallback": fallback,
        })
        records.append(predlog.PredictionRecord(
            request_id=row.request_id, ts=now, model_version=version, role=row.role,
            prediction=prediction, probability=probability, latency_ms=latency_ms,
            features=row.features, routing_key=row.routing_key, fallback=fallback,
        ))
    return answers, records


def _not_ready(state: ServerState) -> str:
    err = state.holder.error
    why = f"; last error: {err.message}" if err else ""
    return ("no model is serving yet: the registry has no champion — promote one with "
            f"`nbp promote`{why}")


# ---------------------------------------------------------------------- feedback, health
async def _feedback(state: ServerState, request: Request) -> Response:
    metrics = state.metrics
    try:
        fb = parse_feedback(await _read_body(request, ROW_BYTES))
    except BodyTooLarge as exc:
        metrics.requests.labels("/feedback", "413").inc()
        return _json(413, {"detail": str(exc)})
    except BodyError as exc:
        metrics.requests.labels("/feedback", "422").inc()
        metrics.errors.labels("validation").inc()
        return _json(422, {"detail": exc.detail})
    if state.writer is None:
        metrics.requests.labels("/feedback", "503").inc()
        return _json(503, {"detail": "the prediction log is off (serve.log: false); "
                                     "feedback cannot be recorded"})
    try:
        pending = state.writer.feedback(fb.request_id, fb.outcome, time.time())
        known = await asyncio.wrap_future(pending)
    except Exception as exc:
        metrics.requests.labels("/feedback", "503").inc()
        metrics.errors.labels("log").inc()
        return _json(503, {"detail": f"feedback not recorded ({type(exc).__name__}: {exc})"})
    if not known:
        metrics.requests.labels("/feedback", "404").inc()
        return _json(404, {"detail": (
            f"no prediction with request_id '{fb.request_id}' in the log; send a request_id "
            "returned by POST /predict"
        )})
    metrics.requests.labels("/feedback", "200").inc()
    return _json(200, {"request_id": fb.request_id, "outcome": fb.outcome, "recorded": True})


def _health(state: ServerState) -> dict[str, Any]:
    snap, holder, writer = state.holder.snapshot, state.holder, state.writer
    errors: list[str] = []
    if holder.error is not None:
        errors.append(f"model {holder.error.version} not loaded: {holder.error.message}")
    if state.registry_error is not None:
        errors.append(state.registry_error)
    if writer is not None and writer.stats.last_error is not None:
        errors.append(f"prediction log: {writer.stats.last_error}")
    return {
        "status": "degraded" if errors else "ok",
        "ready": snap.ready,
        **snap.describe(),
        "errors": errors,
        "log": None if writer is None else {
            "path": str(writer.path), "rows": writer.stats.rows, "commits": writer.stats.commits,
            "errors": writer.stats.errors,
        },
        "uptime_seconds": round(time.time() - state.started, 1),
    }
