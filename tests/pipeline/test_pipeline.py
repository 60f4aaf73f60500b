"""The example pipeline end to end under the real `dvc repro`, with real kernels.

Uses a small copy of the example (3% of the flights, few boosting iterations) in a fresh
git + DVC repo, so it runs in well under a minute per repro.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml
from lab import CHROMIUM, CHROMIUM_ARGS
from projects import REPO, ran_example_project, sh

pytestmark = pytest.mark.slow

STAGES = ("data", "train", "evaluate")


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def test_repro_noop_param_change_run_cache_and_interactive_parity(tmp_path: Path) -> None:
    root, first = ran_example_project(tmp_path / "project")  # its first `dvc repro`, shared
    assert _ran(first.stdout) == list(STAGES)
    assert "without encryption" not in first.stdout + first.stderr
    for stage in STAGES:
        assert (root / "reports" / f"{stage}.html").stat().st_size > 10_000
        nb = nbformat.read(root / "reports" / f"{stage}.ipynb", as_version=4)
        assert all(c.get("execution_count") is None for c in nb.cells)
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=root).stdout)
    shown = json.dumps(metrics)
    for key in ("roc_auc", "quarantine_reasons", "outcome_mean"):
        assert key in shown
    data = json.loads((root / "metrics" / "data.json").read_text())
    assert data["rows"]["quarantined"] > 0 and data["rows"]["golden"] > 0
    evaluate = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert 0.55 < evaluate["golden"]["roc_auc"] < 0.9
    # the search's progress line ends without times (reports stay byte-stable)
    train_report = (root / "reports" / "train.ipynb").read_text()
    assert "search: 4 fits (2 candidates x 2 folds)" in train_report
    metadata = json.loads((root / "models" / "candidate" / "metadata.json").read_text())
    assert "git_rev" not in metadata and metadata["data"]["train"]["sha256"]
    assert metadata["versions"]["scikit-learn"] and metadata["params"]["max_iter"] == 30
    assert {f["name"] for f in metadata["features"]} >= {"carrier", "temp", "distance"}
    plots = sh("dvc", "plots", "show", "--json", cwd=root).stdout
    assert "confusion.csv" in plots and "roc.csv" in plots

    again = sh("dvc", "repro", cwd=root)
    assert _ran(again.stdout) == [] and "Data and pipelines are up to date" in again.stdout

    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "first run", cwd=root)
    changed = sh("dvc", "exp", "run", "-S", "train.max_iter=12", cwd=root)
    assert _ran(changed.stdout) == ["train", "evaluate"]
    progress = [ln for ln in changed.stderr.splitlines()
                if ln.startswith("nbp run train: ") and " done in " in ln]
    assert progress[4].startswith("nbp run train: cell 5/7 done in ")  # through dvc exp run
    assert progress[4].endswith(" s: Hyperparameter search")
    assert json.loads((root / "metrics" / "train.json").read_text())["rows"]["train"] > 0
    shown = sh("dvc", "exp", "show", "--json", cwd=root).stdout
    assert "max_iter" in shown and "roc_auc" in shown
    diff = json.loads(sh("dvc", "metrics", "diff", "--json", cwd=root).stdout)
    assert "metrics/evaluate.headline.json" in diff
    _dvc_views_show_metrics_only(root)

    back = sh("dvc", "exp", "run", "-S", "train.max_iter=30", cwd=root)
    assert _ran(back.stdout) == []
    assert "Stage 'train' is cached - skipping run" in back.stdout
    assert "Stage 'evaluate' is cached - skipping run" in back.stdout
    assert (root / "reports" / "train.html").exists()

    # Interactive parity: each notebook run top to bottom as JupyterLab runs it (kernel cwd =
    # notebooks/, no injected parameters) records exactly the metrics `dvc repro` recorded.
    recorded = {s: (root / "metrics" / f"{s}.json").read_text() for s in STAGES}
    for stage in STAGES:
        (root / "metrics" / f"{stage}.json").unlink()
        sh(
            "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output",
            root / "interactive.ipynb", f"{stage}.ipynb", cwd=root / "notebooks",
        )
        assert (root / "metrics" / f"{stage}.json").read_text() == recorded[stage], stage


def _dvc_views_show_metrics_only(root: Path) -> None:
    """`dvc exp show` / `dvc metrics diff`: the declared scalar metrics, no artifact hashes,
    formats or gate criteria, no warning; `dvc plots show` renders offline with titles."""
    header = sh("dvc", "exp", "show", "--csv", cwd=root).stdout.splitlines()[0].split(",")
    assert {"golden.roc_auc", "valid.roc_auc", "cv.roc_auc", "train.max_iter"} <= set(header)
    noise = [c for c in header if any(word in c for word in (
        "sha256", "format", "skops", "criteria", "checks", "passed", "champion"))]
    assert noise == []
    # the gate metric on valid and golden beside the changed params, not 16 evaluate metrics:
    # what keeps `dvc exp show --only-changed` within 100 columns
    changed = sh("dvc", "exp", "show", "--only-changed", "--csv", cwd=root).stdout
    columns = changed.splitlines()[0].split(",")[3:]  # after Experiment, rev, typ
    assert {"golden.roc_auc", "valid.roc_auc", "train.max_iter"} <= set(columns), columns
    assert len(columns) <= 6 and "golden.accuracy" not in columns, columns
    diff = sh("dvc", "metrics", "diff", cwd=root)
    assert "failed to load" not in diff.stdout + diff.stderr
    assert "golden.roc_auc" in diff.stdout and "sha256" not in diff.stdout
    assert {line.split()[0] for line in diff.stdout.splitlines()[1:]} <= {
        "metrics/train.json", "metrics/evaluate.headline.json", "metrics/data.json"}
    page = sh("dvc", "plots", "show", cwd=root).stdout.strip().removeprefix("file://")
    if Path(CHROMIUM).exists():
        text = _render_offline(Path(page))
        for title in ("ROC curve (golden rows)", "Confusion matrix", "one panel per slice"):
            assert title in text
        assert "carrier" in text and "origin" in text


def _render_offline(page: Path) -> str:
    """The text of a local HTML page in headless Chromium with every network request
    refused, once all its vega charts have drawn."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.route("**/*", lambda route: route.continue_()
                  if route.request.url.startswith("file:") else route.abort())
        tab.goto(page.as_uri())
        tab.wait_for_function("document.querySelectorAll('svg.marks').length >= 4",
                              timeout=60_000)
        text = tab.inner_text("body")
        browser.close()
    return text


def test_failing_stage_stops_dvc_and_keeps_partial_notebook(example_project: Path) -> None:
    root = example_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["golden_start"] = "not a date"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = sh("dvc", "repro", cwd=root, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "nbp: error: stage 'data' failed: notebooks/data.ipynb cell" in err
    assert "partially executed notebook" in err and "reports/data.failed.ipynb" in err
    assert (root / "reports" / "data.failed.ipynb").exists()
    assert "Running stage 'train'" not in proc.stdout
    assert not (root / "data" / "train.parquet").exists()


def test_bad_params_fail_before_the_kernel(example_project: Path) -> None:
    root = example_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["max_iterations"] = 10
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = sh("dvc", "repro", "train", cwd=root, check=False)
    assert proc.returncode != 0
    assert "params.yaml [train]: unknown parameter(s) max_iterations" in proc.stderr
    assert not (root / "reports" / "train.ipynb").exists()


def test_notebook_defaults_equal_params_yaml() -> None:
    """Opening a stage notebook in JupyterLab gives the values `dvc repro` would inject."""
    from nbpipeline.notebook import notebook_parameters, read_notebook
    from nbpipeline.params import load_params, stage_values

    params = load_params(REPO / "params.yaml")
    for stage in STAGES:
        path = REPO / "notebooks" / f"{stage}.ipynb"
        declared = notebook_parameters(read_notebook(path), path.name)
        assert stage_values(params, stage, declared) == declared, stage
