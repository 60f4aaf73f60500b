"""Release commands on a small real project: nbp promote / rollback / models / lineage."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _candidates import make_candidate

from nbpipeline.cli import main
from nbpipeline.gate import decide
from nbpipeline.project import Project
from nbpipeline.registry import Registry


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def gate_for(root: Path, golden: float, champion: str | None, champion_golden: float = 0.7) -> dict[str, Any]:
    """Write metrics/gate.json as the evaluate stage would, for the current candidate."""
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


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repo with dvc.yaml, a dvc.lock matching its files, a candidate and reports."""
    root = tmp_path / "proj"
    (root / "reports").mkdir(parents=True)
    (root / "metrics").mkdir()
    (root / "data").mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "data" / "golden.parquet").write_bytes(b"golden rows")
    (root / "reports" / "train.html").write_text("<html><body>train report</body></html>")
    make_candidate(root / "models" / "candidate")
    lock = {"schema": "2.0", "stages": {
        "data": {"cmd": "nbp run data", "deps": [], "params": {"params.yaml": {"data": {"n": 1}}},
                 "outs": [{"path": "data/golden.parquet", "md5": _md5(root / "data/golden.parquet")}]},
        "train": {"cmd": "nbp run train", "deps": [{"path": "data/golden.parquet",
                                                    "md5": _md5(root / "data/golden.parquet")}],
                  "params": {"params.yaml": {"train": {"max_depth": 4}}},
                  "outs": [{"path": "reports/train.html", "md5": _md5(root / "reports/train.html")},
                           {"path": "models/candidate", "md5": "abc.dir"}]},
    }}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "first run"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("NBP_ACTOR", "ana")
    monkeypatch.delenv("NBPIPELINE_REGISTRY", raising=False)
    monkeypatch.delenv("NBPIPELINE_ROOT", raising=False)
    return root


def nbp(*args: str) -> int:
    return main(list(args))


def test_promote_models_lineage_rollback(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate_for(project, 0.7, None)
    assert nbp("promote") == 0
    assert "v1 (" in capsys.readouterr().out
    reg = Registry(project / "registry")
    v1 = reg.get("v1")
    assert reg.state().champion == v1 and v1.actor == "ana" and v1.gate["passed"]  # type: ignore[index]

    make_candidate(project / "models" / "candidate", c=0.05)
    gate_for(project, 0.75, "v1")
    assert nbp("promote", "--canary", "0.2", "--reason", "try it") == 0
    state = reg.state()
    assert state.canary is not None and state.canary.version == "v2" and state.canary_fraction == 0.2

    assert nbp("models") == 0
    table = capsys.readouterr().out
    assert "canary 20%" in table and "champion" in table and "golden roc_auc 0.7500" in table
    assert "try it" in table and "ana" in table

    assert nbp("lineage", "v2") == 0
    text = capsys.readouterr().out
    assert "model v2  (canary)" in text and "train       max_depth = 4" in text
    assert "reports/train.html" in text and "first run" in text
    assert "data/golden.parquet" in text
    stored = Path(reg.get("v2").files and reg.stored_file("v2", "reports/train.html"))
    assert stored.read_text() == "<html><body>train report</body></html>"

    assert nbp("rollback", "--canary", "--reason", "latency") == 0
    assert reg.state().canary is None
    assert nbp("rollback") == 1
    assert "no previous champion" in capsys.readouterr().err


def test_failed_gate_is_refused_and_force_needs_reason(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate_for(project, 0.55, None)
    assert nbp("promote") == 1
    err = capsys.readouterr().err
    assert "failed the gate" in err and "min_roc_auc.golden (0.55 vs 0.6)" in err
    assert nbp("promote", "--force") == 1
    assert "--force needs --reason" in capsys.readouterr().err
    assert not (project / "registry" / "events.jsonl").exists()
    assert nbp("promote", "--force", "--reason", "demo for the board") == 0
    assert "FORCED" in capsys.readouterr().out
    v1 = Registry(project / "registry").get("v1")
    assert v1.forced_reason is not None and "demo for the board" in v1.forced_reason


def test_gate_against_another_champion_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate_for(project, 0.7, None)
    assert nbp("promote") == 0
    make_candidate(project / "models" / "candidate", c=0.05)  # new candidate, old gate.json
    assert nbp("promote") == 1
    err = capsys.readouterr().err
    assert "champion now is v1" in err and "dvc repro -f -s evaluate" in err
    gate_for(project, 0.71, "v1")
    (project / "models/candidate/model.skops").write_bytes(
        (project / "models/candidate/model.skops").read_bytes()
    )
    make_candidate(project / "models" / "candidate", c=0.5)  # retrained after evaluate
    assert nbp("promote") == 1
    assert "not the model the gate evaluated" in capsys.readouterr().err


def test_lineage_of_unknown_version(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nbp("lineage", "v7") == 1
    assert "'v7' is not in the registry" in capsys.readouterr().err


def test_lineage_flags_files_that_changed_since_dvc_lock(project: Path) -> None:
    from nbpipeline.lineage import capture

    (project / "reports" / "train.html").write_text("edited by hand")
    snap = capture(Project(project))
    assert snap["stale"] == ["train:reports/train.html"]
    assert snap["git"]["rev"] and snap["git"]["branch"] == "main"
