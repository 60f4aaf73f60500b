"""nbpipeline.widgets: built in process against a real registry and log, and rendered by a
real JupyterLab server in headless Chromium (screenshot kept under the test's tmp dir)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from candidates import flights_candidate
from monitor_support import kinds, log_traffic, months
from projects import REPO

from nbpipeline.predlog import table as predlog
from nbpipeline.release.registry import Registry

CHROMIUM = "/usr/bin/chromium"
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
    assert "golden.roc_auc" in table and "-0.02" in table and "param seed" in table
    view = monitor_view(project)
    assert view.drift_plot.value[:4] == b"\x89PNG" and view.quality_plot.value[:4] == b"\x89PNG"
    assert "2,000 predictions in 2 windows" in view.status.value
    assert "input_drift" in view.alarms.value and "temp" in view.alarms.value
    # the statistic that fired, its direction and limit, as in the jsonl and the webhook
    assert ">PSI<" in view.alarms.value and ">above<" in view.alarms.value
    assert "model performance unchanged: no action." in view.alarms.value
    assert not (project / "alarms").exists()  # the view only reads
    before = view.quality_plot.value
    view.metric.value = "brier"
    assert view.quality_plot.value != before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")
def test_widgets_render_in_jupyterlab(project, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from nbpipeline.widgets import model_browser, monitor_view\n"
                                  "model_browser()"),
        nbformat.v4.new_code_cell("monitor_view()"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, project / "view.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jrt"))
    env.pop("NBPIPELINE_ROOT", None)
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115
    lab = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={project}",
         "--ServerApp.open_browser=False", "--LabApp.news_url=None",
         *(["--allow-root"] if os.geteuid() == 0 else []),
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    shot = tmp_path / "widgets.png"
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", lab, tmp_path / "lab.log")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/view.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=120_000)
            for _attempt in range(3):  # the first click can land before the lab is ready
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_text("Run All Cells", exact=True).click()
                try:
                    page.wait_for_selector("text=Model registry", timeout=60_000)
                    break
                except PlaywrightTimeout:
                    page.screenshot(path=str(tmp_path / f"attempt{_attempt}.png"))
            page.wait_for_selector("text=Model registry", timeout=1_000)
            page.wait_for_selector(".jupyter-widgets img", timeout=90_000)
            page.wait_for_function(
                "document.querySelectorAll('.jupyter-widgets img').length >= 2"
                " && [...document.querySelectorAll('.jupyter-widgets img')]"
                ".every(i => i.naturalWidth > 100)", timeout=90_000)
            page.keyboard.press("Escape")
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text(".jp-Notebook")
            browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()
    assert "Model registry" in text and "Monitoring" in text
    assert "input_drift" in text and "v2" in text
    assert shot.stat().st_size > 50_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(shot, os.environ[SCREENSHOT_ENV])


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"jupyter lab did not answer {url}: {log.read_text()[-2000:]}")
