"""The one YAML reader and the one YAML writer (params.yaml, dvc.yaml, dvc.lock, vars files).

DVC reads these files with ruamel.yaml's safe loader, YAML 1.2: ``No``, ``off`` and ``y``
are strings, ``1e3`` is a number, and a key given twice in one mapping is an error. Every
nbpipeline module reads them through :func:`parse`/:func:`read` (the same loader), so
``nbp`` and ``dvc`` never see different values, and writes through :func:`dump` /
:func:`editor` (ruamel's YAML 1.2 emitter), so what nbpipeline writes reads back as
written. (PyYAML, YAML 1.1, read a written ``No`` back as ``False``.)

A malformed file raises the caller's error class with one line naming the file, the
line and the fix; a duplicate key names both of its lines.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from nbpipeline.errors import NbpipelineError

__all__ = ["YAMLError", "dump", "editor", "error_line", "parse", "read"]


def editor(sequence: int = 2, offset: int = 0) -> YAML:
    """The round-trip YAML 1.2 loader/dumper used to edit a file in place (and by dump)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=max(sequence, offset + 2), offset=offset)
    return yaml


def dump(data: Any) -> str:
    """``data`` as YAML text, written the way :func:`parse` (and DVC) read it back."""
    buf = io.StringIO()
    editor().dump(data, buf)
    return buf.getvalue()


def _duplicate(node: Node | None, path: tuple[str, ...] = ()) -> tuple[str, int, int] | None:
    """(dotted key, first line, second line) of the first key given twice, 1-based."""
    if isinstance(node, MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key.value, str) else repr(key.value)
            if name in seen:
                return ".".join((*path, name)), seen[name], key.start_mark.line + 1
            seen[name] = key.start_mark.line + 1
            found = _duplicate(value, (*path, name))
            if found:
                return found
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate(item, (*path, f"[{index}]"))
            if found:
                return found
    return None


def error_line(exc: YAMLError, text: str, name: str) -> str:
    """One line for a YAML error in the file ``name`` holding ``text``."""
    if isinstance(exc, DuplicateKeyError):
        try:
            found = _duplicate(YAML(typ="safe").compose(text))
        except YAMLError:
            found = None
        if found:
            key, first, second = found
            return (f"{name}:{second}: duplicate key '{key}' (also at line {first}); DVC "
                    "refuses it too: keep one of the two lines")
    mark = exc.problem_mark if isinstance(exc, MarkedYAMLError) else None
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem: Any = exc
    if isinstance(exc, MarkedYAMLError) and exc.problem:
        problem = exc.problem
        if problem.startswith("but ") and exc.context:  # "expected a single document ..."
            problem = f"{exc.context}, {problem}"
    problem = " ".join(str(problem).split())
    return f"{where}: malformed YAML ({problem}); fix the syntax at that line"


def _cyclic(data: Any, inside: frozenset[int] = frozenset()) -> bool:
    """True if a list or mapping contains itself (``&a [*a]``)."""
    if not isinstance(data, (list, dict)):
        return False
    if id(data) in inside:
        return True
    inside = inside | {id(data)}
    return any(_cyclic(item, inside) for item in (data.values() if isinstance(data, dict)
                                                  else data))


def parse(text: str, name: str, error: type[NbpipelineError]) -> Any:
    """The data of YAML ``text`` (from file ``name``), read as DVC reads it.

    Malformed YAML, several documents, duplicate keys and an alias inside its own anchor
    raise ``error`` (one line).
    """
    try:
        data = YAML(typ="safe").load(text)
        cyclic = _cyclic(data)
    except YAMLError as exc:
        raise error(error_line(exc, text, name)) from exc
    except RecursionError as exc:  # a structure nested thousands of levels deep
        raise error(f"{name}: nested too deeply to read; flatten it") from exc
    if cyclic:
        raise error(f"{name}: an alias (*name) is used inside its own anchor (&name), so the "
                    "value contains itself; write the values out")
    return data


def read(path: Path, error: type[NbpipelineError], *, name: str | None = None) -> Any:
    """:func:`parse` the file at ``path`` (None when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{name or path.name}: cannot read it ({exc}); fix the file") from exc
    return parse(text, name or path.name, error)
