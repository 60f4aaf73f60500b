"""Benchmark: how often an A/B verdict promotes a canary no better than its champion, when
the monitor looks again and again (issue 19, part 2).

    python bench/abtest.py [--runs 1000] [--looks 20] [--alpha 0.05] [--better 0]
                           [--resamples 100]

Simulates ``--runs`` canaries against their champion (in process, through
nbpipeline.monitor.abtest's own bootstrap and verdict, tests/ab_simulation.py), each looked at
``--looks`` times as outcomes arrive, the last look just past the outcomes the sequential
boundary plans for. Prints, side by side, the share of runs each rule promoted, rolled back
or left collecting: the sequential boundary the monitor uses and the naive rule it replaced
(promote at the first look whose 1 - alpha interval clears 0). With ``--better 0`` (equal
arms) a promote is a false promote: the sequential rule should stay at or below alpha/2.
``--better 1`` makes the canary better (ROC AUC about +0.05): the promote share is the power.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from ab_simulation import RULES, coarse_population, simulate

    from nbpipeline.monitor import abtest
    from nbpipeline.monitor.config import MonitorConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--better", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=100,
                        help="bootstrap resamples per look (the monitor uses 2,000)")
    args = parser.parse_args()
    cfg = MonitorConfig(min_feedback=100, ab_alpha=args.alpha)
    champion, canary = coarse_population(), coarse_population(args.better)
    # the planned outcomes per arm for these arms (the se of the difference scales as
    # 1/sqrt(n)): spread the looks so that the last one is 20% past them
    probe = abtest.compare_arms(*(abtest.Arm(c * 10_000, c * 0) for c in (champion, canary)),
                                "roc_auc", cfg)
    planned = abtest.sequential(probe, cfg)["planned_outcomes"]
    step = math.ceil(planned * 1.2 / 2 / args.looks)
    print(f"{args.runs} runs, {args.looks} looks, {step:,} outcomes per arm between looks "
          f"(about {planned:,} planned over both arms); ROC AUC champion "
          f"{probe['champion']:.3f}, canary {probe['canary']:.3f}; ab_alpha {args.alpha}")
    start = time.perf_counter()
    rates = simulate(champion, canary, cfg, runs=args.runs, looks=args.looks, step=step,
                     seed=args.seed, resamples=args.resamples)
    print(f"{'rule':<12}" + "".join(f"{v:>18}" for v in rates["sequential"]))
    for rule in RULES:
        print(f"{rule:<12}" + "".join(f"{share:>18.1%}" for share in rates[rule].values()))
    print(f"(alpha/2 = {args.alpha / 2:.1%}; {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
