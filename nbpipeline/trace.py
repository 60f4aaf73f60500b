"""Undeclared dependencies: which project files a stage really read and wrote.

While `nbp run` executes a notebook, an inotify watch (Linux) on the project's directories
records every file closed after reading and every file created, written, renamed or
deleted, by the kernel and anything it starts (pandas/pyarrow C++ readers and shell
commands included, which a Python audit hook cannot see: pyarrow opens parquet files in
C++). After the run the files are compared with the stage's dvc.yaml declarations:

* read, but neither under a dep nor under an out of the stage  -> undeclared dep;
* written (and still there, or deleted though it existed before) but not under an out
  -> undeclared out.

Not counted: hidden files and directories (``.git``, ``.dvc``, checkpoints, temp files
of atomic writes), Python code (``*.py``, ``*.pyc``, ``*.so``: package code, see
docs/authoring.md), ``params.yaml`` (declared through ``params:``), dvc.yaml/dvc.lock/
``*.dvc``, the source notebooks, the stage's own reports, and paths matched by
``.dvcignore`` (state DVC must not manage, e.g. ``registry/``). Directories are not watched
inside virtual environments, ``__pycache__`` and ``node_modules``.

On systems without inotify, tracing is skipped (``Tracer.start`` returns False).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_IN_CLOSE_WRITE = 0x00000008
_IN_CLOSE_NOWRITE = 0x00000010
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ISDIR = 0x40000000
_MASK = (_IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
         | _IN_DELETE)
_EVENT = struct.Struct("iIII")
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
_CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".pyd", ".so", ".pth")
_PIPELINE_FILES = {"params.yaml", "dvc.yaml", "dvc.lock"}
# An editable install of the project's own package reads these (importlib.metadata).
_PACKAGING_FILES = {"pyproject.toml", "setup.cfg", "MANIFEST.in"}
_PACKAGING_DIRS = (".egg-info", ".dist-info")
MAX_WATCHED_DIRS = 20000


@dataclass
class Trace:
    """Project-relative files a run read and wrote (after the exclusions above)."""

    read: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    complete: bool = True  # False if the kernel's event queue overflowed

    def undeclared(self, deps: Iterable[str], outs: Iterable[str]) -> tuple[list[str], list[str]]:
        """(reads not under ``deps``/``outs``, writes not under ``outs``), sorted."""
        from nbpipeline.stages import covered

        deps, outs = list(deps), list(outs)
        reads = sorted(p for p in self.read - self.written
                       if not covered(p, deps) and not covered(p, outs))
        writes = sorted(p for p in self.written if not covered(p, outs))
        return reads, writes


def dvcignore(root: Path) -> Callable[[str], bool]:
    """A matcher for the project's ``.dvcignore`` patterns (gitignore syntax)."""
    path = root / ".dvcignore"
    if not path.is_file():
        return lambda rel: False
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(path.read_text().splitlines())
    return spec.match_file


def ignored(rel: str, stage: str) -> bool:
    """True for files that are never counted as a stage's deps or outs."""
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
    return rel in (f"reports/{stage}.ipynb", f"reports/{stage}.html",
                   f"reports/{stage}.failed.ipynb", f"reports/{stage}.failed.html")


def _libc() -> ctypes.CDLL | None:
    if not hasattr(os, "O_CLOEXEC"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1  # noqa: B018 - raises AttributeError where inotify is missing
    except (OSError, AttributeError):
        return None
    return libc


class Tracer:
    """Watches a project tree with inotify from a background thread."""

    def __init__(self, root: Path, stage: str) -> None:
        self.root = root.resolve()
        self.stage = stage
        self._libc = _libc()
        self._fd = -1
        self._dirs: dict[int, Path] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read: set[str] = set()
        self._written: set[str] = set()
        self._created: set[str] = set()
        self._deleted: set[str] = set()
        self._complete = True

    def start(self) -> bool:
        """Begin watching; False (and nothing watched) when inotify is unavailable."""
        if self._libc is None:
            return False
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            return False
        if not self._watch_tree(self.root, created=False):
            self._close()
            return False
        self._thread = threading.Thread(target=self._loop, name="nbp-trace", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> Trace:
        """Stop watching, read the remaining events, and return what was seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._drain()
        self._close()
        written = {p for p in self._written if (self.root / p).exists()}
        written |= {p for p in self._deleted - self._created if not (self.root / p).exists()}
        skip = dvcignore(self.root)
        return Trace(
            read={p for p in self._read if not ignored(p, self.stage) and not skip(p)},
            written={p for p in written if not ignored(p, self.stage) and not skip(p)},
            complete=self._complete,
        )

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _watch_tree(self, top: Path, *, created: bool) -> bool:
        """Watch ``top`` and the directories under it; with ``created`` (a directory the
        stage made), the files already in it count as written.

        Each directory is watched first and listed second: a file made in between shows
        up in the listing or as an event. (Listed first, as os.walk does, a file renamed
        into place between the two was missed.)
        """
        pending = [top]
        while pending:
            here = pending.pop()
            if len(self._dirs) >= MAX_WATCHED_DIRS:
                self._complete = False
                return bool(self._dirs)
            wd = self._libc.inotify_add_watch(  # type: ignore[union-attr]
                self._fd, os.fsencode(here), _MASK)
            if wd >= 0:
                self._dirs[wd] = here
            try:
                entries = list(os.scandir(here))
            except OSError:  # gone again, or unreadable
                continue
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    if (not entry.name.startswith(".") and entry.name not in _SKIP_DIRS
                            and not (path / "pyvenv.cfg").exists()):
                        pending.append(path)
                elif created:  # made before the watch existed
                    rel = self._rel(path)
                    self._written.add(rel)
                    self._created.add(rel)
        return True

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if ready:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                self._event(wd, mask, os.fsdecode(name))

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & _IN_Q_OVERFLOW:
            self._complete = False
            return
        directory = self._dirs.get(wd)
        if directory is None or not name or mask & _IN_IGNORED:
            return
        path = directory / name
        if mask & _IN_ISDIR:
            if mask & (_IN_CREATE | _IN_MOVED_TO) and not name.startswith("."):
                self._watch_tree(path, created=True)
            return
        rel = self._rel(path)
        if mask & _IN_CLOSE_NOWRITE:
            self._read.add(rel)
        if mask & (_IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE):
            self._written.add(rel)
            if mask & _IN_CREATE:
                self._created.add(rel)
        if mask & (_IN_DELETE | _IN_MOVED_FROM):
            self._deleted.add(rel)


def describe(stage: str, reads: list[str], writes: list[str], notebook: str) -> str:
    """The message for undeclared reads/writes of ``stage``: one line per fix."""
    lines = []
    if reads:
        lines.append(f"stage '{stage}' read {len(reads)} project file(s) that dvc.yaml does not "
                     "list as its deps (dvc repro would not re-run it when they change):")
        lines += [f"  read  {p}" for p in reads]
        lines.append(f"  fix: `nbp stage add {notebook} " + " ".join(f"--deps {p}" for p in reads)
                     + "` (or add them under deps: in dvc.yaml)")
    if writes:
        lines.append(f"stage '{stage}' wrote {len(writes)} project file(s) that dvc.yaml does not "
                     "list as its outs (DVC would neither version nor restore them):")
        lines += [f"  wrote {p}" for p in writes]
        lines.append(f"  fix: `nbp stage add {notebook} " + " ".join(f"--outs {p}" for p in writes)
                     + "` (or add them under outs: in dvc.yaml)")
    return "\n".join(lines)
