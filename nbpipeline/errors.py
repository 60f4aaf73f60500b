"""The one family of errors nbpipeline raises on purpose.

Every message names the object that failed (file, stage, cell, field) and says
how to fix it. The CLI prints these as a one-line message and exits non-zero;
anything else is a bug and is shown with its traceback.
"""

from __future__ import annotations


class NbpipelineError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` says what and how."""

    exit_code = 1


class ProjectNotFoundError(NbpipelineError):
    """No dvc.yaml in the current directory or any parent."""


class SegmentError(NbpipelineError):
    """A segment of a model factory is unknown or cannot name a folder."""

    exit_code = 2


class ParamsError(NbpipelineError):
    """params.yaml is malformed, or a stage's parameters disagree with it."""

    exit_code = 2


class NotebookError(NbpipelineError):
    """A notebook cannot be read, has no usable parameters cell, or no kernel."""

    exit_code = 2


class StageError(NbpipelineError):
    """A stage is not defined, or its definition in dvc.yaml is unusable."""

    exit_code = 2


class StageFailedError(NbpipelineError):
    """A cell raised while the stage's notebook was executing."""

    exit_code = 1


class RegistryError(NbpipelineError):
    """The model registry refused an action or found damaged data."""


class GateError(RegistryError):
    """A candidate did not pass the validation gate."""


class ServeError(NbpipelineError):
    """The model server cannot start or load a model."""


class MonitorError(NbpipelineError):
    """The monitor cannot read its inputs or act on its findings."""


class ClusterError(NbpipelineError):
    """A compute cluster (a Dask scheduler) cannot be reached or used."""


class InitError(NbpipelineError):
    """``nbp init`` cannot make a project from these inputs."""

    exit_code = 2


class ScheduleError(NbpipelineError):
    """``nbp schedule`` cannot build, install or run the scheduled monitor."""

    exit_code = 2
