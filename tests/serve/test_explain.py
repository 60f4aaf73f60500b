"""Explanations: contributions + base value == the model's raw score, in process and served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from candidates import CATEGORIES, NUMBERS, SYNTHETIC, synthetic_candidate, synthetic_rows
from serve_fixtures import make_project, register, running_server, sample_row, wait_for
from test_scorer import KINDS, NAMES, _regressor, _shared_model, any_row, rows_of, with_gaps

from nbpipeline.serve.explain import (
    METHOD,
    Explanations,
    NotExplainable,
    explain_frame,
    explainer_for,
)
from nbpipeline.serve.scorer import EXTREMES, Compiled, compile_scorer, frame_of

SUM_TOLERANCE = 1e-9


def raw_scores(model: Any, rows: list[dict[str, Any]], task: str) -> np.ndarray:
    """scikit-learn's own raw score: decision_function (log-odds) or the regressor's predict."""
    frame = frame_of(rows, NAMES, KINDS)
    return np.asarray(model.decision_function(frame) if task == "classification"
                      else model.predict(frame), dtype=np.float64)


def extreme_rows(base: dict[str, Any]) -> list[dict[str, Any]]:
    """Each number at every extreme, each feature missing, unseen categories, all missing."""
    rows = [{**base, name: x} for name in NUMBERS for x in EXTREMES]
    rows += [{**base, name: None} for name in NAMES]
    rows += [{**base, **dict.fromkeys(CATEGORIES, "never-seen")}, dict.fromkeys(NAMES)]
    return rows


def assert_sums(model: Any, rows: list[dict[str, Any]], task: str,
                scorer: Compiled | None = None) -> Any:
    if scorer is None:
        compiled, how = compile_scorer(model, NAMES, KINDS, task=task)
        assert isinstance(compiled, Compiled), how
        scorer = compiled
    found = explainer_for(scorer).explain(rows)
    expected = raw_scores(model, rows, task)
    assert np.array_equal(found.raw, expected)  # the raw score itself: bit for bit
    total = found.base_value + found.contributions.sum(axis=1)
    assert np.max(np.abs(total - expected)) <= SUM_TOLERANCE
    return found


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_contributions_sum_to_the_raw_score_on_golden_and_extreme_rows(task: str) -> None:
    model = _shared_model()[0] if task == "classification" else _regressor()
    golden = rows_of(with_gaps(synthetic_rows(400, seed=7), seed=8))  # missing + unseen
    found = assert_sums(model, golden + extreme_rows(golden[0]), task)
    assert found.names == tuple(NAMES)
    assert found.link == ("logit" if task == "classification" else "identity")
    used = np.abs(found.contributions).mean(axis=0)
    assert used[NAMES.index("hour")] > 0  # the feature the target depends on most
    if task == "classification":
        assert np.allclose(found.output(), model.predict_proba(frame_of(golden + extreme_rows(
            golden[0]), NAMES, KINDS))[:, 1], rtol=0, atol=1e-15)


@pytest.mark.slow
def test_contributions_sum_to_the_raw_score_for_any_row() -> None:
    """Property: any finite number, split edges, missing, unseen or known categories."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    model, _ = _shared_model()
    scorer, _how = compile_scorer(model, NAMES, KINDS)
    assert isinstance(scorer, Compiled)

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(any_row(scorer, NAMES, KINDS, CATEGORIES), min_size=1, max_size=6))
    def sums(rows: list[dict[str, Any]]) -> None:
        assert_sums(model, rows, "classification", scorer)

    sums()


def test_a_feature_the_trees_never_split_on_contributes_nothing() -> None:
    from candidates import boosting_model

    data = synthetic_rows(300).assign(temp=1.0)  # constant: no tree can split on it
    model = boosting_model(data, max_iter=10)
    found = assert_sums(model, rows_of(synthetic_rows(50, seed=2)), "classification")
    assert np.all(found.contributions[:, NAMES.index("temp")] == 0.0)


def test_an_answer_lists_contributions_in_the_schema_order_with_unused_features_at_0() -> None:
    found = Explanations(("b", "a"), 0.5, np.array([1.0]), np.array([[0.25, 0.25]]), "logit")
    answer = found.row(0, ["a", "b", "c"])
    assert answer["contributions"] == {"a": 0.25, "b": 0.25, "c": 0.0}
    assert list(answer["contributions"]) == ["a", "b", "c"]
    assert answer["method"] == METHOD and answer["raw_score"] == 1.0


def test_a_model_of_another_shape_is_not_explained_and_says_why() -> None:
    scorer, how = compile_scorer(_logistic(), NAMES, KINDS)
    with pytest.raises(NotExplainable, match="explanations need a tree model.*LogisticRegression"):
        explainer_for(scorer, how)


def _logistic() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    data = synthetic_rows(200)
    return Pipeline([
        ("encode", ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"),
                                       list(CATEGORIES)), ("n", StandardScaler(), NUMBERS)])),
        ("model", LogisticRegression(max_iter=300)),
    ]).fit(data[NAMES], data["target"])


def test_explain_frame_gives_global_importance_and_example_rows() -> None:
    model, _ = _shared_model()
    golden = with_gaps(synthetic_rows(300, seed=9), seed=10)
    found = explain_frame(model, SYNTHETIC, golden, rows=200, examples=3, top=2)
    assert list(found.importance["feature"])[0] == "hour"
    assert set(found.importance["feature"]) == set(NAMES)
    assert list(found.examples.columns) == ["row", "feature", "value", "contribution"]
    assert found.examples.groupby("row").size().tolist() == [2, 2, 2]
    with pytest.raises(NotExplainable):
        explain_frame(_logistic(), SYNTHETIC, golden)


# ---------------------------------------------------------------- served
@pytest.mark.slow
def test_explain_and_a_logged_decisions_explanation_through_a_real_server(
    tmp_path: Path
) -> None:
    from nbpipeline.release.registry import Registry
    from nbpipeline.serve.security import Access

    project = make_project(tmp_path / "proj")
    registry = Registry(project.registry)
    register(registry, synthetic_candidate(tmp_path / "trees", boosting=True))
    model, _ = registry.load("v1")
    rows = [sample_row(), sample_row(carrier="never-seen", temp=None),
            sample_row(hour=-1e9, distance=1e308)]
    expected = raw_scores(model, rows, "classification")
    token = {"authorization": "Bearer s3cret"}  # logged features are read back: guarded
    with running_server(project, access=Access(token="s3cret")) as url:
        one = httpx.post(f"{url}/explain", json=rows[0], timeout=10).json()
        many = httpx.post(f"{url}/explain", json={"rows": rows}, timeout=10).json()
        predicted = httpx.post(f"{url}/predict", json=rows[1], timeout=10).json()
        decision = f"{url}/decisions/{predicted['request_id']}/explanation"
        # asked at once: the lookup waits for the spooled row to reach the log
        logged = httpx.get(decision, headers=token, timeout=10).json()
        no_token = httpx.get(decision, timeout=10)
        unknown = httpx.get(f"{url}/decisions/nope-123/explanation", headers=token, timeout=10)
        bad = httpx.post(f"{url}/explain", json=sample_row(hour="x"), timeout=10)
        fuzz(url, model, token)
        register(registry, synthetic_candidate(tmp_path / "linear", c=1.0), champion=True)
        wait_for(lambda: httpx.get(f"{url}/health", timeout=5).json()["champion"] == "v2")
        refused = httpx.post(f"{url}/explain", json=rows[0], timeout=10)
        old = httpx.get(decision, headers=token, timeout=10)
        registry.switch_off(reason="incident", actor="test")
        wait_for(lambda: httpx.get(f"{url}/health", timeout=5).json()["switched_off"])
        off = httpx.post(f"{url}/explain", json=rows[0], timeout=10)
        fallback = httpx.post(f"{url}/predict", json=rows[0], timeout=10).json()
        unexplained = httpx.get(f"{url}/decisions/{fallback['request_id']}/explanation",
                                headers=token, timeout=10)
    assert one["method"] == METHOD and one["link"] == "logit" and one["model_version"] == "v1"
    answers = [one, *many["explanations"], logged]
    for answer, raw in zip(answers, [expected[0], *expected, expected[1]], strict=True):
        assert answer["raw_score"] == float(raw)
        assert abs(answer["base_value"] + sum(answer["contributions"].values()) - raw) <= 1e-9
        assert list(answer["contributions"]) == NAMES
    assert logged["probability"] == predicted["probability"] == logged["logged"]["probability"]
    assert logged["prediction"] == predicted["prediction"]
    assert logged["features"]["temp"] is None and logged["role"] == "champion"
    assert no_token.status_code == 401 and "token" in no_token.json()["detail"]
    assert unknown.status_code == 404 and "'nope-123'" in unknown.json()["detail"]
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "hour"]
    assert refused.status_code == 409
    assert refused.json()["detail"].startswith("explanations need a tree model")
    assert old.status_code == 200 and old.json()["model_version"] == "v1"  # retired: loaded
    assert old.json()["contributions"] == logged["contributions"]
    assert off.status_code == 409 and "switched off" in off.json()["detail"]
    assert unexplained.status_code == 409 and "fallback answer" in unexplained.json()["detail"]


def fuzz(url: str, model: Any, token: dict[str, str]) -> None:
    """Any valid row explains (summing to its raw score); any id gets a 4xx, never a 5xx."""
    from urllib.parse import quote

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scorer, _how = compile_scorer(model, NAMES, KINDS)
    assert isinstance(scorer, Compiled)

    rows = any_row(scorer, NAMES, KINDS, CATEGORIES).map(  # the schema: a category is text
        lambda row: {k: "" if v is None and k in CATEGORIES else v for k, v in row.items()})

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(row=rows, request_id=st.text(max_size=80))
    def explained(row: dict[str, Any], request_id: str) -> None:
        response = http.post("/explain", json=row)
        assert response.status_code == 200, response.text
        answer = response.json()
        raw = raw_scores(model, [row], "classification")[0]
        assert answer["raw_score"] == float(raw)
        assert abs(answer["base_value"] + sum(answer["contributions"].values()) - raw) <= 1e-9
        lookup = http.get(f"/decisions/{quote(request_id, safe='')}/explanation", headers=token)
        assert 400 <= lookup.status_code < 500, lookup.text

    with httpx.Client(base_url=url, timeout=10) as http:
        explained()
