"""nbpipeline: notebooks as the production pipeline.

Inside a stage notebook::

    import nbpipeline as nbp
    root = nbp.init("train")        # cwd = project root, exactly as under `nbp run`
    ...
    nbp.record.metric("valid.roc_auc", 0.71)

This module stays light: notebooks import it on every run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbpipeline import record, threads
from nbpipeline.errors import NbpipelineError
from nbpipeline.params import load_params
from nbpipeline.project import ROOT_ENV, RUNNING_ENV, STAGE_ENV, atomic_path

__all__ = [
    "NbpipelineError", "atomic_path", "init", "parameters", "record", "stage", "under_pipeline",
]
__version__ = "0.1.0"


def under_pipeline() -> bool:
    """True when the notebook is being executed by `nbp run` (e.g. under `dvc repro`)."""
    return bool(os.environ.get(STAGE_ENV)) and bool(os.environ.get(RUNNING_ENV))


def stage() -> str | None:
    """The stage this kernel is running, if known."""
    return os.environ.get(STAGE_ENV)


def init(stage_name: str) -> Path:
    """Put an interactive session in the same place as a pipeline run; return the root.

    Changes the working directory to the project root (the directory holding dvc.yaml),
    remembers ``stage_name`` for :mod:`nbpipeline.record`, and applies the thread
    discipline of :mod:`nbpipeline.threads` before every cell, so exploring never
    oversubscribes the cores of a running `dvc repro` (nor the reverse). Under `nbp run`
    it also checks that the notebook is run as the stage it says it is.
    """
    from nbpipeline.project import find_project

    running = os.environ.get(STAGE_ENV)
    if running and running != stage_name:
        raise NbpipelineError(
            f"this notebook calls nbp.init({stage_name!r}) but is run as stage '{running}'; "
            "make the name in nbp.init() match the stage (the notebook's file name)"
        )
    project = find_project(os.environ.get(ROOT_ENV) or Path.cwd())
    os.chdir(project.root)
    os.environ[STAGE_ENV] = stage_name
    os.environ.setdefault(ROOT_ENV, str(project.root))
    threads.install(load_params(project.params_yaml))
    return project.root


def parameters(stage_name: str | None = None) -> dict[str, Any]:
    """The values `nbp run` injects for ``stage_name`` (default: the current stage).

    Read from params.yaml for the names the stage notebook's parameters cell declares
    (stage section > common > paths), checked the same way; so an interactive session
    can use exactly what `dvc repro` would, e.g. ``globals().update(nbp.parameters())``.
    """
    from nbpipeline.pipeline.run import plan_stage
    from nbpipeline.project import find_project

    name = stage_name or stage()
    if not name:
        raise NbpipelineError(
            "nbpipeline.parameters(): unknown stage; call nbp.init('<stage>') first or pass the "
            "stage name, e.g. nbp.parameters('train')"
        )
    return plan_stage(find_project(os.environ.get(ROOT_ENV) or Path.cwd()), name).parameters
