"""Two stages at once: the example's train stage alone and two started together, with
default library threads and with nbpipeline's thread discipline, side by side.

Builds two copies of the example project (bench/pipeline.py's notebooks copy) on a small
sample and runs their data stage once. Then, per round and per setting, times
`nbp run train` alone in one copy, and in both copies started together (the wall time
until both are done). "default" gives every kernel all cores (NBP_THREADS=<cores>: what
OpenMP and BLAS do by themselves); "nbpipeline" is the automatic share. A run that
exceeds --limit seconds is killed and shown as ">limit". Target: together <= 2.2x alone.

    python bench/concurrency.py [--rounds 2] [--sample 0.05] [--limit 300]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import env, make_projects, sh  # noqa: E402

from nbpipeline.threads import THREAD_VARS, available_cores  # noqa: E402


def run_together(roots: list[Path], threads: str | None, limit: float) -> float:
    e = {k: v for k, v in env().items() if k not in (*THREAD_VARS, "NBP_THREADS")}
    if threads:
        e["NBP_THREADS"] = threads
    started = time.perf_counter()
    procs = [subprocess.Popen(["nbp", "run", "train"], cwd=root, env=e, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for root in roots]
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, limit - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
                p.wait()
            return float("inf")
        if proc.returncode:
            sys.exit(f"nbp run train failed:\n{proc.stderr.read() if proc.stderr else ''}")
    return time.perf_counter() - started


def show(seconds: float, limit: float) -> str:
    return f">{limit:.0f}s" if seconds == float("inf") else f"{seconds:.1f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sample", type=float, default=0.05, help="data.sample_fraction")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds before a kill")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nbp-bench-concurrency-"))
    roots = []
    for name in ("a", "b"):
        root, _ = make_projects(base / name, args.sample)
        sh("nbp", "run", "data", cwd=root)
        roots.append(root)
    settings = {"default": str(available_cores()), "nbpipeline": None}
    times = {(s, n): [] for s in settings for n in (1, 2)}
    run_together(roots[:1], None, args.limit)  # untimed warm-up
    for round_no in range(args.rounds):
        for name, threads in (settings.items() if round_no % 2 == 0
                              else reversed(settings.items())):
            for n in (1, 2):
                times[name, n].append(run_together(roots[:n], threads, args.limit))
                print(f"round {round_no + 1} {name:10s} {n} at once: "
                      f"{show(times[name, n][-1], args.limit)}", flush=True)
    print(f"\n{'threads':12s}{'alone':>9s}{'2 at once':>11s}{'ratio':>8s}"
          f"   (median of {args.rounds}; {available_cores()} cores; target ratio <= 2.2)")
    for name in settings:
        one = statistics.median(times[name, 1])
        two = statistics.median(times[name, 2])
        ratio = "inf" if two == float("inf") else f"{two / one:.2f}"
        print(f"{name:12s}{show(one, args.limit):>9s}{show(two, args.limit):>11s}{ratio:>8s}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
