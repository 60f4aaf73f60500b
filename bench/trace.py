"""What the file tracer costs a stage: `nbp run` of each example stage, traced and not.

Builds the example project (bench/pipeline.py's notebooks copy) in a temp dir, runs it
once untimed, then alternates rounds of `nbp run <stage>` with the tracer on (default,
judging as under DVC) and off (NBP_NO_TRACE=1). Prints each stage's median times, the
difference and the ratio (target: under 0.1 s or 2% a stage, whichever is larger). Usage:

    python bench/trace.py [--rounds 5] [--sample 0.2]
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

from pipeline import STAGES, env, make_projects, sh  # noqa: E402


def timed_run(root: Path, stage: str, traced: bool) -> float:
    e = dict(env(), DVC_STAGE=stage)  # judge as under `dvc repro`
    if not traced:
        e["NBP_NO_TRACE"] = "1"
    started = time.perf_counter()
    proc = subprocess.run(["nbp", "run", stage], cwd=root, env=e, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"nbp run {stage} failed:\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=float, default=0.2, help="data.sample_fraction")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nbp-bench-trace-"))
    root, _ = make_projects(base, args.sample)
    sh("dvc", "repro", cwd=root)  # untimed: outputs exist, caches warm
    times = {(s, t): [] for s in STAGES for t in (True, False)}
    for round_no in range(args.rounds):
        for stage in STAGES:
            for traced in (True, False) if round_no % 2 else (False, True):
                times[stage, traced].append(timed_run(root, stage, traced))
    print(f"{'stage':10s}{'traced':>9s}{'untraced':>10s}{'extra':>9s}{'ratio':>8s}"
          f"   (median of {args.rounds})")
    for stage in STAGES:
        on = statistics.median(times[stage, True])
        off = statistics.median(times[stage, False])
        print(f"{stage:10s}{on:8.2f}s{off:9.2f}s{on - off:+8.2f}s{on / off:8.3f}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
