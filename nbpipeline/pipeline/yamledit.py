"""Edit YAML files (dvc.yaml, params.yaml) touching only the entries nbpipeline owns.

A full ruamel.yaml round trip re-indents sequences, re-wraps long strings and drops
trailing spaces all over a file. Here a file is parsed with ruamel.yaml (for the line of
every key), and only the text block of the one entry being written is replaced or
appended, rendered with the file's own indentation; every other byte stays as it was.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.util import load_yaml_guess_indent

from nbpipeline.errors import NbpipelineError
from nbpipeline.yamlio import YAMLError, editor, error_line


def _trailing(line: str, column: int) -> bool:
    """A blank line, or a comment at the key's indentation (it introduces the next key)."""
    stripped = line.lstrip()
    return not stripped or (stripped.startswith("#") and len(line) - len(stripped) <= column)


@dataclass
class YamlDoc:
    """A YAML file's text and its round-trip tree (``doc`` is a CommentedMap)."""

    path: Path
    text: str
    doc: CommentedMap
    sequence_indent: int
    offset: int

    @classmethod
    def load(cls, path: Path, error: type[NbpipelineError]) -> YamlDoc:
        """Parse ``path`` (missing = empty); malformed YAML raises ``error`` naming the line."""
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        try:
            doc = editor().load(text) if text.strip() else None
            _, indent, offset = load_yaml_guess_indent(text) if text.strip() else (None, 2, 0)
        except YAMLError as exc:
            raise error(error_line(exc, text, path.name)) from exc
        except IndexError:  # ruamel's indent guess fails on a "- " line with nothing after it
            indent, offset = 2, 0
        if doc is None:
            doc = CommentedMap()
        if not isinstance(doc, CommentedMap):
            raise error(f"{path.name}: the top level must be a mapping; fix the file")
        return cls(path, text, doc, indent or 2, offset or 0)

    def _render(self, key: str, value: Any, column: int) -> list[str]:
        buf = io.StringIO()
        block = CommentedMap()
        block[key] = value
        editor(self.sequence_indent, self.offset).dump(block, buf)
        lines = buf.getvalue().splitlines(keepends=True)
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
            lines.pop()  # comments after the block stay where they are in the file
        return [(" " * column + line) if line.strip() else line for line in lines]

    def _block(self, path: Sequence[str]) -> tuple[int, int, int]:
        """(first line, end line exclusive, key column) of the entry at ``path``."""
        lines = self.text.splitlines(keepends=True)
        parent: Any = self.doc
        end = len(lines)
        for depth, key in enumerate(path):
            keys = list(parent.keys())
            line, column = parent.lc.key(key)
            following = keys[keys.index(key) + 1:]
            if following:
                end = parent.lc.key(following[0])[0]
            if depth < len(path) - 1:
                parent = parent[key]
        while end > line + 1 and _trailing(lines[end - 1], column):
            end -= 1
        return line, end, column

    def set_entry(self, path: Sequence[str], value: Any) -> None:
        """Set the mapping entry at ``path`` (e.g. ``["stages", "train"]``) to ``value``.

        Replaces the entry's text block, or appends a new block at the end of its parent.
        """
        *parents, key = path
        parent: Any = self.doc
        for name in parents:
            parent = parent[name]
        lines = self.text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        flow = getattr(getattr(parent, "fa", None), "flow_style", lambda: False)()
        if flow or (parents and not parent) or (not parents and not self.doc):
            self._dump_all(path, value)
            return
        if key in parent:
            start, end, column = self._block(path)
            lines[start:end] = self._render(key, value, column)
        else:
            last = list(parent.keys())[-1]
            _, end, column = self._block([*parents, last])
            new = self._render(key, value, column)
            if self._blank_separated(parent, parents):
                new.insert(0, "\n")
            lines[end:end] = new
        self.text = "".join(lines)
        self.doc = editor().load(self.text)  # fresh line numbers for the next edit

    def _blank_separated(self, parent: Any, parents: Sequence[str]) -> bool:
        """True when the entries of ``parent`` are separated by blank lines."""
        keys = list(parent.keys())
        if len(keys) < 2:
            return not parents and bool(self.text.strip())
        line = parent.lc.key(keys[-1])[0]
        lines = self.text.splitlines()
        while line > 0 and lines[line - 1].lstrip().startswith("#"):
            line -= 1  # comments above an entry belong to it
        return line > 0 and not lines[line - 1].strip()

    def _dump_all(self, path: Sequence[str], value: Any) -> None:
        """Fallback for empty or flow-style parents: a full round-trip dump."""
        node: Any = self.doc
        for name in path[:-1]:
            if not isinstance(node.get(name), dict) or not node.get(name):
                node[name] = CommentedMap()
            node = node[name]
        node[path[-1]] = value
        buf = io.StringIO()
        editor(self.sequence_indent, self.offset).dump(self.doc, buf)
        self.text = buf.getvalue()

    def save(self) -> None:
        """Write the text atomically."""
        from nbpipeline.project import write_text_atomic

        write_text_atomic(self.path, self.text)
