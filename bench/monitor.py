"""Benchmark: drift + quality over 1,000,000 logged predictions, monitor vs plain pandas.

    python bench/monitor.py [--rows 1000000] [--keep DIR]

1. builds a prediction log (nbpipeline.predlog.table schema) of real nycflights13 rows drawn
   with replacement, scored by a real model (models/candidate if present, else a small
   fit), with real outcomes as feedback for 60% of them (not timed);
2. runs, each in a fresh process, (a) the monitor's analysis (``nbpipeline.monitor.
   analysis.analyze``: SQL binning + numpy) and (b) a plain pandas baseline that reads
   the whole log with ``pandas.read_sql`` and computes the same per-window drift (same
   bins and statistics) and per-window/version quality;
3. prints wall time and peak RSS side by side and checks that both found the same PSI.

    python bench/monitor.py --false-alarms K [--window 2000]

counts warnings and alarms instead (issue 15, point 6), in-process on a log written as the
server writes it: K windows drawn from the training period (January-August) against the
training data; each month of March-August against the training data and against the same
month of the January-August table (a same-period slice); the autumn months, where the model
really loses money. Expected: 0, warnings only, 0, alarms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WINDOW = 2000
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the example's data


def build(db: Path, rows: int, workdir: Path) -> None:
    import numpy as np
    from flights import FEATURES, TARGET, contract, month_rows

    from nbpipeline.modeling import build_model
    from nbpipeline.predlog import table as predlog
    from nbpipeline.release.candidate import save_candidate

    started = time.perf_counter()
    frame = month_rows(list(range(1, 13)))
    train = frame[frame["month"] <= 8].sample(20000, random_state=0)
    model = build_model(contract(train), max_iter=50, min_samples_leaf=40, seed=0, max_depth=5)
    model.fit(train[FEATURES], train[TARGET])
    reference = train.sample(5000, random_state=1)[FEATURES + [TARGET]]
    reference = reference.assign(probability=model.predict_proba(reference[FEATURES])[:, 1])
    save_candidate(model, workdir / "candidate", contract=contract(train), reference=reference,
                   params={}, data_paths={}, search={})
    rng = np.random.default_rng(0)
    picked = frame.iloc[np.sort(rng.integers(0, len(frame), rows))].reset_index(drop=True)
    proba = model.predict_proba(picked[FEATURES])[:, 1]
    kinds = {f: ("category" if picked[f].dtype == object else "number") for f in FEATURES}
    conn = predlog.connect(db)
    predlog.ensure_schema(conn, kinds)
    cols = [*predlog.BASE_COLUMN_NAMES, *(predlog.feature_column(f) for f in FEATURES)]
    sql = f"INSERT INTO predictions ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    t0 = time.time() - rows * 0.01
    roles = rng.random(rows) < 0.1
    latency = rng.gamma(2.0, 2.0, rows)
    values = picked[FEATURES].astype(object).where(picked[FEATURES].notna(), None)
    records = values.to_numpy().tolist()

    def gen():  # type: ignore[no-untyped-def]
        for i, rec in enumerate(records):
            yield (f"r{i}", t0 + i * 0.01, "v2" if roles[i] else "v1",
                   "canary" if roles[i] else "champion", None, int(proba[i] >= 0.35),
                   float(proba[i]), float(latency[i]), 0,
                   "{}",  # as nbp serve logs: every feature is in its typed column
                   *rec)

    conn.execute("BEGIN")
    conn.executemany(sql, gen())
    conn.execute("COMMIT")
    labelled = rng.random(rows) < 0.6
    outcomes = picked[TARGET].to_numpy()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO feedback VALUES (?, ?, ?)",
                     ((f"r{i}", t0 + i * 0.01 + 3600, int(outcomes[i]))
                      for i in np.flatnonzero(labelled)))
    conn.execute("COMMIT")
    conn.close()
    size = db.stat().st_size / 2**20
    print(f"built {rows:,} predictions ({labelled.sum():,} with feedback), {size:.0f} MiB, "
          f"in {time.perf_counter() - started:.0f}s")


def _config():  # type: ignore[no-untyped-def]
    from nbpipeline.monitor.config import MonitorConfig

    return MonitorConfig(window_size=WINDOW, min_rows=500, min_feedback=200)


def run_monitor_analysis(db: Path, workdir: Path) -> dict:
    from nbpipeline.monitor.analysis import analyze
    from nbpipeline.monitor.reference import load_reference

    ref = load_reference(workdir / "candidate" / "reference.parquet",
                         workdir / "candidate" / "metadata.json")
    started = time.perf_counter()
    a = analyze(_config(), ref, db)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "windows": len(a.windows), "drift_rows": len(a.drift),
            "quality_rows": len(a.quality),
            "psi_temp_last": float(a.drift[a.drift.feature == "temp"]["psi"].iloc[-1])}


def run_pandas_baseline(db: Path, workdir: Path) -> dict:
    import numpy as np
    import pandas as pd

    from nbpipeline.monitor.drift import category_drift, number_drift
    from nbpipeline.monitor.reference import CODES, MISSING, load_reference

    ref = load_reference(workdir / "candidate" / "reference.parquet",
                         workdir / "candidate" / "metadata.json")
    started = time.perf_counter()
    conn = __import__("sqlite3").connect(db)
    df = pd.read_sql("SELECT * FROM predictions ORDER BY rowid", conn)
    fb = pd.read_sql("SELECT request_id, outcome FROM feedback", conn)
    df["window"] = np.arange(len(df)) // WINDOW
    drift = []
    for w, part in df.groupby("window"):
        for b in ref.binnings:
            col = part["probability"] if b.kind == "output" else part[b.column]
            cur = np.bincount(b.codes(col), minlength=CODES)
            refc = ref.counts[b.name]
            if b.kind == "category":
                n = len(b.categories) + 1
                d = category_drift(b.name, refc[:n], int(refc[MISSING]), cur[:n], int(cur[MISSING]))
            else:
                d = number_drift(b.name, refc[:MISSING], int(refc[MISSING]), cur[:MISSING],
                                 int(cur[MISSING]))
            drift.append((w, b.name, d.psi))
    labelled = df.merge(fb, on="request_id")
    labelled["tp"] = (labelled.prediction == 1) & (labelled.outcome == 1)
    quality = labelled.groupby(["window", "model_version", "role"]).agg(
        n=("outcome", "size"), tp=("tp", "sum"), accuracy=("outcome", lambda s: 0.0))
    for key, part in labelled.groupby(["window", "model_version", "role"]):
        y, p = part["outcome"].to_numpy(), part["probability"].to_numpy()
        quality.loc[key, "accuracy"] = float(((p >= 0.35) == y).mean())
        if 0 < y.sum() < len(y):
            from sklearn.metrics import roc_auc_score

            quality.loc[key, "roc_auc"] = roc_auc_score(y, p)
    seconds = time.perf_counter() - started
    temp = [psi for w, name, psi in drift if name == "temp"]
    return {"seconds": seconds, "windows": int(df["window"].nunique()), "drift_rows": len(drift),
            "quality_rows": len(quality), "psi_temp_last": float(temp[-1])}


def false_alarms(k: int, window: int) -> None:
    """Count warnings and alarms per case and reference (see the module docstring)."""
    from candidates import flights_candidate
    from monitor_support import kinds, log_traffic, months

    from nbpipeline.monitor import MonitorConfig, run_monitor
    from nbpipeline.predlog import table as predlog

    root = Path(tempfile.mkdtemp(prefix="nbp-false-alarms-"))
    model, meta = flights_candidate(root / "models" / "candidate", rows=12000, seed=0)
    months(list(range(1, 9)), rows=60000, seed=1).to_parquet(root / "jan-aug.parquet")
    conn = predlog.connect(root / "logs" / "predictions.db")
    predlog.ensure_schema(conn, kinds(meta))
    training = MonitorConfig(window_size=window, min_rows=window // 2,
                             min_feedback=window // 4)

    def judged(ms: list[int], seed: int, cfg: MonitorConfig) -> tuple[int, int]:
        log_traffic(conn, model, months(ms, rows=window, seed=seed), version="v1",
                    ts0=time.time() - 3600)
        result = run_monitor(cfg, root, act_on_alarms=False, log_alarms=False,
                             write_summary=False)
        return (sum(a.level == "warn" for a in result.alarms),
                sum(a.level == "alarm" for a in result.alarms))

    def same_month(m: int) -> MonitorConfig:
        return MonitorConfig(**{**training.as_dict(), "reference": "slice",
                                "reference_data": "jan-aug.parquet", "reference_months": [m]})

    rows = [("training period", "training", [judged(list(range(1, 9)), 100 + i, training)
                                             for i in range(k)])]
    for m in range(3, 9):
        rows.append((f"month {m}", "training", [judged([m], 200 + m, training)]))
        rows.append((f"month {m}", f"same month ({m})", [judged([m], 200 + m, same_month(m))]))
    for m in (9, 10, 11):
        rows.append((f"month {m}", "training", [judged([m], 300 + m, training)]))
    print(f"windows of {window} real flights, model fitted on January-August; "
          "warnings / alarms per window")
    print(f"{'case':18}{'reference':18}{'windows':>8}{'with warnings':>15}{'with alarms':>13}")
    for case, reference, found in rows:
        warned = sum(w > 0 for w, _ in found)
        alarmed = sum(a > 0 for _, a in found)
        print(f"{case:18}{reference:18}{len(found):>8}{warned:>15}{alarmed:>13}")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the scan's workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def child(kind: str, db: Path, workdir: Path) -> None:
    fn = run_monitor_analysis if kind == "monitor" else run_pandas_baseline
    before = _cpu()
    out = fn(db, workdir)
    out["cpu_seconds"] = _cpu() - before
    out["peak_rss_mib"] = max(resource.getrusage(who).ru_maxrss
                              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    print(json.dumps(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="reuse/keep the generated log in this dir")
    parser.add_argument("--false-alarms", type=int, metavar="K",
                        help="count warnings and alarms over K training-period windows, "
                        "then seasonal and autumn windows (no timing)")
    parser.add_argument("--window", type=int, default=WINDOW, help="rows per window")
    parser.add_argument("--child", choices=["monitor", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.db, args.db.parent)
        return 0
    if args.false_alarms:
        false_alarms(args.false_alarms, args.window)
        return 0
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="nbp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "predictions.db"
    if not db.exists():
        build(db, args.rows, workdir)
    results = {}
    for kind in ("monitor", "pandas"):
        # Through `sh -c` (which forks, not execs): Linux keeps ru_maxrss across fork+exec,
        # so a child started straight from this (large) process would report this
        # process's peak as its own; a grandchild starts from the shell's small one.
        command = [sys.executable, __file__, "--child", kind, "--db", str(db)]
        proc = subprocess.run(["/bin/sh", "-c", '"$@"', "sh", *command],
                              capture_output=True, text=True, check=True)
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        # a baseline process also imports the same libraries: peak RSS includes ~150 MiB of them
    m, p = results["monitor"], results["pandas"]
    print(f"{'':24}{'monitor (SQL bins)':>20}{'pandas baseline':>18}")
    print(f"{'wall time (s)':24}{m['seconds']:>20.2f}{p['seconds']:>18.2f}")
    print(f"{'CPU time (s)':24}{m['cpu_seconds']:>20.2f}{p['cpu_seconds']:>18.2f}")
    print(f"{'peak RSS (MiB)':24}{m['peak_rss_mib']:>20.0f}{p['peak_rss_mib']:>18.0f}")
    print(f"{'windows':24}{m['windows']:>20}{p['windows']:>18}")
    print(f"{'drift rows':24}{m['drift_rows']:>20}{p['drift_rows']:>18}")
    print(f"{'PSI temp, last window':24}{m['psi_temp_last']:>20.4f}{p['psi_temp_last']:>18.4f}")
    load = os.getloadavg()[0]
    print(f"load average during the runs: {load:.1f} on {os.cpu_count()} cores "
          "(other processes share the machine; wall time grows with it)")
    ok = m["seconds"] < 5 and m["peak_rss_mib"] < 1024
    print(f"target < 5 s and < 1 GiB: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
