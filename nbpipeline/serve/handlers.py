"""What the endpoints do: parse, validate, route, score, decide, log, answer.

Shared by the endpoints through one :class:`ServerState` that the app's lifespan fills.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from nbpipeline.predlog import table as predlog
from nbpipeline.serve.holder import ModelHolder, ServedModel, Snapshot
from nbpipeline.serve.logwriter import LogWriter
from nbpipeline.serve.metrics import ServerMetrics
from nbpipeline.serve.predictor import ModelFailed, Predictor
from nbpipeline.serve.routing import ROUTING_HEADER
from nbpipeline.serve.schema import BodyError, parse_body, parse_feedback
from nbpipeline.serve.security import JSON_TYPE, Access, PathNames, is_json
from nbpipeline.serve.settings import ServeSettings

log = logging.getLogger("nbpipeline.serve")

MAX_PROBLEMS = 20  # validation problems reported per request
ROW_BYTES = 16384  # body bytes allowed per row (a row of features is well under 1 KB)

# Request ids: time-ordered UUIDs (version 7: 48-bit Unix milliseconds, then 74 random
# bits) from a generator seeded once from the OS. uuid.uuid4() makes a getrandom syscall
# per call (0.2 ms per request on this busy VM), and random ids land all over the log's
# request_id index, so each commit dirties more pages; time-ordered ones append.
# Unique with overwhelming probability; not meant as secrets.
_ids = random.Random(os.urandom(32))


def new_request_id() -> str:
    """A fresh request id (32 hex digits, UUID version 7 layout)."""
    ms = time.time_ns() // 1_000_000
    value = (ms & (1 << 48) - 1) << 80 | 0x7 << 76 | _ids.getrandbits(12) << 64
    value |= 0b10 << 62 | _ids.getrandbits(62)
    return f"{value:032x}"


@dataclass
class _Row:
    index: int
    request_id: str
    served: ServedModel | None
    role: str
    features: dict[str, Any]
    routing_key: str | None
    probability: float | None = None
    answer: dict[str, Any] = field(default_factory=dict)


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
    access: Access = field(default_factory=Access)
    names: PathNames = field(default_factory=PathNames)  # files as callers may see them
    retired: dict[str, ServedModel] = field(default_factory=dict)  # loaded to explain old decisions


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status,
        media_type="application/json", headers=headers,
    )


def unauthorized(state: ServerState, request: Request, endpoint: str) -> Response | None:
    """401/403 if a route guarded by the token is called without it, else None."""
    refusal = state.access.refusal(request.headers.get("authorization"))
    if refusal is None:
        return None
    status, message = refusal
    state.metrics.requests.labels(endpoint, str(status)).inc()
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return json_response(status, {"detail": message}, headers)


def refused(state: ServerState, request: Request, *, guarded: bool) -> Response | None:
    """The answer refusing a POST before its body is read, or None to go on: 401/403
    without the token on a ``guarded`` (state-changing) route, 415 unless the body is JSON."""
    endpoint = request.url.path
    if guarded:
        refusal = unauthorized(state, request, endpoint)
        if refusal is not None:
            return refusal
    content_type = request.headers.get("content-type")
    if not is_json(content_type):
        state.metrics.requests.labels(endpoint, "415").inc()
        state.metrics.errors.labels("validation").inc()
        given = f"'{content_type}'" if content_type else "none"
        return json_response(415, {"detail": (
            f"the body must be JSON sent with `Content-Type: {JSON_TYPE}` (content type "
            f"given: {given})"
        )})
    return None


# ---------------------------------------------------------------------- predict
async def predict_response(state: ServerState, request: Request) -> Response:
    """POST /predict: validate, route, score, log, answer (see docs/serve.md)."""
    start = time.perf_counter()
    metrics = state.metrics
    refusal = refused(state, request, guarded=False)
    if refusal is not None:
        return refusal
    snap = state.holder.snapshot
    if not snap.ready:
        metrics.requests.labels("/predict", "503").inc()
        return json_response(503, {"detail": _not_ready(state)})
    try:
        raw = await _read_body(
            request, state.settings.max_batch_rows * ROW_BYTES,
            "send fewer rows per request (serve.max_batch_rows)",
        )
        rows = _validate(snap, raw, request.headers.get(ROUTING_HEADER),
                         state.settings.max_batch_rows)
    except BodyTooLarge as exc:
        metrics.requests.labels("/predict", "413").inc()
        metrics.errors.labels("validation").inc()
        return json_response(413, {"detail": str(exc)})
    except BodyError as exc:
        metrics.requests.labels("/predict", "422").inc()
        metrics.errors.labels("validation").inc()
        return json_response(422, {"detail": exc.detail})
    failure = await _score_and_log(state, rows, start)
    if failure is not None:
        return failure
    answers = [row.answer for row in rows]
    seconds = time.perf_counter() - start
    versions = {(r.served.version if r.served else "fallback", r.role) for r in rows}
    for version, role in versions:
        metrics.latency.labels(version, role).observe(seconds)
    for answer in answers:
        metrics.predictions.labels(answer["model_version"] or "fallback", answer["role"]).inc()
    metrics.batch_rows.observe(len(rows))
    metrics.requests.labels("/predict", "200").inc()
    body: Any = {"predictions": answers} if rows[0].index >= 0 else answers[0]
    return json_response(200, body)


class BodyTooLarge(Exception):
    """The body exceeds what a request of the allowed size can need."""


async def _read_body(request: Request, limit: int, fix: str) -> bytes:
    """The body, refused (413, the message ending with ``fix``) beyond ``limit`` bytes
    without reading it all into memory."""
    declared = request.headers.get("content-length")
    too_large = BodyTooLarge(f"body larger than {limit} bytes; {fix}")
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
    names = {name for m in (snap.champion, snap.canary) if m for name in m.schema.names}
    raw_rows, is_batch = parse_body(raw, max_rows, names)
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


async def _score_and_log(state: ServerState, rows: list[_Row], start: float) -> Response | None:
    """Decide every row and log it durably; an error response if that failed.

    Model rows go to the predictor thread, which scores them, decides (:func:`_decide`)
    and spools their log rows in one go; fallback rows are decided and spooled here.
    """
    assert state.predictor is not None
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        if row.served is not None:
            groups.setdefault(row.served.version, []).append(row)
    pending: list[tuple[str | None, asyncio.Future[Any]]] = []
    for version, group in groups.items():
        served = group[0].served
        assert served is not None
        pending.append((version, asyncio.wrap_future(state.predictor.submit(
            version, served.scorer, [r.features for r in group],
            functools.partial(_finish, state, group, start),
        ))))
    fallback = [row for row in rows if row.served is None]
    if fallback:
        records = _decide(state, fallback, start)
        if state.writer is not None:
            spooled: Future[None] = Future()  # one write() to the spool: done right here
            try:
                state.writer.append(records)
                spooled.set_result(None)
            except Exception as exc:
                spooled.set_exception(exc)
            pending.append((None, asyncio.wrap_future(spooled)))
    results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
    metrics = state.metrics
    for (failed, _), result in zip(pending, results, strict=True):
        if isinstance(result, ModelFailed):
            log.error("model %s failed: %s", failed, result)
            metrics.requests.labels("/predict", "500").inc()
            metrics.errors.labels("model").inc()
            return json_response(500, {"detail": state.names(
                f"model {failed} failed on this input ({result}); this is a bug in the "
                "model or its feature schema, not in the request"
            )})
        if isinstance(result, BaseException):  # the log writer counted the error
            metrics.requests.labels("/predict", "503").inc()
            return json_response(503, {"detail": state.names(
                f"the prediction could not be logged ({type(result).__name__}: {result}), so "
                f"it is not answered; check {state.settings.log_path} (disk space, permissions)"
            )})
    return None


def _finish(
    state: ServerState, group: list[_Row], start: float, probabilities: list[float]
) -> list[predlog.PredictionRecord]:
    """On the predictor thread: the rows' probabilities -> decisions and log records."""
    for row, probability in zip(group, probabilities, strict=True):
        row.probability = probability
    return _decide(state, group, start)


def _decide(state: ServerState, rows: list[_Row], start: float) -> list[predlog.PredictionRecord]:
    """Set each row's answer; return the log records."""
    settings = state.settings
    latency_ms = (time.perf_counter() - start) * 1000.0
    now = time.time()
    records: list[predlog.PredictionRecord] = []
    for row in rows:
        prediction: float  # a class (0/1), or a regression's value
        if row.served is None:
            prediction, probability, version = (
                settings.fallback_prediction, settings.fallback_probability, None,
            )
        else:
            output = row.probability
            assert output is not None
            version = row.served.version
            if row.served.task == "regression":  # the model's output is the prediction
                prediction, probability = output, None
            else:
                prediction, probability = int(output >= row.served.threshold), output
        fallback = row.served is None
        row.answer = {
            "request_id": row.request_id, "prediction": prediction, "probability": probability,
            "model_version": version, "role": row.role, "fallback": fallback,
        }
        records.append(predlog.PredictionRecord(
            request_id=row.request_id, ts=now, model_version=version, role=row.role,
            prediction=prediction, probability=probability, latency_ms=latency_ms,
            features=row.features, routing_key=row.routing_key, fallback=fallback,
        ))
    return records


def _not_ready(state: ServerState) -> str:
    """Why no model answers yet, naming the file and the fix when one could not load."""
    err = state.holder.error
    if err is not None and err.role == "champion":
        return state.names(
            f"no model is serving: the champion {err.version} cannot be loaded: {err.message} "
            f"(the server tries again every {state.settings.retry_seconds:g} s)"
        )
    if state.registry_error is not None:
        return state.names(f"no model is serving: {state.registry_error}")
    return ("no model is serving yet: the registry has no champion — promote one with "
            "`nbp promote`")


# ---------------------------------------------------------------------- feedback, health
async def feedback_response(state: ServerState, request: Request) -> Response:
    """POST /feedback: record a real outcome (state-changing: the token guards it)."""
    metrics = state.metrics
    refusal = refused(state, request, guarded=True)
    if refusal is not None:
        return refusal
    try:
        fb = parse_feedback(await _read_body(
            request, ROW_BYTES, 'a feedback body is one {"request_id": ..., "outcome": ...} object',
        ))
    except BodyTooLarge as exc:
        metrics.requests.labels("/feedback", "413").inc()
        return json_response(413, {"detail": str(exc)})
    except BodyError as exc:
        metrics.requests.labels("/feedback", "422").inc()
        metrics.errors.labels("validation").inc()
        return json_response(422, {"detail": exc.detail})
    if state.writer is None:
        metrics.requests.labels("/feedback", "503").inc()
        return json_response(503, {"detail": "the prediction log is off (serve.log: false); "
                                     "feedback cannot be recorded"})
    try:
        pending = state.writer.feedback(fb.request_id, fb.outcome, time.time())
        known = await asyncio.wrap_future(pending)
    except Exception as exc:  # the log writer counted the error
        metrics.requests.labels("/feedback", "503").inc()
        detail = f"feedback not recorded ({type(exc).__name__}: {exc})"
        return json_response(503, {"detail": state.names(detail)})
    if known is None:  # the outcome does not fit the task of the model that decided
        metrics.requests.labels("/feedback", "422").inc()
        metrics.errors.labels("validation").inc()
        return json_response(422, {"detail": [{
            "loc": ["body", "outcome"], "type": "value_error",
            "msg": f"outcome {fb.outcome!r} of a classification decision must be 0 or 1",
        }]})
    if not known:
        metrics.requests.labels("/feedback", "404").inc()
        return json_response(404, {"detail": (
            f"no prediction with request_id '{fb.request_id}' in the log; send a request_id "
            "returned by POST /predict"
        )})
    metrics.requests.labels("/feedback", "200").inc()
    body = {"request_id": fb.request_id, "outcome": fb.outcome, "recorded": True}
    return json_response(200, body)


def health_body(state: ServerState) -> dict[str, Any]:
    snap, holder, writer = state.holder.snapshot, state.holder, state.writer
    errors: list[str] = []
    if holder.error is not None:
        errors.append(f"{holder.error.role} {holder.error.version} not loaded: "
                      f"{holder.error.message}")
    if state.registry_error is not None:
        errors.append(state.registry_error)
    if writer is not None and writer.stats.last_error is not None:
        errors.append(f"prediction log: {writer.stats.last_error}")
    errors = [state.names(error) for error in errors]
    return {
        "status": "degraded" if errors else "ok",
        "ready": snap.ready,
        **snap.describe(),
        "scorers": {
            served.version: served.scorer_how for served in (snap.champion, snap.canary) if served
        },
        "errors": errors,
        "log": None if writer is None else {
            "path": state.names(str(writer.path)), "rows": writer.stats.rows,
            "commits": writer.stats.commits,
            "errors": writer.stats.errors, "spooled_bytes": writer.backlog_bytes(),
            "recovered_rows": writer.stats.recovered,
        },
        "uptime_seconds": round(time.time() - state.started, 1),
    }
