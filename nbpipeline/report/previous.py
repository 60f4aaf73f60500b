"""The previous run, as ``dvc params diff`` / ``dvc metrics diff`` take it: git HEAD.

Read in-process: HEAD's dvc.lock (``git show``), each stage's params as it recorded them,
and its metrics files from the DVC cache by their md5 (or from git when committed there).
Two ``dvc`` processes took ~8 s on this machine; this takes milliseconds.
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path
from typing import Any

from nbpipeline import yamlio
from nbpipeline.errors import NbpipelineError
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.project import Project
from nbpipeline.record import flatten

__all__ = ["PreviousRun", "previous_run", "read_json"]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class PreviousRun:
    """The run committed at git HEAD: each stage's params and metrics as they were then."""

    def __init__(self, lock: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
        self.lock = lock  # HEAD's dvc.lock stages
        self.metrics = metrics  # metrics file (relative path) -> its flat values at HEAD

    def params(self, stage: str) -> dict[str, Any] | None:
        entry = self.lock.get(stage)
        if not isinstance(entry, dict):
            return None
        return flatten((entry.get("params") or {}).get("params.yaml") or {})


def _cache_dir(project: Project) -> Path:
    config = configparser.ConfigParser()
    try:
        config.read(project.root / ".dvc" / "config", encoding="utf-8")
        custom = config.get("cache", "dir", fallback=None)
    except configparser.Error:
        custom = None
    return (project.root / ".dvc" / custom) if custom else project.root / ".dvc" / "cache"


def _metrics_at_head(project: Project, rel: str, md5: str | None) -> dict[str, Any] | None:
    """``rel`` as committed: from the DVC cache by its dvc.lock md5, else from git."""
    if md5 and not md5.endswith(".dir"):
        cache = _cache_dir(project)
        for blob in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
            if blob.is_file():
                return flatten(read_json(blob))
    text = git_output(project.root, "show", f"HEAD:{rel}")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return flatten(data) if isinstance(data, dict) else None


def previous_run(project: Project) -> PreviousRun | str:
    """The run committed at git HEAD, or why there is none to compare with."""
    text = git_output(project.root, "show", "HEAD:dvc.lock")
    if text is None:
        return "no dvc.lock committed at git HEAD"
    try:
        lock = (yamlio.parse(text, "dvc.lock", NbpipelineError) or {}).get("stages") or {}
    except (NbpipelineError, AttributeError):
        return "dvc.lock at git HEAD is not valid YAML"
    lock = lock if isinstance(lock, dict) else {}
    metrics: dict[str, dict[str, Any]] = {}
    for name, entry in lock.items():
        outs = {str(o.get("path", "")): o.get("md5") for o in (entry or {}).get("outs") or []
                if isinstance(o, dict)}
        outs.setdefault(f"metrics/{name}.json", None)  # committed to git, if not an out
        for rel, md5 in outs.items():
            if rel.startswith("metrics/") and rel.endswith(".json"):
                values = _metrics_at_head(project, rel, md5)
                if values is not None:
                    metrics[rel] = values
    return PreviousRun(lock, metrics)
