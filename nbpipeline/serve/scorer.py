"""A fast scorer for the model shape nbpipeline.modeling builds, whatever its columns:
encoders as dict lookups, trees in numpy.

A fitted ``Pipeline([ColumnTransformer(OrdinalEncoder | passthrough), HistGradientBoosting
Classifier])`` spends ~6 ms on one row: the encoders' pandas/validation work and one
Python-level call per tree (200 trees). The work itself is a few hundred comparisons.
:func:`compile_scorer` turns such a model into

- one lookup table per category feature (raw string -> the code the trees see, built by
  calling the model's own encoders on every known value, ``None`` and an unseen value), and
- every tree's nodes in flat arrays, walked for all rows and all trees at once, one
  numpy step per tree level; leaf values are summed in the model's own order.

so one row costs ~0.2 ms. It relies on scikit-learn internals (``_predictors``,
``_preprocessor``), so the result is never trusted blindly: :func:`compile_scorer` scores
check rows (the model's reference sample plus rows of missing and unseen values) both
ways and returns no compiled scorer unless they agree to 1e-9. Any other model shape,
a multi-class model, or a scikit-learn whose internals changed simply gets the plain
``predict_proba`` scorer (:func:`sklearn_scorer`), with the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit  # the logistic function scikit-learn's loss uses

Rows = Sequence[Mapping[str, Any]]
Scorer = Callable[[Rows], np.ndarray]  # rows -> P(target == 1), shape (n,)
TOLERANCE = 1e-9
CHUNK_ROWS = 512
_UNSEEN = "\x00nbpipeline-unseen-category\x00"
# Numbers every scorer must take like scikit-learn does (finite, far beyond any bin edge).
EXTREMES = (-1e308, -1e9, -1000.0, -257.0, -1.0, -0.0, 0.0, 5e-324, 1e9, 1e308)


class NotCompilable(Exception):
    """The model is not of a shape this module can compile (the message says why)."""


@dataclass(frozen=True)
class Column:
    """One column on its way to the trees: a feature and how its raw value becomes a number.

    ``codes`` is None for a number (used as float) and for a category not encoded yet;
    otherwise it maps raw values (``None`` = missing) to codes, ``default`` for the rest.
    """

    feature: str
    kind: str  # "number" | "category"
    codes: dict[Any, float] | None = None
    default: float = np.nan

    def value(self, raw: Any) -> float:
        if self.codes is None:
            return np.nan if raw is None else float(raw)
        if raw is None or raw != raw:  # None or NaN: missing
            return self.codes.get(None, self.default)
        return self.codes.get(raw, self.default)


def frame_of(rows: Rows, names: Sequence[str], kinds: Mapping[str, str]) -> Any:
    """``rows`` as the DataFrame the model was trained on (numbers float64, categories text)."""
    import pandas as pd

    # The dtype pandas gives a column of strings, as in the table the model was fitted on
    # (``str`` in pandas 3, ``object`` before). Fixed, so a row's answer does not depend on
    # the rows scored with it: pandas 3 infers ``str`` for [None, "AA"] (None becomes NaN)
    # but keeps ``object`` for [None] alone, and the encoder took the two for different
    # categories: a missing category scored 0.20 alone and 0.28 in a batch.
    text = pd.DataFrame({"c": ["x"]}).dtypes.iloc[0]
    columns: dict[str, Any] = {}
    for name in names:
        values = [row[name] for row in rows]
        if kinds[name] == "number":
            columns[name] = np.array(values, dtype=np.float64)
        else:
            columns[name] = pd.Series(values, dtype=text)
    return pd.DataFrame(columns, columns=list(names))


def frame_scorer(model: Any, names: Sequence[str], kinds: Mapping[str, str],
                 task: str = "classification") -> Scorer:
    """Score rows on the DataFrame the model was trained on: ``predict_proba``'s positive
    column (classification) or ``predict`` (regression)."""

    def score(rows: Rows) -> np.ndarray:
        frame = frame_of(rows, names, kinds)
        if task == "regression":
            return np.asarray(model.predict(frame), dtype=np.float64)
        return np.asarray(model.predict_proba(frame), dtype=np.float64)[:, 1]

    return score


# ------------------------------------------------------------------ encoders
def _selected(spec: Any, inputs: Sequence[Column]) -> list[int]:
    """Indices of ``inputs`` a ColumnTransformer column spec selects."""
    if isinstance(spec, np.ndarray) and spec.dtype == bool:
        return [int(i) for i in np.flatnonzero(spec)]
    items = list(spec) if isinstance(spec, list | tuple | np.ndarray) else [spec]
    if all(isinstance(item, str) for item in items):
        names = [col.feature for col in inputs]
        if any(item not in names for item in items):
            raise NotCompilable(f"column spec {spec!r} names unknown columns")
        return [names.index(item) for item in items]
    if all(isinstance(item, int | np.integer) and not isinstance(item, bool) for item in items):
        return [int(item) for item in items]
    raise NotCompilable(f"column spec {spec!r} is not names, indices or a mask")


def _is_identity(transformer: Any) -> bool:
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.utils import check_array

    if transformer == "passthrough":
        return True
    if not isinstance(transformer, FunctionTransformer) or transformer.inverse_func is not None:
        return False
    func = transformer.func
    return func is None or (isinstance(func, functools.partial) and func.func is check_array)


def _encoded(encoder: Any, inputs: list[Column]) -> list[Column]:
    """Columns after a fitted OrdinalEncoder, its codes computed by the encoder itself.

    The encoder transforms a table holding each column's possible values: its known
    categories (raw strings, or the codes an upstream encoder gives), a missing value and
    an unseen one. Its answers become the columns' lookup tables.
    """
    if encoder.handle_unknown != "use_encoded_value":
        raise NotCompilable("an OrdinalEncoder that raises on unseen categories")
    if any(col.kind != "category" for col in inputs):
        raise NotCompilable("an OrdinalEncoder on a numeric feature")
    raw = [col.codes is None for col in inputs]
    if any(raw) and not all(raw):
        raise NotCompilable("an OrdinalEncoder on both raw and encoded categories")
    keys: list[list[Any]]
    missing: Any
    unseen: Any
    if all(raw):
        keys = [[c for c in cats.tolist() if c is not None and c == c]
                for cats in encoder.categories_]
        missing, unseen, dtype = None, _UNSEEN, object
    else:
        keys = [sorted({c for c in (*(col.codes or {}).values(), col.default) if c == c})
                for col in inputs]
        missing, unseen, dtype = np.nan, -1.0, np.float64
    length = max(1, *(len(k) for k in keys))
    table = np.empty((length + 2, len(inputs)), dtype=dtype)
    for j, column_keys in enumerate(keys):
        filler = column_keys[0] if column_keys else missing
        table[:length, j] = column_keys + [filler] * (length - len(column_keys))
        table[length, j] = missing
        table[length + 1, j] = unseen
    names = getattr(encoder, "feature_names_in_", None)
    if names is not None:  # fitted on a DataFrame: transform one (same names, no warning)
        import pandas as pd

        table = pd.DataFrame(table, columns=list(names))
    try:
        coded = np.asarray(encoder.transform(table), dtype=np.float64)
    except Exception as exc:
        raise NotCompilable(f"the encoder rejects its own categories ({exc})") from exc
    out = []
    for j, col in enumerate(inputs):
        own: dict[Any, float] = {key: float(coded[i, j]) for i, key in enumerate(keys[j])}
        on_missing, on_unseen = float(coded[length, j]), float(coded[length + 1, j])
        if col.codes is None:
            out.append(Column(col.feature, "category", {**own, None: on_missing}, on_unseen))
            continue

        def then(code: float, own: dict[Any, float] = own, on_missing: float = on_missing,
                 on_unseen: float = on_unseen) -> float:
            return on_missing if code != code else own.get(code, on_unseen)

        composed = {value: then(code) for value, code in col.codes.items()}
        out.append(Column(col.feature, "category", composed, then(col.default)))
    return out


def _through(transformer: Any, inputs: list[Column]) -> list[Column]:
    """The columns a fitted ColumnTransformer outputs, in its output order."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder

    if not isinstance(transformer, ColumnTransformer) or transformer.sparse_output_:
        raise NotCompilable(f"{type(transformer).__name__} is not a dense ColumnTransformer")
    out: list[Column] = []
    for name, step, spec in transformer.transformers_:
        if step == "drop":
            continue
        picked = [inputs[i] for i in _selected(spec, inputs)]
        if not picked:
            continue
        if isinstance(step, OrdinalEncoder):
            out += _encoded(step, picked)
        elif _is_identity(step):
            out += picked
        else:
            raise NotCompilable(f"step {name!r} is a {type(step).__name__}")
    return out


# ------------------------------------------------------------------ trees
class Forest:
    """The trees of a binary HistGradientBoostingClassifier as flat arrays.

    Leaves point to themselves, so every row walks exactly ``depth`` steps. A category
    split becomes a 256-entry table: go left if the code is in the split's left set, or
    if it is unknown to the model and missing values go left (as scikit-learn does).
    """

    def __init__(self, hgb: Any) -> None:
        if getattr(hgb, "n_trees_per_iteration_", None) != 1:
            raise NotCompilable("not a binary classifier (one tree per iteration)")
        predictors = [trees[0] for trees in hgb._predictors]
        known, f_idx_map = hgb._bin_mapper.make_known_categories_bitsets()
        nodes = [p.nodes for p in predictors]
        sizes = np.array([len(n) for n in nodes])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        flat = np.concatenate(nodes)
        shift = np.repeat(offsets, sizes)
        leaf = flat["is_leaf"].astype(bool)
        here = np.arange(len(flat))
        self.roots = offsets.astype(np.intp)
        self.left = np.where(leaf, here, flat["left"].astype(np.intp) + shift)
        self.right = np.where(leaf, here, flat["right"].astype(np.intp) + shift)
        self.feature = np.where(leaf, 0, flat["feature_idx"]).astype(np.intp)
        self.threshold = flat["num_threshold"].astype(np.float64)
        self.missing_left = flat["missing_go_to_left"].astype(bool)
        self.categorical = flat["is_categorical"].astype(bool) & ~leaf
        self.value = flat["value"].astype(np.float64)  # what a leaf adds (internal: unused)
        self.count = flat["count"].astype(np.float64)  # training rows through each node
        self.baseline = float(np.asarray(hgb._baseline_prediction).ravel()[0])
        self.depth = int(flat["depth"].max()) if len(flat) else 0
        # Category tables: row 0 is unused (numeric nodes); row k for the k-th category node.
        self.table_row = np.zeros(len(flat), dtype=np.intp)
        cat_nodes = np.flatnonzero(self.categorical)
        self.table_row[cat_nodes] = np.arange(1, len(cat_nodes) + 1)
        self.tables = np.zeros((len(cat_nodes) + 1, 256), dtype=bool)
        codes = np.arange(256)
        bit = lambda bitsets, row: (bitsets[row, codes // 32] >> (codes % 32)) & 1  # noqa: E731
        tree_of = np.repeat(np.arange(len(nodes)), sizes)
        for k, node in enumerate(cat_nodes, start=1):
            predictor = predictors[tree_of[node]]
            in_left = bit(predictor.raw_left_cat_bitsets, flat["bitset_idx"][node]).astype(bool)
            is_known = bit(known, f_idx_map[flat["feature_idx"][node]]).astype(bool)
            self.tables[k] = in_left | (~is_known & self.missing_left[node])

    def start(self, n: int) -> np.ndarray:
        """The roots of every tree for ``n`` rows: the (rows, trees) node array to walk."""
        return np.broadcast_to(self.roots, (n, len(self.roots))).copy()

    def step(self, X: np.ndarray, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
        """One level down: the child each row goes to from node ``at`` (leaves stay).
        ``rows`` is ``np.arange(len(X))[:, None]``."""
        v = X[rows, self.feature[at]]
        missing = np.isnan(v)
        categorical = self.categorical[at]
        as_missing = missing | (categorical & (v < 0))  # negative codes: missing too
        # a number read as a table index: only category nodes use it, but any finite
        # value must index safely (-1000 once raised IndexError: a 500 on valid input)
        code = np.clip(np.where(as_missing, 0, v), 0, 255).astype(np.intp)
        in_left_set = self.tables[self.table_row[at], code]
        go_left = np.where(
            as_missing, self.missing_left[at],
            np.where(categorical, in_left_set, v <= self.threshold[at]),
        )
        return np.where(go_left, self.left[at], self.right[at])

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) of the rows of ``X`` (n, features), float64."""
        if len(X) > CHUNK_ROWS:  # bound the (rows x trees) working arrays
            parts = [self.raw(X[i:i + CHUNK_ROWS]) for i in range(0, len(X), CHUNK_ROWS)]
            return np.concatenate(parts)
        n = X.shape[0]
        rows = np.arange(n)[:, None]
        at = self.start(n)
        for _ in range(self.depth):
            at = self.step(X, rows, at)
        return self.total(at)

    def total(self, leaves: np.ndarray) -> np.ndarray:
        """Raw scores of rows that reached ``leaves`` (rows, trees)."""
        n = leaves.shape[0]
        # Summed left to right from the baseline, as scikit-learn adds tree after tree.
        total = np.cumsum(np.hstack([np.full((n, 1), self.baseline), self.value[leaves]]), axis=1)
        return total[:, -1]


@dataclass(frozen=True)
class Compiled:
    """A compiled model: rows (dicts of raw feature values) -> P(target == 1), or the
    predicted value of a regressor (``logistic`` False: the raw sum is the prediction)."""

    columns: tuple[Column, ...]
    forest: Forest
    logistic: bool = True

    def matrix(self, rows: Rows) -> np.ndarray:
        """The rows as the trees see them: (rows, columns) float64, categories as codes."""
        X = np.empty((len(rows), len(self.columns)), dtype=np.float64)
        for i, row in enumerate(rows):
            X[i] = [col.value(row[col.feature]) for col in self.columns]
        return X

    def __call__(self, rows: Rows) -> np.ndarray:
        raw = self.forest.raw(self.matrix(rows))
        return np.asarray(expit(raw) if self.logistic else raw, dtype=np.float64)


def compile_model(model: Any, names: Sequence[str], kinds: Mapping[str, str]) -> Compiled:
    """Compile ``Pipeline([ColumnTransformer, HistGradientBoosting{Classifier,Regressor}])``
    (a regressor only with the identity link: squared, absolute or quantile error)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline) or len(model.steps) != 2:
        raise NotCompilable(f"{type(model).__name__} is not a two-step Pipeline")
    encode, hgb = model.steps[0][1], model.steps[1][1]
    regressor = isinstance(hgb, HistGradientBoostingRegressor)
    if not (regressor or isinstance(hgb, HistGradientBoostingClassifier)):
        raise NotCompilable(f"the last step is a {type(hgb).__name__}")
    if regressor and hgb.loss not in ("squared_error", "absolute_error", "quantile"):
        raise NotCompilable(f"a regressor with loss {hgb.loss!r} (not an identity link)")
    columns = _through(encode, [Column(name, kinds[name]) for name in names])
    if getattr(hgb, "_preprocessor", None) is not None:
        columns = _through(hgb._preprocessor, columns)
    if any(col.kind == "category" and col.codes is None for col in columns):
        raise NotCompilable("raw categories reach the trees")
    if len(columns) != hgb.n_features_in_:
        raise NotCompilable(f"{len(columns)} columns for a model of {hgb.n_features_in_}")
    return Compiled(tuple(columns), Forest(hgb), logistic=not regressor)


def check_rows(
    reference: Any, names: Sequence[str], kinds: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Rows to compare scorers on: the reference sample plus missing and unseen values."""
    rows: list[dict[str, Any]] = []
    if reference is not None:
        for record in reference[list(names)].to_dict("records"):
            rows.append({k: (None if v is None or v != v else v) for k, v in record.items()})
    first = rows[0] if rows else {n: (0.0 if kinds[n] == "number" else "") for n in names}
    rows.append({n: None for n in names})
    rows.append({n: (v if kinds[n] == "number" else _UNSEEN) for n, v in first.items()})
    for name in names:  # each feature missing on its own, and each number at the extremes
        rows.append({**first, name: None})
        if kinds[name] == "number":
            rows += [{**first, name: x} for x in EXTREMES]
    return rows


def compile_scorer(
    model: Any, names: Sequence[str], kinds: Mapping[str, str], reference: Any = None,
    task: str = "classification",
) -> tuple[Scorer, str]:
    """(scorer, how): the compiled scorer if it agrees with the model, else the plain one.

    ``reference`` (a DataFrame with the feature columns, e.g. the model's reference
    sample) supplies the rows the two are compared on; without it only edge rows are.
    ``how`` says which scorer it is and why, for the server's log and /health.
    """
    plain = frame_scorer(model, names, kinds, task)
    try:
        compiled = compile_model(model, names, kinds)
    except NotCompilable as exc:
        return plain, f"scikit-learn ({exc})"
    except Exception as exc:  # internals changed in another scikit-learn version
        return plain, f"scikit-learn (cannot compile: {type(exc).__name__}: {exc})"
    rows = check_rows(reference, names, kinds)
    try:
        expected, got = plain(rows), compiled(rows)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        return plain, f"scikit-learn (compiled scorer failed its check: {why})"
    worst = float(np.max(np.abs(expected - got))) if len(rows) else 0.0
    if not worst <= TOLERANCE:
        return plain, f"scikit-learn (compiled scorer differs by {worst:.3g} on the check rows)"
    return compiled, f"compiled trees (agree with scikit-learn on {len(rows)} rows to {worst:.1g})"
