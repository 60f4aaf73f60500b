"""A sweep with DVC's own queue: two queued experiments run at once (`dvc queue start -j 2`)
in a temp git+DVC repo with real kernels, each in its own copy of the repository.

Both succeed, both are listed by `dvc exp show` with their own metrics, `dvc queue logs`
shows each one's stage, and each saw the champion of the repository's registry although
its copy has no ``registry/`` and no NBPIPELINE_REGISTRY is set.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from candidates import small_candidate
from projects import NOTEBOOKS, REPO, init_repo, sh
from serve_fixtures import register

from nbpipeline.project import Project
from nbpipeline.release.registry import Registry

pytestmark = pytest.mark.slow


def _sweep_project(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "reads_champion.ipynb", root / "notebooks" / "sweep.ipynb")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sweep": {
        "cmd": "nbp run sweep", "deps": ["notebooks/sweep.ipynb"], "params": ["sweep"],
        "outs": ["reports/sweep.ipynb", "reports/sweep.html"],
        "metrics": [{"metrics/sweep.json": {"cache": False}}]}}}))
    (root / "params.yaml").write_text("sweep:\n  rate: 0.1\n")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    (root / ".gitignore").write_text("/registry/\n")
    init_repo(root)
    return root


def _wait_for_queue(root: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sh("dvc", "queue", "status", cwd=root).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")


def test_two_queued_experiments_run_in_parallel_and_see_the_champion(tmp_path: Path) -> None:
    root = _sweep_project(tmp_path / "repo")
    champion = register(Registry(Project(root).registry), small_candidate(tmp_path / "cand"))
    for name, rate in (("exp-a", 0.2), ("exp-b", 0.3)):
        sh("dvc", "exp", "run", "--queue", "-n", name, "-S", f"sweep.rate={rate}", cwd=root)
    try:
        sh("dvc", "queue", "start", "-j", "2", cwd=root)
        status = _wait_for_queue(root)
    finally:
        sh("dvc", "queue", "stop", cwd=root, check=False)
    assert status.count("Success") == 2, status

    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=root).stdout)
    metrics = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                metrics[rev["name"]] = data["metrics"]["metrics/sweep.json"]["data"]
    assert metrics["exp-a"] == {"rate": 0.2, "champion": champion}
    assert metrics["exp-b"] == {"rate": 0.3, "champion": champion}
    for name in ("exp-a", "exp-b"):
        logs = sh("dvc", "queue", "logs", name, cwd=root).stdout
        assert "nbp: stage 'sweep' done" in logs, logs
