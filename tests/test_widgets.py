"""nbpipeline.widgets: built in process against a real registry and log, and rendered by a
real JupyterLab server in headless Chromium (screenshot kept under the test's tmp dir)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from candidates import flights_candidate
from lab import CHROMIUM, CHROMIUM_ARGS, jupyter_lab, run_all
from matplotlib.figure import Figure
from monitor_support import kinds, log_traffic, months
from projects import REPO

from nbpipeline.monitor import plots
from nbpipeline.predlog import table as predlog
from nbpipeline.release.registry import Registry

SCREENSHOT_ENV = "NBP_WIDGET_SCREENSHOT"  # copy the screenshot here to look at it


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with v1 champion, v2 canary and a log of May + December traffic."""
    root = tmp_path_factory.mktemp("widgets")
    (root / "dvc.yaml").write_text("stages: {}\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    monitor = dict(params["monitor"], window_size=1000, min_feedback=200)
    (root / "params.yaml").write_text(yaml.safe_dump({"monitor": monitor}))
    good, meta = flights_candidate(root / "models" / "candidate", rows=6000, seed=0)
    flights_candidate(root / "models" / "other", rows=3000, seed=5)
    reg = Registry(root / "registry")
    v1 = reg.register(root / "models" / "candidate", {"passed": True, "checks": [
        {"name": "min_roc_auc", "passed": True, "value": 0.71, "threshold": 0.6}]},
        force_reason=None, actor="test", metrics={"golden": {"roc_auc": 0.71}})
    reg.promote(v1.version, canary_fraction=None, reason="first", actor="test")
    v2 = reg.register(root / "models" / "other", None, force_reason=None, actor="test",
                      metrics={"golden": {"roc_auc": 0.69}})
    reg.promote(v2.version, canary_fraction=0.2, reason="try", actor="test")
    conn = predlog.connect(root / "logs" / "predictions.db")
    predlog.ensure_schema(conn, kinds(meta))
    t0 = time.time()
    for i, month in enumerate([5, 12]):
        log_traffic(conn, good, months([month], rows=1000, seed=i), version="v1",
                    ts0=t0 + i * 100, spacing=0.01)
    conn.close()
    return root


def test_widgets_build_in_process(project):
    from nbpipeline.widgets import compare_html, model_browser, monitor_view

    browser = model_browser(project)
    assert "v1" in browser.summary.value and "champion" in browser.summary.value
    assert "canary" in browser.summary.value and "passed" in browser.summary.value
    assert "min_roc_auc" in browser.detail.value or browser.pick.value == "v2"
    browser.pick.value = "v1"
    assert "min_roc_auc" in browser.detail.value and "golden.roc_auc" in browser.detail.value
    reg = Registry(project / "registry")
    table = compare_html(reg.get("v1"), reg.get("v2"))
    assert "golden.roc_auc" in table and "param seed" in table
    assert "<span style='color:#cf222e;font-weight:600'>-0.0200</span>" in table  # worse: red
    assert "0.7100" in table and "0.6900" in table  # fixed decimals
    order = browser.children
    assert order.index(browser.comparison) < order.index(browser.detail)  # comparison first
    view = monitor_view(project)
    assert view.drift_plot.value[:4] == b"\x89PNG" and view.quality_plot.value[:4] == b"\x89PNG"
    assert "2,000 predictions in 2 windows" in view.status.value
    assert "input_drift" in view.alarms.value and "temp" in view.alarms.value
    # the statistic that fired, its direction and limit, as in the jsonl and the webhook
    assert ">PSI<" in view.alarms.value and ">above<" in view.alarms.value
    assert "model performance unchanged: no action." in view.alarms.value
    assert not (project / "alarms").exists()  # the view only reads
    busy: list[bool] = []
    view.button.observe(lambda change: busy.append(change["new"]), names="disabled")
    view.refresh()
    assert busy == [True, False] and view.button.description == "Refresh"
    ax = Figure().add_subplot()
    plots.plot_quality(ax, view.result.analysis, view.config)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels and all(re.fullmatch(r"\d\d:\d\d:\d\d", label) for label in labels), labels
    for draw in (plots.plot_estimated,  # the monitor report's other window axes: dates too
                 lambda ax, analysis, cfg: plots.plot_roi(ax, view.result.roi, cfg, analysis)):
        ax = Figure().add_subplot()
        draw(ax, view.result.analysis, view.config)
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert ax.get_xlabel() == "window start (UTC)", ax.get_xlabel()
        assert labels and all(re.fullmatch(r"\d\d:\d\d:\d\d", label) for label in labels), labels
    before = view.quality_plot.value
    view.metric.value = "brier"
    assert view.quality_plot.value != before


def test_monitor_view_shows_the_canary_against_the_champion(project, tmp_path):
    from nbpipeline.widgets import monitor_view

    root = tmp_path / "ab"
    shutil.copytree(project, root)
    reg = Registry(root / "registry")
    idle = monitor_view(root)  # v2 serves as canary but has answered nothing yet
    assert "canary v2 vs champion v1 (A/B): keep collecting" in idle.ab.value
    assert "the canary has 0 outcomes" in idle.ab.value
    conn = predlog.connect(root / "logs" / "predictions.db")
    t0 = time.time() + 500
    for i, (version, role) in enumerate([("v1", "champion"), ("v2", "canary")]):
        model, _ = reg.load(version)
        log_traffic(conn, model, months([5], rows=400, seed=10 + i), version=version,
                    role=role, ts0=t0 + i * 0.001, spacing=0.01)
    conn.close()
    view = monitor_view(root)
    assert "canary v2 vs champion v1 (A/B)" in view.ab.value
    assert "on 400 canary / 400 champion outcomes" in view.ab.value
    assert "champion roc_auc" in view.ab.value and ">all<" in view.ab.value
    assert "difference of 0.02 with 80% power: " in view.ab.value
    assert "sequential boundary: look at " in view.ab.value  # the promote boundary in use
    assert view.result.ab.verdict in ("promote", "roll back", "keep collecting")
    assert view.result.ab.verdict in view.ab.value


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")
def test_widgets_render_in_jupyterlab(project, tmp_path):
    from playwright.sync_api import sync_playwright

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from nbpipeline.widgets import model_browser, monitor_view\n"
                                  "model_browser()"),
        nbformat.v4.new_code_cell("monitor_view()"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, project / "view.ipynb")
    shot = tmp_path / "widgets.png"
    with jupyter_lab(project, tmp_path) as lab, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(lab.page_url("view.ipynb"))
        run_all(page, "text=Model registry", tmp_path)
        page.wait_for_selector(".jupyter-widgets img", timeout=90_000)
        page.wait_for_function(
            "document.querySelectorAll('.jupyter-widgets img').length >= 2"
            " && [...document.querySelectorAll('.jupyter-widgets img')]"
            ".every(i => i.naturalWidth > 100)", timeout=90_000)
        page.keyboard.press("Escape")
        page.screenshot(path=str(shot), full_page=True)
        text = page.inner_text(".jp-Notebook")
        browser.close()
    assert "Model registry" in text and "Monitoring" in text
    assert "input_drift" in text and "v2" in text
    assert "-0.0200" in text and "2,000 predictions" in text  # humane numbers, as rendered
    assert shot.stat().st_size > 50_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(shot, os.environ[SCREENSHOT_ENV])

