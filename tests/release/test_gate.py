"""The validation gate as a pure function: every check, first model, champion, slices."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nbpipeline.errors import GateError
from nbpipeline.release.gate import DEFAULT_CRITERIA, decide

CRITERIA = dict(DEFAULT_CRITERIA, gate_min=0.6, gate_min_improvement=0.0,
                gate_max_slice_regression=0.05, gate_too_good=0.98, gate_max_jump=0.1,
                gate_min_slice_rows=100)


def metrics(valid: float, golden: float, slices: dict[str, dict[str, float]] | None = None,
            rows: int = 500) -> dict[str, Any]:
    out: dict[str, Any] = {"valid": {"roc_auc": valid, "log_loss": 1 - valid},
                           "golden": {"roc_auc": golden, "log_loss": 1 - golden}}
    if slices is not None:
        out["slices"] = {col: {k: {"roc_auc": v, "rows": rows} for k, v in values.items()}
                         for col, values in slices.items()}
    return out


def checks(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in decision["checks"]}


def test_first_model_uses_champion_less_criteria() -> None:
    decision = decide(metrics(0.72, 0.70), None, CRITERIA)
    assert decision["passed"] and decision["champion_version"] is None
    assert set(checks(decision)) == {
        "min_roc_auc.valid", "min_roc_auc.golden", "too_good_to_be_true"}
    assert decision["metrics"]["golden"]["roc_auc"] == 0.70
    json.dumps(decision)  # JSON-ready


def test_below_minimum_fails_with_value_and_threshold() -> None:
    decision = decide(metrics(0.65, 0.55), None, CRITERIA)
    failed = [c for c in decision["checks"] if not c["passed"]]
    assert not decision["passed"]
    assert failed == [{"name": "min_roc_auc.golden", "value": 0.55, "threshold": 0.6,
                       "passed": False, "detail": "candidate golden roc_auc must be at least 0.6"}]


def test_too_good_to_be_true_fails() -> None:
    decision = decide(metrics(0.99, 0.995), None, CRITERIA)
    assert not decision["passed"] and not checks(decision)["too_good_to_be_true"]["passed"]


def test_beats_champion_and_slices_hold() -> None:
    slices = {"carrier": {"AA": 0.70, "UA": 0.68}}
    champ = {"version": "v3", "sha256": "ab", **metrics(0.70, 0.70, slices)}
    cand = metrics(0.72, 0.72, {"carrier": {"AA": 0.69, "UA": 0.72}})
    decision = decide(cand, champ, CRITERIA)
    by_name = checks(decision)
    assert decision["passed"] and decision["champion_version"] == "v3"
    assert by_name["improvement_over_champion"]["value"] == pytest.approx(0.02)
    assert by_name["slice_regression.carrier"]["value"] == pytest.approx(0.01)
    assert "AA" in by_name["slice_regression.carrier"]["detail"]
    assert decision["champion_metrics"] == {"golden": champ["golden"]}


def test_worse_than_champion_fails() -> None:
    decision = decide(metrics(0.70, 0.69), {"version": "v1", **metrics(0.7, 0.70)}, CRITERIA)
    check = checks(decision)["improvement_over_champion"]
    assert not decision["passed"] and not check["passed"] and "v1" in check["detail"]


def test_big_jump_over_champion_is_suspicious() -> None:
    decision = decide(metrics(0.9, 0.9), {"version": "v1", **metrics(0.7, 0.7)}, CRITERIA)
    assert not decision["passed"] and not checks(decision)["max_jump_over_champion"]["passed"]


def test_slice_regression_fails_and_small_slices_are_ignored() -> None:
    champ = {"version": "v1", **metrics(0.7, 0.7, {"origin": {"EWR": 0.75, "JFK": 0.7}})}
    cand = metrics(0.72, 0.72, {"origin": {"EWR": 0.66, "JFK": 0.75}})
    decision = decide(cand, champ, CRITERIA)
    check = checks(decision)["slice_regression.origin"]
    assert not decision["passed"] and check["value"] == pytest.approx(0.09)
    assert "EWR" in check["detail"]
    small = decide(cand, champ, dict(CRITERIA, gate_min_slice_rows=10_000))
    assert small["passed"]
    assert "no origin slice" in checks(small)["slice_regression.origin"]["detail"]


def test_lower_is_better_metric() -> None:
    crit = dict(CRITERIA, gate_metric="log_loss", gate_min=0.5, gate_too_good=0.01)
    decision = decide(metrics(0.7, 0.7), {"version": "v1", **metrics(0.69, 0.69)}, crit)
    assert decision["passed"]
    assert checks(decision)["improvement_over_champion"]["value"] == pytest.approx(0.01)


def test_bad_criteria_and_missing_metrics_name_the_field() -> None:
    with pytest.raises(GateError, match="evaluate.gate_min must be a number"):
        decide(metrics(0.7, 0.7), None, {"gate_min": "high"})
    with pytest.raises(GateError, match="candidate metrics have no valid.f1"):
        decide(metrics(0.7, 0.7), None, {"gate_metric": "f1"})
