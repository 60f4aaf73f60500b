"""The stage's kernel and its private run directory.

Each ``nbp run`` gets one directory in the system temp dir (mode 0700), holding the
kernel's IPC sockets, its connection file (mode 0600: it carries the kernel's HMAC key)
and the file tracer's log. A lock file in it is ``flock``ed for as long as the run lives,
so a directory whose lock can be taken belongs to a dead run (``kill -9``): the next run
removes it (:func:`remove_stale`). The kernel itself exits on its own within ~1 s of
losing its parent (ipykernel's parent poller).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

# How ipykernel_launcher starts a kernel, minus its debugger: ipykernel imports debugpy at
# start-up (measured: 0.47 s of a 1.87 s start to ready, median of 7 alternating rounds,
# loaded 2-core machine) for a debugger no pipeline run attaches. debugpy is blocked only
# while ipykernel.debugger is imported (the kernel then runs without a debugger); a
# notebook can still import it.
LEAN_LAUNCHER = (
    "import sys\n"
    "del sys.path[0]  # not the cwd while ipykernel loads, as ipykernel_launcher\n"
    "sys.modules['debugpy'] = None\n"
    "try:\n"
    "    import ipykernel.debugger\n"
    "except ImportError:  # an ipykernel without a debugger (< 6)\n"
    "    pass\n"
    "del sys.modules['debugpy']\n"
    "import ipykernel_launcher\n"
    "sys.argv[0] = ipykernel_launcher.__file__  # what code that looks at argv[0] expects\n"
    "from ipykernel import kernelapp\n"
    "kernelapp.launch_new_instance()\n"
)
# ...and without IPython's SQLite history: opening it and committing the new session took
# ~0.026 s of a kernel's ~0.1 s initialisation (an fsync: more on a busy disk), it adds a
# thread that writes every cell to ~/.ipython, and stages running at once contend on that
# one file. A stage's history is its executed notebook; In/Out and %history still work.
LEAN_KERNEL_OPTIONS = ("--HistoryManager.enabled=False",)
RUN_DIR_PREFIX = "nbp-kernel-"
_LOCK = "lock"
# A run creates its directory, then its lock file, then locks it, within microseconds:
# a directory or lock file younger than this may belong to a run still doing so.
_GRACE_SECONDS = 2.0


class RunDir:
    """A private temp directory, locked until :meth:`remove`."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
        self._fd = os.open(self.path / _LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def remove_stale(temp_dir: Path | None = None) -> list[Path]:
    """Remove run directories left by dead ``nbp run`` processes; return them."""
    removed: list[Path] = []
    base = Path(temp_dir or tempfile.gettempdir())
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(RUN_DIR_PREFIX)]
    except OSError:
        return removed
    for path in candidates:
        if _is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _is_stale(path: Path) -> bool:
    try:
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # starting up, or left by an nbpipeline without lock files
        return _older_than_grace(path) and path.stat().st_uid == os.getuid()
    except OSError:  # not ours, or gone
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live run holds it
    finally:
        os.close(fd)
    return _older_than_grace(path / _LOCK)


def _older_than_grace(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > _GRACE_SECONDS
    except OSError:
        return False


def lean_argv(argv: list[str]) -> list[str]:
    """A kernelspec's command with ``-m ipykernel_launcher`` replaced by
    :data:`LEAN_LAUNCHER` (interpreter options before it kept) and
    :data:`LEAN_KERNEL_OPTIONS` added; any other kernel's command as it is."""
    for i in range(1, len(argv) - 1):
        if argv[i:i + 2] == ["-m", "ipykernel_launcher"]:
            return [*argv[:i], "-c", LEAN_LAUNCHER, *argv[i + 2:], *LEAN_KERNEL_OPTIONS]
        if not argv[i].startswith("-"):
            break  # a script or module of its own: not ipykernel_launcher
    return list(argv)


def import_client() -> None:
    """Import what :class:`Kernel` needs (jupyter_client, zmq: ~0.1 s) ahead of starting
    it: a process forked meanwhile (nbpipeline.pipeline.stage_page's renderer, whose
    nbconvert imports them too) then shares the imported modules."""
    import jupyter_client.manager  # noqa: F401
    import jupyter_core.utils  # noqa: F401

    import nbpipeline.pipeline.kernel_client  # noqa: F401


def _spec_manager(name: str) -> Any:
    """jupyter_client's kernelspec manager, searching only Jupyter's kernel folders when one
    holds kernel ``name``.

    Its default search list ends with IPython's legacy ``~/.ipython/kernels``, found by
    importing IPython (measured: 0.05 s of a 0.09 s kernel start in `nbp run`'s process,
    before the kernel process is even launched). A kernel in an earlier folder is found
    there first either way; for any other, the default list is used.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import jupyter_path

    dirs = jupyter_path("kernels")
    wanted = name.lower()  # as jupyter_client compares names
    for folder in dirs:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        if any(entry.lower() == wanted and os.path.isfile(os.path.join(folder, entry,
                                                                        "kernel.json"))
               for entry in entries):
            return KernelSpecManager(kernel_dirs=dirs)
    return KernelSpecManager()


class Kernel:
    """The stage's kernel, started before papermill is imported so the two overlap.

    A kernel takes ~1.4 s to be ready and ``import papermill`` ~0.8 s; started first,
    the kernel boots while papermill loads (DESIGN.md: start-up dominates a small
    pipeline). It is an async kernel manager on nbclient's event loop (jupyter_core's
    run_sync), talking over IPC sockets in the run directory: no "running over TCP without
    encryption" warning, no port dance, nothing in the project for DVC to see. An
    ipykernel starts through :data:`LEAN_LAUNCHER`: a fresh interpreter, without debugpy.
    Its clients are :class:`~nbpipeline.pipeline.kernel_client.LeanClient`: no idle waits
    at start-up. nbclient does not shut down a kernel it did not start: :meth:`stop` does,
    at once.
    """

    def __init__(self, name: str, cwd: Path, run_dir: RunDir, env: dict[str, str]) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        from nbpipeline.pipeline.kernel_client import LeanClient

        self._run_sync = run_sync
        self.manager = AsyncKernelManager(
            kernel_name=name, transport="ipc", ip=str(run_dir.path / "kernel"),
            connection_file=str(run_dir.path / "kernel.json"), client_factory=LeanClient,
            kernel_spec_manager=_spec_manager(name),
        )
        spec = self.manager.kernel_spec  # NoSuchKernel if not installed
        if spec is not None:
            spec.argv = lean_argv(spec.argv)
        run_sync(self.manager.start_kernel)(cwd=str(cwd), env=env)

    def stop(self) -> None:
        # jupyter_client kills the kernel's process group, then polls for its exit every
        # 0.1 s (measured: 0.11 s per stage); waiting for the process itself takes ~1 ms,
        # after which its shutdown finds the kernel gone.
        provisioner = self.manager.provisioner
        process = getattr(provisioner, "process", None)
        if provisioner is not None and process is not None and process.poll() is None:
            self._run_sync(provisioner.kill)()  # SIGKILL to the kernel's process group
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # stuck in the kernel (D state): jupyter_client's shutdown waits, warns
        if self._run_sync(self.manager.is_alive)():
            self._run_sync(self.manager.shutdown_kernel)(now=True)
        self._run_sync(self.manager.cleanup_resources)()
