"""Test candidates: real fitted models, written by the library's own writer.

Every candidate directory a test needs (model.skops, metadata.json with the model
contract, reference.parquet) is made by :func:`write_candidate`, which calls
``nbpipeline.release.candidate.save_candidate`` as the train notebook does. The three
builders differ only in the data and model they fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nbpipeline.modeling import build_model, output_column, scores
from nbpipeline.release.candidate import ModelContract, contract_from_params, save_candidate

# The synthetic table of the serve tests.
CATEGORIES = {"carrier": ["AA", "B6", "DL", "UA"], "origin": ["EWR", "JFK", "LGA"]}
NUMBERS = ["distance", "hour", "temp"]
FEATURES = [
    *({"name": n, "kind": "category", "values": v} for n, v in CATEGORIES.items()),
    *({"name": n, "kind": "number"} for n in NUMBERS),
]


def write_candidate(directory: Path, model: Any, contract: ModelContract, frame: pd.DataFrame,
                    *, params: dict[str, Any], reference_rows: int = 5000) -> dict[str, Any]:
    """Save ``model`` (fitted on ``frame``) as a candidate in ``directory``; its metadata."""
    reference = frame.sample(min(reference_rows, len(frame)), random_state=0)
    reference = reference[contract.names].assign(**{
        contract.target: contract.outcome(reference[contract.target]),
        output_column(contract): scores(model, contract, reference),
    })
    return save_candidate(model, directory, contract=contract, reference=reference,
                          params=params, data_paths={}, search={})


def small_candidate(directory: Path, *, c: float = 1.0) -> Path:
    """A logistic regression on 4 numeric columns of scikit-learn's breast cancer data."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    frame = x.iloc[:, :4].assign(target=y)
    contract = contract_from_params(frame, features=dict.fromkeys(x.columns[:4], "number"),
                                    target="target", description="malignant")
    model = LogisticRegression(C=c, max_iter=500).fit(frame[contract.names], y)
    write_candidate(directory, model, contract, frame, params={"C": c}, reference_rows=50)
    return directory


def small_rows() -> pd.DataFrame:
    """A few rows :func:`small_candidate` models accept."""
    from sklearn.datasets import load_breast_cancer

    x, _ = load_breast_cancer(return_X_y=True, as_frame=True)
    return x.iloc[:5, :4]


def synthetic_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Rows with the synthetic feature schema and a learnable target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "carrier": rng.choice(CATEGORIES["carrier"], n),
        "origin": rng.choice(CATEGORIES["origin"], n),
        "distance": rng.uniform(100, 2500, n),
        "hour": rng.integers(5, 23, n).astype(float),
        "temp": rng.normal(55, 15, n),
    })
    logit = (frame["hour"] - 14) / 3 + (frame["carrier"] == "B6") - (frame["origin"] == "LGA")
    frame["target"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


SYNTHETIC = ModelContract.from_metadata({"features": FEATURES, "target": {"name": "target"}})


def boosting_model(data: pd.DataFrame, *, max_iter: int = 40, seed: int = 0) -> Any:
    """The model shape nbpipeline.modeling builds, fitted on ``data``."""
    model = build_model(SYNTHETIC, max_iter=max_iter, min_samples_leaf=5, seed=seed)
    return model.fit(data[SYNTHETIC.names], data["target"])


def synthetic_candidate(directory: Path, *, c: float = 1.0, seed: int = 0,
                        boosting: bool = False) -> Path:
    """OneHotEncoder + LogisticRegression (or, with ``boosting``, gradient boosting) fitted
    on synthetic rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    data = synthetic_rows(300, seed)
    if boosting:
        model = boosting_model(data, seed=seed)
    else:
        model = Pipeline([
            ("encode", ColumnTransformer([
                ("categories", OneHotEncoder(handle_unknown="ignore"), list(CATEGORIES)),
                ("numbers", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]),
                 NUMBERS),
            ])),
            ("model", LogisticRegression(C=c, max_iter=500)),
        ]).fit(data[SYNTHETIC.names], data["target"])
    write_candidate(directory, model, SYNTHETIC, data, params={"C": c})
    return directory


def flights_candidate(directory: Path, *, rows: int = 12000, seed: int = 0,
                      shuffled_labels: bool = False,
                      months: list[int] | None = None, max_iter: int = 40,
                      max_depth: int = 5) -> tuple[Any, dict[str, Any]]:
    """The example's model shape fitted on real January-August flights (or ``months``);
    (model, metadata).

    ``shuffled_labels`` fits on permuted outcomes: a real model that has learnt nothing
    (ROC AUC about 0.5), i.e. a bad release. The example's own size is ``max_iter=200,
    max_depth=8`` (params.yaml's train: the deeper of its searched depths).
    """
    from flights import TARGET, contract, month_rows

    train = month_rows(months or list(range(1, 9)), rows=rows, seed=seed)
    labels = train[TARGET]
    if shuffled_labels:
        labels = labels.sample(frac=1.0, random_state=seed).to_numpy()
    flights = contract(train)
    model = build_model(flights, max_iter=max_iter, min_samples_leaf=40, seed=seed,
                        max_depth=max_depth)
    model.fit(train[flights.names], labels)
    return model, write_candidate(directory, model, flights, train, params={"seed": seed})
