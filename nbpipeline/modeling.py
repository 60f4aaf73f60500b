"""Building and judging models in stage notebooks, driven by the model contract.

Nothing here knows a data set: the features, their kinds, the target and the task come
from :class:`nbpipeline.release.candidate.ModelContract`, which the train stage builds from
params.yaml ``common:``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from nbpipeline.errors import ClusterError, ParamsError
from nbpipeline.release.candidate import ModelContract

# gate metric -> scikit-learn scorer name (for searches and permutation importance)
_SCORERS = {"log_loss": "neg_log_loss", "brier": "neg_brier_score",
            "rmse": "neg_root_mean_squared_error", "mae": "neg_mean_absolute_error"}


def build_model(
    contract: ModelContract, *, max_iter: int, min_samples_leaf: int, seed: int,
    max_depth: int | None = None, learning_rate: float = 0.1,
) -> Any:
    """Ordinal-encode the categories (unknown -> missing) and fit gradient boosting.

    The server scores this shape with compiled trees (nbpipeline/serve/scorer.py), ~50x
    faster per row than scikit-learn; keep it or check ``/health``'s "scorers".
    """
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    categorical, numeric = contract.categorical, contract.numeric
    encode = ColumnTransformer(
        [
            ("categories", OrdinalEncoder(handle_unknown="use_encoded_value",
                                          unknown_value=np.nan, encoded_missing_value=np.nan),
             categorical),
            ("numbers", "passthrough", numeric),
        ],
        verbose_feature_names_out=False,
    )
    estimator = (HistGradientBoostingRegressor if contract.task == "regression"
                 else HistGradientBoostingClassifier)
    model = estimator(
        max_iter=max_iter, max_depth=max_depth, learning_rate=learning_rate,
        min_samples_leaf=min_samples_leaf, categorical_features=list(range(len(categorical))),
        random_state=seed, early_stopping=False,
    )
    return Pipeline([("encode", encode), ("model", model)])


def search_folds(contract: ModelContract, folds: int, seed: int) -> Any:
    """Cross-validation folds: in time order with a time column (rows are sorted by it),
    else stratified (classification) or shuffled (regression)."""
    from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

    if contract.time_column:
        return TimeSeriesSplit(n_splits=folds)
    if contract.task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def fit_search(search: Any, X: Any, y: Any) -> Any:
    """``search.fit(X, y)`` for a scikit-learn search (``GridSearchCV``, ...), showing in a
    notebook which fit of how many has finished.

    In JupyterLab one output line is updated in place after each fit ("search: 5/12 fits,
    31 s"); it ends as a line without times ("search: 12 fits (4 candidates x 3 folds)") so
    executed notebooks stay byte-stable. Fits are counted as the search scores them in this
    process, so a search whose ``n_jobs`` is not 1 (its fits run in other processes or on
    Dask workers, which would be sent the counter) is plain ``search.fit(X, y)``, as it is
    outside IPython (a script). Under ``nbp run`` the stage's
    own progress lines also report the cell every ~10 s.
    """
    import time

    from sklearn.base import is_classifier
    from sklearn.metrics import check_scoring
    from sklearn.model_selection import check_cv

    handle = _display_handle()
    scoring = search.scoring
    if (handle is None or search.n_jobs not in (None, 1)
            or not (scoring is None or isinstance(scoring, str) or callable(scoring))):
        return search.fit(X, y)  # not in a notebook, fits elsewhere, or several metrics
    candidates = _candidate_count(search)
    folds = check_cv(search.cv, y, classifier=is_classifier(search.estimator)).get_n_splits(X, y)
    total = candidates * folds if candidates else None
    scorer = check_scoring(search.estimator, scoring=scoring)
    started, done = time.perf_counter(), 0

    def counted(estimator: Any, X_test: Any, y_test: Any, **kwargs: Any) -> Any:
        nonlocal done
        value = scorer(estimator, X_test, y_test, **kwargs)
        done += 1
        of = f"/{total}" if total else ""
        handle.update(_Plain(f"search: {done}{of} fits, {time.perf_counter() - started:.0f} s"))
        return value

    search.scoring = counted
    try:
        search.fit(X, y)
    finally:
        search.scoring = scoring
        if hasattr(search, "scorer_"):
            search.scorer_ = scorer
    shape = f" ({candidates} candidates x {folds} folds)" if candidates else ""
    handle.update(_Plain(f"search: {total or done} fits{shape}"))
    return search


def _candidate_count(search: Any) -> int | None:
    from sklearn.model_selection import ParameterGrid

    if hasattr(search, "param_grid"):
        return len(ParameterGrid(search.param_grid))
    n_iter = getattr(search, "n_iter", None)
    return int(n_iter) if isinstance(n_iter, int) else None


class _Plain:
    """Text shown as is (text/plain, no quotes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _display_handle() -> Any:
    """A display handle in an IPython kernel (updated in place), else None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    if get_ipython() is None:
        return None
    return display(_Plain("search: starting"), display_id=True)


def output_column(contract: ModelContract) -> str:
    """Name of the model's output: ``probability`` (of the positive label) or ``prediction``."""
    return "prediction" if contract.task == "regression" else "probability"


def scores(model: Any, contract: ModelContract, frame: Any) -> Any:
    """The model's output for ``frame``: P(positive label), or the predicted value."""
    X = frame[contract.names]
    if contract.task == "regression":
        return model.predict(X)
    return model.predict_proba(X)[:, 1]


def evaluation_metrics(contract: ModelContract, y_true: Any, score: Any,
                       threshold: float) -> dict[str, float]:
    """The task's metrics (:func:`classification_metrics` or :func:`regression_metrics`)."""
    if contract.task == "regression":
        return regression_metrics(y_true, score)
    return classification_metrics(y_true, score, threshold)


def sklearn_scoring(metric: str) -> str:
    """The scikit-learn scorer for a gate metric (higher is better there)."""
    return _SCORERS.get(metric, metric)


def classification_metrics(y_true: Any, score: Any, threshold: float) -> dict[str, float]:
    """Ranking and thresholded metrics of binary scores."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (score >= threshold).astype(int)
    return {
        "roc_auc": roc_auc_score(y_true, score),
        "average_precision": average_precision_score(y_true, score),
        "log_loss": log_loss(y_true, score, labels=[0, 1]),
        "brier": brier_score_loss(y_true, score),
        "accuracy": accuracy_score(y_true, predicted),
        "precision": precision_score(y_true, predicted, zero_division=0),
        "recall": recall_score(y_true, predicted, zero_division=0),
        "f1": f1_score(y_true, predicted, zero_division=0),
        "positive_rate": float(y_true.mean()),
        "rows": float(len(y_true)),
    }


def regression_metrics(y_true: Any, predicted: Any) -> dict[str, float]:
    """Error metrics of predicted values."""
    import numpy as np
    from sklearn.metrics import mean_absolute_error, r2_score

    errors = np.asarray(predicted, dtype=float) - np.asarray(y_true, dtype=float)
    return {
        "rmse": float(np.sqrt(np.mean(errors ** 2))),
        "mae": mean_absolute_error(y_true, predicted),
        "r2": r2_score(y_true, predicted),
        "mean_outcome": float(np.mean(y_true)),
        "mean_prediction": float(np.mean(predicted)),
        "rows": float(len(y_true)),
    }


def evaluation_plots(contract: ModelContract, y_true: Any, score: Any, threshold: float,
                     *, seed: int = 0) -> Any:
    """Record the task's DVC plots of the golden rows and draw them (a matplotlib figure).

    Classification: ``confusion`` (actual, predicted) and ``roc`` (fpr, tpr); regression:
    ``predicted`` (actual, predicted; a sample of 500 rows).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from nbpipeline import record

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if contract.task == "regression":
        frame = pd.DataFrame({"actual": np.asarray(y_true, dtype=float),
                              "predicted": np.asarray(score, dtype=float)})
        record.plot("predicted", frame.sample(min(500, len(frame)), random_state=seed).round(5))
        left.scatter(frame["actual"], frame["predicted"], s=4, alpha=0.4)
        left.set(xlabel="actual", ylabel="predicted", title="golden: predicted vs actual")
        right.hist(frame["predicted"] - frame["actual"], bins=50)
        right.set(xlabel="predicted - actual", title="golden residuals")
    else:
        from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

        predicted = (np.asarray(score) >= threshold).astype(int)
        record.plot("confusion", pd.DataFrame({"actual": np.asarray(y_true).astype(int),
                                               "predicted": predicted}))
        fpr, tpr, _ = roc_curve(y_true, score)
        step = max(1, len(fpr) // 200)
        record.plot("roc", pd.DataFrame({"fpr": fpr[::step].round(5),
                                         "tpr": tpr[::step].round(5)}))
        left.plot(fpr, tpr, label=f"golden AUC {roc_auc_score(y_true, score):.3f}")
        left.plot([0, 1], [0, 1], ls="--", c="grey")
        left.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (golden)")
        left.legend(loc="lower right")
        matrix = confusion_matrix(y_true, predicted, labels=[0, 1])
        right.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            right.text(j, i, f"{value:,}", ha="center", va="center")
        right.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual",
                  title=f"confusion (threshold {threshold})")
    fig.tight_layout()
    return fig


def champion_plots(contract: ModelContract, y_true: Any, score: Any, champion_score: Any,
                   threshold: float) -> None:
    """Record the golden ROC and confusion plots of the candidate beside the champion's,
    scored on the same rows (classification; nothing for regression).

    ``roc``: ``fpr`` on a grid of 101 points, ``tpr`` and ``champion_tpr``; ``confusion``:
    ``actual``, ``predicted`` and ``champion_predicted``. They replace what
    :func:`evaluation_plots` recorded (the columns DVC's plots read stay); the review
    page (``nbp report``) draws both models from them.
    """
    if contract.task == "regression":
        return
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_curve

    from nbpipeline import record

    grid = np.linspace(0.0, 1.0, 101)
    curves = {}
    for name, values in (("tpr", score), ("champion_tpr", champion_score)):
        fpr, tpr, _ = roc_curve(y_true, values)
        curves[name] = np.interp(grid, fpr, tpr).round(5)
    record.plot("roc", pd.DataFrame({"fpr": grid.round(5), **curves}))
    record.plot("confusion", pd.DataFrame({
        "actual": np.asarray(y_true).astype(int),
        "predicted": (np.asarray(score) >= threshold).astype(int),
        "champion_predicted": (np.asarray(champion_score) >= threshold).astype(int)}))


def leakage_evidence(
    model: Any, contract: ModelContract, frames: dict[str, Any], *, metric: str,
    threshold: float, rows: int, repeats: int, seed: int, fit_on: str = "train",
) -> dict[str, dict[str, Any]]:
    """What the gate needs to suspect leakage, per split of ``frames`` (train, valid).

    On a sample of ``rows`` rows of each split: the model's ``metric``, a constant
    prediction's (the mean outcome of ``fit_on``: chance), each feature's alone (a small
    model of that one feature, fitted on another sample of ``fit_on``) and each feature's
    permutation importance (drop in ``metric`` when it is shuffled). A feature that alone
    nearly matches the model, or that carries most of the importance, is likely known
    only after the outcome. JSON-ready: ``{split: {rows, model, chance, alone: {name:
    value}, importance: {name: value}}}``.
    """
    import dataclasses

    import numpy as np
    from sklearn.inspection import permutation_importance

    fit = frames[fit_on].sample(min(rows, len(frames[fit_on])), random_state=seed)
    # judged on other rows than the single-feature models learnt from: in-sample, one
    # feature alone out-"scored" the whole model on a small sample (train ROC AUC 0.80 vs 0.78)
    rest = {name: frame.drop(fit.index) if name == fit_on and len(frame) > len(fit) else frame
            for name, frame in frames.items()}
    samples = {name: frame.sample(min(rows, len(frame)), random_state=seed)
               for name, frame in rest.items()}
    fit_truth = contract.outcome(fit[contract.target])
    prior = float(np.mean(fit_truth))

    def value(truth: Any, score: Any) -> float:
        return float(evaluation_metrics(contract, truth, score, threshold)[metric])

    alone_models = {}
    for feature in contract.features:
        one = dataclasses.replace(contract, features=(feature,))
        alone_models[feature.name] = (one, build_model(
            one, max_iter=50, min_samples_leaf=20, seed=seed).fit(fit[one.names], fit_truth))
    evidence: dict[str, dict[str, Any]] = {}
    for name, sample in samples.items():
        truth = contract.outcome(sample[contract.target])
        found = permutation_importance(
            model, sample[contract.names], truth, scoring=sklearn_scoring(metric),
            n_repeats=repeats, random_state=seed, n_jobs=1)
        evidence[name] = {
            "rows": len(sample),
            "model": round(value(truth, scores(model, contract, sample)), 4),
            "chance": round(value(truth, np.full(len(sample), prior)), 4),
            "alone": {feature: round(value(truth, scores(m, one, sample)), 4)
                      for feature, (one, m) in alone_models.items()},
            "importance": {feature: round(float(v), 5)
                           for feature, v in zip(contract.names, found.importances_mean,
                                                 strict=True)},
        }
    return evidence


# --- Where a hyperparameter search's fits run: this process, or Dask through joblib ---------

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
SEARCH_BACKENDS = ("local", "dask")
NO_SCHEDULER = ("cluster", "joblib")  # train.dask_local: a LocalCluster, or local joblib


@dataclass
class SearchPlan:
    """Where a search runs: pass ``n_jobs`` to the search; :meth:`describe` says where it ran.

    ``tasks`` (after the ``with`` block) holds the tasks each Dask worker ran for the
    search, ``threads`` each worker's thread limit per task (its share of its host's cores).
    """

    backend: str
    where: str
    n_jobs: int
    tasks: dict[str, int] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: where the fits ran, and on which workers how many tasks."""
        if not self.tasks:
            return f"search on {self.where}"
        if not sum(self.tasks.values()):  # joblib runs in-process when there is 1 slot
            return f"search in this process: {self.where} offers joblib a single thread"
        ran = ", ".join(f"{addr} {n} tasks ({self.threads.get(addr, '?')} thread(s) each)"
                        for addr, n in sorted(self.tasks.items()))
        return f"search on {self.where}: {ran}"

    def record(self) -> dict[str, Any]:
        """For the candidate's metadata (``search.backend``)."""
        return {"backend": self.backend, "where": self.where, "tasks": dict(self.tasks),
                "threads": dict(self.threads)}


def _executed(dask_worker: Any) -> int:
    """Tasks a Dask worker has run so far (runs on the worker)."""
    return int(dask_worker.state.executed_count)


def _cores() -> int:
    """Cores a Dask worker process may use (runs on the worker)."""
    from nbpipeline import threads

    return threads.available_cores()


def _openmp_threads() -> int:
    """OpenMP threads a new fit in a Dask worker thread would use (runs on the worker)."""
    from nbpipeline import threads

    pools = [p for p in threads.threadpools() if p["user_api"] == "openmp"]
    return int(pools[0]["num_threads"]) if pools else int(os.environ.get("OMP_NUM_THREADS", 0))


def _limit_threads(share: dict[str, int], dask_worker: Any) -> None:
    """Give a worker's fits ``share[address]`` threads: the variables OpenMP and BLAS read
    when they load (sklearn loads its OpenMP with the first fit), and the BLAS pools now."""
    from nbpipeline import threads

    n = share.get(dask_worker.address, 1)
    os.environ.update(threads.environment(n))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")


def _thread_shares(client: Any) -> dict[str, int]:
    """Each worker's threads per task: its host's cores over the worker threads on that host."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_cores)
    on_host: dict[str, int] = {}
    for info in workers.values():
        on_host[info["host"]] = on_host.get(info["host"], 0) + int(info["nthreads"])
    return {addr: max(1, cores.get(addr, 1) // max(1, on_host[info["host"]]))
            for addr, info in workers.items()}


def _connect(address: str, source: str, timeout: float) -> Any:
    """A Dask client of the scheduler at ``address``, or one clear error naming it."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} (from {source}) within "
            f"{timeout:g} s: {reason}; start it (`dask scheduler`), fix the address, or set "
            "train.search_backend: local"
        ) from None
    try:  # without workers the search would wait forever
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        client.close()
        raise ClusterError(
            f"the Dask scheduler at {address} (from {source}) has no workers after "
            f"{timeout:g} s; start some (`dask worker {address}`)"
        ) from None
    return client


@contextmanager
def search_on(
    backend: str = "local", *, scheduler: str = "", no_scheduler: str = "cluster",
    connect_timeout: float = 10.0,
) -> Iterator[SearchPlan]:
    """Run the joblib work inside the block (a scikit-learn search with ``n_jobs=plan.n_jobs``)
    on ``backend``: ``local`` (this process, one fit at a time, each with the stage's threads)
    or ``dask`` (joblib's Dask backend).

    Dask's scheduler is ``scheduler``, else ``$DASK_SCHEDULER_ADDRESS``; with neither,
    ``no_scheduler`` chooses a ``cluster`` (a LocalCluster of one single-threaded worker
    process per core of this stage's share) or ``joblib`` (local worker processes, no Dask).
    The scheduler is reached before the block starts: an unreachable one raises
    :class:`ClusterError` naming the address before any fit. Fits are deterministic, so every
    backend finds the same scores and best parameters.
    """
    # joblib and distributed are imported here, not at the top: `import distributed` takes
    # ~1 s and most stages (and `nbp serve`) import this module without searching
    import joblib

    from nbpipeline import threads

    if backend not in SEARCH_BACKENDS:
        raise ParamsError(f"train.search_backend: {backend!r} is not one of "
                          f"{', '.join(SEARCH_BACKENDS)}")
    if no_scheduler not in NO_SCHEDULER:
        raise ParamsError(f"train.dask_local: {no_scheduler!r} is not one of "
                          f"{', '.join(NO_SCHEDULER)}")
    if backend == "local":
        yield SearchPlan("local", "this process", 1)
        return
    address, source = ((scheduler, "train.dask_scheduler") if scheduler
                       else (os.environ.get(SCHEDULER_ENV, ""), f"${SCHEDULER_ENV}"))
    share = threads.current()
    if not address and share < 2:  # a cluster of one worker would only add its start-up
        yield SearchPlan("local", "this process (the stage's share of the cores is 1)", 1)
        return
    if not address and no_scheduler == "joblib":
        plan = SearchPlan("joblib", f"{share} local joblib process(es)", share)
        with joblib.parallel_config(backend="loky", n_jobs=share, inner_max_num_threads=1):
            yield plan
        return
    with ExitStack() as stack:
        if address:
            client = stack.enter_context(_connect(address, source, connect_timeout))
            where = f"the Dask scheduler at {address}"
        else:
            import dask
            from distributed import Client, LocalCluster

            # One single-threaded worker process per core of this stage's share. The thread
            # variables go to the workers only: Dask's default "pre-spawn-environ" is set in
            # this process's os.environ (OMP_NUM_THREADS=1 stayed in the kernel afterwards).
            with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
                cluster = stack.enter_context(LocalCluster(
                    n_workers=share, threads_per_worker=1, processes=True,
                    dashboard_address=":0", env=threads.environment(1)))  # any free port
            client = stack.enter_context(Client(cluster, set_as_default=False))
            where = f"a Dask LocalCluster of {share} worker process(es)"
        # a LocalCluster's workers are this stage's share, one core each
        limits = (_thread_shares(client) if address
                  else dict.fromkeys(client.scheduler_info(n_workers=-1)["workers"], 1))
        client.run(_limit_threads, limits)
        before = client.run(_executed)
        plan = SearchPlan("dask", where, -1)
        with joblib.parallel_config(backend="dask", client=client):
            yield plan
        after = client.run(_executed)
        plan.tasks = {addr: n - before.get(addr, 0) for addr, n in after.items()}
        plan.threads = {addr: n for addr, n in client.run(_openmp_threads).items()}
