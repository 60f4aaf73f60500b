"""dvc.lock's record of a source notebook, and the one edit nbpipeline makes to it.

``nbp sync`` rewrites only a parameters cell's defaults, which ``nbp run`` overrides with
params.yaml's values on every run: what the stage computes cannot change. So where dvc.lock
recorded the notebook exactly as it was before the sync, :func:`follow_rewrite` records the
synced bytes instead (md5 and size of that dep entry, nothing else), and the stage stays up
to date. Without it, ``dvc exp run -S train.max_iter=300`` then ``nbp sync`` would retrain
with identical params. Any other difference (params, data, code) is left for DVC to see.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from nbpipeline.project import Project, write_text_atomic

__all__ = ["file_md5", "follow_rewrite"]

LOCK_FILE = "dvc.lock"
_FIELD = re.compile(r"^(\s*)(md5|size): *(\S+)\s*$")


def file_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file (of its bytes)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def follow_rewrite(project: Project, rel: str, old_md5: str) -> bool:
    """Point dvc.lock's entries for dep ``rel`` that record ``old_md5`` at the file's
    current bytes. Returns whether dvc.lock changed."""
    lock = project.root / LOCK_FILE
    if not lock.is_file():
        return False
    target = project.root / rel
    new_md5, new_size = file_md5(target), target.stat().st_size
    lines = lock.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = False
    for start, line in enumerate(lines):
        stripped = line.strip()
        if stripped not in (f"- path: {rel}", f"- path: '{rel}'", f'- path: "{rel}"'):
            continue
        block = _entry_lines(lines, start)
        fields = {m.group(2): (i, m) for i in block if (m := _FIELD.match(lines[i]))}
        if "md5" not in fields or fields["md5"][1].group(3) != old_md5:
            continue
        for name, value in (("md5", new_md5), ("size", str(new_size))):
            if name in fields:
                i, match = fields[name]
                lines[i] = f"{match.group(1)}{name}: {value}\n"
        changed = True
    if changed:
        write_text_atomic(lock, "".join(lines))
    return changed


def _entry_lines(lines: list[str], start: int) -> list[int]:
    """Indexes of the lines of the list entry that begins at ``lines[start]``."""
    dash = len(lines[start]) - len(lines[start].lstrip())
    found = []
    for i in range(start + 1, len(lines)):
        text = lines[i]
        indent = len(text) - len(text.lstrip())
        if not text.strip() or indent <= dash:
            break
        found.append(i)
    return found
