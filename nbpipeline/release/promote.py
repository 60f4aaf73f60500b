"""Release commands as library functions: promote the candidate, roll back, the off
switch, list models.

Each `nbp` release command is a thin call into one function here. ``promote_candidate``
obeys the gate decision that the evaluate stage wrote to ``metrics/gate.json``: it refuses
a failed gate (unless forced with a reason) and a gate that was computed against another
champion than the one serving now.

A model factory's segment (``Project.for_segment``: `nbp promote --segment north`) has
its own candidate (models/north/candidate), gate (metrics/north/gate.json) and registry
(registry/north/): promoting or rolling back one segment leaves the others as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbpipeline.errors import GateError, RegistryError
from nbpipeline.project import Project
from nbpipeline.record import file_sha256
from nbpipeline.release.gate import GATE_FILE, GateDecision, read_gate
from nbpipeline.release.lineage import capture, model_params, report_files
from nbpipeline.release.registry import (
    Event,
    ModelVersion,
    Registry,
    default_actor,
    segment_registries,
)

__all__ = [
    "Promotion", "models_report", "models_table", "promote_candidate", "promote_version",
    "registry_segments", "retire", "rollback", "switch_off", "switch_on",
]

REPRO_EVALUATE = "`dvc repro -f -s evaluate`"


def _repro_evaluate(project: Project) -> str:
    return (f"`dvc repro -f -s evaluate@{project.segment}`" if project.segment
            else REPRO_EVALUATE)


@dataclass(frozen=True)
class Promotion:
    """What `nbp promote` did."""

    model: ModelVersion
    event: Event
    role: str


def _check_gate_is_current(project: Project, reg: Registry, gate: GateDecision,
                           candidate: Path) -> list[str]:
    """Reasons the gate decision does not apply to this candidate and champion (empty: it does)."""
    problems = []
    state = reg.state()
    champion = state.champion.version if state.champion else None
    if gate.champion_version != champion:
        problems.append(
            "the gate compared the candidate with champion "
            f"{gate.champion_version or '(none)'} but the champion now is "
            f"{champion or '(none)'}; re-run {_repro_evaluate(project)} to compare with the "
            "current champion"
        )
    elif state.champion and gate.champion_sha256 not in (None, state.champion.sha256):
        problems.append(
            f"the gate's champion {champion} had another model file than the registry's; "
            f"re-run {_repro_evaluate(project)}"
        )
    expected = gate.candidate_sha256
    model = candidate / "model.skops"
    if expected and model.is_file() and file_sha256(model) != expected:
        problems.append(
            f"{project.rel(model)} is not the model the gate evaluated; re-run `dvc repro`"
        )
    return problems


def promote_candidate(
    project: Project,
    *,
    canary: float | None = None,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    experiment: dict[str, Any] | None = None,
) -> Promotion:
    """Register models/candidate if its gate passed, then make it champion or canary.

    ``experiment`` (name, rev: see :mod:`nbpipeline.release.experiment`) goes into the
    lineage when the candidate came from a DVC experiment.
    """
    actor = actor or default_actor()
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason TEXT saying why the gate is overridden")
    reg = Registry(project.registry)
    candidate = project.candidate
    _need_segment(project, reg)
    gate = read_gate(project.metrics / GATE_FILE, project.rel(project.metrics / GATE_FILE))
    problems = _check_gate_is_current(project, reg, gate, candidate)
    if problems and not force:
        raise GateError("; ".join(problems))
    if not gate.passed and not force:
        raise GateError(
            f"the candidate failed the gate in {project.rel(project.metrics / GATE_FILE)}: "
            f"{'; '.join(c.describe() for c in gate.failed)} (see "
            f"{project.rel(project.reports / 'evaluate.html')}); "
            "or override with --force --reason TEXT (recorded)"
        )
    overridden = problems + ([] if gate.passed else ["gate failed"])
    forced = f"{reason} (overrode: {'; '.join(overridden)})" if force and overridden else None
    why = reason or "gate passed"
    model = reg.register(
        candidate, dict(gate.raw or {}), force_reason=forced, actor=actor, reason=why,
        lineage={**capture(project), **({"experiment": experiment} if experiment else {})},
        extra_files=report_files(project),
    )
    event = reg.promote(model.version, canary_fraction=canary, reason=why, actor=actor)
    return Promotion(model, event, "champion" if canary is None else "canary")


def promote_version(project: Project, version: str, *, canary: float | None = None,
                    reason: str | None = None, actor: str | None = None) -> Promotion:
    """Make an already registered ``version`` champion (or canary) again; lifts the off switch.

    Refused for the current champion (to lift the off switch over it: :func:`switch_on`)
    and for a version whose stored model file is damaged. No gate is consulted: the
    version passed (or was forced through) its gate when it
    was registered, and that record stays with it.
    """
    reg = Registry(project.registry)
    model = reg.get(version)
    event = reg.promote(version, canary_fraction=canary, reason=reason or f"re-promoted {version}",
                        actor=actor or default_actor())
    return Promotion(model, event, "champion" if canary is None else "canary")


def rollback(project: Project, *, canary: bool = False, reason: str | None = None,
             actor: str | None = None) -> Event:
    """Undo the last champion promotion (or remove the canary)."""
    reg = Registry(project.registry)
    _need_segment(project, reg)
    if project.segment and not reg.events_path.is_file():
        known = ", ".join(registry_segments(project)) or "none yet"
        raise RegistryError(f"segment '{project.segment}' has no registry "
                            f"({project.rel(reg.path)}); segments with models: {known}")
    return reg.rollback(role="canary" if canary else "champion",
                        reason=reason or "manual rollback", actor=actor or default_actor())


def switch_off(project: Project, *, reason: str, actor: str | None = None) -> Event:
    """`nbp off`: the server answers its fallback decision until `nbp on` (or a promote)."""
    return Registry(project.registry).switch_off(reason=reason, actor=actor or default_actor())


def switch_on(project: Project, *, reason: str, actor: str | None = None) -> Event:
    """`nbp on`: lift the off switch; the champion (and canary) serve again."""
    return Registry(project.registry).switch_on(reason=reason, actor=actor or default_actor())


def retire(project: Project, *, reason: str, actor: str | None = None) -> Event:
    """Retire the champion and canary: the next `nbp promote` starts a new model line."""
    return Registry(project.registry).retire(reason=reason, actor=actor or default_actor())


def _dig(record: Any, *keys: str) -> Any:
    """``record[k1][k2]...``, or None where a level is missing or not a mapping (the
    registry's metadata was written by a program, but a log can be edited by hand)."""
    for key in keys:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def _metric_summary(metrics: dict[str, Any]) -> str:
    parts = []
    for part, names in (("golden", ("roc_auc", "average_precision", "r2", "rmse")),
                        ("valid", ("roc_auc", "r2"))):
        for name in names:
            value = _dig(metrics, part, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parts.append(f"{part} {name} {value:.4f}")
    return ", ".join(parts) or "-"


def _data_version(metadata: dict[str, Any]) -> str:
    data = _dig(metadata, "data") or {}
    return " ".join(f"{k}:{str(_dig(v, 'sha256') or '')[:8]}" for k, v in data.items()
                    ) if isinstance(data, dict) and data else "-"


def _all_params(mv: ModelVersion) -> dict[str, Any]:
    stages = _dig(mv.lineage, "stages")
    return model_params({n: _dig(s, "params") or {}
                         for n, s in (stages.items() if isinstance(stages, dict) else ())},
                        {"params": _dig(mv.metadata, "params"),
                         "search": {"best_params": _dig(mv.metadata, "search", "best_params")}})


def _params(mv: ModelVersion, older: ModelVersion | None, shown: int = 4) -> str:
    """Every parameter (params.yaml via dvc.lock, model metadata) against the version before."""
    new = _all_params(mv)
    if older is None:
        return " ".join(f"{k}={v}" for k, v in new.items() if not k.startswith("common.")) or "-"
    old = _all_params(older)
    differ = [k for k in sorted(set(new) | set(old)) if k not in new or k not in old
              or new[k] != old[k]]
    if not differ:
        return f"same as {older.version}"
    changes = [f"{k}={new.get(k, '-')} (was {old.get(k, '-')})" for k in differ[:shown]]
    more = f" +{len(differ) - shown} more" if len(differ) > shown else ""
    return f"vs {older.version}: " + "; ".join(changes) + more


def models_rows(reg: Registry) -> list[dict[str, str]]:
    """One row per version, newest first (the data behind `nbp models`)."""
    state = reg.state()
    rows = []
    versions = reg.versions()
    for index, mv in reversed(list(enumerate(versions))):
        role = state.role(mv.version) or ""
        if role == "canary":
            role = f"canary {state.canary_fraction:.0%}"
        if role == "champion" and state.switched_off:
            role = "champion (OFF)"
        gate = "forced" if mv.forced_reason else ("-" if mv.gate is None else
                                                   "passed" if mv.gate.get("passed") else "failed")
        rev = str(_dig(mv.lineage, "git", "rev") or mv.metadata.get("git_rev") or "-")
        rows.append({
            "version": mv.version, "role": role, "file": (reg.damage(mv.version) or "ok").upper(),
            "gate": gate,
            "metrics": _metric_summary(mv.metrics), "data": _data_version(mv.metadata),
            "params": _params(mv, versions[index - 1] if index else None), "git": rev[:8],
            "who/when/why": f"{mv.actor} {mv.created[:19].replace('T', ' ')} "
                            f"{mv.forced_reason or mv.reason}",
        })
    return rows


def models_table(reg: Registry) -> str:
    """`nbp models`: a plain-text table of every version."""
    rows = models_rows(reg)
    if not rows:
        return f"no models in the registry {reg.path} yet; run `dvc repro` then `nbp promote`"
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    lines = ["  ".join(h.upper().ljust(widths[h]) for h in headers).rstrip()]
    lines += ["  ".join(r[h].ljust(widths[h]) for h in headers).rstrip() for r in rows]
    state = reg.state()
    if state.switched_off:
        lines.append(f"serving is SWITCHED OFF: {state.off_reason} (`nbp on --reason TEXT` "
                     "lifts it)")
    damaged = [r["version"] for r in rows if r["file"] != "OK"]
    if damaged:
        lines.append(
            f"model file of {', '.join(damaged)} is missing or damaged (sha256 differs from "
            f"the registered one) under {reg.objects}: these versions cannot serve; restore "
            "the files from a backup"
        )
    return "\n".join(lines)


def _need_segment(project: Project, reg: Registry) -> None:
    """A model factory's release commands name a segment: refuse one that does not when the
    project has segments and no model of its own (one line listing them)."""
    if project.segment or (project.metrics / GATE_FILE).is_file() or reg.versions():
        return
    segments = registry_segments(project) or sorted(
        d.name for d in project.metrics.glob("*") if (d / GATE_FILE).is_file())
    if segments:
        raise RegistryError(f"this project is a model factory (segments: {', '.join(segments)}); "
                            "name one with --segment NAME")


def registry_segments(project: Project) -> list[str]:
    """The segments of a model factory that have a registry (registry/<segment>/)."""
    return segment_registries(project.for_segment(None).registry)


def models_report(project: Project) -> str:
    """`nbp models`: the table of the project's registry, or of ``project.segment``'s; in a
    model factory without a segment given, one table per segment."""
    segments = [] if project.segment else registry_segments(project)
    own = Registry(project.registry)
    if not segments:
        return models_table(own)
    parts = [models_table(own)] if own.versions() else []
    parts += [f"segment {segment}:\n" + models_table(Registry(project.for_segment(segment)
                                                                 .registry))
              for segment in segments]
    return "\n\n".join(parts)
