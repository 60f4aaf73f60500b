"""Facts about the project's git work tree, read outside the file tracer."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nbpipeline.pipeline.trace import untraced_env


def git_output(root: Path, *args: str) -> str | None:
    """stdout of ``git args`` in ``root``; None when git fails or is missing.

    Run outside the file tracer (nbpipeline.pipeline.trace): right after a clone or checkout,
    ``git status`` re-reads every "racily clean" file of the work tree, and those reads
    are bookkeeping, not the stage's dependencies.
    """
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=15, env=untraced_env())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
