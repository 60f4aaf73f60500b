"""Thread discipline: concurrent stages share the cores; one alone takes them all."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from projects import copy_project, make_example_project, project_env, sh

from nbpipeline import threads
from nbpipeline.errors import ParamsError
from nbpipeline.record import read_run_record

TINY = {
    "data": {"sample_fraction": 0.01},
    "train": {"max_iter": 30, "max_depth": [3, 5], "learning_rate": [0.1], "cv_folds": 2,
              "search_rows": 1500, "reference_rows": 300},
}


@pytest.fixture(scope="module")
def data_done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny example project whose data stage has run (copied by each test that trains)."""
    root = make_example_project(tmp_path_factory.mktemp("threads") / "p", TINY)
    sh("nbp", "run", "data", cwd=root)
    return root


def private_slots(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> dict[str, str]:
    """Count only this test's processes: slots live in the temp dir, made private here
    (for this process and, through the environment, the ones it starts)."""
    import tempfile

    tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return {"TMPDIR": str(tmp)}


def _ran_with(root: Path) -> dict:
    """The thread settings in train's run record (in its HTML page: the .ipynb is
    byte-stable, and the settings depend on the machine's load)."""
    record = read_run_record(root / "reports" / "train.html")
    assert record is not None
    return dict(record["threads"])


def _pool_threads(record: dict) -> int:
    """The most threads any of the kernel's pools (OpenMP, BLAS) may use."""
    return max(int(p["num_threads"]) for p in record["threadpools"])


@pytest.mark.slow
def test_two_stages_at_once_share_the_cores_and_one_alone_takes_them_all(
    data_done: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    roots = [copy_project(data_done, tmp_path / name) for name in ("a", "b")]
    private_slots(monkeypatch, tmp_path / "tmp")
    env = {k: v for k, v in project_env().items()
           if k not in (*threads.THREAD_VARS, threads.THREADS_ENV)}
    procs = [subprocess.Popen(["nbp", "run", "train"], cwd=root, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for root in roots]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    cores = threads.available_cores()
    records = [_ran_with(root) for root in roots]
    assert all(r["cores"] == cores and r["source"] == "auto" for r in records)
    assert sum(_pool_threads(r) for r in records) <= cores, records
    report = nbformat.read(roots[0] / "reports" / "train.ipynb", as_version=4)
    assert report.cells[0].source.startswith("## Stage `train`")
    assert "<strong>Run settings.</strong> BLAS/OpenMP threads:" in (
        roots[0] / "reports" / "train.html").read_text()

    proc = subprocess.run(["nbp", "run", "train"], cwd=roots[0], env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    alone = _ran_with(roots[0])
    assert alone["running"] == 1 and _pool_threads(alone) == cores
    assert f"({cores} thread" in proc.stdout


@pytest.mark.slow
def test_the_user_overrides_the_share_by_environment_or_param(
    data_done: Path, tmp_path: Path,
) -> None:
    root = copy_project(data_done, tmp_path / "p")
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("common:\n", "common:\n  threads: 1\n", 1))
    sh("nbp", "run", "train", cwd=root)
    record = _ran_with(root)
    assert record["source"] == "params.yaml common.threads" and _pool_threads(record) == 1
    env = {**project_env(), threads.THREADS_ENV: "2"}
    proc = subprocess.run(["nbp", "run", "train"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert _ran_with(root)["source"] == "NBP_THREADS" and _pool_threads(_ran_with(root)) == 2


def test_slots_count_live_holders_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "slot_dir", lambda: tmp_path / "slots")
    assert threads.running() == 0
    with threads.Slot():
        assert threads.running() == 1
        # a process that died holding a slot: its file remains, its lock is gone
        child = subprocess.run(
            ["python", "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_CREAT | "
             "os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); os._exit(0)",
             str(tmp_path / "slots" / "999-dead.slot")], check=True)
        assert child.returncode == 0
        assert threads.running() == 1
        assert not (tmp_path / "slots" / "999-dead.slot").exists()
    assert threads.running() == 0


def test_settings_divide_the_cores_and_overrides_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    for now, share in ((1, 4), (2, 2), (3, 1), (8, 1)):
        monkeypatch.setattr(threads, "running", lambda n=now: n)
        assert threads.settings().threads == share
    assert threads.settings({"common": {"threads": 3}}).threads == 3
    assert threads.settings({"common": {"threads": "auto"}}).source == "auto"
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.settings({"common": {"threads": 3}}).source == threads.THREADS_ENV
    for bad in ("0", "two", "1.5"):
        monkeypatch.setenv(threads.THREADS_ENV, bad)
        with pytest.raises(ParamsError, match="NBP_THREADS: threads must be a whole number"):
            threads.settings()


def test_cores_respect_the_cgroup_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    assert threads.available_cores() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 0.5)
    assert threads.available_cores() == 1
    assert json.dumps(threads.environment(3))  # all strings


@pytest.mark.slow
def test_a_notebook_explored_in_a_kernel_follows_the_same_share(
    mini_project: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in JupyterLab: a plain kernel (not under nbp run) calls nbp.init; while a cell
    runs it holds a slot, and its thread pools get cores // running."""
    from nbclient import NotebookClient
    from nbformat import v4

    (mini_project / "dvc.yaml").write_text("stages: {}\n")
    (mini_project / "params.yaml").write_text("common: {seed: 1}\n")
    nb = v4.new_notebook(cells=[
        v4.new_code_cell('import nbpipeline as nbp\nnbp.init("explore")'),
        v4.new_code_cell("import json, numpy, threadpoolctl\nfrom nbpipeline import threads\n"
                         "print(json.dumps({'running': threads.running(), 'pools': max("
                         "p['num_threads'] for p in threadpoolctl.threadpool_info())}))"),
    ])
    for key in (*threads.THREAD_VARS, threads.THREADS_ENV):
        monkeypatch.delenv(key, raising=False)
    private_slots(monkeypatch, mini_project.parent / "tmp")
    cores = threads.available_cores()

    def explore() -> dict:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(mini_project)}}).execute()
        return json.loads(nb.cells[1].outputs[0]["text"])

    alone = explore()
    assert alone == {"running": 1, "pools": cores}  # its own slot, all cores
    with threads.Slot():  # a stage of `dvc repro` running meanwhile
        beside = explore()
    assert beside == {"running": 2, "pools": max(1, cores // 2)}
    assert threads.running() == 0  # the kernel let its slot go after each cell
