"""The compiled scorer: same probabilities as scikit-learn, or scikit-learn itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from candidates import CATEGORIES, NUMBERS, boosting_model, synthetic_rows

from nbpipeline.serve.scorer import Compiled, check_rows, compile_scorer, frame_scorer

NAMES = [*CATEGORIES, *NUMBERS]
KINDS = {**{n: "category" for n in CATEGORIES}, **{n: "number" for n in NUMBERS}}


def with_gaps(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Missing numbers and categories, and categories never seen in training."""
    rng = np.random.default_rng(seed)
    out = frame.copy().astype({n: object for n in CATEGORIES})
    for name in NAMES:
        out.loc[rng.uniform(size=len(out)) < 0.1, name] = None
    out.loc[rng.uniform(size=len(out)) < 0.05, "carrier"] = "ZZ"  # unseen
    return out


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if v is None or v != v else v) for k, v in r.items()}
        for r in frame[NAMES].to_dict("records")
    ]


@pytest.mark.parametrize("max_iter", [1, 40])
def test_compiled_trees_equal_scikit_learn_bit_for_bit(max_iter: int) -> None:
    train = with_gaps(synthetic_rows(600, seed=1), seed=2)  # the model learns missing values too
    model = boosting_model(train, max_iter=max_iter)
    scorer, how = compile_scorer(model, NAMES, KINDS, train.head(200))
    assert isinstance(scorer, Compiled), how
    assert how.startswith("compiled trees")

    rows = rows_of(with_gaps(synthetic_rows(3000, seed=3), seed=4))
    expected = frame_scorer(model, NAMES, KINDS)(rows)
    got = scorer(rows)
    assert got.shape == (3000,)
    assert np.array_equal(got, expected)  # same splits, same summation order
    assert np.array_equal(scorer(rows[:1]), expected[:1])  # one row: the serving case


def test_a_model_of_another_shape_keeps_scikit_learn() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    data = synthetic_rows(300)
    model = Pipeline([
        ("encode", ColumnTransformer([
            ("categories", OneHotEncoder(handle_unknown="ignore"), list(CATEGORIES)),
            ("numbers", StandardScaler(), NUMBERS),
        ])),
        ("model", LogisticRegression(max_iter=500)),
    ]).fit(data[NAMES], data["target"])
    scorer, how = compile_scorer(model, NAMES, KINDS, data)
    assert not isinstance(scorer, Compiled)
    assert how == "scikit-learn (the last step is a LogisticRegression)"
    rows = rows_of(data)
    assert np.array_equal(scorer(rows), model.predict_proba(data[NAMES])[:, 1])


def test_a_compiled_scorer_that_disagrees_with_the_model_is_not_used() -> None:
    """If the trees' internals ever mean something else (another scikit-learn), the
    check rows catch it and the model's own predict_proba serves."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    class Shifted(HistGradientBoostingClassifier):  # answers differ from its trees
        def predict_proba(self, X: Any) -> np.ndarray:
            proba = super().predict_proba(X)
            return np.column_stack([proba[:, 0] - 1e-6, proba[:, 1] + 1e-6])

    data = synthetic_rows(400)
    model = boosting_model(data)
    params = model.steps[1][1].get_params()
    model.steps[1] = ("model", Shifted(**params).fit(
        model.steps[0][1].transform(data[NAMES]), data["target"]
    ))
    scorer, how = compile_scorer(model, NAMES, KINDS, data)
    assert not isinstance(scorer, Compiled)
    assert how.startswith("scikit-learn (compiled scorer differs by 1e-06")


def test_check_rows_cover_missing_and_unseen_values_without_a_reference() -> None:
    rows = check_rows(None, NAMES, KINDS)
    assert {n: None for n in NAMES} in rows
    assert any(row["carrier"] not in (None, "", *CATEGORIES["carrier"]) for row in rows)
    assert all(set(row) == set(NAMES) for row in rows)
    model = boosting_model(synthetic_rows(300))
    scorer, how = compile_scorer(model, NAMES, KINDS)  # edge rows only: still checked
    assert isinstance(scorer, Compiled), how


_MODEL = None


def _shared_model() -> Any:
    global _MODEL
    if _MODEL is None:
        train = with_gaps(synthetic_rows(600, seed=1), seed=2)
        _MODEL = boosting_model(train, max_iter=30), train
    return _MODEL


def test_extreme_numbers_score_as_scikit_learn_does() -> None:
    """Regression (issue 16, defect 1): -257 and below indexed a 256-entry table: a 500."""
    from nbpipeline.serve.scorer import EXTREMES

    model, train = _shared_model()
    scorer, how = compile_scorer(model, NAMES, KINDS, train.head(50))
    assert isinstance(scorer, Compiled), how  # the start-up check now tries these too
    base = rows_of(train.head(1))[0]
    rows = [{**base, name: x} for name in NUMBERS for x in EXTREMES]
    expected = frame_scorer(model, NAMES, KINDS)(rows)
    assert np.array_equal(scorer(rows), expected)


def any_row(scorer: Compiled, names: list[str], kinds: dict[str, str],
            categories: dict[str, list[str]]) -> Any:
    """A hypothesis strategy of rows: any finite number (huge, tiny, negative, subnormal,
    +-0, on, just below and just above every split threshold of the trees), a missing value,
    a known, unseen or missing category."""
    from hypothesis import strategies as st

    forest = scorer.forest
    split = forest.threshold[(forest.left != np.arange(len(forest.left))) & ~forest.categorical]
    edges = sorted({float(x) for t in split for x in (t, np.nextafter(t, -np.inf),
                                                      np.nextafter(t, np.inf))})
    number = st.one_of(
        st.none(), st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([-0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e308, -1e308]),
        st.sampled_from(edges),
    )
    return st.fixed_dictionaries({
        name: number if kinds[name] == "number" else st.one_of(
            st.none(), st.sampled_from(categories[name]), st.text(max_size=3))
        for name in names
    })


def agrees_on_every_value(model: Any, names: list[str], kinds: dict[str, str],
                          categories: dict[str, list[str]], task: str, examples: int) -> None:
    """Property: any batch of rows holding any finite number (huge, tiny, negative,
    subnormal, +-0, on, just below and just above every split threshold of the trees),
    a missing value, a known, unseen or missing category, scores exactly as scikit-learn's
    ``predict_proba`` / ``predict`` does, alone and in a batch."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scorer, how = compile_scorer(model, names, kinds, task=task)
    assert isinstance(scorer, Compiled), how
    plain = frame_scorer(model, names, kinds, task)

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(any_row(scorer, names, kinds, categories), min_size=1, max_size=8))
    def agrees(rows: list[dict[str, Any]]) -> None:
        expected = plain(rows)
        assert np.array_equal(scorer(rows), expected)
        assert np.array_equal(plain(rows[:1]), expected[:1])  # alone: as in a batch

    agrees()


@pytest.mark.slow
def test_every_finite_number_and_any_category_scores_as_scikit_learn_does() -> None:
    model, _ = _shared_model()
    agrees_on_every_value(model, NAMES, KINDS, CATEGORIES, "classification", 100)


@pytest.mark.slow
def test_every_value_scores_as_scikit_learn_predicts_for_a_regressor() -> None:
    agrees_on_every_value(_regressor(), NAMES, KINDS, CATEGORIES, "regression", 40)


@pytest.mark.slow
def test_every_value_of_the_example_features_scores_as_scikit_learn_does(tmp_path: Any) -> None:
    """The example's own features (12 numbers, 3 categories) on a model of its shape fitted on
    real flights: -257 and below once answered 500 for 11 of its 12 numbers."""
    from candidates import flights_candidate

    model, meta = flights_candidate(tmp_path / "flights", rows=2000)
    features = meta["features"]
    kinds = {f["name"]: f["kind"] for f in features}
    categories = {f["name"]: list(f.get("values") or ["x"]) for f in features
                  if f["kind"] == "category"}
    agrees_on_every_value(model, list(kinds), kinds, categories, "classification", 40)


def _regressor() -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    train = synthetic_rows(400, seed=3).assign(target=lambda f: f["distance"] / 100 + f["hour"])
    model = boosting_model(train.assign(target=(train["target"] > 30).astype(int)))
    regressor = Pipeline([model.steps[0], ("model", HistGradientBoostingRegressor(
        max_iter=30, categorical_features=[0, 1], random_state=0))])
    return regressor.fit(train[NAMES], train["target"])


def test_a_regressor_compiles_to_its_predictions() -> None:
    regressor = _regressor()
    train = synthetic_rows(400, seed=3)
    scorer, how = compile_scorer(regressor, NAMES, KINDS, train.head(100), task="regression")
    assert isinstance(scorer, Compiled) and not scorer.logistic, how
    rows = rows_of(train.head(20))
    assert np.array_equal(scorer(rows), regressor.predict(train[NAMES].head(20)))
