"""Test helper: small real candidate directories (skops model + metadata), as train writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression


def make_candidate(directory: Path, *, c: float = 1.0, extra: dict[str, Any] | None = None) -> Path:
    """Fit a tiny logistic regression (breast cancer data) and write it as a candidate."""
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x = x.iloc[:, :4]
    model = LogisticRegression(C=c, max_iter=500).fit(x, y)
    directory.mkdir(parents=True, exist_ok=True)
    blob = sio.dumps(model)
    (directory / "model.skops").write_bytes(blob)
    ref = x.head(50).assign(target=y.head(50), probability=model.predict_proba(x.head(50))[:, 1])
    ref.to_parquet(directory / "reference.parquet", index=False)
    import hashlib

    metadata = {
        "created": "2026-01-01T00:00:00+00:00",
        "params": {"C": c},
        "data": {"train": {"path": "data/train.parquet", "sha256": "ab" * 32, "rows": len(x)}},
        "git_rev": "0" * 40,
        "git_dirty": False,
        "features": [{"name": name, "kind": "number"} for name in x.columns],
        "target": {"name": "target", "description": "malignant"},
        "model_sha256": hashlib.sha256(blob).hexdigest(),
        "trusted_types": sorted(sio.get_untrusted_types(data=blob)),
        **(extra or {}),
    }
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return directory


def features_frame() -> pd.DataFrame:
    """A few rows the candidate models accept."""
    x, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    return x.iloc[:5, :4]


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
    make_candidate(root / "models" / "candidate")
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
