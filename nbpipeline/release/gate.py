"""The validation gate: may this candidate replace the champion? A pure function.

:func:`decide` compares the candidate's metrics (valid, golden, per-slice golden) with
the champion's on the same golden data and applies the criteria from params.yaml
``evaluate:`` (``gate_*`` keys). It returns a JSON-ready decision that the evaluate
stage writes to ``metrics/gate.json`` and that ``nbp promote`` obeys::

    {"passed": bool, "metric": "roc_auc", "candidate_sha256": ..., "champion_version": "v3" | None,
     "champion_sha256": ... | None, "checks": [{name, value, threshold, passed, detail}],
     "metrics": {"valid": {...}, "golden": {...}},        # the candidate's
     "champion_metrics": {"golden": {...}} | None, "criteria": {...}}

Metric inputs look like ``{"valid": {"roc_auc": .7}, "golden": {...},
"slices": {"region": {"north": {"roc_auc": .71, "rows": 900}, ...}, ...}}``; the
candidate's may add ``"leakage"``, what :func:`nbpipeline.modeling.leakage_evidence`
found on train and valid (``{split: {rows, model, chance, alone: {feature: value},
importance: {feature: value}}}``): then the gate suspects leakage with or without a
champion when one feature alone nearly matches the model, or carries most of its
permutation importance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbpipeline.errors import GateError
from nbpipeline.record import VERDICT_MIME

__all__ = ["DEFAULT_CRITERIA", "GATE_FILE", "LOWER_IS_BETTER", "GateCheck", "GateDecision",
           "decide", "read_gate", "show_verdict", "verdict_of"]

GATE_FILE = "gate.json"  # in the project's metrics/ (an out of evaluate, not a DVC metric)

DEFAULT_CRITERIA: dict[str, Any] = {
    "gate_metric": "roc_auc",
    "gate_min": 0.6,  # worst acceptable value on valid and golden
    "gate_min_improvement": 0.0,  # over the champion on golden (may be negative: tolerance)
    "gate_max_slice_regression": 0.05,  # per slice, vs the champion, on golden
    "gate_min_slice_rows": 200,  # smaller slices are too noisy to judge
    "gate_too_good": 0.98,  # a value beyond this smells of leakage
    "gate_max_jump": 0.1,  # so does a jump this large over the champion
    # leakage without a champion (train and valid, from modeling.leakage_evidence):
    "gate_leak_alone_share": 0.85,  # a feature alone reaching this share of the model's gain
    "gate_leak_importance_share": 0.8,  # the top feature's share of permutation importance
}
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae"})

Check = dict[str, Any]


def _criteria(criteria: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**DEFAULT_CRITERIA, **{k: v for k, v in criteria.items() if k.startswith("gate_")}}
    for key, value in merged.items():
        if key == "gate_metric":
            if not isinstance(value, str):
                raise GateError(
                    f"params.yaml evaluate.gate_metric must be a metric name, got {value!r}"
                )
        elif isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise GateError(
                f"params.yaml evaluate.{key} must be a number, got {value!r}; "
                f"e.g. {key}: {DEFAULT_CRITERIA.get(key, 0.0)}"
            )
    return merged


def _value(metrics: Mapping[str, Any], split: str, metric: str, who: str) -> float:
    try:
        value = metrics[split][metric]
    except (KeyError, TypeError) as exc:
        raise GateError(
            f"{who} metrics have no {split}.{metric}; the evaluate notebook must compute "
            f"'{metric}' on {split} (or set params.yaml evaluate.gate_metric to one it computes)"
        ) from exc
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        raise GateError(f"{who} {split}.{metric} is {value!r}, not a finite number")
    return float(value)


def _check(name: str, value: float | None, threshold: float | None, passed: bool,
           detail: str) -> Check:
    rounded = None if value is None else round(value, 4)
    return {"name": name, "value": rounded, "threshold": threshold, "passed": bool(passed),
            "detail": detail}


def _slice_checks(candidate: Mapping[str, Any], champion: Mapping[str, Any], metric: str,
                  sign: float, crit: Mapping[str, Any]) -> list[Check]:
    limit, min_rows = float(crit["gate_max_slice_regression"]), crit["gate_min_slice_rows"]
    checks = []
    cand_slices, champ_slices = candidate.get("slices") or {}, champion.get("slices") or {}
    for column in sorted(cand_slices):
        worst: tuple[float, str, float, float] | None = None
        judged = 0
        for key, cand in cand_slices[column].items():
            champ = champ_slices.get(column, {}).get(key)
            if champ is None or min(cand.get("rows", 0), champ.get("rows", 0)) < min_rows:
                continue
            c_val, h_val = cand.get(metric), champ.get(metric)
            if c_val is None or h_val is None or not math.isfinite(c_val + h_val):
                continue  # e.g. a slice with one class only
            judged += 1
            regression = sign * (h_val - c_val)
            if worst is None or regression > worst[0]:
                worst = (regression, str(key), h_val, c_val)
        if worst is None:
            checks.append(_check(f"slice_regression.{column}", None, limit, True,
                                 f"no {column} slice has >= {min_rows} rows for both models"))
            continue
        regression, key, h_val, c_val = worst
        checks.append(_check(
            f"slice_regression.{column}", regression, limit, regression <= limit,
            f"worst of {judged} {column} slices: {key} ({metric} {h_val:.4f} -> {c_val:.4f}); "
            f"allowed regression {limit}",
        ))
    return checks


def _leakage_checks(evidence: Mapping[str, Any], metric: str, crit: Mapping[str, Any]
                    ) -> list[Check]:
    """Per split: the best single feature against the model (as shares of the model's
    gain over chance) and the top feature's share of the permutation importance."""
    alone_limit = float(crit["gate_leak_alone_share"])
    importance_limit = float(crit["gate_leak_importance_share"])
    checks = []
    for split in sorted(evidence):
        found = evidence[split]
        model, chance = float(found["model"]), float(found["chance"])
        gain = model - chance  # negative for a lower-is-better metric: shares stay positive
        alone = found.get("alone") or {}
        name = f"leakage.feature_alone.{split}"
        if not alone or abs(gain) < 1e-9:
            checks.append(_check(name, None, alone_limit, True,
                                 f"not judged: the model's {split} {metric} {model:.4f} is no "
                                 f"better than chance {chance:.4f}" if alone else
                                 "not judged: no single-feature scores"))
        else:
            top = max(alone, key=lambda f: (alone[f] - chance) / gain)
            share = (alone[top] - chance) / gain
            figures = (f"feature {top} alone scores {split} {metric} {alone[top]:.4f}, "
                       f"{share:.0%} of the model's gain over chance (model {model:.4f}, "
                       f"chance {chance:.4f}; limit {alone_limit:.0%})")
            checks.append(_check(
                name, share, alone_limit, share <= alone_limit,
                f"suspected leakage: {figures}: is {top} known before the outcome?"
                if share > alone_limit else f"best single feature: {figures}"))
        positive = {f: max(float(v), 0.0) for f, v in (found.get("importance") or {}).items()}
        total = sum(positive.values())
        name = f"leakage.importance_share.{split}"
        if total <= 0:
            checks.append(_check(name, None, importance_limit, True,
                                 "not judged: no feature has a positive permutation importance"))
            continue
        ranked = sorted(positive, key=lambda f: positive[f], reverse=True)
        share = positive[ranked[0]] / total
        runner_up = (f"; next {ranked[1]} {positive[ranked[1]] / total:.0%}"
                     if len(ranked) > 1 else "")
        figures = (f"feature {ranked[0]} carries {share:.0%} of the {split} permutation "
                   f"importance{runner_up} (limit {importance_limit:.0%})")
        checks.append(_check(
            name, share, importance_limit, share <= importance_limit,
            f"suspected leakage: {figures}: is {ranked[0]} known before the outcome?"
            if share > importance_limit else f"top feature: {figures}"))
    return checks


def decide(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None,
           criteria: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the gate; ``champion`` is None for the first model (champion-less criteria).

    ``candidate`` may carry the model file's ``sha256`` (so `nbp promote` can check that
    the decision is about the model in models/candidate). ``champion`` carries
    ``version`` (and ``sha256``) besides its golden metrics and slices,
    computed on the same golden data as the candidate's; or, when its model contract
    differs from the candidate's, ``contract_differences`` instead (the gate fails).
    """
    crit = _criteria(criteria)
    metric = crit["gate_metric"]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    word = "at most" if sign < 0 else "at least"
    floor, too_good = float(crit["gate_min"]), float(crit["gate_too_good"])
    checks: list[Check] = []
    for split in ("valid", "golden"):
        value = _value(candidate, split, metric, "candidate")
        checks.append(_check(f"min_{metric}.{split}", value, floor, sign * (value - floor) >= 0,
                             f"candidate {split} {metric} must be {word} {floor}"))
    golden = _value(candidate, "golden", metric, "candidate")
    checks.append(_check(
        "too_good_to_be_true", golden, too_good, sign * (golden - too_good) < 0,
        f"golden {metric} beyond {too_good} suggests leakage (a feature that knows the label)",
    ))
    checks.extend(_leakage_checks(candidate.get("leakage") or {}, metric, crit))
    champion_metrics = None
    differences = list((champion or {}).get("contract_differences") or [])
    if champion is not None and differences:
        version = champion.get("version", "champion")
        checks.append(_check(
            "same_contract_as_champion", None, None, False,
            f"champion {version} has another model contract ({'; '.join(differences)}); "
            "it cannot be compared: to start a new model line, retire it with "
            "`nbp retire --reason TEXT` and re-run `dvc repro evaluate`",
        ))
    elif champion is not None:
        version = champion.get("version", "champion")
        best = _value(champion, "golden", metric, f"champion {version}")
        gain = sign * (golden - best)
        need, jump = float(crit["gate_min_improvement"]), float(crit["gate_max_jump"])
        checks.append(_check(
            "improvement_over_champion", gain, need, gain >= need,
            f"golden {metric}: candidate {golden:.4f} vs champion {version} {best:.4f}",
        ))
        checks.append(_check(
            "max_jump_over_champion", gain, jump, gain <= jump,
            f"a jump above {jump} over the champion is suspicious (leakage, changed labels)",
        ))
        checks.extend(_slice_checks(candidate, champion, metric, sign, crit))
        champion_metrics = {"golden": dict(champion["golden"])}
    return {
        "passed": all(c["passed"] for c in checks),
        "metric": metric,
        "candidate_sha256": candidate.get("sha256"),
        "champion_version": None if champion is None else champion.get("version"),
        "champion_sha256": None if champion is None else champion.get("sha256"),
        "checks": checks,
        "metrics": {split: dict(candidate[split]) for split in ("valid", "golden")},
        "champion_metrics": champion_metrics,
        "criteria": crit,
    }


@dataclass(frozen=True)
class GateCheck:
    """One check of a gate decision."""

    name: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""

    def describe(self) -> str:
        """``name (value vs threshold): detail``, as `nbp promote` repeats it."""
        figures = f" ({self.value} vs {self.threshold})" if self.value is not None else ""
        return f"{self.name}{figures}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class GateDecision:
    """metrics/gate.json, typed: what :func:`decide` returned for the candidate."""

    passed: bool
    checks: tuple[GateCheck, ...]
    metric: str | None = None
    candidate_sha256: str | None = None
    champion_version: str | None = None
    champion_sha256: str | None = None
    raw: Mapping[str, Any] | None = None  # the whole decision, as written and registered

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    @classmethod
    def parse(cls, raw: Any, where: str = GATE_FILE) -> GateDecision:
        """A decision from its JSON form; GateError naming ``where`` and the fix."""
        fix = "re-run `dvc repro -f -s evaluate`"
        if not isinstance(raw, Mapping) or "passed" not in raw or "checks" not in raw:
            raise GateError(f"{where}: no gate decision (passed, checks); {fix}")
        try:
            checks = tuple(GateCheck(str(c["name"]), bool(c["passed"]), c.get("value"),
                                     c.get("threshold"), str(c.get("detail") or ""))
                           for c in raw["checks"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise GateError(f"{where}: a check lacks its name or verdict ({exc}); {fix}") from exc
        return cls(bool(raw["passed"]), checks, raw.get("metric"), raw.get("candidate_sha256"),
                   raw.get("champion_version"), raw.get("champion_sha256"), raw)


def read_gate(path: Path, shown: str | None = None) -> GateDecision:
    """The gate decision in ``path`` (metrics/gate.json): the one reader of that file."""
    shown = shown or str(path)
    if not path.is_file():
        raise GateError(f"{shown} not found: the evaluate stage writes the gate decision; "
                        "run `dvc repro` first")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise GateError(f"{shown}: not valid JSON ({exc}); re-run `dvc repro -f -s evaluate`"
                        ) from exc
    return GateDecision.parse(raw, shown)


def verdict_of(decision: Mapping[str, Any]) -> dict[str, Any]:
    """The decision as a cell's verdict (nbpipeline.record.VERDICT_MIME): what the stage
    report's summary shows first."""
    parsed = GateDecision.parse(decision)
    champion = parsed.champion_version or "none (first model)"
    return {"title": "Gate", "passed": parsed.passed, "metric": parsed.metric,
            "headline": f"metric {parsed.metric}, against champion {champion}",
            "failing": [check.describe() for check in parsed.failed]}


def show_verdict(decision: Mapping[str, Any]) -> None:
    """Display the gate's verdict in a notebook (markdown, plus the machine-readable form
    that the stage report lifts into its summary)."""
    from IPython.display import display  # only inside a kernel

    verdict = verdict_of(decision)
    word = "PASSED" if verdict["passed"] else "FAILED"
    text = "\n".join([f"**Gate {word}**: {verdict['headline']}", "",
                      *(f"- failing: {line}" for line in verdict["failing"])])
    display({"text/markdown": text, "text/plain": text, VERDICT_MIME: verdict}, raw=True)
