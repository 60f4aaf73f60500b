"""The stage kernel's private files: modes, removal after a clean run and after kill -9."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from projects import add_stage, project_env

from nbpipeline.pipeline.kernel import (
    LEAN_LAUNCHER,
    RUN_DIR_PREFIX,
    Kernel,
    RunDir,
    lean_argv,
    remove_stale,
)

pytestmark = pytest.mark.slow


def _nbp_run(root: Path, stage: str, tmp: Path) -> subprocess.Popen[str]:
    env = {**project_env(), "TMPDIR": str(tmp)}
    return subprocess.Popen(["nbp", "run", stage], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def test_stage_kernels_start_without_the_debugger_yet_can_import_it(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    no_history = "--HistoryManager.enabled=False"
    assert lean_argv(["/venv/bin/python", "-m", "ipykernel_launcher", "-f", "{c}"]) == [
        "/venv/bin/python", "-c", LEAN_LAUNCHER, "-f", "{c}", no_history]
    assert lean_argv(["py", "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{c}"]) == [
        "py", "-Xfrozen_modules=off", "-c", LEAN_LAUNCHER, "-f", "{c}", no_history]
    for other in (["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
                  ["python", "my_kernel.py", "-m", "ipykernel_launcher"]):
        assert lean_argv(other) == other
    run_dir = RunDir()
    kernel = Kernel("python3", tmp_path, run_dir, dict(os.environ))
    try:
        source = ("import os, sys\nprint('debugpy' in sys.modules, os.getcwd())\n"
                  "print(os.path.basename(sys.argv[0]), '' in sys.path)  # as ipykernel_launcher\n"
                  "import debugpy\nprint(debugpy.__name__)\n"
                  "print(get_ipython().history_manager.enabled)")
        child = "import subprocess\nprint(subprocess.Popen(['sleep', '60']).pid)"
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source),
                                             nbformat.v4.new_code_cell(child)])
        NotebookClient(nb, km=kernel.manager).execute()
        assert nb.cells[0].outputs[0].text == (
            f"False {tmp_path}\nipykernel_launcher.py True\ndebugpy\nFalse\n")
        pids = [kernel.manager.provisioner.pid, int(nb.cells[1].outputs[0].text)]
    finally:
        kernel.stop()
        run_dir.remove()
    # stop() returns once the kernel is gone, its process group (what it started) with it
    assert not _alive(pids[0])
    _wait_for(lambda: not _alive(pids[1]), 5.0)


def _alive(pid: int) -> bool:
    try:  # a zombie (killed, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _sleeping_stage(root: Path, tmp: Path, seconds: float) -> subprocess.Popen[str]:
    """`nbp run` of a stage that sleeps, its temp dir ``tmp``; returned once its kernel is up."""
    tmp.mkdir()
    add_stage(root, "sleeps", "sleeps.ipynb", {"seconds": seconds})
    proc = _nbp_run(root, "sleeps", tmp)
    _wait_for(lambda: any(tmp.glob(f"{RUN_DIR_PREFIX}*/kernel.json")))
    return proc


def test_kernel_files_are_private_and_a_clean_run_leaves_nothing(
    mini_project: Path, tmp_path: Path,
) -> None:
    tmp = tmp_path / "tmp"
    proc = _sleeping_stage(mini_project, tmp, 2.0)
    run_dir = next(tmp.glob(f"{RUN_DIR_PREFIX}*"))
    assert stat.S_IMODE(run_dir.stat().st_mode) & 0o777 == 0o700  # (+ sticky: jupyter)
    assert stat.S_IMODE((run_dir / "kernel.json").stat().st_mode) == 0o600
    assert list(tmp.glob("*.json")) == []  # no connection file loose in the temp dir
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert list(tmp.iterdir()) == []


def test_files_of_a_killed_run_are_removed_by_the_next_run(
    mini_project: Path, tmp_path: Path,
) -> None:
    tmp = tmp_path / "tmp"
    proc = _sleeping_stage(mini_project, tmp, 30.0)
    time.sleep(2.5)  # the kernel is up and running the cell
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    left = list(tmp.glob(f"{RUN_DIR_PREFIX}*"))
    assert left and (left[0] / "kernel.json").exists()  # what kill -9 leaves behind

    add_stage(mini_project, "sleeps", "sleeps.ipynb", {"seconds": 0.1})
    again = _nbp_run(mini_project, "sleeps", tmp)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert list(tmp.iterdir()) == []


def test_remove_stale_spares_live_and_young_run_dirs(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    live = RunDir()
    dead = RunDir()
    dead.path.joinpath("kernel.json").write_text("{}")
    dead._fd, fd = -1, dead._fd
    os.close(fd)  # its process died: the lock is free
    young = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))  # not locked yet: starting up
    old = time.time() - 60
    for path in (live.path, dead.path, live.path / "lock", dead.path / "lock"):
        os.utime(path, (old, old))
    assert remove_stale(tmp_path) == [dead.path]
    assert live.path.exists() and young.exists() and not dead.path.exists()
    live.remove()
    assert not live.path.exists()


def test_kernelspec_lookup_finds_the_same_spec_without_importing_ipython(tmp_path: Path) -> None:
    """jupyter_client's default kernel folders end with IPython's legacy one, found by
    importing IPython (~0.05 s before the kernel is launched); a kernel in a Jupyter
    folder is found the same without it, any other with the default list."""
    script = (
        "import sys\n"
        "from nbpipeline.pipeline.kernel import _spec_manager\n"
        "lean = _spec_manager('Python3').get_kernel_spec('python3').resource_dir\n"
        "print('IPython' in sys.modules)\n"
        "from jupyter_client.kernelspec import KernelSpecManager\n"
        "print(lean == KernelSpecManager().get_kernel_spec('python3').resource_dir)\n"
        "print(len(_spec_manager('no-such-kernel').kernel_dirs) == "
        "len(KernelSpecManager().kernel_dirs))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.split()
    assert out == ["False", "True", "True"]
