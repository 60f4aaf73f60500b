"""A model factory's server: one model server per segment behind one address.

With ``serve.segment_field`` set (e.g. ``region``), `nbp serve` builds the usual app
(nbpipeline/serve/app.py) once per segment that has a registry (``registry/<segment>/``),
each following its own registry and writing its own prediction log
(``logs/<segment>/predictions.db``), and routes between them:

* ``POST`` (``/predict``, ``/feedback``, ...): by the body's ``segment_field``: a row, a
  batch ``{"rows": [...]}`` whose rows all name the same segment, or a feedback body. The
  field is removed before the segment's app validates the body, unless it is one of the
  model's features. A missing field, a batch mixing segments or an unknown segment is one
  422 line naming the field and the served segments;
* ``GET /health`` and ``GET /ready``: every segment's (``{"segments": {name: ...}}``);
  ``/ready`` is 200 only when every segment is ready;
* any other ``GET`` (``/schema``, ``/metrics``): ``?segment=NAME`` picks the segment.

Segments are found at start-up: a segment promoted for the first time later is served
after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI

from nbpipeline.errors import ServeError
from nbpipeline.project import Project
from nbpipeline.release.registry import Registry, segment_registries
from nbpipeline.serve.app import create_app
from nbpipeline.serve.handlers import ServerState, health_body
from nbpipeline.serve.schema import BATCH_KEY
from nbpipeline.serve.security import Access
from nbpipeline.serve.settings import ServeSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 64 << 20  # the segment's app enforces its own, smaller, limits


def segment_settings(settings: ServeSettings, segment: str) -> ServeSettings:
    """``settings`` for one segment's app: its own prediction log beside the project's."""
    log_path = settings.log_path
    if log_path is not None:
        log_path = log_path.parent / segment / log_path.name
    return replace(settings, log_path=log_path)


class SegmentRouter:
    """An ASGI app dispatching each request to the app of the segment it names."""

    def __init__(self, apps: dict[str, FastAPI], field: str) -> None:
        self.apps = apps
        self.field = field

    def _state(self, segment: str) -> ServerState:
        state: ServerState = self.apps[segment].state.server
        return state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        asked = (query.get("segment") or [None])[0]
        if method == "GET" and asked is None and path in ("/health", "/ready"):
            await self._overview(path, send)
            return
        if method != "POST":
            await self._forward(asked, scope, receive, send)
            return
        body = await _read(receive)
        try:
            segment, body = self._route(body)
        except _Refused as refused:
            await _answer(send, refused.status, {"detail": refused.detail})
            return
        await self._forward(segment, scope, _replay(body), send, body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start every segment's app (model loads, log writers) and stop them all."""
        async with AsyncExitStack() as stack:
            await receive()  # lifespan.startup
            try:
                for app in self.apps.values():
                    await stack.enter_async_context(app.router.lifespan_context(app))
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    async def _overview(self, path: str, send: Send) -> None:
        if path == "/health":
            bodies = {s: health_body(self._state(s)) for s in self.apps}
            degraded = any(b["status"] != "ok" for b in bodies.values())
            await _answer(send, 200, {"status": "degraded" if degraded else "ok",
                                      "segment_field": self.field, "segments": bodies})
            return
        ready = {s: self._state(s).holder.snapshot.ready for s in self.apps}
        await _answer(send, 200 if all(ready.values()) else 503,
                      {"ready": all(ready.values()), "segments": ready})

    def _route(self, raw: bytes) -> tuple[str, bytes]:
        """(segment, body for the segment's app) of a POST body; _Refused if it names none."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rows = body.get(BATCH_KEY) if isinstance(body, dict) else None
        rows = rows if isinstance(rows, list) else [body]
        named = {row.get(self.field) for row in rows if isinstance(row, dict)}
        if not rows or not all(isinstance(row, dict) and self.field in row for row in rows):
            raise _Refused(422, f"field '{self.field}' names the segment (one of "
                           f"{self._served()}); add it to the body (to every row of a batch)")
        if len(named) > 1:
            raise _Refused(422, f"rows of one request must name one segment in field "
                           f"'{self.field}'; send one request per segment (this one names "
                           f"{', '.join(sorted(map(str, named)))})")
        segment = str(named.pop())
        if segment not in self.apps:
            raise _Refused(422, f"unknown segment {segment!r} in field '{self.field}'; "
                           f"served segments: {self._served()}")
        snap = self._state(segment).holder.snapshot
        if not any(m is not None and self.field in m.schema.names
                   for m in (snap.champion, snap.canary)):
            for row in rows:
                row.pop(self.field)
        return segment, json.dumps(body).encode("utf-8")

    def _served(self) -> str:
        return ", ".join(self.apps)

    async def _forward(self, segment: str | None, scope: Scope, receive: Receive, send: Send,
                       body: bytes | None = None) -> None:
        if segment is None or segment not in self.apps:
            given = "no ?segment=" if segment is None else f"unknown segment {segment!r}"
            await _answer(send, 404 if segment is None else 422,
                          {"detail": f"{given}; add ?segment=NAME (served segments: "
                                     f"{self._served()})"})
            return
        if body is not None:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": [*headers,
                                          (b"content-length", str(len(body)).encode())]}
        await self.apps[segment](scope, receive, send)


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _read(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _answer(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_factory_app(project: Project, settings: ServeSettings, *,
                       access: Access | None = None) -> SegmentRouter:
    """The server of a model factory: every segment with a registry, routed by
    ``settings.segment_field``."""
    segments = segment_registries(project.registry)
    if not segments:
        raise ServeError(f"serve.segment_field is {settings.segment_field!r} but no segment has "
                         f"a registry under {project.rel(project.registry)}; promote one first: "
                         "`nbp promote --segment NAME`")
    apps = {}
    for segment in segments:
        seen = project.for_segment(segment)
        apps[segment] = create_app(seen, settings=segment_settings(settings, segment),
                                   registry=Registry(seen.registry), access=access, docs=False)
    return SegmentRouter(apps, settings.segment_field)
