"""The feedback loop closes, on the example project (small sample, real DVC, real kernels):
logged predictions of December 1-4 (few delays: the champion loses money) with their
outcomes -> `nbp monitor` (impact alarms, retrain request) -> the champion's labelled
predictions become the golden window of a `dvc exp run` -> the gate judges the candidate
against the champion on them -> canary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from monitor_support import kinds, log_traffic, run_monitor_command
from projects import BIN, merge_params, ran_example_project, sh

from nbpipeline.monitor.command import ALARM_EXIT
from nbpipeline.monitor.retrain import RetrainSettings, feedback_rows, retrain
from nbpipeline.predlog import table as predlog
from nbpipeline.project import Project
from nbpipeline.release.registry import Registry

ROWS = 1200  # logged December predictions, all with outcomes


@pytest.mark.slow
def test_replay_with_feedback_monitor_experiment_gate_canary(tmp_path: Path) -> None:
    # the small example's data and train stages are shared (its first repro, copied here)
    root, _ = ran_example_project(tmp_path / "example")
    merge_params(root / "params.yaml", {
        # a small sample judged on ~1,000 recent rows: tolerate noise in the comparison; a
        # 30-iteration model leans on hour (89% of its valid importance, 55% at full size)
        "evaluate": {"importance_rows": 500, "importance_repeats": 1, "gate_min": 0.55,
                     "gate_min_improvement": -0.1, "gate_max_slice_regression": 1.0,
                     "gate_min_slice_rows": 50, "gate_leak_importance_share": 0.95},
        "monitor": {"window_size": 400, "min_rows": 200, "retrain_action": "dvc"},
        "retrain": {"min_feedback": 2 * ROWS, "canary": 0.2},
    })
    sh("dvc", "repro", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "first run", cwd=root)
    sh(BIN / "nbp", "promote", cwd=root)
    registry = Registry(root / "registry")
    model, metadata = registry.load("v1")
    later = pd.read_parquet(root / "data" / "later.parquet")
    # December 1-4: 18% delayed (23% in train); the champion's false alarms cost more than
    # its hits earn (the rest of December pays: inputs moved, no impact, no retrain)
    december = later[later["time_hour"] < "2013-12-05"].sample(ROWS, random_state=0)
    conn = predlog.connect(root / "logs" / "predictions.db")
    predlog.ensure_schema(conn, kinds(metadata))
    log_traffic(conn, model, december.sort_values("time_hour"), version="v1")
    conn.close()

    # the log joined with its feedback: features, outcome as target, request time
    contract = registry.contract("v1")
    rows = feedback_rows(root / "logs" / "predictions.db", contract, "v1")
    assert len(rows) == ROWS and rows["delayed"].sum() == december["delayed"].sum()
    assert list(rows.columns) == ["time_hour", *contract.names, "delayed"]
    # too few outcomes yet (retrain.min_feedback is twice what was logged): nothing runs
    idle = retrain(Project(root), root / "logs" / "predictions.db", echo=print)
    assert not idle.started and "nothing new to learn from: 1,200 labelled" in idle.message

    merge_params(root / "params.yaml", {"retrain": {"min_feedback": 1000}})
    code, lines = run_monitor_command(root)
    text = "\n".join(lines)
    assert code == ALARM_EXIT, text
    assert "ACTION retrain_requested: the model suffers in window 2: " in text, text
    assert "roi_low (ROI % -" in text, text
    assert ("retraining on 1,200 labelled predictions of champion v1" in text
            and "dvc exp run -S data.feedback_path=retrain/feedback.parquet "
                "-S data.feedback_rows=1200" in text), text
    gate = json.loads((root / "metrics" / "gate.json").read_text())
    failed = [c for c in gate["checks"] if not c["passed"]]
    assert gate["champion_version"] == "v1" and gate["passed"], (failed, text)
    data = json.loads((root / "metrics" / "data.json").read_text())
    assert data["rows"]["golden"] == ROWS  # the recent window is what the gate judged
    assert "serves 20% of traffic as canary v2" in text, text
    state = registry.state()
    assert state.champion.version == "v1" and state.canary.version == "v2"  # type: ignore[union-attr]
    assert state.canary_fraction == 0.2
    # the same outcomes again: nothing new to learn from, no second experiment
    again = retrain(Project(root), root / "logs" / "predictions.db", echo=print)
    assert not again.started and "are those the last retrain used" in again.message


def test_retrain_settings_name_the_field() -> None:
    from nbpipeline.errors import MonitorError

    with pytest.raises(MonitorError, match="retrain: unknown setting"):
        RetrainSettings.from_params({"min_rows": 3})
    with pytest.raises(MonitorError, match="retrain.canary"):
        RetrainSettings.from_params({"canary": 1.5})
    with pytest.raises(MonitorError, match=r"retrain.set.data.x: '\{when\}' names an unknown"):
        RetrainSettings.from_params({"set": {"data.x": "{when}"}}).assignments({"rows": 1})
    assert RetrainSettings.from_params({"set": {"a.b": "{rows}"}}).assignments(
        {"rows": 7}) == ["a.b=7"]
