"""Release commands on a small real project: nbp promote / rollback / models / lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
from candidates import small_candidate
from release_project import gate_for

from nbpipeline.cli import main
from nbpipeline.project import Project
from nbpipeline.release.registry import Registry


@pytest.fixture()
def project(release_project: Path) -> Path:
    return release_project


def nbp(*args: str) -> int:
    return main(list(args))


def test_promote_models_lineage_rollback(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate_for(project, 0.7, None)
    assert nbp("promote") == 0
    assert "v1 (" in capsys.readouterr().out
    reg = Registry(project / "registry")
    v1 = reg.get("v1")
    assert reg.state().champion == v1 and v1.actor == "ana" and v1.gate["passed"]  # type: ignore[index]

    small_candidate(project / "models" / "candidate", c=0.05)
    gate_for(project, 0.75, "v1")
    assert nbp("promote", "--canary", "0.2", "--reason", "try it") == 0
    state = reg.state()
    assert state.canary is not None and state.canary.version == "v2"
    assert state.canary_fraction == 0.2

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
    assert v1.forced_reason == "demo for the board (overrode: gate failed)"


def test_force_with_a_passing_gate_is_not_recorded_as_forced(project: Path) -> None:
    gate_for(project, 0.7, None)
    assert nbp("promote", "--force", "--reason", "habit") == 0
    assert Registry(project / "registry").get("v1").forced_reason is None


def test_gate_against_another_champion_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate_for(project, 0.7, None)
    assert nbp("promote") == 0
    small_candidate(project / "models" / "candidate", c=0.05)  # new candidate, old gate.json
    assert nbp("promote") == 1
    err = capsys.readouterr().err
    assert "champion now is v1" in err and "dvc repro -f -s evaluate" in err
    gate_for(project, 0.71, "v1")
    (project / "models/candidate/model.skops").write_bytes(
        (project / "models/candidate/model.skops").read_bytes()
    )
    small_candidate(project / "models" / "candidate", c=0.5)  # retrained after evaluate
    assert nbp("promote") == 1
    assert "not the model the gate evaluated" in capsys.readouterr().err


def test_lineage_of_unknown_version(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nbp("lineage", "v7") == 1
    assert "'v7' is not in the registry" in capsys.readouterr().err


def test_lineage_flags_files_that_changed_since_dvc_lock(project: Path) -> None:
    from nbpipeline.release.lineage import capture

    (project / "reports" / "train.html").write_text("edited by hand")
    snap = capture(Project(project))
    assert snap["stale"] == ["train:reports/train.html"]
    assert snap["git"]["rev"] and snap["git"]["branch"] == "main"


def test_off_and_on_commands_lift_the_switch_without_a_duplicate_champion(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 16, defect 5: `promote --version v1` over champion v1 pushed v1 twice, and a
    # later rollback printed "rolled back champion v1 -> v1"
    gate_for(project, 0.7, None)
    assert nbp("promote") == 0
    reg = Registry(project / "registry")
    assert nbp("off", "--reason", "ROI below zero") == 0
    assert "switched OFF (v1 stays champion)" in capsys.readouterr().out
    assert nbp("models") == 0
    assert "champion (OFF)" in capsys.readouterr().out
    assert nbp("off", "--reason", "again") == 1
    assert "already switched off (ROI below zero)" in capsys.readouterr().err
    assert nbp("promote", "--version", "v1", "--reason", "fixed upstream feed") == 1
    assert "lift the off switch with `nbp on --reason TEXT`" in capsys.readouterr().err
    assert nbp("on", "--reason", "fixed upstream feed") == 0
    assert "off switch lifted: v1 serves again" in capsys.readouterr().out
    state = reg.state()
    assert not state.switched_off and state.champion is not None
    assert state.previous_champion is None
    assert [(e.kind, e.reason) for e in reg.events()[-2:]] == [
        ("switch_off", "ROI below zero"), ("switch_on", "fixed upstream feed")]
    assert nbp("on", "--reason", "x") == 1
    assert "not switched off" in capsys.readouterr().err
    assert nbp("rollback") == 1
    assert "no previous champion to roll back to (v1 is the first)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nbp("on")  # a reason is required
    assert nbp("promote", "--version", "v9") == 1
    assert "'v9' is not in the registry" in capsys.readouterr().err


def test_rollback_onto_a_damaged_model_is_refused_and_models_flags_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 16, defect 4: the rollback succeeded and named a champion the server refused
    gate_for(project, 0.7, None)
    assert nbp("promote") == 0
    small_candidate(project / "models" / "candidate", c=0.05)
    gate_for(project, 0.75, "v1")
    assert nbp("promote") == 0
    reg = Registry(project / "registry")
    v1 = reg.object_path(reg.get("v1").sha256)
    blob = bytearray(v1.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    v1.write_bytes(bytes(blob))
    capsys.readouterr()
    assert nbp("rollback", "--reason", "latency") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(v1) in err and "model file of v1 is damaged" in err
    assert "restore the file from a backup" in err
    assert reg.state().champion.version == "v2"  # type: ignore[union-attr]
    assert nbp("promote", "--version", "v1", "--canary", "0.1") == 1
    assert "model file of v1 is damaged" in capsys.readouterr().err
    assert nbp("models") == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:3]}
    assert " DAMAGED " in rows["v1"] and " OK " in rows["v2"]
    assert "model file of v1 is missing or damaged" in out
    v1.unlink()
    assert nbp("models") == 0
    assert " MISSING " in capsys.readouterr().out
    assert nbp("rollback") == 1
    assert "model file of v1 is missing" in capsys.readouterr().err


def test_models_compares_every_param_with_the_version_before(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not only the search's best params: params.yaml as dvc.lock recorded it, and the
    model metadata (a changed max_iter used to read as no change)."""
    import yaml

    gate_for(project, 0.7, None)
    assert nbp("promote") == 0
    lock_path = project / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text())
    lock["stages"]["train"]["params"]["params.yaml"]["train"]["max_depth"] = 8
    lock_path.write_text(yaml.safe_dump(lock))
    small_candidate(project / "models" / "candidate", c=0.05)
    gate_for(project, 0.75, "v1")
    assert nbp("promote", "--reason", "deeper") == 0
    capsys.readouterr()
    assert nbp("models") == 0
    rows = capsys.readouterr().out.splitlines()
    v2 = next(r for r in rows if r.startswith("v2"))
    v1 = next(r for r in rows if r.startswith("v1"))
    assert "vs v1: model.C=0.05 (was 1.0); train.max_depth=8 (was 4)" in v2
    assert "model.C=1.0" in v1 and "train.max_depth=4" in v1
