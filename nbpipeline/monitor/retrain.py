"""Closing the feedback loop: retrain on what the champion met in production.

When ``nbp monitor`` has requested a retrain (``retrain_requested``) and
``monitor.retrain_action`` is ``dvc``, :func:`retrain` builds the new training data from
what has happened since the champion went live: the prediction log's rows that the
champion answered, joined with their feedback (features, the outcome as the target and the
request time as the time column), written atomically to ``retrain.data_path``. It then
runs ``dvc exp run -S key=value ...`` with the params of params.yaml ``retrain.set``, whose
values may name the new data: ``{path}``, ``{rows}``, ``{start}`` and ``{end}`` (the
window's first and last request, ISO UTC). The experiment's evaluate stage gates the
candidate against the champion; a candidate that passes goes to canary at
``retrain.canary`` (0: left to `nbp promote`). With fewer than ``retrain.min_feedback``
labelled predictions of the champion, or exactly the rows the last retrain used, there is
nothing new to learn from, and nothing runs.

The project decides what the data stage does with the new rows (the example makes them the
golden window and moves its older windows into train and valid).

A model factory retrains one segment (``nbp monitor --segment north``): the rows come from
that segment's log and registry, ``{segment}`` in ``retrain.data_path`` names its file
(``retrain/north/feedback.parquet``), and ``dvc exp run`` runs only the stages dvc.yaml
generates for it (``data@north train@north evaluate@north``); the candidate that passes
goes to canary in that segment's registry. The ``retrain.set`` values reach params.yaml
with ``{segment}`` (and ``{path}``) unfilled, ``data.feedback_path:
retrain/{segment}/feedback.parquet``, which every segment's stages share: `nbp run`
fills it in for the segment it runs, so each segment reads its own file.
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nbpipeline.errors import MonitorError
from nbpipeline.params import load_params
from nbpipeline.pipeline.stages import (
    SEGMENT_FIELD,
    DvcYaml,
    generated_stages,
    generates_stages,
    split_stage,
)
from nbpipeline.predlog import table as predlog
from nbpipeline.project import Project, atomic_path
from nbpipeline.release.candidate import ModelContract
from nbpipeline.release.gate import GATE_FILE, read_gate
from nbpipeline.release.promote import promote_candidate
from nbpipeline.release.registry import Registry

SECTION = "retrain"  # params.yaml section read by `nbp monitor` only (not a stage's)
PLACEHOLDERS = ("path", "rows", "start", "end", "segment")
_GRAMMAR = re.compile(r"[{}\[\]()<>,=:'\"\\\s]")


@dataclass(frozen=True)
class RetrainSettings:
    """params.yaml ``retrain:``."""

    min_feedback: int = 1000
    data_path: str = "retrain/feedback.parquet"
    set: dict[str, Any] = field(default_factory=dict)
    canary: float = 0.0

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None) -> RetrainSettings:
        """Validate the section; MonitorError naming the field and the fix."""
        values = dict(values or {})
        unknown = sorted(set(values) - {"min_feedback", "data_path", "set", "canary"})
        if unknown:
            raise MonitorError(f"params.yaml retrain: unknown setting(s) {', '.join(unknown)}; "
                               "known: min_feedback, data_path, set, canary")
        settings = cls(**values)
        if not isinstance(settings.min_feedback, int) or settings.min_feedback < 1:
            raise MonitorError(f"params.yaml retrain.min_feedback: {settings.min_feedback!r} "
                               "must be a whole number >= 1")
        if not isinstance(settings.set, Mapping):
            raise MonitorError("params.yaml retrain.set must map params to values, e.g. "
                               "`data.feedback_path: '{path}'`")
        if not isinstance(settings.canary, int | float) or not 0 <= settings.canary < 1:
            raise MonitorError(f"params.yaml retrain.canary: {settings.canary!r} must be a "
                               "share of traffic in [0, 1) (0: promote by hand)")
        return settings

    def assignments(self, facts: Mapping[str, Any]) -> list[str]:
        """``key=value`` for ``dvc exp run -S``, placeholders filled in from ``facts``."""
        out = []
        for key, value in self.set.items():
            try:
                text = str(value).format(**facts)
            except (KeyError, IndexError, ValueError) as exc:
                raise MonitorError(
                    f"params.yaml retrain.set.{key}: {value!r} names an unknown placeholder "
                    f"({exc}); use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                ) from exc
            out.append(f"{key}={_override(text)}")
        return out

    def check_factory(self) -> None:
        """A model factory's values must keep the segments apart (MonitorError if not)."""
        if SEGMENT_FIELD not in self.data_path:
            raise MonitorError(
                f"params.yaml retrain.data_path: {self.data_path!r} would hold every segment's "
                "rows of this model factory in one file; name the segment in it, e.g. "
                "retrain/{segment}/feedback.parquet")
        if not any(f"{{{name}}}" in str(v) for v in self.set.values()
                   for name in ("path", "segment")):
            raise MonitorError(
                "params.yaml retrain.set: no value names {path} or {segment}, so the data "
                "stages of this model factory cannot find their segment's rows; e.g. "
                "`data.feedback_path: '{path}'`")


def _override(text: str) -> str:
    """``text`` as the value of ``dvc exp run -S key=value`` (Hydra's override grammar:
    quoted when it holds a character the grammar reads, such as the braces of
    ``{segment}``)."""
    if not _GRAMMAR.search(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class RetrainResult:
    """What the retrain did: ``started`` False means nothing new to learn from."""

    started: bool
    message: str
    rows: int = 0
    gate_passed: bool | None = None
    canary_version: str | None = None


def feedback_rows(log_path: Path, contract: ModelContract, version: str) -> pd.DataFrame:
    """The logged predictions of ``version`` that have feedback: the contract's features,
    the outcome as ``contract.target`` (for a positive label other than 1: that label, or
    ``not <label>``) and the request time as the time column (UTC), in time order.
    Fallback answers are left out (no model saw them)."""
    if not log_path.is_file():
        return pd.DataFrame(columns=[*contract.names, contract.target])
    conn = predlog.connect(log_path, readonly=True)
    try:
        present = set(predlog.feature_columns(conn))
        missing = [n for n in contract.names if predlog.feature_column(n) not in present]
        if missing:
            raise MonitorError(
                f"{log_path}: the prediction log has no column for feature(s) "
                f"{', '.join(missing)}; it was written for another model contract"
            )
        columns = ", ".join(f'p."{predlog.feature_column(n)}"' for n in contract.names)
        rows = conn.execute(
            f"SELECT p.ts, {columns}, f.outcome FROM predictions p "
            "JOIN feedback f ON f.request_id = p.request_id "
            "WHERE p.model_version = ? AND p.fallback = 0 ORDER BY p.ts", (version,)
        ).fetchall()
    finally:
        conn.close()
    frame = pd.DataFrame(rows, columns=["__ts", *contract.names, contract.target])
    if contract.task == "classification" and str(contract.positive_label) != "1":
        # the log keeps 1 for the positive label: give the target its own values back
        positive = contract.positive_label
        frame[contract.target] = [positive if o == 1 else f"not {positive}"
                                  for o in frame[contract.target]]
    for feature in contract.features:
        kind = "object" if feature.kind == "category" else "float64"
        frame[feature.name] = frame[feature.name].astype(kind)
    time_column = contract.time_column or "ts"
    frame.insert(0, time_column, pd.to_datetime(frame.pop("__ts"), unit="s", utc=True))
    return frame


def segment_stages(project: Project) -> list[str]:
    """The stages dvc.yaml generates for ``project.segment`` (``train@north``, ...), in
    dvc.yaml order; MonitorError if it generates none."""
    dvc_yaml = DvcYaml(project)
    groups = [str(group) for group, spec in dvc_yaml.raw_stages.items() if generates_stages(spec)]
    names = [name for group in groups for name in generated_stages(project.root, dvc_yaml.doc,
                                                                    group)
             if split_stage(name)[1] == project.segment]
    if not names:
        raise MonitorError(f"dvc.yaml generates no stage for segment {project.segment!r} "
                           f"(such as train@{project.segment}); add it to the values its "
                           "foreach/matrix stages iterate, or retrain another segment")
    return names


def retrain(project: Project, log_path: Path, *, dvc: str = "dvc",
            echo: Callable[[str], None] = print) -> RetrainResult:
    """Build the new data, run the experiment, report its gate (and canary); see module."""
    settings = RetrainSettings.from_params(load_params(project.params_yaml).get(SECTION))
    targets = []
    if project.segment:
        settings.check_factory()
        targets = segment_stages(project)
    data_path = settings.data_path.replace(SEGMENT_FIELD, project.segment or "")
    registry = Registry(project.registry)
    champion = registry.state().champion
    if champion is None:
        return RetrainResult(False, "retrain: nothing new to learn from: no champion in the "
                             "registry has served predictions; `nbp promote` a model first")
    frame = feedback_rows(log_path, registry.contract(champion.version), champion.version)
    if len(frame) < settings.min_feedback:
        return RetrainResult(False, f"retrain: nothing new to learn from: {len(frame):,} "
                             f"labelled predictions of champion {champion.version} (retrain."
                             f"min_feedback: {settings.min_feedback:,}); no experiment started",
                             rows=len(frame))
    target = project.root / data_path
    if target.is_file() and pd.read_parquet(target).equals(
            pd.read_parquet(io.BytesIO(frame.to_parquet(index=False)))):  # as it would read
        return RetrainResult(False, f"retrain: nothing new to learn from: the {len(frame):,} "
                             f"labelled predictions of champion {champion.version} are those "
                             f"the last retrain used ({data_path}); no experiment "
                             "started", rows=len(frame))
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    times = frame.iloc[:, 0]
    facts = {"path": settings.data_path, "rows": len(frame), "segment": SEGMENT_FIELD,
             "start": times.min().isoformat(), "end": times.max().isoformat()}
    assignments = settings.assignments(facts)
    command = [dvc, "exp", "run", *(arg for a in assignments for arg in ("-S", a)), *targets]
    echo(f"nbp: monitor: retraining on {len(frame):,} labelled predictions of champion "
         f"{champion.version} ({facts['start'][:16]} to {facts['end'][:16]}, written to "
         f"{data_path}): {' '.join(command)}")
    proc = subprocess.run(command, cwd=project.root, check=False)
    if proc.returncode != 0:
        raise MonitorError(f"retraining (`{' '.join(command)}` in {project.root}) failed with "
                           f"exit code {proc.returncode}; see its output above")
    gate = read_gate(project.metrics / GATE_FILE, project.rel(project.metrics / GATE_FILE))
    against = f"against champion {gate.champion_version or '(none)'}"
    if not gate.passed:
        failed = "; ".join(c.describe() for c in gate.failed)
        return RetrainResult(True, f"retrain: the experiment's candidate failed the gate "
                             f"{against}: {failed}; champion {champion.version} keeps serving",
                             len(frame), False)
    if not settings.canary:
        return RetrainResult(True, f"retrain: the experiment's candidate passed the gate "
                             f"{against}; `nbp promote --canary 0.1` to try it", len(frame), True)
    promoted = promote_candidate(project, canary=settings.canary, actor="nbp-monitor",
                                 reason=f"retrained on {len(frame):,} labelled predictions")
    return RetrainResult(True, f"retrain: the experiment's candidate passed the gate {against}"
                         f" and serves {settings.canary:.0%} of traffic as canary "
                         f"{promoted.model.version}", len(frame), True, promoted.model.version)
