"""Notebooks vs scripts under DVC: what does running stages as notebooks cost?

Builds two copies of the example project in a temp dir — one whose stages are the
notebooks run by `nbp run`, one whose stages are the same code cells saved as plain
Python scripts (reading the same params.yaml through the same resolution) — and times,
side by side in one run:

* a full `dvc repro` (all stages), and
* a one-parameter change (`train.max_iter`), which re-runs train + evaluate.

An untimed full run of each warms the machine first; then rounds alternate
notebook/script so machine noise hits both, and the median drops one bad round.
Prints each time and the ratio notebooks/scripts (target <= 1.10). Both sides get the same
BLAS/OpenMP thread count (``--threads``, default: all cores, what ``nbp run`` gives a stage
running alone), so stages of other users counted by nbpipeline's thread share on a shared
machine do not tilt the comparison.

``--stage-overhead`` times instead a one-cell stage (a parameters cell and one code cell)
under ``nbp run`` against the same cell as a script, in alternating rounds, and prints
where the notebook's extra time goes: interpreter start and imports of ``nbp run``, reading
params and notebook, importing the kernel client and forking the HTML page renderer, kernel
start (papermill's own work included), the cell itself, kernel shutdown, the reports
(writing the .ipynb; the page, rendered by the renderer warmed up meanwhile), and the rest
(tracer check, exit). Target: <= 0.5 s more.

``--cells`` runs each project's `dvc repro` in alternating rounds and compares every code
cell that took >= 0.2 s, wall and CPU (``time.process_time``, all threads of the process),
in the kernel against the same code in the script: a cell slower in the kernel with equal
CPU waits on something (threads, the machine); one with more CPU does extra work there.

Each mode ends with the rows for README's Benchmarks table. Usage:

    python bench/pipeline.py [--rounds 5] [--sample 1.0] [--keep DIR] [--threads N]
    python bench/pipeline.py --stage-overhead [--rounds 5]
    python bench/pipeline.py --cells [--rounds 3] [--sample 1.0] [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from nbpipeline import threads  # noqa: E402
from nbpipeline.notebook import (  # noqa: E402
    PARAMETERS_TAG,
    notebook_parameters,
    parameters_cell_index,
    read_notebook,
    write_notebook,
)

STAGES = ("data", "train", "evaluate")
PARAM_LOADER = (
    "from pathlib import Path as _P\n"
    "from nbpipeline.params import load_params as _lp, stage_values as _sv\n"
    "globals().update(_sv(_lp(_P('params.yaml')), {stage!r}, {declared!r}))\n"
)


THREADS: int | None = None  # --threads: the same BLAS/OpenMP thread count on both sides


def env() -> dict[str, str]:
    e = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    for key in ("NBPIPELINE_STAGE", "NBPIPELINE_ROOT", "NBPIPELINE_RUNNING"):
        e.pop(key, None)
    if THREADS:
        e.update(threads.environment(THREADS), **{threads.THREADS_ENV: str(THREADS)})
    return e


def sh(*args: str, cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


CELL_LOG_ENV = "NBP_BENCH_CELL_LOG"  # --cells: where each side appends its cells' times
# One JSON line per code cell: side, cell key (sha1 of its source), wall and CPU seconds.
CELL_TIMER = (
    "import hashlib as _h, json as _j, os as _o, time as _t\n"
    "def _cell_log(side, source, wall, cpu):\n"
    "    with open(_o.environ['" + CELL_LOG_ENV + "'], 'a') as _f:\n"
    "        _f.write(_j.dumps([side, _h.sha1(source.encode()).hexdigest()[:12],\n"
    "                           _t.perf_counter() - wall, _t.process_time() - cpu]) + '\\n')\n"
)
# --cells, kernel side: an IPython startup file timing every cell the kernel runs
KERNEL_CELL_TIMER = CELL_TIMER + (
    "_started = []\n"
    "def _pre(info):\n"
    "    _started.append((info.raw_cell, _t.perf_counter(), _t.process_time()))\n"
    "def _post(result):\n"
    "    if _started:\n"
    "        _cell_log('kernel', *_started.pop())\n"
    "get_ipython().events.register('pre_run_cell', _pre)\n"
    "get_ipython().events.register('post_run_cell', _post)\n"
)


def cell_key(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:12]


def notebook_to_script(path: Path, stage: str, timed: bool = False) -> str:
    """The notebook's code cells as one script; its parameters come from params.yaml.
    ``timed``: each cell appends its wall and CPU time to $NBP_BENCH_CELL_LOG."""
    nb = read_notebook(path)
    declared = notebook_parameters(nb)
    index = parameters_cell_index(nb)
    parts = ["def display(*objects):  # IPython's display(), as plain text\n    print(*objects)"]
    if timed:
        parts.append(CELL_TIMER)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if timed:
            parts.append(f"_w, _c = _t.perf_counter(), _t.process_time()\n{cell.source}\n"
                         f"_cell_log('script', {cell.source!r}, _w, _c)")
        else:
            parts.append(cell.source)
        if i == index:
            parts.append(PARAM_LOADER.format(stage=stage, declared=declared))
    return "\n\n".join(parts) + "\n"


def make_projects(base: Path, sample: float, timed: bool = False) -> tuple[Path, Path]:
    nbs, scripts = base / "notebooks-project", base / "scripts-project"
    for root in (nbs, scripts):
        root.mkdir(parents=True)
        shutil.copytree(REPO / "notebooks", root / "notebooks")
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["data"]["sample_fraction"] = sample
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["stages"] = {k: v for k, v in spec["stages"].items() if k in STAGES}
    (nbs / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (scripts / "scripts").mkdir()
    for stage, body in spec["stages"].items():
        source = notebook_to_script(REPO / "notebooks" / f"{stage}.ipynb", stage, timed)
        (scripts / "scripts" / f"{stage}.py").write_text(source)
        body["cmd"] = f"python scripts/{stage}.py"
        body["deps"] = [f"scripts/{stage}.py" if d.startswith("notebooks/") else d
                        for d in body["deps"]]
        body["outs"] = [o for o in body["outs"] if not str(o).startswith("reports/")]
    (scripts / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.rmtree(scripts / "notebooks")
    for root in (nbs, scripts):
        sh("git", "init", "-q", cwd=root)
        sh("dvc", "init", "-q", cwd=root)
        sh("dvc", "config", "core.analytics", "false", cwd=root)
    return nbs, scripts


def set_max_iter(root: Path, value: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["max_iter"] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def timed_repro(root: Path) -> float:
    started = time.perf_counter()
    sh("dvc", "repro", cwd=root)
    return time.perf_counter() - started


def clean(root: Path) -> None:
    """Forget previous runs (outputs, lock, run-cache) so the next repro runs everything."""
    for name in ("data", "models", "metrics", "plots", "reports", "dvc.lock"):
        path = root / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


ONE_CELL = "total = sum(i * i for i in range(n))\nprint(total)"
# `nbp run one` as nbp's CLI runs it, reporting when it started and where its time went
NBP_RUN_TIMED = (
    "import time; entered = time.time(); started = time.perf_counter()\n"
    "import json, sys\n"
    "from nbpipeline.pipeline.run import run_stage\n"
    "from nbpipeline.project import find_project\n"
    "imported = time.perf_counter()\n"
    "result = run_stage(find_project(), 'one', progress=sys.stderr)\n"
    "print(json.dumps({'entered': entered, 'imports': imported - started, **result.timings}))\n"
    "import os; sys.stdout.flush(); sys.stderr.flush(); os._exit(0)  # as nbp run exits\n"
)
BREAKDOWN = (
    ("python start", "start"), ("imports of nbp run", "imports"),
    ("params + notebook", "plan"), ("kernel client + page renderer", "renderer"),
    ("kernel start (+ papermill)", "kernel"),
    ("the cell", "cells"), ("kernel shutdown", "shutdown"), ("reports (ipynb, html)", "report"),
    ("rest (trace check, cleanup, exit)", "rest"),
)


def make_one_cell_project(base: Path) -> Path:
    """A project whose one stage is a parameters cell and one code cell, also as a script."""
    from nbformat import v4

    root = base / "one-cell"
    (root / "notebooks").mkdir(parents=True)
    (root / "scripts").mkdir()
    params = v4.new_code_cell("n = 1", metadata={"tags": [PARAMETERS_TAG]})
    nb = v4.new_notebook(cells=[params, v4.new_code_cell(ONE_CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    write_notebook(nb, root / "notebooks" / "one.ipynb")
    (root / "scripts" / "one.py").write_text(notebook_to_script(root / "notebooks" / "one.ipynb",
                                                                "one"))
    (root / "params.yaml").write_text("one:\n  n: 200000\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  one:\n    cmd: nbp run one\n    deps: [notebooks/one.ipynb]\n"
        "    params: [one]\n    outs: [reports/one.ipynb, reports/one.html]\n")
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    return root


def timed(args: list[str], root: Path) -> tuple[float, float, str]:
    """(wall seconds, time.time() at start, stdout) of one command."""
    at = time.time()
    started = time.perf_counter()
    out = sh(*args, cwd=root)
    return time.perf_counter() - started, at, out


def stage_overhead(rounds: int, base: Path) -> None:
    root = make_one_cell_project(base)
    nbp_run = [str(BIN / "nbp"), "run", "one"]
    timed_run = [sys.executable, "-c", NBP_RUN_TIMED]
    script = [sys.executable, "scripts/one.py"]
    for args in (nbp_run, script):  # untimed warm-up
        timed(args, root)
    times: dict[str, list[float]] = {"notebook": [], "script": []}
    parts: dict[str, list[float]] = {key: [] for _, key in BREAKDOWN}
    for round_no in range(rounds):
        order = [("notebook", nbp_run), ("script", script), ("timed", timed_run)]
        if round_no % 2:
            order.reverse()
        for kind, args in order:
            wall, at, out = timed(args, root)
            if kind != "timed":
                times[kind].append(wall)
                continue
            record = json.loads(out.strip().splitlines()[-1])
            record["start"] = record.pop("entered") - at
            record["rest"] = wall - sum(record[key] for _, key in BREAKDOWN if key != "rest")
            for _, key in BREAKDOWN:
                parts[key].append(record[key])
        print(f"round {round_no + 1}: nbp run {times['notebook'][-1]:5.2f}s  "
              f"script {times['script'][-1]:5.2f}s", flush=True)
    n, s = statistics.median(times["notebook"]), statistics.median(times["script"])
    print(f"\none-cell stage (median of {rounds}): nbp run {n:.2f}s, script {s:.2f}s, "
          f"overhead {n - s:+.2f}s (target <= 0.5 s)")
    print("where a timed `nbp run` spent its time (median per part; the script spends "
          f"{s:.2f}s in all):")
    for label, key in BREAKDOWN:
        print(f"  {label:34s}{statistics.median(parts[key]):6.2f}s")
    print(json.dumps({"notebook_s": round(n, 3), "script_s": round(s, 3),
                      "overhead_s": round(n - s, 3),
                      **{key: round(statistics.median(v), 3) for key, v in parts.items()}}))
    where = ", ".join(f"{label} {statistics.median(parts[key]):.2f} s"
                      for label, key in sorted(BREAKDOWN, key=lambda b: -statistics.median(
                          parts[b[1]])))
    print("\nREADME row:")
    print(f"| `python bench/pipeline.py --stage-overhead` | a one-cell stage (parameters + one "
          f"code cell) under `nbp run` vs the cell as a script, {rounds} alternating rounds, "
          f"with the breakdown | `nbp run` {n:.2f} s vs script {s:.2f} s: **{n - s:+.2f} s** "
          f"(target <= 0.5 s); {where} |")


def cell_labels() -> dict[str, str]:
    """Cell key -> 'stage cell N: first line', for the example's code cells."""
    labels = {}
    for stage in STAGES:
        nb = read_notebook(REPO / "notebooks" / f"{stage}.ipynb")
        code = [c for c in nb.cells if c.cell_type == "code"]
        for number, cell in enumerate(code, start=1):
            first = next((ln.strip() for ln in cell.source.splitlines() if ln.strip()), "")
            labels[cell_key(cell.source)] = f"{stage} {number}: {first[:40]}"
    return labels


def cell_times(rounds: int, base: Path, sample: float) -> None:
    """Per cell, wall and CPU in the kernel vs in the script (module docstring)."""
    nbs, scripts = make_projects(base, sample, timed=True)
    startup = base / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-nbp-bench-cells.py").write_text(KERNEL_CELL_TIMER)
    log = base / "cells.jsonl"
    os.environ.update({CELL_LOG_ENV: str(log), "IPYTHONDIR": str(base / "ipython")})
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_no in range(rounds + 1):  # round 0: untimed warm-up
        order = [nbs, scripts] if round_no % 2 else [scripts, nbs]
        for root in order:
            clean(root)
            set_max_iter(root, 200)
            log.unlink(missing_ok=True)
            timed_repro(root)
            for line in log.read_text().splitlines() if round_no else []:
                side, key, wall, cpu = json.loads(line)
                times.setdefault((side, key), []).append((wall, cpu))
        print(f"round {round_no}{' (warm-up)' if not round_no else ''} done", flush=True)
    labels = cell_labels()
    rows, totals = [], [0.0, 0.0, 0.0, 0.0]
    for key, label in labels.items():
        kernel, script = times.get(("kernel", key)), times.get(("script", key))
        if not kernel or not script:
            continue
        medians = [statistics.median(t[i] for t in side) for side in (kernel, script)
                   for i in (0, 1)]
        totals = [a + b for a, b in zip(totals, medians, strict=True)]
        if max(medians[0], medians[2]) >= 0.2:
            rows.append((label, *medians))
    print(f"\n{'cell (median of ' + str(rounds) + ')':48s}{'wall: kernel':>13s}{'script':>8s}"
          f"{'ratio':>7s}{'CPU: kernel':>13s}{'script':>8s}{'ratio':>7s}")
    for label, kw, kc, sw, sc in [*rows, ("all code cells", *totals)]:
        print(f"{label:48s}{kw:12.2f}s{sw:7.2f}s{kw / sw:7.2f}{kc:12.2f}s{sc:7.2f}s"
              f"{kc / max(sc, 1e-9):7.2f}")
    kw, kc, sw, sc = totals
    print("\nREADME row:")
    print(f"| `python bench/pipeline.py --cells --sample {sample}` | each example cell in the "
          f"kernel vs in the script, wall and CPU, median of {rounds} alternating rounds | "
          f"all code cells: wall {kw:.1f} s vs {sw:.1f} s (**{kw / sw:.2f}**), CPU {kc:.1f} s "
          f"vs {sc:.1f} s (**{kc / sc:.2f}**) |")


def print_readme_rows(summary: dict[str, dict[str, float]], rounds: int, sample: float,
                      threads_: int) -> None:
    """README's Benchmarks row for this run, and the issue's notebooks/scripts table."""
    full, change = summary["full"], summary["change"]
    sample_note = "full data" if sample == 1.0 else f"{sample:.0%} sample"
    print("\nREADME row:")
    print(f"| `python bench/pipeline.py` | the example ({sample_note}) as notebooks vs the same "
          "code as scripts, under DVC; an untimed warm-up run of each, then alternating rounds | "
          f"full run **{full['ratio']:.2f}** ({full['notebooks_s']:.1f} s vs "
          f"{full['scripts_s']:.1f} s, median of {rounds}); one-param change "
          f"**{change['ratio']:.2f}** ({change['notebooks_s']:.1f} s vs "
          f"{change['scripts_s']:.1f} s, median of {rounds}); {threads_} BLAS/OpenMP threads "
          "both sides (target **1.10**) |")
    print("\nthe issue's table:\n| run | notebooks | scripts | ratio |\n|---|---|---|---|")
    for label, case in (("full", full), ("one-param change", change)):
        print(f"| {label} | {case['notebooks_s']:.1f} s | {case['scripts_s']:.1f} s | "
              f"**{case['ratio']:.2f}** |")


def main() -> None:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=float, default=1.0, help="data.sample_fraction")
    parser.add_argument("--keep", type=Path, help="build the projects here and keep them")
    parser.add_argument("--threads", type=int, default=threads.available_cores(),
                        help="BLAS/OpenMP threads on both sides (default: all cores)")
    parser.add_argument("--stage-overhead", action="store_true",
                        help="time a one-cell stage under nbp run vs as a script")
    parser.add_argument("--cells", action="store_true",
                        help="per cell, wall and CPU in the kernel vs in the script")
    args = parser.parse_args()
    THREADS = args.threads
    base = args.keep or Path(tempfile.mkdtemp(prefix="nbp-bench-"))
    if args.stage_overhead or args.cells:
        if args.stage_overhead:
            stage_overhead(args.rounds, base)
        else:
            cell_times(args.rounds, base, args.sample)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        return
    nbs, scripts = make_projects(base, args.sample)
    times: dict[str, dict[str, list[float]]] = {
        kind: {"full": [], "change": []} for kind in ("notebooks", "scripts")
    }
    for root in (nbs, scripts):  # untimed: the first run also warms the OS file cache
        set_max_iter(root, 200)
        timed_repro(root)
    for round_no in range(args.rounds):
        order = [("notebooks", nbs), ("scripts", scripts)]
        if round_no % 2:
            order.reverse()
        for kind, root in order:
            clean(root)
            set_max_iter(root, 200)
            times[kind]["full"].append(timed_repro(root))
            set_max_iter(root, 150 + round_no)
            times[kind]["change"].append(timed_repro(root))
            print(f"round {round_no + 1} {kind:9s} full {times[kind]['full'][-1]:6.1f}s  "
                  f"one-param change {times[kind]['change'][-1]:6.1f}s", flush=True)
    summary = {}
    print(f"\n{'':10s}{'notebooks':>11s}{'scripts':>10s}{'ratio':>8s}   (median of {args.rounds})")
    for case in ("full", "change"):
        n = statistics.median(times["notebooks"][case])
        s = statistics.median(times["scripts"][case])
        summary[case] = {"notebooks_s": round(n, 2), "scripts_s": round(s, 2),
                         "ratio": round(n / s, 3)}
        label = "full run" if case == "full" else "1 param"
        print(f"{label:10s}{n:10.1f}s{s:9.1f}s{n / s:8.2f}")
    print(json.dumps({"sample_fraction": args.sample, "rounds": args.rounds, **summary}))
    print_readme_rows(summary, args.rounds, args.sample, args.threads)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
