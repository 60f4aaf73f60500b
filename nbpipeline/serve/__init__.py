"""The model server: champion + canary over HTTP, a durable prediction and feedback log.

``create_app(project)`` builds the FastAPI app; ``serve(project, host, port)`` runs it with
uvicorn (what `nbp serve` calls). See docs/serve.md for the endpoints.
"""

from __future__ import annotations

from nbpipeline.serve.app import create_app
from nbpipeline.serve.server import DEFAULT_HOST, DEFAULT_PORT, serve
from nbpipeline.serve.settings import ServeSettings, load_settings

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServeSettings", "create_app", "load_settings", "serve"]
