"""Exploring a stage notebook never marks the pipeline stale: JupyterLab saves (through
nbpipeline's server extension) and `nbp sync` after `dvc exp run -S` keep what DVC hashed."""

from __future__ import annotations

import difflib
import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from lab import CHROMIUM, CHROMIUM_ARGS, jupyter_lab, run_all
from projects import NOTEBOOKS, add_stage, init_repo, sh

from nbpipeline.pipeline.savehook import pre_save

NOTEBOOK = "notebooks/adds.ipynb"


@pytest.fixture(scope="module")
def ran_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-stage project ('adds' records a metric), run by `dvc repro` and committed."""
    root = tmp_path_factory.mktemp("savehook") / "proj"
    (root / "notebooks").mkdir(parents=True)
    add_stage(root, "adds", "records_metric.ipynb", {"a": 1, "b": 2.5, "label": "sum"})
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["adds"]["metrics"] = ["metrics/adds.json"]
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    init_repo(root)
    sh("dvc", "repro", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "ran", cwd=root)
    return root


def _up_to_date(root: Path) -> None:
    status = sh("dvc", "status", "--json", cwd=root).stdout
    assert json.loads(status) == {}, status
    assert "agree" in sh("nbp", "check", cwd=root).stdout


def _save(root: Path, rel: str, content: dict) -> None:
    """Save through Jupyter's own contents manager, with the extension's hook."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    manager = FileContentsManager(root_dir=str(root))
    manager.register_pre_save_hook(pre_save)
    manager.save({"type": "notebook", "format": "json", "content": content}, rel)


def _as_lab_saves_it(nb: nbformat.NotebookNode) -> dict:
    """What JupyterLab sends after Run All: outputs, counts, its own kernel metadata."""
    lab = json.loads(nbformat.writes(nb))
    for n, cell in enumerate(c for c in lab["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = n + 1
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "sum 3.5\n"}]
        cell["metadata"]["scrolled"] = True
    lab["metadata"]["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
    lab["metadata"]["language_info"] = {"name": "python", "version": "3.11.2",
                                        "mimetype": "text/x-python"}
    lab["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    return lab


def test_saving_a_stage_notebook_keeps_its_bytes_unless_code_changes(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    add_stage(root, "adds", "records_metric.ipynb", {"a": 1, "b": 2.5, "label": "sum"})
    source = root / NOTEBOOK
    before = source.read_bytes()
    nb = nbformat.read(source, as_version=4)
    _save(root, NOTEBOOK, _as_lab_saves_it(nb))
    assert source.read_bytes() == before

    nb.cells[2].source += "\nprint('more')"
    _save(root, NOTEBOOK, _as_lab_saves_it(nb))
    saved = nbformat.read(source, as_version=4)
    assert saved.cells[2].source.endswith("print('more')")
    diff = [line for line in difflib.unified_diff(
        before.decode().splitlines(), source.read_text().splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert diff == ['-    "nbp.record.metric(label, total)"',  # what `git diff` shows: code
                    '+    "nbp.record.metric(label, total)\\n",', '+    "print(\'more\')"']
    assert all(c.get("outputs") == [] and c.get("execution_count") is None
               for c in saved.cells if c.cell_type == "code")
    assert saved.metadata["kernelspec"]["display_name"] == "Python 3"  # as it was on disk
    assert "widgets" not in saved.metadata and "version" not in saved.metadata["language_info"]

    shutil.copy(NOTEBOOKS / "records_metric.ipynb", root / "notebooks" / "scratch.ipynb")
    scratch = nbformat.read(root / "notebooks" / "scratch.ipynb", as_version=4)
    _save(root, "notebooks/scratch.ipynb", _as_lab_saves_it(scratch))  # not a stage: as sent
    kept = nbformat.read(root / "notebooks" / "scratch.ipynb", as_version=4)
    assert kept.cells[2].outputs and kept.metadata["language_info"]["version"] == "3.11.2"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")
def test_run_all_autosave_and_save_in_jupyterlab_leave_dvc_up_to_date(
    ran_project: Path, tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    root = ran_project
    _up_to_date(root)
    source = root / NOTEBOOK
    before, mtime = source.read_bytes(), source.stat().st_mtime_ns
    autosave = {"@jupyterlab/docmanager-extension:plugin": {"autosaveInterval": 2}}
    with jupyter_lab(root, tmp_path, autosave) as lab, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(lab.page_url(NOTEBOOK))
        run_all(page, "text=sum 3.5", tmp_path)
        deadline = time.monotonic() + 30
        while source.stat().st_mtime_ns == mtime and time.monotonic() < deadline:
            time.sleep(0.2)
        autosaved = source.stat().st_mtime_ns
        assert autosaved != mtime, "JupyterLab did not autosave"
        assert source.read_bytes() == before
        page.locator(".jp-Notebook").click()
        page.keyboard.press("Control+s")
        deadline = time.monotonic() + 15
        while source.stat().st_mtime_ns == autosaved and time.monotonic() < deadline:
            time.sleep(0.2)
        assert page.get_by_text("sum 3.5").count() >= 1  # outputs stay in the open tab
        browser.close()
    assert source.read_bytes() == before
    _up_to_date(root)


@pytest.mark.slow
def test_nbp_sync_after_exp_run_keeps_the_stage_up_to_date(ran_project: Path) -> None:
    root = ran_project
    sh("dvc", "exp", "run", "-q", "-S", "adds.a=5", cwd=root)
    check = sh("nbp", "check", cwd=root, check=False)
    assert check.returncode == 1 and "nbp sync" in check.stdout
    synced = sh("nbp", "sync", cwd=root).stdout
    assert "a = 5" in (root / NOTEBOOK).read_text().replace('"', "").replace("\\n", "")
    assert "dvc.lock follows" in synced
    _up_to_date(root)
    sh("git", "checkout", "-q", "--", ".", cwd=root)  # leave the module's project as it was
    sh("dvc", "checkout", "-q", cwd=root)


def test_lock_follows_a_rewrite_only_where_it_recorded_the_old_bytes(tmp_path: Path) -> None:
    from nbpipeline.pipeline.lockfile import file_md5, follow_rewrite
    from nbpipeline.project import Project

    nb = tmp_path / NOTEBOOK
    nb.parent.mkdir()
    nb.write_text("old\n")
    old = file_md5(nb)
    lock = (f"schema: '2.0'\nstages:\n  a:\n    cmd: nbp run a\n    deps:\n"
            f"    - path: {NOTEBOOK}\n      hash: md5\n      md5: {old}\n      size: 4\n"
            f"    - path: data/x.csv\n      hash: md5\n      md5: {old}\n      size: 4\n"
            f"  b:\n    cmd: nbp run b\n    deps:\n"
            f"    - path: {NOTEBOOK}\n      hash: md5\n      md5: ffff0123\n      size: 9\n")
    (tmp_path / "dvc.lock").write_text(lock)
    nb.write_text("synced\n")
    assert follow_rewrite(Project(tmp_path), NOTEBOOK, old)
    after = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    assert after["a"]["deps"][0] == {"path": NOTEBOOK, "hash": "md5", "md5": file_md5(nb),
                                     "size": 7}
    assert after["a"]["deps"][1]["md5"] == old  # another path with the same bytes: untouched
    assert after["b"]["deps"][0]["md5"] == "ffff0123"  # recorded other bytes: DVC must see it
    assert not follow_rewrite(Project(tmp_path), NOTEBOOK, old)  # nothing left to follow
