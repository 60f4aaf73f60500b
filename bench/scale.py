"""Scaling out on existing engines, side by side in one run (docs/scale.md).

1. A sweep of 8 train configurations as DVC experiments: queued, then run serially
   (`dvc queue start -j 1`) and in parallel (`dvc queue start -j 2`), each sweep in its own
   fresh copy of the example (own cache, so DVC's run-cache restores nothing). Same
   machinery, only the number of workers differs. The metrics of every experiment must be
   identical in the two sweeps.
2. The train stage's search: `nbp run train` with `train.search_backend: local` (one fit
   at a time with the stage's threads) vs `dask` on a real `dask scheduler` and 2
   `dask worker` processes (1 thread each) on 127.0.0.1, after an untimed warm-up run of
   each (a new worker first imports scikit-learn and pandas: a one-time cost of seconds).
   Best params, cv score and the model's scores of the reference rows must be identical.

"Identical" ignores any file hash among the metrics. The model files (model.skops and
metadata.json) are byte-identical too; how long the search took and where it ran are in
metrics/train.artifacts.json.

Target: >= 1.7x for both on 2 cores. The machine must be otherwise idle for that figure.

The search needs fits that outlast Dask's per-task overhead (milliseconds) to gain
anything: it runs on its own copy with `--search-sample` of the rows and the example's
`max_iter` (`--search-max-iter`).

    python bench/scale.py [--sample 0.03] [--max-iter 100] [--configs 8]
                          [--search-sample 0.2] [--search-max-iter 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import BIN, REPO, sh  # noqa: E402

from nbpipeline.threads import available_cores  # noqa: E402

STAGES = ("data", "train", "evaluate")
GRID = {"max_depth": [3, 5], "learning_rate": [0.05, 0.1], "min_samples_leaf": [20, 60]}


def make_project(root: Path, sample: float, max_iter: int) -> Path:
    """The example (data, train, evaluate) on a sample, data stage run and committed."""
    root.mkdir(parents=True)
    sh("cp", "-r", str(REPO / "notebooks"), str(root / "notebooks"), cwd=root)
    for name in ("params.yaml", ".dvcignore"):
        (root / name).write_bytes((REPO / name).read_bytes())
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["sample_fraction"] = sample
    params["train"]["max_iter"] = max_iter
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["stages"] = {k: v for k, v in spec["stages"].items() if k in STAGES}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (root / ".gitignore").write_text("/registry/\n*.tmp\n")
    sh("git", "init", "-q", "-b", "main", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "config", "core.analytics", "false", cwd=root)
    sh("dvc", "repro", "data", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit",
       "-qm", "data", cwd=root)
    return root


def configurations(n: int) -> list[dict[str, object]]:
    combos = itertools.product(*GRID.values())
    return [dict(zip(GRID, values, strict=True)) for values in itertools.islice(combos, n)]


def sweep(root: Path, configs: list[dict[str, object]], jobs: int) -> tuple[float, dict]:
    """Queue one experiment per configuration, run the queue with ``jobs`` workers."""
    for i, config in enumerate(configs):
        sets = [f"-S train.{k}=[{v}]" if k in ("max_depth", "learning_rate")
                else f"-S train.{k}={v}" for k, v in config.items()]
        sh("dvc", "exp", "run", "--queue", "-n", f"cfg{i}", *" ".join(sets).split(), cwd=root)
    started = time.perf_counter()
    sh("dvc", "queue", "start", "-j", str(jobs), cwd=root)
    while True:
        status = sh("dvc", "queue", "status", cwd=root)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    seconds = time.perf_counter() - started
    if status.count("Success") != len(configs):
        sys.exit(f"sweep with -j {jobs} failed:\n{status}")
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=root))
    metrics = {rev["name"]: {path: without_hashes(m["data"])
                             for path, m in rev["data"]["metrics"].items()}
               for base in shown for exp in base.get("experiments") or [] for rev in exp["revs"]}
    return seconds, metrics


def without_hashes(value: object) -> object:
    """``value`` without model file hashes (see the module docstring)."""
    if isinstance(value, dict):
        return {k: without_hashes(v) for k, v in value.items() if "sha256" not in k}
    return value


@contextmanager
def dask_cluster(workers: int) -> Iterator[str]:
    """A real `dask scheduler` and ``workers`` single-threaded `dask worker` processes."""
    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(BIN / "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **quiet)]
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard"],
                               **quiet) for _ in range(workers)]
    try:
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def train_search(root: Path, backend: str, address: str = "") -> dict[str, object]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(search_backend=backend, dask_scheduler=address)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    sh("nbp", "run", "train", cwd=root)
    stage = time.perf_counter() - started
    metadata = json.loads((root / "models/candidate/metadata.json").read_text())
    search = metadata["search"]
    artifacts = json.loads((root / "metrics/train.artifacts.json").read_text())
    ran = artifacts["models/candidate/model.skops"]["search"]  # how long, where
    reference = pd.read_parquet(root / "models/candidate/reference.parquet")
    model_scores = reference[[c for c in ("probability", "prediction") if c in reference]]
    return {"search": ran["seconds"], "stage": stage, "where": ran["backend"]["where"],
            "same": (search["best_params"], search["best_score"],
                     model_scores.round(12).to_json())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=float, default=0.03, help="data.sample_fraction")
    parser.add_argument("--max-iter", type=int, default=100, help="train.max_iter")
    parser.add_argument("--configs", type=int, default=8, help="experiments in the sweep")
    parser.add_argument("--search-sample", type=float, default=0.2,
                        help="data.sample_fraction of the search's project")
    parser.add_argument("--search-max-iter", type=int, default=200,
                        help="train.max_iter of the search")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nbp-bench-scale-"))
    configs = configurations(args.configs)
    serial_root = make_project(base / "serial", args.sample, args.max_iter)
    parallel_root = make_project(base / "parallel", args.sample, args.max_iter)
    serial, serial_metrics = sweep(serial_root, configs, 1)
    print(f"sweep of {len(configs)}, dvc queue start -j 1: {serial:.1f}s", flush=True)
    parallel, parallel_metrics = sweep(parallel_root, configs, 2)
    print(f"sweep of {len(configs)}, dvc queue start -j 2: {parallel:.1f}s", flush=True)

    search_root = make_project(base / "search", args.search_sample, args.search_max_iter)
    train_search(search_root, "local")  # untimed warm-ups
    local = train_search(search_root, "local")
    print(f"train search local: {local['search']:.1f}s ({local['where']})", flush=True)
    with dask_cluster(2) as address:
        train_search(search_root, "dask", address)
        on_dask = train_search(search_root, "dask", address)
    print(f"train search dask:  {on_dask['search']:.1f}s ({on_dask['where']})", flush=True)

    print(f"\n{'':34s}{'serial/local':>14s}{'parallel/dask':>15s}{'speed-up':>10s}"
          f"{'identical':>11s}   ({available_cores()} cores; target >= 1.7x)")
    print(f"{f'sweep of {len(configs)} experiments':34s}{serial:13.1f}s{parallel:14.1f}s"
          f"{serial / parallel:9.2f}x{str(serial_metrics == parallel_metrics):>11s}")
    same = str(local["same"] == on_dask["same"])
    print(f"{f'train search ({args.search_sample:.0%} sample)':34s}{local['search']:13.1f}s"
          f"{on_dask['search']:14.1f}s{local['search'] / on_dask['search']:9.2f}x{same:>11s}")
    print(f"{'train stage (nbp run train)':34s}{local['stage']:13.1f}s{on_dask['stage']:14.1f}s"
          f"{local['stage'] / on_dask['stage']:9.2f}x")
    print(f"\nprojects kept in {base}")


if __name__ == "__main__":
    main()
