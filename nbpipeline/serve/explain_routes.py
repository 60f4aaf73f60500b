"""The explanation endpoints: ``POST /explain`` and ``GET /decisions/{request_id}/explanation``.

Both answer a decision with each feature's contribution to its raw score
(nbpipeline/serve/explain.py says how); see docs/serve.md. ``/explain`` validates and routes
its body as ``/predict`` does and logs nothing; the logged decision is read through the log
writer (after the spool is moved in) and explained by the model version that made it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from nbpipeline.serve.explain import Explanations, NotExplainable, explainer_for
from nbpipeline.serve.handlers import (
    ROW_BYTES,
    BodyTooLarge,
    ServerState,
    _not_ready,
    _read_body,
    _validate,
    json_response,
    refused,
    unauthorized,
)
from nbpipeline.serve.holder import ServedModel
from nbpipeline.serve.routing import ROUTING_HEADER
from nbpipeline.serve.schema import BodyError
from nbpipeline.serve.scorer import Rows


def _answer(served: ServedModel, role: str, found: Explanations, i: int) -> dict[str, Any]:
    output = float(found.output()[i])
    if served.task == "regression":
        prediction: float = output
        probability = None
    else:
        prediction, probability = int(output >= served.threshold), output
    return {"model_version": served.version, "role": role, "prediction": prediction,
            "probability": probability, **found.row(i, served.schema.names)}


def _explain(served: ServedModel, rows: Rows) -> Explanations:
    return explainer_for(served.scorer, served.scorer_how).explain(rows)


def _count(state: ServerState, endpoint: str, status: int) -> None:
    state.metrics.requests.labels(endpoint, str(status)).inc()


async def explain_response(state: ServerState, request: Request) -> Response:
    """POST /explain: the body of /predict; each row's decision and its contributions.
    Routed as /predict routes it (the same model answers); nothing is logged."""
    endpoint = "/explain"
    refusal = refused(state, request, guarded=False)
    if refusal is not None:
        return refusal
    snap = state.holder.snapshot
    if not snap.ready:
        _count(state, endpoint, 503)
        return json_response(503, {"detail": _not_ready(state)})
    try:
        raw = await _read_body(request, state.settings.max_batch_rows * ROW_BYTES,
                               "send fewer rows per request (serve.max_batch_rows)")
        rows = _validate(snap, raw, request.headers.get(ROUTING_HEADER),
                         state.settings.max_batch_rows)
    except BodyTooLarge as exc:
        _count(state, endpoint, 413)
        state.metrics.errors.labels("validation").inc()
        return json_response(413, {"detail": str(exc)})
    except BodyError as exc:
        _count(state, endpoint, 422)
        state.metrics.errors.labels("validation").inc()
        return json_response(422, {"detail": exc.detail})
    if any(row.served is None for row in rows):
        _count(state, endpoint, 409)
        return json_response(409, {"detail": (
            "serving is switched off (fallback answers), so no model decides and there is "
            "nothing to explain; `nbp models` shows the off switch")})
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        assert row.served is not None
        groups.setdefault(row.served.version, []).append(i)
    answers: list[dict[str, Any]] = [{} for _ in rows]
    try:
        for indices in groups.values():
            served = rows[indices[0]].served
            assert served is not None
            found = await asyncio.to_thread(_explain, served, [rows[i].features for i in indices])
            for k, i in enumerate(indices):
                answers[i] = _answer(served, rows[i].role, found, k)
    except NotExplainable as exc:
        _count(state, endpoint, 409)
        return json_response(409, {"detail": str(exc)})
    _count(state, endpoint, 200)
    body: Any = {"explanations": answers} if rows[0].index >= 0 else answers[0]
    return json_response(200, body)


async def decision_explanation_response(
    state: ServerState, request: Request, request_id: str
) -> Response:
    """GET /decisions/{request_id}/explanation: the logged decision, explained by the
    model version that made it (served now, or loaded from the registry). It reads logged
    features back, so the token guards it as it guards feedback (request ids are not
    secrets)."""
    endpoint = "/decisions/{request_id}/explanation"
    refusal = unauthorized(state, request, endpoint)
    if refusal is not None:
        return refusal
    shown = request_id if len(request_id) <= 64 else request_id[:64] + "..."
    if state.writer is None:
        _count(state, endpoint, 409)
        return json_response(409, {"detail": "the prediction log is off (serve.log: false), "
                                             "so no decision can be looked up"})
    try:
        decision = await asyncio.wrap_future(state.writer.decision(request_id))
    except Exception as exc:  # the log writer counted the error
        _count(state, endpoint, 503)
        return json_response(503, {"detail": state.names(
            f"the prediction log cannot be read ({type(exc).__name__}: {exc})")})
    if decision is None:
        _count(state, endpoint, 404)
        return json_response(404, {"detail": (
            f"no decision with request_id '{shown}' in the log; send a request_id returned "
            "by POST /predict")})
    if decision.model_version is None:
        _count(state, endpoint, 409)
        return json_response(409, {"detail": (
            f"decision '{shown}' was a fallback answer (serving was switched off): no model "
            "made it, so there is nothing to explain")})
    try:
        served = await _model_of(state, decision.model_version)
        row = {name: decision.features.get(name) for name in served.schema.names}
        found = await asyncio.to_thread(_explain, served, [row])
    except NotExplainable as exc:
        _count(state, endpoint, 409)
        return json_response(409, {"detail": f"model {decision.model_version}: {exc}"})
    except _Unloadable as exc:
        _count(state, endpoint, 409)
        return json_response(409, {"detail": state.names(str(exc))})
    body = {"request_id": request_id, **_answer(served, decision.role, found, 0),
            "features": row, "logged": {"ts": decision.ts, "prediction": decision.prediction,
                                        "probability": decision.probability}}
    _count(state, endpoint, 200)
    return json_response(200, body)


class _Unloadable(Exception):
    pass


async def _model_of(state: ServerState, version: str) -> ServedModel:
    snap = state.holder.snapshot
    for served in (snap.champion, snap.canary):
        if served is not None and served.version == version:
            return served
    retired = state.retired  # versions that no longer serve, loaded on demand (a few kept)
    if version not in retired:
        try:
            loaded = await asyncio.to_thread(state.holder.load_model, version)
        except Exception as exc:
            raise _Unloadable(f"model {version}, which made this decision, cannot be loaded "
                              f"from the registry to explain it: {exc}") from exc
        if len(retired) >= 4:
            retired.pop(next(iter(retired)))
        retired[version] = loaded
    return retired[version]
