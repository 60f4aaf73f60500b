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

The router follows the registries as each segment's app follows its own: every
``serve.poll_seconds`` it looks for segments with a registry, and a segment promoted for
the first time is started (its model loaded, its log writer opened) and served from then
on, without a restart; every segment's app is stopped at shutdown. A segment whose app
cannot start is retried every ``serve.retry_seconds`` and named in ``GET /health``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI

from nbpipeline.errors import ServeError
from nbpipeline.project import Project
from nbpipeline.release.registry import Registry, segment_registries
from nbpipeline.schedule.status import ScheduleStatus
from nbpipeline.serve.app import create_app
from nbpipeline.serve.handlers import ServerState, health_body
from nbpipeline.serve.schema import BATCH_KEY
from nbpipeline.serve.security import Access
from nbpipeline.serve.settings import ServeSettings

log = logging.getLogger("nbpipeline.serve")

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
    """An ASGI app dispatching each request to the app of the segment it names.

    ``find`` lists the segments that should serve and ``make_app`` builds one's app: with
    both, segments that appear while serving are started (every ``poll_seconds``)."""

    def __init__(self, apps: dict[str, FastAPI], field: str, *,
                 find: Callable[[], list[str]] | None = None,
                 make_app: Callable[[str], FastAPI] | None = None,
                 poll_seconds: float = 0.5, retry_seconds: float = 10.0,
                 schedule: ScheduleStatus | None = None) -> None:
        self.apps = apps  # replaced whole (never mutated) when a segment is added
        self.field = field
        self.find, self.make_app = find, make_app
        self.poll_seconds, self.retry_seconds = poll_seconds, retry_seconds
        self.schedule = schedule
        self.start_errors: dict[str, tuple[float, str]] = {}  # segment -> (when, why)

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
            stop = asyncio.Event()
            watcher = asyncio.create_task(self._watch(stack, stop), name="segment-watcher")
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            stop.set()  # a segment starting now finishes starting, then the stack stops it
            await asyncio.gather(watcher, return_exceptions=True)
        await send({"type": "lifespan.shutdown.complete"})

    async def _watch(self, stack: AsyncExitStack, stop: asyncio.Event) -> None:
        """Start each segment that gets a registry while serving, until ``stop``."""
        if self.find is None or self.make_app is None:
            return
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
                return
            except TimeoutError:
                pass
            try:
                found = await asyncio.to_thread(self.find)
            except OSError as exc:
                log.error("cannot look for new segments: %s", exc)
                continue
            for segment in found:
                if segment not in self.apps and not self._failed_lately(segment):
                    await self._start(stack, segment)

    def _failed_lately(self, segment: str) -> bool:
        failed = self.start_errors.get(segment)
        return failed is not None and time.monotonic() - failed[0] < self.retry_seconds

    async def _start(self, stack: AsyncExitStack, segment: str) -> None:
        assert self.make_app is not None
        try:
            app = self.make_app(segment)
            await stack.enter_async_context(app.router.lifespan_context(app))
        except Exception as exc:  # a bad new segment must not take the others down
            self.start_errors[segment] = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            log.error("cannot start segment %s: %s; retrying in %gs", segment, exc,
                      self.retry_seconds)
            return
        self.start_errors.pop(segment, None)
        self.apps = {**self.apps, segment: app}
        log.info("serving segment %s (promoted for the first time)", segment)

    async def _overview(self, path: str, send: Send) -> None:
        if path == "/health":
            bodies = {s: health_body(self._state(s)) for s in self.apps}
            degraded = any(b["status"] != "ok" for b in bodies.values())
            errors = {s: why for s, (_, why) in self.start_errors.items()}
            body: dict[str, Any] = {"status": "degraded" if degraded or errors else "ok",
                                    "segment_field": self.field, "segments": bodies}
            if errors:
                body["segments_not_started"] = errors
            if self.schedule is not None:
                body["schedule"] = self.schedule.section()
            await _answer(send, 200, body)
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

    def make_app(segment: str) -> FastAPI:
        seen = project.for_segment(segment)
        return create_app(seen, settings=segment_settings(settings, segment),
                          registry=Registry(seen.registry), access=access, docs=False)

    return SegmentRouter(
        {segment: make_app(segment) for segment in segments}, settings.segment_field,
        find=lambda: segment_registries(project.registry), make_app=make_app,
        poll_seconds=settings.poll_seconds, retry_seconds=settings.retry_seconds,
        schedule=ScheduleStatus(project.root))
