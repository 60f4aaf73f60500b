"""dvc.yaml as nbpipeline sees it: which stages are notebook stages, and what they declare.

A *notebook stage* is a dvc.yaml stage whose ``cmd`` is ``nbp run <stage>`` (flags allowed).
Everything else in dvc.yaml (script stages, top-level ``vars``/``params``/``metrics``/
``plots``/``artifacts``) is read but never rewritten.

A model factory's ``foreach``/``matrix`` stage generates one stage per segment
(``train@north``), each running ``nbp run train@north``: notebooks/train.ipynb for the
segment ``north`` (docs/contracts.md). DVC itself resolves those (dvc.parsing: the same
names, items and ``${}`` values `dvc repro` uses); each generated stage whose command is
``nbp run <stage>@<segment>`` is a notebook stage with that segment.

``${...}`` in deps and outs is resolved the way DVC does for the common forms: names from
params.yaml (loaded by default) and from ``vars:`` (inline mappings and ``file[:keys]``
entries, YAML or JSON), dotted paths and ``[index]``. A reference that cannot be resolved is
kept as written and reported by ``nbp check``; it never raises.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbpipeline import yamlio
from nbpipeline.errors import NbpipelineError, StageError
from nbpipeline.params import load_params
from nbpipeline.project import Project

if TYPE_CHECKING:
    from nbpipeline.pipeline.yamledit import YamlDoc

PARAMS_FILE = "params.yaml"
OUT_KINDS = ("outs", "metrics", "plots")
_INTERPOLATION = re.compile(r"\$\{\s*([^}]*?)\s*\}")
_RUN_CMD = ("nbp", "run")
_MODULE_CMD = ("python", "-m", "nbpipeline", "run")
SEGMENT_JOIN = "@"  # DVC's own join of a generated stage's name (dvc.parsing.JOIN)
SEGMENT_FIELD = "{segment}"  # in params.yaml strings: the running segment
SEGMENT_PARAMETER = "segment"  # a notebook parameter of this name receives the segment


@dataclass(frozen=True)
class ParamRef:
    """One entry of a stage's ``params:`` list: ``key`` in ``file`` (None = whole file)."""

    file: str
    key: str | None

    def covers(self, file: str, key: str) -> bool:
        """True if a change of ``key`` in ``file`` invalidates the stage through this entry."""
        if self.file != file:
            return False
        return self.key is None or key == self.key or key.startswith(self.key + ".")


@dataclass(frozen=True)
class NotebookStage:
    """A notebook stage of dvc.yaml with its ``${}`` references resolved."""

    name: str  # the dvc.yaml stage name
    runs: str  # the nbp stage it runs (notebooks/<runs>.ipynb), normally == name
    cmd: str
    flags: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots: everything the stage writes
    params: tuple[ParamRef, ...]
    written: tuple[str, ...]  # deps and outs as written in dvc.yaml (before resolving)
    unresolved: tuple[str, ...] = field(default=())
    segment: str | None = None  # `nbp run <runs>@<segment>`: a model factory's segment
    generated: bool = False  # made by a foreach/matrix stage of dvc.yaml

    def report(self, suffix: str) -> str:
        """The report ``nbp run`` writes: reports/[<segment>/]<runs>.<suffix>."""
        return segment_path(f"reports/{self.runs}.{suffix}", self.segment)

    def declares_dep(self, path: str) -> bool:
        return covered(path, self.deps)

    def declares_out(self, path: str) -> bool:
        return covered(path, self.outs)


def normalize(path: str) -> str:
    """A relative, posix, normalized form of a dvc.yaml path for comparisons."""
    return posixpath.normpath(path.replace("\\", "/")).removeprefix("./")


def covered(path: str, declared: Iterable[str]) -> bool:
    """True if ``path`` is one of ``declared`` or inside a declared directory."""
    path = normalize(path)
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)


def split_stage(name: str) -> tuple[str, str | None]:
    """``("train", "north")`` for ``train@north``; ``(name, None)`` without a segment."""
    stage, at, segment = name.partition(SEGMENT_JOIN)
    return (stage, segment) if at and segment else (name, None)


def segment_path(path: str, segment: str | None) -> str:
    """``path`` in the segment's folder: reports/x.html -> reports/<segment>/x.html
    (the first folder of ``path`` gets the segment; nbpipeline.project.Project)."""
    if not segment:
        return path
    head, sep, rest = path.partition("/")
    return f"{head}/{segment}/{rest}" if sep else path


def with_segment(values: Mapping[str, Any], segment: str | None) -> dict[str, Any]:
    """``values`` with ``{segment}`` in strings (and lists of strings) replaced by the
    segment: how a factory's params.yaml names each segment's files
    (``model_dir: models/{segment}/candidate``)."""
    if not segment:
        return dict(values)

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(SEGMENT_FIELD, segment)
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return {name: fill(value) for name, value in values.items()}


def generates_stages(spec: Any) -> bool:
    """Whether a dvc.yaml stage entry is a ``foreach``/``matrix`` one (DVC generates its
    stages: ``train@north``)."""
    return isinstance(spec, Mapping) and ("foreach" in spec or "matrix" in spec)


def segment_templated(values: Any) -> list[str]:
    """The names in a params section (``values``) whose values name ``{segment}``: in a
    model factory, the files each segment has its own of; [] for anything but a mapping."""
    if not isinstance(values, Mapping):
        return []
    return [name for name, value in values.items() if SEGMENT_FIELD in str(value)]


def nbp_stage_name(cmd: Any) -> tuple[str, tuple[str, ...]] | None:
    """``(stage, flags)`` if ``cmd`` is ``nbp run <stage> [flags]``, else None."""
    if not isinstance(cmd, str):
        return None
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    for prefix in (_RUN_CMD, _MODULE_CMD):
        n = len(prefix)
        if tuple(words[:n]) == prefix and len(words) > n and not words[n].startswith("-"):
            return words[n], tuple(w for w in words[n + 1:])
    return None


def entry_path(entry: Any) -> str | None:
    """The path of a deps/outs/metrics/plots entry (``path`` or ``{path: {options}}``)."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and len(entry) == 1:
        key = next(iter(entry))
        return key if isinstance(key, str) else None
    return None


class _Unresolved(Exception):
    pass


def _lookup(context: Mapping[str, Any], expr: str) -> Any:
    node: Any = context
    for part in re.findall(r"[^.\[\]]+", expr):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise _Unresolved(expr)
    return node


def interpolate(text: str, context: Mapping[str, Any]) -> str:
    """``text`` with ``${name.path}`` replaced from ``context``; raises _Unresolved."""
    return _INTERPOLATION.sub(lambda m: str(_lookup(context, m.group(1))), text)


def resolve_path(text: str, context: Mapping[str, Any]) -> str | None:
    """The normalized path ``text`` names once ``${}`` is resolved; None if it cannot be."""
    try:
        return normalize(interpolate(text, context))
    except _Unresolved:
        return None


def _vars_file(root: Path, ref: str) -> dict[str, Any]:
    name, _, keys = ref.partition(":")
    path = root / name
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yamlio.parse(text, name, StageError)
    except (OSError, ValueError, StageError):  # an unresolved ${} is reported by nbp check
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in keys.split(",") if k in data} if keys else data


def _vars_context(root: Path, entries: Any, base: Mapping[str, Any]) -> dict[str, Any]:
    context = dict(base)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str):
            context.update(_vars_file(root, entry))
        elif isinstance(entry, Mapping):
            context.update(entry)
    return context


def _read_plain(path: Path) -> dict[str, Any]:
    """dvc.yaml as plain data."""
    data = yamlio.read(path, StageError)
    if data is not None and not isinstance(data, dict):
        raise StageError(f"{path.name}: the top level must be a mapping; fix the file")
    return data or {}


class DvcYaml:
    """dvc.yaml of a project and its notebook stages.

    ``editable=True`` parses it with ruamel.yaml's round-trip loader (``file``) so entries
    can be rewritten in place; reading alone (every `nbp run`) uses the safe loader
    (nbpipeline.yamlio: both read YAML 1.2, as DVC does).
    """

    def __init__(self, project: Project, *, editable: bool = False,
                 params: dict[str, Any] | None = None) -> None:
        self.project = project
        self.file: YamlDoc | None = None
        self._plain: dict[str, Any] = {}
        self._params = params  # params.yaml, read once (or as the caller already read it)
        self.generation_problems: dict[str, str] = {}  # foreach/matrix stage -> DVC's error
        if editable:
            from nbpipeline.pipeline.yamledit import YamlDoc

            self.file = YamlDoc.load(project.dvc_yaml, StageError)
        else:
            self._plain = _read_plain(project.dvc_yaml)
        stages = self.doc.get("stages")
        if stages is not None and not isinstance(stages, Mapping):
            raise StageError("dvc.yaml: `stages:` must be a mapping of stage name to stage; "
                             "fix the file")

    @property
    def doc(self) -> Any:
        return self.file.doc if self.file is not None else self._plain

    @property
    def raw_stages(self) -> Mapping[str, Any]:
        return self.doc.get("stages") or {}

    def context(self, stage: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Names available to ``${}``: params.yaml, then top-level and stage ``vars``."""
        if self._params is None:
            try:
                self._params = load_params(self.project.params_yaml)
            except NbpipelineError:  # a broken params.yaml is reported by its own check
                self._params = {}
        context = _vars_context(self.project.root, self.doc.get("vars"), self._params)
        if stage is not None:
            context = _vars_context(self.project.root, stage.get("vars"), context)
        return context

    def notebook_stages(self) -> dict[str, NotebookStage]:
        """Every stage whose cmd is ``nbp run <stage>``, resolved; others are skipped.

        ``foreach``/``matrix`` stages count through the stages they generate
        (``train@north``); one that DVC cannot resolve is left out and its message kept
        in :attr:`generation_problems` (``nbp check`` reports it).
        """
        found: dict[str, NotebookStage] = {}
        self.generation_problems = {}
        for name, spec in self.raw_stages.items():
            if not isinstance(spec, Mapping):
                continue
            if generates_stages(spec):
                found.update(self._generated(str(name), spec))
                continue
            parsed = nbp_stage_name(spec.get("cmd"))
            if parsed is None:
                continue
            found[str(name)] = self._stage(str(name), spec, *parsed)
        return found

    def _generated(self, group: str, spec: Mapping[str, Any]) -> dict[str, NotebookStage]:
        """The notebook stages a foreach/matrix stage generates, resolved by DVC."""
        body = spec.get("do") if "foreach" in spec else spec
        if not isinstance(body, Mapping) or nbp_stage_name(body.get("cmd")) is None:
            return {}
        try:
            resolved = generated_stages(self.project.root, self.doc, group)
        except StageError as exc:
            self.generation_problems[group] = str(exc)
            return {}
        written = tuple(p for kind in ("deps", *OUT_KINDS) for e in body.get(kind) or []
                        if (p := entry_path(e)) is not None)
        stages = {}
        for name, stage in resolved.items():
            parsed = nbp_stage_name(stage.get("cmd"))
            if parsed is None:
                continue
            one = self._stage(name, stage, *parsed, context={})
            stages[name] = replace(one, written=written, generated=True)
        return stages

    def _stage(self, name: str, spec: Mapping[str, Any], runs: str,
               flags: tuple[str, ...], context: dict[str, Any] | None = None) -> NotebookStage:
        for kind in ("deps", *OUT_KINDS, "params"):
            if spec.get(kind) is not None and not isinstance(spec[kind], list):
                raise StageError(
                    f"dvc.yaml: stage '{name}': `{kind}:` must be a list (one `- entry` per "
                    f"line), found {type(spec[kind]).__name__} {spec[kind]!r}; DVC refuses "
                    "it too"
                )
        context = self.context(spec) if context is None else context
        runs, segment = split_stage(runs)
        unresolved: list[str] = []

        def paths(kinds: Iterable[str]) -> tuple[list[str], list[str]]:
            resolved, written = [], []
            for kind in kinds:
                for entry in spec.get(kind) or []:
                    path = entry_path(entry)
                    if path is None:
                        continue
                    written.append(path)
                    target = resolve_path(path, context)
                    if target is None:
                        unresolved.append(path)
                    else:
                        resolved.append(target)
            return resolved, written

        deps, written_deps = paths(["deps"])
        outs, written_outs = paths(OUT_KINDS)
        return NotebookStage(
            name, runs, str(spec.get("cmd")), flags,
            tuple(deps), tuple(outs), tuple(param_refs(spec.get("params"))),
            tuple(written_deps + written_outs), tuple(unresolved), segment,
        )

    def stage_kind(self, name: str) -> str | None:
        """'notebook', 'generated' (foreach/matrix), 'other', or None if not defined."""
        spec = self.raw_stages.get(name, self.raw_stages.get(split_stage(name)[0]))
        if spec is None:
            return None
        if generates_stages(spec):
            return "generated"
        parsed = nbp_stage_name(spec.get("cmd") if isinstance(spec, Mapping) else None)
        return "notebook" if parsed and parsed[0] == name else "other"


def param_refs(entries: Any) -> list[ParamRef]:
    """The entries of a stage's ``params:`` list (str keys of params.yaml, or file maps)."""
    refs: list[ParamRef] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str):
            refs.append(ParamRef(PARAMS_FILE, entry))
        elif isinstance(entry, Mapping):
            for file, keys in entry.items():
                if not keys:
                    refs.append(ParamRef(str(file), None))
                elif isinstance(keys, list):
                    refs.extend(ParamRef(str(file), str(k)) for k in keys)
                else:  # DVC wants a list of keys; (re)name the file's keys, never its letters
                    refs.append(ParamRef(str(file), str(keys)))
    return refs


def generated_stages(root: Path, doc: Mapping[str, Any], group: str) -> dict[str, Any]:
    """The stages ``group`` (a foreach/matrix stage of dvc.yaml ``doc``) generates, by
    name, as DVC resolves them; a StageError with DVC's message if it cannot."""
    # dvc.repo and dvc.parsing import in ~0.3 s: only projects with generated stages pay it
    from dvc.parsing import DataResolver
    from dvc.repo import Repo

    try:
        with Repo(str(root), uninitialized=True) as repo:
            resolver = DataResolver(repo, str(root), json.loads(json.dumps(doc, default=str)))
            names = [n for n in resolver.get_keys() if split_stage(n)[0] == group]
            return {name: resolver.resolve_one(name)[name] for name in names}
    except Exception as exc:  # DvcException; malformed matrix/foreach also trip asserts
        message = " ".join(str(exc).split()) or (
            f"{type(exc).__name__} (foreach: takes a list or mapping, matrix: a mapping of lists)")
        raise StageError(f"dvc.yaml: stage '{group}': DVC cannot generate its stages: "
                         f"{message}; fix the foreach/matrix values or the ${{}} "
                         "references") from exc


def load_stage(project: Project, stage: str,
               params: dict[str, Any] | None = None) -> NotebookStage | None:
    """The dvc.yaml stage that runs ``nbp run <stage>`` (``train@north``: the generated
    stage of that name, or any stage running it), or None if there is none
    (``params``: params.yaml as the caller already read it)."""
    stages = DvcYaml(project, params=params).notebook_stages()
    runs, segment = split_stage(stage)
    if stage in stages and (stages[stage].runs, stages[stage].segment) == (runs, segment):
        return stages[stage]
    found = next((s for s in stages.values() if (s.runs, s.segment) == (runs, segment)), None)
    per_segment = [s.name for s in stages.values() if s.runs == runs and s.segment]
    if found is None and segment is None and per_segment:
        raise StageError(f"stage '{stage}' runs one segment at a time here (a model factory): "
                         f"`nbp run {per_segment[0]}`; dvc.yaml generates "
                         f"{', '.join(per_segment)}")
    if found is None and per_segment:
        raise StageError(f"stage '{stage}': dvc.yaml generates {', '.join(per_segment)}, not "
                         f"{stage}; add {segment} to the values its foreach/matrix stage "
                         "iterates (docs/contracts.md)")
    return found
