"""Where the project is and where its standard files live.

The project root is the nearest directory (upwards from the start point) that
holds a ``dvc.yaml``. All paths nbpipeline writes are relative to that root.

A *segment* (model factory, docs/contracts.md) is one of several models trained from the
same notebooks: ``Project(root, segment="north")`` keeps that segment's reports, metrics,
plots, candidate and registry in a ``north/`` folder of each (``reports/north/train.html``,
``models/north/candidate``, ``registry/north/``). ``nbp run train@north`` sets
``$NBPIPELINE_SEGMENT`` for its kernel, so code inside it finds the segment's files.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nbpipeline.errors import ProjectNotFoundError, SegmentError

# what `nbp run` tells the stage it runs (nbpipeline.pipeline.run): its project, its stage
# and that it runs under the pipeline
ROOT_ENV = "NBPIPELINE_ROOT"
STAGE_ENV = "NBPIPELINE_STAGE"
RUNNING_ENV = "NBPIPELINE_RUNNING"
REGISTRY_ENV = "NBPIPELINE_REGISTRY"
# Set by DVC for every stage command; for queued and --temp experiments it names the
# parent repository's DVC root, not the executor's copy in .dvc/tmp/exps/ (dvc 3.x).
DVC_ROOT_ENV = "DVC_ROOT"
SEGMENT_ENV = "NBPIPELINE_SEGMENT"
_SEGMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_segment(segment: str, where: str = "segment") -> str:
    """``segment`` if it can name a folder (letters, digits, ``_ . -``), else a
    SegmentError naming it."""
    if not _SEGMENT_NAME.fullmatch(segment) or segment.endswith("."):
        raise SegmentError(
            f"{where} {segment!r} cannot name a segment's folder; segment values are letters, "
            "digits, `_`, `.` and `-`, starting with a letter or digit (rename the values of "
            "the segment column, or map them in the data notebook)")
    return segment


@dataclass(frozen=True)
class Project:
    """A project directory and its standard paths."""

    root: Path
    segment: str | None = None  # a model factory's segment: its files in <folder>/<segment>/

    def for_segment(self, segment: str | None) -> Project:
        """This project seen from ``segment`` (None: the project's own, unsegmented files)."""
        return Project(self.root, check_segment(segment) if segment else None)

    def _segmented(self, path: Path) -> Path:
        return path / self.segment if self.segment else path

    @property
    def dvc_yaml(self) -> Path:
        return self.root / "dvc.yaml"

    @property
    def params_yaml(self) -> Path:
        return self.root / "params.yaml"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def reports(self) -> Path:
        return self._segmented(self.root / "reports")

    @property
    def metrics(self) -> Path:
        return self._segmented(self.root / "metrics")

    @property
    def plots(self) -> Path:
        return self._segmented(self.root / "plots")

    @property
    def registry(self) -> Path:
        """The model registry: ``$NBPIPELINE_REGISTRY``, else ``registry/`` of the project.

        Queued and ``--temp`` DVC experiments run in a copy of the repository that lacks the
        git-ignored ``registry/``; there it is the one of the repository they came from.
        """
        if REGISTRY_ENV in os.environ:
            return self._segmented(Path(os.environ[REGISTRY_ENV]))
        return self._segmented(self.origin / "registry")

    @property
    def candidate(self) -> Path:
        """Where the train stage leaves the candidate ``nbp promote`` registers."""
        return self.root / "models" / (self.segment or "") / "candidate"

    @property
    def origin(self) -> Path:
        """The project's directory in the repository a DVC experiment was started from
        (the root itself, except inside a queued or ``--temp`` experiment's copy)."""
        parent_dvc_root = os.environ.get(DVC_ROOT_ENV)
        if not parent_dvc_root:
            return self.root
        here = self.root.resolve()
        for dvc_root in (here, *here.parents):
            if (dvc_root / ".dvc").is_dir():
                return Path(parent_dvc_root) / here.relative_to(dvc_root)
        return self.root

    def notebook(self, stage: str) -> Path:
        """Source notebook of ``stage``."""
        return self.notebooks / f"{stage}.ipynb"

    def rel(self, path: Path | str) -> str:
        """``path`` relative to the root when inside it, for messages and reports."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)


def find_project(start: Path | str | None = None) -> Project:
    """Return the project holding ``start`` (default: $NBPIPELINE_ROOT or the cwd)."""
    if start is None:
        start = os.environ.get(ROOT_ENV) or Path.cwd()
    here = Path(start).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return Project(candidate).for_segment(os.environ.get(SEGMENT_ENV) or None)
    raise ProjectNotFoundError(
        f"no dvc.yaml found in {here} or any parent directory; "
        "run nbp from inside an nbpipeline project (the directory holding dvc.yaml)"
    )


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    Readers never see a half-written file: either the old one or the complete new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: Path | str, text: str) -> None:
    """Write ``text`` to ``target`` atomically (temp file + rename)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: Path | str, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (temp file + rename)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)

