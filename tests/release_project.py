"""Test helper: a small release project (git, dvc.lock, a candidate, reports) and its gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from candidates import small_candidate


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def make_release_project(root: Path) -> Path:
    """A git repo with dvc.yaml, a dvc.lock matching its files, a candidate and reports."""
    import subprocess

    import yaml

    (root / "reports").mkdir(parents=True)
    (root / "metrics").mkdir()
    (root / "data").mkdir()
    (root / "dvc.yaml").write_text(
        "stages:\n  data:\n    cmd: nbp run data\n    params: [data]\n"
        "  train:\n    cmd: nbp run train\n    params: [train]\n"
    )
    (root / "params.yaml").write_text("data:\n  n: 1\ntrain:\n  max_depth: 4\n")
    (root / "data" / "golden.parquet").write_bytes(b"golden rows")
    (root / "reports" / "train.html").write_text("<html><body>train report</body></html>")
    (root / "metrics" / "train.json").write_text(json.dumps({"cv": {"roc_auc": 0.71}}))
    small_candidate(root / "models" / "candidate")
    golden = {"path": "data/golden.parquet", "md5": _md5(root / "data/golden.parquet")}
    lock = {"schema": "2.0", "stages": {
        "data": {"cmd": "nbp run data", "deps": [], "params": {"params.yaml": {"data": {"n": 1}}},
                 "outs": [golden]},
        "train": {"cmd": "nbp run train", "deps": [golden],
                  "params": {"params.yaml": {"train": {"max_depth": 4}}},
                  "outs": [{"path": "reports/train.html", "md5": _md5(root / "reports/train.html")},
                           {"path": "models/candidate", "md5": "abc.dir"}]},
    }}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "first run"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def gate_for(root: Path, golden: float, champion: str | None,
             champion_golden: float = 0.7) -> dict[str, Any]:
    """Write metrics/gate.json as the evaluate stage would, for the current candidate."""
    import hashlib

    from nbpipeline.release.gate import decide
    from nbpipeline.release.registry import Registry

    sha = hashlib.sha256((root / "models/candidate/model.skops").read_bytes()).hexdigest()
    cand = {"sha256": sha, "valid": {"roc_auc": golden}, "golden": {"roc_auc": golden}}
    champ = None
    if champion is not None:
        reg = Registry(root / "registry")
        champ = {"version": champion, "sha256": reg.get(champion).sha256,
                 "golden": {"roc_auc": champion_golden}}
    decision = decide(cand, champ, {"gate_min": 0.6})
    (root / "metrics" / "gate.json").write_text(json.dumps(decision))
    return decision
