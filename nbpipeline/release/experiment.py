"""A DVC experiment as the source of a release: bring it into the workspace, name it.

``nbp promote --exp NAME`` applies the experiment (``dvc exp apply``: its params, dvc.lock,
candidate, reports and gate decision replace the workspace's) and then promotes the
candidate exactly like ``nbp promote``, with the experiment's name and revision in the
version's lineage.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from nbpipeline.errors import RegistryError
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.project import Project

__all__ = ["apply_experiment"]

# where `dvc exp apply` leaves the applied experiment's commit (dvc/repo/experiments/refs.py)
APPLIED_REF = "refs/exps/exec/EXEC_APPLY"


def apply_experiment(project: Project, name: str) -> dict[str, Any]:
    """``dvc exp apply --no-force NAME`` in the project; the experiment's name and commit.

    ``--no-force``: uncommitted changes that the experiment would overwrite are refused,
    not lost.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "apply", "--no-force", name],
            cwd=project.root, capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RegistryError(f"`dvc exp apply {name}` could not run: {exc}") from exc
    if proc.returncode != 0:
        said = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR:").strip() for line in said if line.startswith("ERROR")]
        why = (errors or said or [f"exit code {proc.returncode}"])[0]
        raise RegistryError(
            f"`dvc exp apply {name}` failed: {why}; `dvc exp show` lists the experiments "
            "(commit or stash workspace changes the experiment would overwrite)"
        )
    return {"name": name, "rev": git_output(project.root, "rev-parse", APPLIED_REF)}
