"""Undeclared dependencies: which project files a stage's own processes read and wrote.

``nbp run`` starts the stage's kernel with a small C library preloaded (``trace_shim.c``,
built once with the system C compiler and cached). Every process of the kernel's tree
loads it, the kernel itself, C/C++ readers inside it (pyarrow opens parquet files in C++,
where a Python audit hook sees nothing) and any program it starts, and each appends the
project files it opens, renames and deletes to a log in the run's private temp dir.
Processes outside that tree (an editor, JupyterLab, a shell, git re-hashing files for
another command, another stage) never load it, so their accesses never count; nor does
``nbp run``'s own bookkeeping (reports, git revision: see :func:`untraced_env`).

After the run the files are compared with the stage's dvc.yaml declarations:

* read, but neither under a dep nor under an out of the stage  -> undeclared dep;
* written (and still there, or deleted though it existed before) but not under an out
  -> undeclared out.

Not counted: hidden files and directories (``.git``, ``.dvc``, checkpoints, temp files
of atomic writes), Python code (``*.py``, ``*.pyc``, ``*.so``: package code, see
docs/authoring.md), ``params.yaml`` (declared through ``params:``), dvc.yaml/dvc.lock/
``*.dvc``, the source notebooks, the stage's own reports, files inside virtual
environments, ``__pycache__`` and ``node_modules``, and paths matched by ``.dvcignore``
(state DVC must not manage, e.g. ``registry/``).

Limits (docs/authoring.md): statically linked programs and raw system calls bypass libc
and are not seen; where the shim cannot be built or loaded (no C compiler, not Linux),
``Tracer.start`` returns None and :attr:`Tracer.unavailable` says why in one line.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SHIM_SOURCE = Path(__file__).with_name("trace_shim.c")
LOG_ENV = "NBP_TRACE_LOG"
ROOT_ENV = "NBP_TRACE_ROOT"
SHIM_PREFIX = "nbp-trace-shim-"
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
_CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".pyd", ".so", ".pth")
_PIPELINE_FILES = {"params.yaml", "dvc.yaml", "dvc.lock"}
# An editable install of the project's own package reads these (importlib.metadata).
_PACKAGING_FILES = {"pyproject.toml", "setup.cfg", "MANIFEST.in"}
_PACKAGING_DIRS = (".egg-info", ".dist-info")


class TracingUnavailable(Exception):
    """The shim cannot be built or loaded here; the message says why and what to do."""


@dataclass
class Trace:
    """Project-relative files a run read and wrote (after the exclusions above)."""

    read: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)

    def undeclared(self, stage: Declarations) -> tuple[list[str], list[str]]:
        """(reads ``stage`` declares neither as dep nor out, writes it does not declare as
        out), sorted."""
        reads = sorted(p for p in self.read - self.written
                       if not stage.declares_dep(p) and not stage.declares_out(p))
        writes = sorted(p for p in self.written if not stage.declares_out(p))
        return reads, writes


class Declarations(Protocol):
    """What a stage declares (nbpipeline.pipeline.stages.NotebookStage)."""

    def declares_dep(self, path: str) -> bool: ...

    def declares_out(self, path: str) -> bool: ...


def dvcignore(root: Path) -> Callable[[str], bool]:
    """A matcher for the project's ``.dvcignore`` patterns (gitignore syntax)."""
    path = root / ".dvcignore"
    if not path.is_file():
        return lambda rel: False
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(path.read_text().splitlines())
    return spec.match_file


def ignored(rel: str, stage: str, segment: str | None = None) -> bool:
    """True for files that are never counted as a stage's deps or outs (``segment``: a
    model factory's segment, whose reports are in reports/<segment>/)."""
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts) or any(p in _SKIP_DIRS for p in parts[:-1]):
        return True
    name = parts[-1]
    if name.endswith(_CODE_SUFFIXES) or name.endswith(".dvc"):
        return True
    if rel in _PIPELINE_FILES or rel in _PACKAGING_FILES or name in ("dvc.yaml", "dvc.lock"):
        return True
    if any(p.endswith(_PACKAGING_DIRS) for p in parts[:-1]):
        return True
    if parts[0] == "notebooks" and name.endswith(".ipynb"):
        return True
    reports = f"reports/{segment}/{stage}" if segment else f"reports/{stage}"
    return rel in (f"{reports}.ipynb", f"{reports}.html",
                   f"{reports}.failed.ipynb", f"{reports}.failed.html")


def untraced_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without the tracer: for bookkeeping subprocesses
    such as git, whose reads of the work tree are not the stage's own."""
    clean = dict(os.environ if env is None else env)
    clean.pop(LOG_ENV, None)
    clean.pop(ROOT_ENV, None)
    preload = [p for p in clean.pop("LD_PRELOAD", "").split() if SHIM_PREFIX not in p]
    if preload:
        clean["LD_PRELOAD"] = " ".join(preload)
    return clean


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbpipeline"


def shim_library() -> Path:
    """The compiled shim, built on first use into the user's cache (~0.2 s, once)."""
    if not sys.platform.startswith("linux"):
        raise TracingUnavailable(f"file tracing needs Linux (LD_PRELOAD); this is {sys.platform}")
    source = SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    name = f"{SHIM_PREFIX}{digest}-{platform.machine()}.so"
    for directory in (_cache_dir(), Path(tempfile.gettempdir())):
        if (directory / name).is_file():
            return directory / name
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise TracingUnavailable(
            "no C compiler to build the file tracer; install one (e.g. `apt-get install gcc`)")
    for directory in (_cache_dir(), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        except OSError:
            continue
        os.close(fd)
        proc = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", tmp, str(SHIM_SOURCE), "-ldl"],
            capture_output=True, text=True, env=untraced_env(),
        )
        if proc.returncode != 0:
            os.unlink(tmp)
            first = (proc.stderr.strip().splitlines() or ["no output"])[0]
            raise TracingUnavailable(f"building the file tracer with {compiler} failed: {first}")
        os.replace(tmp, directory / name)
        return directory / name
    raise TracingUnavailable(f"no writable directory for the file tracer (tried {_cache_dir()})")


class Tracer:
    """Traces the processes started with the environment :meth:`start` returns."""

    def __init__(self, root: Path, stage: str, log: Path, *, segment: str | None = None) -> None:
        self.root = root.resolve()
        self.stage = stage
        self.segment = segment
        self.log = log
        self.unavailable: str | None = None

    def start(self) -> dict[str, str] | None:
        """Environment additions for the kernel; None (and :attr:`unavailable` set) when
        tracing cannot be done here."""
        try:
            library = shim_library()
        except TracingUnavailable as exc:
            self.unavailable = str(exc)
            return None
        self.log.write_bytes(b"")
        preload = " ".join(p for p in (str(library), os.environ.get("LD_PRELOAD", "")) if p)
        return {"LD_PRELOAD": preload, LOG_ENV: str(self.log), ROOT_ENV: str(self.root)}

    def stop(self) -> Trace | None:
        """What the traced processes read and wrote; None (and :attr:`unavailable` set)
        when no process loaded the shim."""
        read: set[str] = set()
        written: set[str] = set()
        created: set[str] = set()
        deleted: set[str] = set()
        loaded = False
        try:
            lines = self.log.read_text(errors="surrogateescape").splitlines()
        except OSError:
            lines = []
        kinds = {"R": (read,), "W": (written,), "C": (written, created),
                 "N": (written, created), "D": (deleted,)}
        for line in lines:
            kind, _, path = line.partition(" ")
            if kind == "S":
                loaded = True
            elif kind in kinds and (rel := self._rel(path)) is not None:
                for found in kinds[kind]:
                    found.add(rel)
        if not loaded:
            self.unavailable = ("the file tracer did not load in the kernel (LD_PRELOAD "
                                "ignored: is the kernel a static or setuid program?)")
            return None
        still = {p for p in written if (self.root / p).exists()}
        still |= {p for p in deleted - created if not (self.root / p).exists()}
        skip = dvcignore(self.root)
        keep = self._counted(skip)
        return Trace(read={p for p in read if keep(p)}, written={p for p in still if keep(p)})

    def _rel(self, path: str) -> str | None:
        rel = os.path.relpath(os.path.normpath(path), self.root)
        return None if rel.startswith("..") or rel == "." else Path(rel).as_posix()

    def _counted(self, skip: Callable[[str], bool]) -> Callable[[str], bool]:
        venvs: dict[Path, bool] = {}

        def in_venv(rel: str) -> bool:
            for parent in (self.root / rel).parents:
                if parent == self.root or self.root not in parent.parents:
                    return False
                if parent not in venvs:
                    venvs[parent] = (parent / "pyvenv.cfg").is_file()
                if venvs[parent]:
                    return True
            return False

        return lambda rel: (not ignored(rel, self.stage, self.segment) and not skip(rel)
                            and not in_venv(rel))


def describe(stage: str, reads: list[str], writes: list[str], notebook: str) -> str:
    """The message for undeclared reads/writes of ``stage``: one line per fix."""
    lines = []
    for files, verb, flag, why in (
        (reads, "read ", "deps", "dvc repro would not re-run it when they change"),
        (writes, "wrote", "outs", "DVC would neither version nor restore them"),
    ):
        if not files:
            continue
        lines.append(f"stage '{stage}' {verb.strip()} {len(files)} project file(s) that "
                     f"dvc.yaml does not list as its {flag} ({why}):")
        lines += [f"  {verb} {p}" for p in files]
        lines.append(f"  fix: `nbp stage add {notebook} " + " ".join(f"--{flag} {p}" for p in files)
                     + f"` (or add them under {flag}: in dvc.yaml)")
    return "\n".join(lines)
