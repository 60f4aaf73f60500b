"""Thread discipline: how many BLAS/OpenMP threads a model-fitting process may use.

Two processes that each fit models with one OpenMP thread per core livelock on a small
machine (measured on 2 cores: two example trains with default threads were still running
after 10 minutes; with one thread each, both finished in 15 s). Alone, all cores are
fastest (a HistGradientBoosting fit: 0.37 s with 2 threads, 0.55 s with 1). So each
process takes its share of the cores it may use, by the number of such processes running
now:

    threads = max(1, cores // running)

* ``cores``: the CPUs this process may run on (its affinity), capped by its cgroup's CPU
  quota (containers, CI runners), not the machine's count;
* ``running``: live *slots* in a per-user directory in the temp dir. A slot is a file
  ``flock``ed by its holder: ``nbp run`` holds one for the whole stage, ``nbp monitor``
  for its run, and a JupyterLab kernel (after ``nbp.init``) while a cell executes. A
  slot whose lock is free belongs to a dead process and is removed.

``nbp run`` puts the share into the kernel's environment (``OMP_NUM_THREADS`` and the
BLAS variables, read when each library loads); in the kernel, ``nbp.init`` installs an
IPython hook that re-counts before every cell and re-applies the share with threadpoolctl
(OpenMP's limit belongs to the calling thread, so it must be set on the main thread), so a
stage that started alone gives up cores at its next cell when another one starts.

The OpenMP wait policy stays the default (spin, then sleep): measured here, a passive
policy made a lone fit 5x slower (2.05 s vs 0.37 s), and with one thread a process has
no worker threads to spin.

Override: ``NBP_THREADS=N`` in the environment, else ``common.threads: N`` in
params.yaml (``auto``, the default, is the rule above).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbpipeline.errors import ParamsError

THREADS_ENV = "NBP_THREADS"
# Set by `nbp run` for its kernel: the parent holds the stage's slot; where to record.
SLOT_HELD_ENV = "NBP_THREAD_SLOT_HELD"
RECORD_ENV = "NBP_THREADS_RECORD"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class ThreadSettings:
    """The thread count a process runs with, and why."""

    threads: int
    cores: int
    running: int
    source: str  # "auto", "NBP_THREADS" or "params.yaml common.threads"



def describe(record: Mapping[str, Any]) -> str:
    """One sentence on a run's thread settings (a :class:`ThreadSettings` as a dict, as
    :func:`write_record` stores it, with threadpoolctl's ``threadpools`` when known)."""
    why = (f"{record['cores']} core(s) available, {record['running']} model-fitting "
           "process(es) running" if record.get("source") == "auto"
           else f"set by {record.get('source')}")
    pools = ", ".join(f"{p['internal_api']} {p['num_threads']}"
                      for p in record.get("threadpools") or [])
    return (f"BLAS/OpenMP threads: {record['threads']} ({why})"
            + (f"; thread pools: {pools}." if pools else "."))


def available_cores() -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs' worth of quota from cgroup v2 ``cpu.max`` (or v1 cfs files); None if unlimited."""
    found: list[float] = []
    for path in _cgroup_v2_files():
        try:
            quota, period = path.read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max":
            found.append(int(quota) / int(period))
    v1 = Path("/sys/fs/cgroup/cpu")
    try:
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            found.append(quota_us / period_us)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _cgroup_v2_files() -> list[Path]:
    """``cpu.max`` of this process's cgroup and its ancestors (each may limit it)."""
    root = Path("/sys/fs/cgroup")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        if line.startswith("0::"):
            here = root / line[3:].strip().lstrip("/")
            files = [d / "cpu.max" for d in (here, *here.parents) if root in (d, *d.parents)]
            return [f for f in files if f.is_file()]
    return []


def slot_dir() -> Path:
    """Where live slots are counted: one directory per user, shared by all projects."""
    return Path(tempfile.gettempdir()) / f"nbp-slots-{os.getuid()}"


class Slot:
    """One model-fitting process, counted while :meth:`acquire`\\ d."""

    def __init__(self) -> None:
        self._fd = -1
        self._path: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> None:
        if self.held:
            return
        directory = slot_dir()
        for _ in range(10):  # the last holder may remove the directory in between
            directory.mkdir(mode=0o700, exist_ok=True)
            try:
                fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".slot",
                                            dir=directory)
            except FileNotFoundError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd, self._path = fd, Path(name)
            return

    def release(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            try:  # the last one out leaves nothing in the temp dir
                self._path.parent.rmdir()
            except OSError:
                pass
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._path = -1, None

    def __enter__(self) -> Slot:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def running() -> int:
    """Live slots now (stale ones, whose process died, are removed)."""
    count = 0
    try:
        entries = list(slot_dir().glob("*.slot"))
    except OSError:
        return 0
    for path in entries:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            count += 1  # held by a live process
        else:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return count


def override(params: Mapping[str, Any] | None = None) -> tuple[int | None, str]:
    """A fixed thread count from ``NBP_THREADS`` or ``common.threads``; (None, "auto")."""
    for value, source in ((os.environ.get(THREADS_ENV), THREADS_ENV),
                          (((params or {}).get("common") or {}).get("threads"),
                           "params.yaml common.threads")):
        if value is None or str(value).strip().lower() in ("", "auto"):
            continue
        try:
            threads = int(str(value))
        except ValueError:
            threads = 0
        if threads < 1 or isinstance(value, bool | float):
            raise ParamsError(f"{source}: threads must be a whole number >= 1 or 'auto', "
                              f"found {value!r}")
        return threads, source
    return None, "auto"


def settings(params: Mapping[str, Any] | None = None) -> ThreadSettings:
    """This process's share of the cores now (call after acquiring its slot)."""
    cores = available_cores()
    fixed, source = override(params)
    if fixed is not None:
        return ThreadSettings(fixed, cores, running(), source)
    now = max(1, running())
    return ThreadSettings(max(1, cores // now), cores, now, source)


def current() -> int:
    """The thread count this process was given (``OMP_NUM_THREADS`` as set by ``nbp run``
    or :func:`apply`), else the cores it may use: for sizing its own worker pools."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return available_cores()


def environment(threads: int) -> dict[str, str]:
    """Environment variables that make newly loaded libraries use ``threads``."""
    return {name: str(threads) for name in THREAD_VARS}


def apply(threads: int) -> None:
    """Limit this process's thread pools, loaded ones (threadpoolctl, on the calling
    thread for OpenMP) and those loaded later (environment)."""
    from threadpoolctl import threadpool_limits

    os.environ.update(environment(threads))
    threadpool_limits(limits=threads)


def threadpools() -> list[dict[str, Any]]:
    """threadpoolctl's view of this process's thread pools (library, API, threads)."""
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "prefix", "num_threads", "version")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


class KernelDiscipline:
    """In a kernel: before each cell, re-count and re-apply the share (IPython hooks).

    Under ``nbp run`` the parent holds the stage's slot; interactively the kernel holds
    one only while a cell runs, so an idle JupyterLab kernel costs no stage a thread.
    """

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = params
        self.slot = None if os.environ.get(SLOT_HELD_ENV) else Slot()
        self.applied: ThreadSettings | None = None
        self.record = os.environ.get(RECORD_ENV)

    def pre_run_cell(self, *_: Any) -> None:
        if self.slot is not None:
            self.slot.acquire()
        now = settings(self.params)
        if self.applied is None or now.threads != self.applied.threads:
            apply(now.threads)
            self.applied = now

    def post_run_cell(self, *_: Any) -> None:
        if self.slot is not None:
            self.slot.release()
        if self.record and self.applied is not None:
            write_record(Path(self.record), self.applied)


def write_record(path: Path, applied: ThreadSettings) -> None:
    """Record the settings and the thread pools as they are now (json, replaced whole)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**asdict(applied), "threadpools": threadpools()}))
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def install(params: Mapping[str, Any] | None = None) -> KernelDiscipline | None:
    """Apply the discipline in this kernel (IPython) now and before every cell."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None:
        return None
    discipline = KernelDiscipline(params)
    for event in ("pre_run_cell", "post_run_cell"):
        for old in [f for f in shell.events.callbacks[event]
                    if isinstance(getattr(f, "__self__", None), KernelDiscipline)]:
            shell.events.unregister(event, old)
        shell.events.register(event, getattr(discipline, event))
    discipline.pre_run_cell()
    return discipline
