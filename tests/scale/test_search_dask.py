"""The train search on Dask: a real scheduler and two worker processes on 127.0.0.1.

The fits run there (the workers' own task counters say so), each worker thread limited to
its share of the cores, and the search finds what a local run finds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from candidates import SYNTHETIC, synthetic_rows
from serve_fixtures import free_port

from nbpipeline.errors import ClusterError
from nbpipeline.modeling import build_model, search_folds, search_on

DASK = Path(sys.executable).with_name("dask")
GRID = {"model__max_depth": [2, 4], "model__learning_rate": [0.05, 0.2]}


def _search(plan_args: dict) -> tuple[dict, list[float], object]:
    from sklearn.model_selection import GridSearchCV
    from threadpoolctl import threadpool_limits

    rows = synthetic_rows(300, seed=3)
    # one thread here, as `nbp run` would give a stage on a busy machine (OpenMP spins)
    with threadpool_limits(1), search_on(**plan_args) as plan:
        search = GridSearchCV(
            build_model(SYNTHETIC, max_iter=10, min_samples_leaf=5, seed=7), GRID,
            scoring="roc_auc", cv=search_folds(SYNTHETIC, 2, 7), n_jobs=plan.n_jobs,
            refit=False,
        ).fit(rows[SYNTHETIC.names], rows["target"])
    return search.best_params_, list(search.cv_results_["mean_test_score"]), plan


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes (one thread each) on 127.0.0.1.

    No nanny: Dask's nanny would set OMP_NUM_THREADS=1 itself, and the thread share set by
    nbpipeline would go untested."""
    from distributed import Client

    logs = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    procs = [subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=open(logs / "scheduler.log", "wb"))]
    procs += [subprocess.Popen(
        [DASK, "worker", address, "--nthreads", "1", "--no-nanny",
         "--no-dashboard", "--name", f"w{i}"],
        stdout=subprocess.DEVNULL, stderr=open(logs / f"w{i}.log", "wb")) for i in (1, 2)]
    try:
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in procs:  # nothing to save: no graceful shutdown (it takes seconds)
            proc.kill()
            proc.wait(timeout=20)


@pytest.mark.slow
def test_search_runs_on_the_dask_workers_with_the_local_result(
    scheduler: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    local_best, local_scores, _ = _search({"backend": "local"})
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler)  # the address from the environment
    best, cv_scores, plan = _search({"backend": "dask"})

    assert best == local_best
    assert cv_scores == pytest.approx(local_scores, abs=1e-12)
    # 4 candidates x 2 folds: every fit ran on a worker, and both workers took some
    assert len(plan.tasks) == 2 and all(n > 0 for n in plan.tasks.values()), plan.describe()
    assert scheduler in plan.describe()
    # each worker: 1 thread of the 2 cores (the cores split over the 2 worker threads)
    cores = min(2, len(__import__("os").sched_getaffinity(0)))
    assert set(plan.threads.values()) == {max(1, cores // 2)}, plan.threads


def test_unreachable_scheduler_is_one_line_naming_the_address() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ClusterError) as err:
        with search_on("dask", scheduler=address, connect_timeout=1.0):
            pytest.fail("the block (the fits) must not start")
    message = str(err.value)
    assert "\n" not in message
    assert f"Dask scheduler at {address} (from train.dask_scheduler)" in message
    assert time.monotonic() - started < 30


def test_unknown_backend_names_the_param() -> None:
    with pytest.raises(Exception, match="train.search_backend: 'spark' is not one of local, dask"):
        with search_on("spark"):
            pass


def test_a_scheduler_without_workers_is_one_line_before_any_fit() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        with pytest.raises(ClusterError, match="has no workers after 1 s; start some"):
            with search_on("dask", scheduler=cluster.scheduler_address, connect_timeout=1.0):
                pytest.fail("the block (the fits) must not start")
