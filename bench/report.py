"""`nbp report` against the two `dvc ... diff` processes it used to start.

Builds the example project (notebooks, a sample of the data) in a temp dir, runs it with
`dvc repro`, commits, changes `train.max_iter` and runs again, so that the review page has
a previous run (git HEAD) to compare with. Then times, in alternating rounds after one
untimed warm-up each:

* A: `nbp report` (whole process: start-up, the page, the previous run read in-process);
* B: what the page cost before: `dvc metrics diff --all --json` and
  `dvc params diff --json`, run at the same time (as the old `nbp report` did, on top of
  its own work).

Prints the medians and the ratio A/B; the target for A is at most 1 s. Usage:

    python bench/report.py [--rounds 5] [--sample 0.03] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import BIN, env, make_projects, set_max_iter, sh


def _timed(*commands: list[str], cwd: Path) -> float:
    """Wall seconds until every command (started together) has finished."""
    started = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=cwd, env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for c in commands]
    for proc, command in zip(procs, commands, strict=True):
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{err}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=float, default=0.03, help="data.sample_fraction")
    parser.add_argument("--keep", type=Path, help="build the project here and keep it")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="nbp-bench-report-"))
    root = base / "notebooks-project"
    if not (root / "dvc.lock").is_file():
        root, _ = make_projects(base, args.sample)
        set_max_iter(root, 60)
        sh("dvc", "repro", cwd=root)
        sh("git", "add", "-A", cwd=root)
        sh("git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
           "commit", "-qm", "first run", cwd=root)
        set_max_iter(root, 80)
        sh("dvc", "repro", cwd=root)
    report = [str(BIN / "nbp"), "report"]
    dvc = str(BIN / "dvc")
    diffs = ([dvc, "metrics", "diff", "--all", "--json"], [dvc, "params", "diff", "--json"])
    _timed(report, cwd=root)
    _timed(*diffs, cwd=root)
    times: dict[str, list[float]] = {"nbp report": [], "dvc diffs": []}
    for round_no in range(args.rounds):
        order = [("nbp report", [report]), ("dvc diffs", list(diffs))]
        for name, commands in order[::-1] if round_no % 2 else order:
            times[name].append(_timed(*commands, cwd=root))
        print(f"round {round_no + 1}: nbp report {times['nbp report'][-1]:.2f}s  "
              f"dvc diffs {times['dvc diffs'][-1]:.2f}s", flush=True)
    a, b = (statistics.median(times[k]) for k in ("nbp report", "dvc diffs"))
    print(f"\nmedian of {args.rounds}: nbp report {a:.2f}s, the two dvc diffs it no longer "
          f"starts {b:.2f}s, ratio {a / b:.2f} (target: nbp report <= 1 s)")
    print(json.dumps({"rounds": args.rounds, "nbp_report_s": round(a, 3),
                      "dvc_diffs_s": round(b, 3), "ratio": round(a / b, 3)}))
    page = (root / "reports" / "index.html").read_text()
    assert "previous run: not available" not in page, "the page had no previous run to compare"
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
