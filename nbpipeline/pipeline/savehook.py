"""Saving a stage notebook from JupyterLab keeps its bytes what DVC hashed.

A Jupyter server extension (enabled for every ``jupyter lab`` / ``jupyter server`` of the
environment nbpipeline is installed in, by ``etc/jupyter/jupyter_server_config.d/
nbpipeline.json``) registers :func:`pre_save`. For a notebook that is the source of an
``nbp run`` stage (``notebooks/<stage>.ipynb`` next to a dvc.yaml naming it), every save —
manual or autosave — writes the notebook as the pipeline sees it:

* no outputs, execution counts, widget state or view-only cell metadata (scrolled,
  collapsed, timings): executed copies belong in ``reports/``;
* the ``kernelspec`` and ``language_info`` already on disk, unless the kernel was changed
  (JupyterLab rewrites both with its own display name and Python patch version).

So opening, running and saving a stage notebook changes the file (and DVC's hash of it)
only when a cell's code or tags changed. Outputs stay visible in the open tab until it is
closed. Other notebooks (scratch notebooks, reports) are saved untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nbpipeline.notebook import nbformat, strip_outputs  # nbformat: the lean one (nbpipeline.lean)
from nbpipeline.pipeline.stages import DvcYaml
from nbpipeline.project import Project

__all__ = ["normalise_source", "pre_save", "stage_of"]

# JupyterLab rewrites these on every save from the running kernel; they are not code.
_KERNEL_METADATA = ("kernelspec", "language_info")


def stage_of(path: Path) -> Project | None:
    """The project whose notebook stage has ``path`` as its source notebook, else None."""
    path = path.resolve()
    if path.parent.name != "notebooks" or path.suffix != ".ipynb":
        return None
    project = Project(path.parent.parent)
    if not project.dvc_yaml.is_file():
        return None
    try:
        stages = DvcYaml(project).notebook_stages()
    except Exception:  # a dvc.yaml being edited must never block a save
        return None
    return project if any(s.runs == path.stem for s in stages.values()) else None


def _kernel(meta: Any) -> Any:
    return meta.get("kernelspec", {}).get("name") if isinstance(meta, dict) else None


def normalise_source(content: dict[str, Any], on_disk: dict[str, Any] | None) -> Any:
    """``content`` (a notebook as JupyterLab sends it) as the source notebook to store.

    ``on_disk`` is the notebook currently saved there (None for a new file): its kernel
    metadata is kept when the kernel name did not change.
    """
    nb = strip_outputs(nbformat.from_dict(content))
    old = (on_disk or {}).get("metadata", {})
    if on_disk is not None and _kernel(old) == _kernel(nb.metadata):
        for key in _KERNEL_METADATA:
            if key in old:
                nb.metadata[key] = nbformat.from_dict(old[key])
            else:
                nb.metadata.pop(key, None)
    return nb


def pre_save(model: dict[str, Any], path: str, contents_manager: Any, **_: Any) -> None:
    """Jupyter ``pre_save_hook``: normalise a stage's source notebook in ``model``."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    os_path = Path(contents_manager._get_os_path(path))
    if stage_of(os_path) is None:
        return
    on_disk = None
    if os_path.is_file():
        try:
            on_disk = json.loads(os_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            on_disk = None
    model["content"] = normalise_source(model["content"], on_disk)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbpipeline.pipeline.savehook"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    serverapp.contents_manager.register_pre_save_hook(pre_save)
    serverapp.log.info("nbpipeline: stage notebooks are saved without outputs")
