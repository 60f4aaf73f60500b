"""The feedback loop closes, on the example project (small sample, real DVC, real kernels):
logged predictions of December 1-4 (few delays: the champion loses money) with their
outcomes -> `nbp monitor` (impact alarms, retrain request) -> the champion's labelled
predictions become the golden window of a `dvc exp run` -> the gate judges the candidate
against the champion on them -> canary."""

from __future__ import annotations

import json
import sys
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


FACTORY_STAGE = """\
import json, shutil, sys
from pathlib import Path

import pandas as pd, yaml

from nbpipeline.release.gate import decide
from nbpipeline.release.registry import Registry

segment = sys.argv[1]  # the segment's files, as `nbp run train@<segment>` fills {segment} in
path = yaml.safe_load(open("params.yaml"))["data"]["feedback_path"].replace("{segment}", segment)
rows = len(pd.read_parquet(path)) if path and Path(path).is_file() else 0
out = Path("models", segment, "candidate")
shutil.rmtree(out, ignore_errors=True)
shutil.copytree("seed", out)
champion = Registry(Path("registry", segment)).state().champion
gate = decide({"sha256": __import__("hashlib").sha256((out / "model.skops").read_bytes())
               .hexdigest(), "valid": {"roc_auc": 0.9}, "golden": {"roc_auc": 0.9}},
              {"version": champion.version, "sha256": champion.sha256,
               "golden": {"roc_auc": 0.8}}, {"gate_min": 0.6})
Path("metrics", segment).mkdir(parents=True, exist_ok=True)
Path("metrics", segment, "gate.json").write_text(json.dumps(gate))
Path("metrics", segment, "seen.json").write_text(json.dumps({"feedback_rows": rows}))
"""


def _factory_for_retrain(root: Path) -> None:
    """A git + DVC model factory of two segments (north, south) whose one generated stage
    per segment reads its feedback rows and leaves a candidate and a passed gate; each
    segment has a champion v1; north's log holds 30 answered predictions of it."""
    import yaml
    from candidates import small_candidate, small_rows
    from serve_fixtures import register

    root.mkdir()
    small_candidate(root / "seed", c=0.01)
    first = small_candidate(root.parent / "v1")
    for segment in ("north", "south"):
        register(Registry(root / "registry" / segment), first)
    (root / "train.py").write_text(FACTORY_STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "foreach": "${factory.segments}", "do": {
            "cmd": f"{sys.executable} train.py ${{item}}", "deps": ["train.py", "seed"],
            "params": ["data"], "outs": ["models/${item}/candidate"],
            "metrics": [{f"metrics/${{item}}/{n}.json": {"cache": False}}
                        for n in ("gate", "seen")]}}}}))
    (root / "params.yaml").write_text(yaml.safe_dump({
        "factory": {"segments": ["north", "south"]},
        "data": {"feedback_path": "", "feedback_rows": 0},
        "retrain": {"min_feedback": 20, "data_path": "retrain/{segment}/feedback.parquet",
                    "set": {"data.feedback_path": "{path}", "data.feedback_rows": "{rows}"},
                    "canary": 0.2}}))
    for ignore in (".gitignore", ".dvcignore"):
        (root / ignore).write_text("/registry/\n/logs/\n/retrain/\n")
    rows = small_rows().sample(30, replace=True, random_state=0)
    conn = predlog.connect(root / "logs" / "north" / "predictions.db")
    predlog.ensure_schema(conn, dict.fromkeys(rows.columns, "number"))
    records = [predlog.PredictionRecord(f"r{i}", 1.7e9 + i, "v1", "champion", i % 2, 0.5, 1.0,
                                        row) for i, row in enumerate(rows.to_dict("records"))]
    predlog.insert_rows(conn, records)
    for record in records:
        predlog.record_feedback(conn, record.request_id, int(record.prediction), record.ts + 60)
    conn.close()
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "factory"]):
        sh(*args, cwd=root)


@pytest.mark.slow
def test_a_factory_segment_retrains_on_its_own_rows_into_its_own_registry(
        tmp_path: Path) -> None:
    import yaml

    root = tmp_path / "factory"
    _factory_for_retrain(root)
    north = Project(root).for_segment("north")
    lines: list[str] = []
    done = retrain(north, root / "logs" / "north" / "predictions.db", dvc=str(BIN / "dvc"),
                   echo=lines.append)
    assert done.started and done.canary_version == "v2", (done.message, lines)
    assert "written to retrain/north/feedback.parquet): " in lines[0], lines
    assert lines[0].endswith("dvc exp run -S data.feedback_path='retrain/{segment}/feedback"
                             ".parquet' -S data.feedback_rows=30 train@north"), lines
    params = yaml.safe_load((root / "params.yaml").read_text())["data"]
    assert params == {"feedback_path": "retrain/{segment}/feedback.parquet", "feedback_rows": 30}
    assert len(pd.read_parquet(root / "retrain" / "north" / "feedback.parquet")) == 30
    seen = json.loads((root / "metrics" / "north" / "seen.json").read_text())
    assert seen == {"feedback_rows": 30}  # its own rows: `{segment}` stays for each stage
    assert not (root / "metrics" / "south").exists()  # south's stage did not run
    state = Registry(root / "registry" / "north").state()
    assert (state.champion.version, state.canary.version, state.canary_fraction) == (  # type: ignore[union-attr]
        "v1", "v2", 0.2)
    south = Registry(root / "registry" / "south")
    assert [e.kind for e in south.events()] == ["register", "promote"]
    assert not retrain(Project(root).for_segment("south"), root / "logs" / "south" /
                       "predictions.db").started  # no rows of its own: nothing runs


def test_a_factory_retrain_must_name_the_segment() -> None:
    from nbpipeline.errors import MonitorError

    shared = RetrainSettings.from_params({"data_path": "retrain/feedback.parquet"})
    with pytest.raises(MonitorError, match=r"^params.yaml retrain.data_path: 'retrain/feedback"
                       r".parquet' would hold every segment's rows of this model factory in "
                       r"one file; name the segment in it, e.g. retrain/\{segment\}/"):
        shared.check_factory()
    fixed = RetrainSettings.from_params({"data_path": "retrain/{segment}/f.parquet",
                                         "set": {"data.feedback_path": "retrain/f.parquet"}})
    with pytest.raises(MonitorError, match=r"^params.yaml retrain.set: no value names \{path\} "
                       r"or \{segment\}"):
        fixed.check_factory()
