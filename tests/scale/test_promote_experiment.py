"""`nbp promote --exp NAME`: the experiment is applied to the workspace, its candidate
promoted through its gate, and the new version's lineage names the experiment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from candidates import small_candidate
from projects import init_repo, sh
from release_project import gate_for

from nbpipeline.release.lineage import render, trace
from nbpipeline.release.registry import Registry

pytestmark = pytest.mark.slow

# the "train" stage: puts a ready candidate and its gate decision where evaluate would
STAGE = """import shutil
shutil.copytree("fixture/candidate", "models/candidate", dirs_exist_ok=True)
shutil.copy("fixture/gate.json", "metrics/gate.json")
"""


def _experiments_project(root: Path) -> Path:
    small_candidate(root / "models" / "candidate")
    (root / "metrics").mkdir()
    gate_for(root, golden=0.8, champion=None)  # the first model: passes
    (root / "fixture").mkdir()
    shutil.move(root / "models" / "candidate", root / "fixture" / "candidate")
    shutil.move(root / "metrics" / "gate.json", root / "fixture" / "gate.json")
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "python stage.py", "deps": ["stage.py", "fixture"], "params": ["train"],
        "outs": ["models/candidate"], "metrics": [{"metrics/gate.json": {"cache": False}}]}}}))
    (root / "params.yaml").write_text("train:\n  max_depth: 4\n")
    (root / ".gitignore").write_text("/registry/\n")
    init_repo(root)
    return root


def test_promote_exp_applies_the_experiment_and_names_it_in_the_lineage(tmp_path: Path) -> None:
    root = _experiments_project(tmp_path / "repo")
    for name, depth in (("exp-a", 5), ("exp-b", 6)):
        sh("dvc", "exp", "run", "-n", name, "-S", f"train.max_depth={depth}", cwd=root)
    failed = sh("nbp", "promote", "--exp", "nope", cwd=root, check=False)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbp: error: `dvc exp apply nope` failed: ")
    assert "dvc exp show" in lines[0]

    done = sh("nbp", "promote", "--exp", "exp-a", "--reason", "best golden AUC", cwd=root)
    assert "applied experiment exp-a" in done.stdout and "v1" in done.stdout, done.stdout
    assert yaml.safe_load((root / "params.yaml").read_text()) == {"train": {"max_depth": 5}}
    reg = Registry(root / "registry")
    experiment = reg.get("v1").lineage["experiment"]
    rev = sh("git", "for-each-ref", "--format=%(objectname)", "refs/exps/**/exp-a",
             cwd=root).stdout.strip()
    assert experiment == {"name": "exp-a", "rev": rev}
    assert f"experiment  exp-a (commit {rev})" in render(trace(reg, "v1"))
    assert reg.state().champion.version == "v1"

