"""Explanations: each feature's contribution to one row's raw score, from the compiled trees.

Method ``tree_path_dependent`` (Saabas): every node of every tree gets its expected value,
the mean of the leaf values below it weighted by the training rows that reached each
leaf (scikit-learn keeps that count per node). A row walks each tree exactly as the
scorer does (same category tables, same missing-value and unseen-category rules); at
each split the step from the node's expected value to the expected value of the child
the row goes to is credited to the split's feature. The ``base_value`` is the model's
baseline plus every tree's root expectation, so for every row, by telescoping,

    base_value + sum(contributions) == raw score (decision_function / the regressor's
    prediction), up to float rounding (~1e-13; tests hold it to 1e-9).

The raw score is log-odds for a classifier (``link: logit``, probability = expit(raw))
and the prediction itself for a regressor (``link: identity``). It is path-dependent
(the contributions depend on the split order), not an exact Shapley value; it is cheap:
one vectorised walk, ~0.5 ms a row for 200 trees (bench/serve.py ``--explain``).

Only models the server compiled (:class:`nbpipeline.serve.scorer.Compiled`: a
HistGradientBoosting classifier or regressor behind its encoders, checked against
scikit-learn at load) can be explained; any other shape gets :class:`NotExplainable`
(the server answers 409 with its message). The HTTP endpoints that answer with it are in
nbpipeline/serve/explain_routes.py; :func:`explain_frame` serves the evaluate notebook
(global importance and examples).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from nbpipeline.release.candidate import ModelContract
from nbpipeline.serve.scorer import CHUNK_ROWS, Compiled, Forest, Rows, compile_scorer

METHOD = "tree_path_dependent"
NEEDS_TREES = ("explanations need a tree model the server compiles (a HistGradientBoosting "
               "classifier or regressor behind its encoders)")


class NotExplainable(Exception):
    """The model is not of a shape this module explains (the message says why, one line)."""


@dataclass(frozen=True)
class Explanations:
    """Contributions of a batch of rows: ``contributions[i, j]`` is feature ``names[j]``'s
    part of row ``i``'s ``raw[i]``; ``base_value + contributions.sum(1) == raw``."""

    names: tuple[str, ...]
    base_value: float
    raw: np.ndarray  # (rows,) the model's raw score, bit for bit scikit-learn's
    contributions: np.ndarray  # (rows, features)
    link: str  # "logit" | "identity"

    def output(self) -> np.ndarray:
        """The model's output: P(positive) for a classifier, the prediction for a regressor."""
        return np.asarray(expit(self.raw) if self.link == "logit" else self.raw)

    def row(self, i: int, order: Sequence[str] = ()) -> dict[str, Any]:
        """Row ``i`` as the JSON the endpoints answer (without the decision fields); the
        contributions of features ``order`` first, in that order (0 for a feature no tree
        sees), then any other."""
        found = dict(zip(self.names, map(float, self.contributions[i]), strict=True))
        return {
            "method": METHOD, "link": self.link, "base_value": self.base_value,
            "raw_score": float(self.raw[i]),
            "contributions": {**{n: found.get(n, 0.0) for n in order}, **found},
        }


class TreeExplainer:
    """Path-dependent contributions from a compiled model's trees."""

    def __init__(self, compiled: Compiled) -> None:
        self.compiled = compiled
        forest = compiled.forest
        self.expected = _node_expectations(forest)
        roots = self.expected[forest.roots]
        self.base_value = float(forest.baseline + np.sum(roots))
        features = [col.feature for col in compiled.columns]
        self.names = tuple(dict.fromkeys(features))
        self.slot = np.array([self.names.index(f) for f in features], dtype=np.intp)
        self.link = "logit" if compiled.logistic else "identity"

    def explain(self, rows: Rows) -> Explanations:
        """Contributions of ``rows`` (dicts of raw feature values, as the scorer takes)."""
        X = self.compiled.matrix(rows)
        parts = [self._walk(X[i:i + CHUNK_ROWS]) for i in range(0, len(X), CHUNK_ROWS)]
        raw = np.concatenate([p[0] for p in parts]) if parts else np.empty(0)
        contributions = (np.concatenate([p[1] for p in parts]) if parts
                         else np.empty((0, len(self.names))))
        return Explanations(self.names, self.base_value, raw, contributions, self.link)

    def _walk(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        forest, width = self.compiled.forest, len(self.names)
        n = len(X)
        rows = np.arange(n)[:, None]
        offset = rows * width
        at = forest.start(n)
        found = np.zeros(n * width)
        for _ in range(forest.depth):
            child = forest.step(X, rows, at)  # a leaf stays put: its step adds 0
            delta = self.expected[child] - self.expected[at]
            slots = offset + self.slot[forest.feature[at]]
            found += np.bincount(slots.ravel(), weights=delta.ravel(), minlength=n * width)
            at = child
        return forest.total(at), found.reshape(n, width)


def _node_expectations(forest: Forest) -> np.ndarray:
    """Each node's expected value: its leaves' values weighted by their training rows."""
    here = np.arange(len(forest.value))
    leaf = forest.left == here
    left, right = forest.left, forest.right
    through_left, through_right = forest.count[left], forest.count[right]
    total = through_left + through_right
    total = np.where(total > 0, total, 1.0)  # no rows recorded: any mean keeps the sum exact
    expected = np.where(leaf, forest.value, 0.0)
    for _ in range(forest.depth):  # a node of height h is right after h rounds
        mean = (through_left * expected[left] + through_right * expected[right]) / total
        expected = np.where(leaf, forest.value, mean)
    return expected


_explainers: dict[int, tuple[Any, TreeExplainer]] = {}  # id(scorer) -> (scorer, explainer)
_lock = threading.Lock()


def explainer_for(scorer: Any, how: str = "") -> TreeExplainer:
    """The explainer of a served scorer (built once per scorer); NotExplainable if the
    scorer is not compiled trees (``how``: why not, as the holder reported it)."""
    if not isinstance(scorer, Compiled):
        reason = f"; this model scores with {how}" if how else ""
        raise NotExplainable(NEEDS_TREES + reason)
    with _lock:  # worker threads explain at once
        cached = _explainers.get(id(scorer))
        if cached is None or cached[0] is not scorer:
            if len(_explainers) >= 8:  # models come and go with the registry: keep a few
                _explainers.pop(next(iter(_explainers)))
            cached = (scorer, TreeExplainer(scorer))
            _explainers[id(scorer)] = cached
        return cached[1]


# ---------------------------------------------------------------------- evaluate notebook
@dataclass(frozen=True)
class FrameExplanations:
    """What the evaluate notebook shows: global importance and a few example rows."""

    importance: Any  # DataFrame: feature, mean_abs_contribution (largest first)
    examples: Any  # DataFrame: row, feature, value, contribution (top features of each row)
    base_value: float
    link: str
    method: str = METHOD


def explain_frame(model: Any, contract: ModelContract, frame: Any, *, rows: int = 2000,
                  examples: int = 3, top: int = 5, seed: int = 0) -> FrameExplanations:
    """Mean |contribution| per feature on a sample of ``frame`` (``rows`` rows) and the
    ``top`` contributions of ``examples`` rows, by the method the server answers with.
    NotExplainable if the model is not one the server can explain."""
    import pandas as pd

    names = contract.names
    kinds = {feature.name: feature.kind for feature in contract.features}
    sample = frame.sample(min(rows, len(frame)), random_state=seed) if len(frame) else frame
    scorer, how = compile_scorer(model, names, kinds, sample, contract.task)
    explainer = explainer_for(scorer, how)
    records = [{k: (None if v is None or v != v else v) for k, v in r.items()}
               for r in sample[list(names)].to_dict("records")]
    found = explainer.explain(records)
    mean_abs = np.abs(found.contributions).mean(axis=0) if len(records) else 0 * found.base_value
    importance = pd.DataFrame({"feature": found.names,
                               "mean_abs_contribution": np.round(mean_abs, 6)})
    importance = importance.sort_values("mean_abs_contribution", ascending=False)
    picked = []
    for i in range(min(examples, len(records))):
        order = np.argsort(-np.abs(found.contributions[i]))[:top]
        picked += [{"row": sample.index[i], "feature": found.names[j],  # the frame's label
                    "value": records[i][found.names[j]],
                    "contribution": round(float(found.contributions[i, j]), 6)} for j in order]
    return FrameExplanations(importance.reset_index(drop=True), pd.DataFrame(
        picked, columns=["row", "feature", "value", "contribution"]), found.base_value,
        found.link)


__all__ = ["METHOD", "Explanations", "FrameExplanations", "NotExplainable", "TreeExplainer",
           "explain_frame", "explainer_for"]
