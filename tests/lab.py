"""A real JupyterLab server for browser tests (headless Debian Chromium drives it)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass(frozen=True)
class Lab:
    url: str  # http://127.0.0.1:<port>
    token: str

    def page_url(self, rel: str) -> str:
        return f"{self.url}/lab/tree/{rel}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def jupyter_lab(root: Path, scratch: Path,
                settings: dict[str, dict] | None = None) -> Iterator[Lab]:
    """``jupyter lab`` serving ``root`` as a user starts it there (this environment's Jupyter
    config, so nbpipeline's server extension is on); ``settings`` maps a JupyterLab plugin id
    to user settings (e.g. a short autosave interval). Logs go to ``scratch/lab.log``."""
    port, token = _free_port(), secrets.token_hex(16)
    user_settings = scratch / "lab-settings"
    for plugin, values in (settings or {}).items():
        package, name = plugin.rsplit(":", 1)
        target = user_settings / package / f"{name}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               JUPYTER_CONFIG_DIR=str(scratch / "jcfg"), JUPYTER_RUNTIME_DIR=str(scratch / "jrt"),
               JUPYTERLAB_SETTINGS_DIR=str(user_settings),
               JUPYTERLAB_WORKSPACES_DIR=str(scratch / "lab-workspaces"))
    env.pop("NBPIPELINE_ROOT", None)
    log_path = scratch / "lab.log"
    log = open(log_path, "w")  # noqa: SIM115
    lab = subprocess.Popen(
        [str(bindir / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.open_browser=False", "--LabApp.news_url=None",
         *(["--allow-root"] if os.geteuid() == 0 else []),
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", lab, log_path)
        yield Lab(f"http://127.0.0.1:{port}", token)
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()


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


def run_all(page, done_selector: str, shots: Path) -> None:
    """Run > Run All Cells until ``done_selector`` shows (the first click can land before
    the lab is ready)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=120_000)
    for attempt in range(3):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_selector(done_selector, timeout=60_000)
            return
        except PlaywrightTimeout:
            page.screenshot(path=str(shots / f"attempt{attempt}.png"))
    page.wait_for_selector(done_selector, timeout=1_000)
