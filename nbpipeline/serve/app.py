"""The FastAPI application: the app factory, its lifespan and the registry poller.

Endpoints (see docs/serve.md): POST /predict, POST /feedback, GET /health, GET /ready,
GET /metrics, GET /schema; their work is in nbpipeline/serve/handlers.py (POST /explain and
GET /decisions/{request_id}/explanation: nbpipeline/serve/explain_routes.py). Every endpoint
is ``async``; model calls (and the spooling of their log rows) run on the predictor
thread and SQLite on the log writer thread, so the event loop only parses, validates,
routes and answers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from nbpipeline.errors import NbpipelineError
from nbpipeline.predlog.table import LOG_ENV
from nbpipeline.project import REGISTRY_ENV, Project
from nbpipeline.release.registry import Registry
from nbpipeline.schedule.status import ScheduleStatus
from nbpipeline.serve.explain_routes import decision_explanation_response, explain_response
from nbpipeline.serve.handlers import (
    ServerState,
    feedback_response,
    health_body,
    json_response,
    predict_response,
)
from nbpipeline.serve.holder import ModelHolder
from nbpipeline.serve.logwriter import LogWriter
from nbpipeline.serve.metrics import CONTENT_TYPE, ServerMetrics
from nbpipeline.serve.predictor import Predictor
from nbpipeline.serve.security import Access, PathNames
from nbpipeline.serve.settings import ServeSettings, load_settings

log = logging.getLogger("nbpipeline.serve")


def create_app(
    project: Project,
    *,
    settings: ServeSettings | None = None,
    registry: Registry | None = None,
    access: Access | None = None,
    docs: bool | None = None,
) -> FastAPI:
    """The model server of ``project``: serves the registry's champion (+ canary).

    ``access`` says who may change state (default: no token, loopback); ``docs`` serves
    /docs and /openapi.json (default: only when ``access`` says loopback)."""
    access = access or Access()
    if docs is None:
        docs = access.loopback
    settings = settings or load_settings(project)
    registry = registry or Registry(project.registry)
    state = ServerState(
        settings=settings,
        holder=ModelHolder(registry, settings.decision_threshold),
        metrics=ServerMetrics(),
        access=access,
        names=PathNames.of(project.root, {REGISTRY_ENV: registry.path,
                                          LOG_ENV: settings.log_path}),
    )

    schedule = ScheduleStatus(project.root, state.names)  # `nbp schedule`'s runs, for /health

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.log and settings.log_path is not None:
            state.writer = LogWriter(settings.log_path, on_commit=state.metrics.on_commit,
                                     on_error=state.metrics.errors.labels("log").inc)
            await asyncio.to_thread(state.writer.start)
        state.predictor = Predictor(
            sink=state.writer.append if state.writer is not None else None,
            on_call=state.metrics.on_model_call,
        )
        await _refresh(state)
        _freeze()
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
        title="nbpipeline model server", lifespan=lifespan, redoc_url=None,
        docs_url="/docs" if docs else None, openapi_url="/openapi.json" if docs else None,
    )
    app.state.server = state

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        state.metrics.errors.labels("internal").inc()
        state.metrics.requests.labels(request.url.path, "500").inc()
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        detail = f"internal error ({type(exc).__name__}); see the server log"
        return json_response(500, {"detail": detail})

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """One row (a JSON object of features) or {"rows": [...]}; see docs/serve.md."""
        return await predict_response(state, request)

    @app.post("/explain")
    async def explain(request: Request) -> Response:
        """The body of /predict; each row's decision and every feature's contribution."""
        return await explain_response(state, request)

    @app.get("/decisions/{request_id}/explanation")
    async def decision_explanation(request: Request, request_id: str) -> Response:
        """A logged decision (by its request_id) and every feature's contribution."""
        return await decision_explanation_response(state, request, request_id)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        """{"request_id": ..., "outcome": 0|1}: the real outcome of an earlier prediction."""
        return await feedback_response(state, request)

    @app.get("/health")
    async def health() -> Response:
        """Liveness, what serves, the last model/log/registry error, scheduled monitor runs."""
        return json_response(200, {**health_body(state), "schedule": schedule.section()})

    @app.get("/ready")
    async def ready() -> Response:
        """200 once a model is loaded (or the off switch answers), else 503."""
        snap = state.holder.snapshot
        body = {"ready": snap.ready, **snap.describe()}
        return json_response(200 if snap.ready else 503, body)

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
        return json_response(200, body)

    return app


# ---------------------------------------------------------------------- registry
def _freeze() -> None:
    """Keep what is loaded now (libraries, models: it lives as long as the server) out of
    the garbage collector's full passes, which otherwise walk it all and stalled every
    request in progress for ~120 ms (the c=32 p99 in bench/serve.py)."""
    gc.collect()
    gc.freeze()


async def _refresh(state: ServerState) -> None:
    """Rebuild the snapshot from the registry (loads run on a worker thread)."""
    holder = state.holder
    failures, loads = holder.load_failures, holder.loads
    try:
        snap = await asyncio.to_thread(holder.build)
    except (NbpipelineError, OSError) as exc:
        state.registry_error = str(exc) if isinstance(exc, NbpipelineError) else (
            f"cannot read the registry {holder.registry.path}: {exc}")
        state.metrics.errors.labels("reload").inc()
        log.error("cannot read the registry: %s; still serving %s", exc, holder.snapshot.describe())
        return
    state.registry_error = None
    if holder.load_failures > failures:
        state.metrics.reload_failures.inc()
        state.metrics.errors.labels("reload").inc()
    for served in (snap.champion, snap.canary):
        if served is not None and served.version not in state.logged_features:
            if state.writer is not None:  # typed columns exist before the model's first row
                try:
                    await asyncio.wrap_future(state.writer.ensure_features(served.schema.kinds))
                except Exception as exc:
                    log.error("cannot add %s's feature columns to the log: %s", served.version, exc)
            state.logged_features.add(served.version)
    holder.install(snap)
    if holder.loads > loads:
        _freeze()  # the new model, too
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
