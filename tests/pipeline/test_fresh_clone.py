"""The README's first command in fresh clones of this repository, with a busy neighbour.

Regression (issue: "A fresh clone's first run fails"): right after a clone, the train
stage's git call re-read every "racily clean" file, and the inotify tracer blamed the
stage for it; so did it for any other program reading project files during the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from projects import REPO, merge_params, project_env, sh

pytestmark = pytest.mark.slow

TINY = {
    "data": {"sample_fraction": 0.01},
    "train": {"max_iter": 20, "max_depth": [3], "learning_rate": [0.1], "cv_folds": 2,
              "search_rows": 1500, "reference_rows": 300},
    "evaluate": {"importance_rows": 300, "importance_repeats": 1, "gate_min_slice_rows": 20},
}

# Another program working in the project while `dvc repro` runs: an editor, a shell.
NEIGHBOUR = textwrap.dedent("""
    import os, sys, time
    root = sys.argv[1]
    while True:
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (".git", ".venv", ".dvc")]
            for name in files:
                try:
                    with open(os.path.join(top, name), "rb") as fh:
                        fh.read(4096)
                except OSError:
                    pass
        with open(os.path.join(root, "neighbour.txt"), "w") as fh:
            fh.write(str(time.time()))
        time.sleep(0.05)
""")


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs this repository's git history")
def test_readme_first_command_passes_in_two_fresh_clones_with_a_busy_neighbour(
    tmp_path: Path,
) -> None:
    venv = Path(sys.prefix)
    for i in range(2):  # the race hit every fresh clone; a second one shows it stays fixed
        clone = tmp_path / f"clone{i}"
        sh("git", "clone", "-q", str(REPO), str(clone), cwd=tmp_path)
        merge_params(clone / "params.yaml", TINY)
        # `make pipeline` with this test run's environment as its .venv, already set up.
        (clone / ".venv").symlink_to(venv)
        os.utime(clone / "pyproject.toml", (0, 0))
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(clone)])
        try:
            proc = subprocess.run(["make", "pipeline"], cwd=clone, env=project_env(),
                                  capture_output=True, text=True, timeout=600,
                                  stdin=subprocess.DEVNULL)
        finally:
            neighbour.kill()
            neighbour.wait()
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"clone {i}:\n{out}"
        assert "stage 'evaluate' done" in out
        assert "project file(s) that dvc.yaml does not list" not in out
        assert "warning" not in proc.stderr.lower(), proc.stderr
