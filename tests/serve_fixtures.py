"""Test helpers for the model server: a tiny real model, a project, a real uvicorn server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from nbpipeline.project import Project
from nbpipeline.release.registry import Registry
from nbpipeline.serve.settings import ServeSettings

FAST = {"poll_seconds": 0.1, "retry_seconds": 0.5}


def sample_row(**overrides: Any) -> dict[str, Any]:
    """One valid request row."""
    return {"carrier": "AA", "origin": "JFK", "distance": 1000.0, "hour": 17, "temp": 60.5,
            **overrides}


def make_project(root: Path, serve: dict[str, Any] | None = None) -> Project:
    """A minimal project dir (dvc.yaml + params.yaml with a `serve:` section)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    params = {"serve": {"fallback_prediction": 0, **FAST, **(serve or {})}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return Project(root)


def register(registry: Registry, candidate: Path, *, champion: bool = True) -> str:
    """Register ``candidate`` (and make it champion); returns its version."""
    mv = registry.register(candidate, None, force_reason=None, actor="test")
    if champion:
        registry.promote(mv.version, canary_fraction=None, reason="test", actor="test")
    return mv.version


@contextmanager
def running_server(
    project: Project, settings: ServeSettings | None = None, **options: Any
) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; yields its base URL.
    ``options`` go to ``create_app`` (e.g. ``access``, ``docs``)."""
    import uvicorn

    from nbpipeline.serve import create_app, load_settings

    app = create_app(project, settings=settings or load_settings(project), **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server_process(
    project: Project, port: int, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`nbp serve` as a real child process (python -m nbpipeline serve [args])."""
    env = {**os.environ, "NBPIPELINE_ROOT": str(project.root), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "nbpipeline", "serve", "--port", str(port), *args],
        cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def wait_ready(
    url: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait for /ready (generous: the machine may be busy); fail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def spooled_ids(log_path: Path) -> set[str]:
    """Request ids in the log's spool segments, read as a crashed server leaves them (a
    torn last frame left out)."""
    from nbpipeline.predlog import spool

    ids: set[str] = set()
    for segment in spool.orphans(log_path):
        rows, _ = spool.decode_frames(segment.read_bytes())
        ids |= {row[0] for _, group in rows for row in group}
    return ids


async def hammer(
    url: str, total: int, concurrency: int, ids: list[str], timeout: float = 30
) -> int:
    """POST single rows from ``concurrency`` clients; collect the ids of 200s; return errors."""
    errors = 0
    counter = iter(range(total))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in counter:
            try:
                resp = await http.post("/predict", json=sample_row())
            except httpx.HTTPError:
                errors += 1
                return
            if resp.status_code == 200:
                ids.append(resp.json()["request_id"])
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return errors
