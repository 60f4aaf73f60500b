"""Lineage: where a registered model came from.

:func:`capture` takes a snapshot of the project when a candidate is registered:
the dvc.lock entry of every stage (deps, params and outs with their hashes), whether
each file out still matches its hash in dvc.lock, the git revision, and the executed
notebooks (stored in the registry, so they survive later runs). :func:`trace` follows a
version back along that chain; :func:`render` prints it for ``nbp lineage``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from nbpipeline import yamlio
from nbpipeline.errors import RegistryError
from nbpipeline.pipeline.gitinfo import git_output
from nbpipeline.project import Project
from nbpipeline.record import flatten
from nbpipeline.release.registry import ModelVersion, Registry

__all__ = ["capture", "model_params", "read_lock", "render", "report_files", "trace"]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_lock(project: Project) -> dict[str, Any]:
    """The stages of dvc.lock ({} when the pipeline never ran)."""
    path = project.root / "dvc.lock"
    if not path.is_file():
        return {}
    lock = yamlio.read(path, RegistryError) or {}
    stages = lock.get("stages", {}) if isinstance(lock, dict) else None
    return stages if isinstance(stages, dict) else {}


def _entry(project: Project, entry: dict[str, Any]) -> dict[str, Any]:
    out = {"path": entry.get("path"), "md5": entry.get("md5"), "size": entry.get("size")}
    path = project.root / str(entry.get("path"))
    md5 = entry.get("md5")
    if md5 and not str(md5).endswith(".dir") and path.is_file():
        out["matches_workspace"] = _md5(path) == md5
    return out


def model_params(stage_params: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Every parameter behind a model, flat and comparable between models.

    ``stage_params`` is stage -> its params.yaml values as dvc.lock records them (a
    lineage's ``stages.<name>.params``): keys ``section.key`` (``train.max_iter``,
    ``common.seed``). The model metadata adds ``model.<name>`` (what train
    passed to the model) and ``search.best.<name>`` (what the search chose).
    """
    flat: dict[str, Any] = {}
    for params in stage_params.values():
        flat.update(flatten(params if isinstance(params, dict) else {}))
    flat.update(flatten(metadata.get("params") or {}, "model."))
    flat.update(flatten((metadata.get("search") or {}).get("best_params") or {},
                             "search.best."))
    return dict(sorted(flat.items()))


def report_files(project: Project) -> dict[str, Path]:
    """Executed notebooks (HTML) in reports/, by registry file name ('reports/<stage>.html')."""
    if not project.reports.is_dir():
        return {}
    return {f"reports/{p.name}": p for p in sorted(project.reports.glob("*.html"))
            if p.name != "index.html"}


def capture(project: Project) -> dict[str, Any]:
    """A snapshot of the pipeline that produced the current candidate."""
    stages = {}
    for name, stage in read_lock(project).items():
        stages[name] = {
            "cmd": stage.get("cmd"),
            "deps": [_entry(project, d) for d in stage.get("deps", [])],
            "params": stage.get("params", {}).get("params.yaml", {}),
            "outs": [_entry(project, o) for o in stage.get("outs", [])],
        }
    stale = sorted(
        f"{name}:{entry['path']}" for name, stage in stages.items()
        for entry in stage["outs"] + stage["deps"] if entry.get("matches_workspace") is False
    )
    return {
        "stages": stages,
        "stale": stale,
        "git": {
            "rev": git_output(project.root, "rev-parse", "HEAD"),
            "branch": git_output(project.root, "rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(
                git_output(project.root, "status", "--porcelain", "--untracked-files=no")
            ),
        },
    }


def trace(registry: Registry, version: str, project: Project | None = None) -> dict[str, Any]:
    """The chain version -> data -> params -> reports -> git revision, as a dict.

    RegistryError (one line) when the registered record does not have the shape
    registration wrote: the log was edited by hand.
    """
    mv: ModelVersion = registry.get(version)
    try:
        return _trace(registry, mv, project)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise registry.hand_edited(f"the lineage or metadata recorded for {version} is "
                                   f"malformed ({type(exc).__name__}: {exc})") from exc


def _trace(registry: Registry, mv: ModelVersion, project: Project | None) -> dict[str, Any]:
    lineage = mv.lineage or {}
    stages = lineage.get("stages", {})
    data = {split: dict(info) for split, info in mv.metadata.get("data", {}).items()}
    for stage in stages.values():
        for out in stage["outs"]:
            if str(out.get("path", "")).startswith("data/"):
                entry = data.setdefault(Path(out["path"]).stem, {"path": out["path"]})
                entry["dvc_md5"] = out["md5"]
    reports = {}
    for name, sha in mv.files.items():
        if name.startswith("reports/"):
            reports[name] = str(registry.object_path(sha, Path(name).suffix.lstrip(".")))
    git = dict(lineage.get("git") or {})
    git.setdefault("rev", mv.metadata.get("git_rev"))
    if project is not None and git.get("rev"):
        git["subject"] = git_output(project.root, "log", "-1", "--format=%s", str(git["rev"]))
    state = registry.state()
    return {
        "version": mv.version,
        "sha256": mv.sha256,
        "role": state.role(mv.version),
        "registered": {"when": mv.created, "by": mv.actor, "why": mv.reason,
                       "forced": mv.forced_reason},
        "gate": None if mv.gate is None else {
            "passed": mv.gate.get("passed"), "champion_version": mv.gate.get("champion_version"),
            "failed": [str(c["name"]) for c in mv.gate.get("checks", []) if not c.get("passed")],
        },
        "data": data,
        "params": {name: stage.get("params", {}) for name, stage in stages.items()}
        or {"train": mv.metadata.get("params", {})},
        "stages": {name: {"cmd": s.get("cmd"),
                          "outs": {o["path"]: o.get("md5") for o in s.get("outs", [])}}
                   for name, s in stages.items()},
        "stale": [str(path) for path in lineage.get("stale") or []],
        "experiment": lineage.get("experiment"),
        "reports": reports,
        "git": git,
    }


def _flat(params: Any, prefix: str = "") -> list[str]:
    if isinstance(params, dict):
        lines: list[str] = []
        for key, value in params.items():
            lines += _flat(value, f"{prefix}{key}.")
        return lines
    return [f"{prefix[:-1]} = {params}"]


def render(chain: dict[str, Any]) -> str:
    """Human-readable lineage for the terminal."""
    reg = chain["registered"]
    lines = [
        f"model {chain['version']}  ({chain['role'] or 'not serving'})",
        f"  sha256      {chain['sha256']}",
        f"  registered  {reg['when']} by {reg['by']}: {reg['why']}",
    ]
    if reg.get("forced"):
        lines.append(f"  FORCED      {reg['forced']}")
    gate = chain.get("gate")
    if gate is not None:
        verdict = "passed" if gate["passed"] else f"FAILED ({', '.join(gate['failed'])})"
        lines.append(f"  gate        {verdict} vs champion {gate['champion_version'] or '(none)'}")
    experiment = chain.get("experiment")
    if experiment:
        lines.append(f"  experiment  {experiment['name']} (commit {experiment.get('rev') or '?'})")
    lines.append("data")
    for split, info in chain["data"].items():
        rows = info.get("rows")
        ids = [f"sha256 {str(info['sha256'])[:12]}" if info.get("sha256") else "",
               f"dvc md5 {info['dvc_md5']}" if info.get("dvc_md5") else "",
               f"{rows:,} rows" if isinstance(rows, int) and rows else ""]
        lines.append(f"  {split:<11} {info.get('path', '?')}  {'  '.join(i for i in ids if i)}")
    lines.append("params (dvc.lock)")
    for stage, params in chain["params"].items():
        if isinstance(params, dict) and isinstance(params.get(stage), dict):
            params = {**params[stage], **{k: v for k, v in params.items() if k != stage}}
        for line in _flat(params):
            lines.append(f"  {stage:<11} {line}")
    if chain["stages"]:
        lines.append("stages (dvc.lock outs)")
        for stage, info in chain["stages"].items():
            lines.append(f"  {stage:<11} {info['cmd']}: " + ", ".join(map(str, info["outs"])))
    if chain["stale"]:
        lines.append("  WARNING: these files differed from dvc.lock when registered: "
                     + ", ".join(chain["stale"]))
    lines.append("reports (executed notebooks, stored in the registry)")
    for name, path in chain["reports"].items() or [("(none stored)", "")]:
        lines.append(f"  {name:<22} {path}")
    git = chain["git"]
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    subject = f"  {git['subject']}" if git.get("subject") else ""
    lines.append(f"git {git.get('rev') or 'unknown'}{dirty} on {git.get('branch') or '?'}{subject}")
    return "\n".join(lines)
