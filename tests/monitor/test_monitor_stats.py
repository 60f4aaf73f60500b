"""Monitor statistics: binning in SQL equals numpy, drift tests agree with scipy, quality
metrics agree with scikit-learn, ROI follows its formula, settings errors name the field."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from nbpipeline.errors import MonitorError
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.drift import category_drift, chi_square, ks_binned, number_drift, psi
from nbpipeline.monitor.quality import OutcomeCounts, binned_auc, quality_metrics
from nbpipeline.monitor.reference import MISSING, category_binning, number_binning
from nbpipeline.monitor.roi import roi_figures
from nbpipeline.monitor.scan import WindowSpec, first_rowid, scan_codes
from nbpipeline.predlog import table as predlog


def test_sql_codes_equal_numpy_codes(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.normal(50, 10, 2000)
    live = np.concatenate([rng.normal(55, 12, 3000), [np.nan, -1e9, 1e9, ref.min(), ref.max()]])
    cats = ["UA", "AA", "B6", "it's", None, "ZZ-unseen"] * 500
    num = number_binning("temp", ref)
    cat = category_binning("carrier", ["UA", "AA", "B6", "it's", "UA"])
    conn = predlog.connect(tmp_path / "log.db")
    predlog.ensure_schema(conn, {"temp": "number", "carrier": "category"})
    conn.executemany(
        "INSERT INTO predictions (request_id, ts, role, features, f_temp, f_carrier) "
        "VALUES (?, ?, 'champion', '{}', ?, ?)",
        [(str(i), float(i), None if np.isnan(v) else float(v), cats[i % len(cats)])
         for i, v in enumerate(live)],
    )
    hist = scan_codes(conn, [num, cat], WindowSpec("rows", 10_000))
    assert hist.counts["temp"][0].tolist() == np.bincount(num.codes(live), minlength=128).tolist()
    expected_cat = np.bincount(cat.codes([cats[i % len(cats)] for i in range(len(live))]),
                               minlength=128)
    assert hist.counts["carrier"][0].tolist() == expected_cat.tolist()
    assert hist.counts["temp"][0][MISSING] == 1
    assert hist.counts["carrier"][0][0] > 0  # the unseen value is "other", not dropped


def test_since_starts_the_scan_near_its_time_without_an_index(tmp_path):
    """Rows are appended in time order, give or take a commit: first_rowid finds where
    ``since`` starts by binary search, with slack, and the ts filter does the rest."""
    rng = np.random.default_rng(3)
    conn = predlog.connect(tmp_path / "log.db")
    predlog.ensure_schema(conn, {"x": "number"})
    ts = 10.0 * np.arange(1000) + rng.uniform(-5, 5, 1000)  # slightly out of order
    conn.executemany(
        "INSERT INTO predictions (request_id, ts, role, features, f_x) VALUES (?, ?, 'c', '{}', 1)",
        [(str(i), float(t)) for i, t in enumerate(ts)],
    )
    assert first_rowid(conn, None) == 1
    start = first_rowid(conn, 5000.0)
    assert 400 < start <= 441  # rowid 441 holds ts ~4400 = since - SINCE_SLACK_SECONDS
    assert first_rowid(conn, 1e12) >= 1000 and first_rowid(conn, -1e12) == 1
    b = number_binning("x", [0.0, 2.0])
    counted = scan_codes(conn, [b], WindowSpec("rows", 10_000), since=5000.0).counts["x"].sum()
    assert counted == int((ts >= 5000.0).sum())


def test_windows_by_rows_and_seconds(tmp_path):
    conn = predlog.connect(tmp_path / "log.db")
    predlog.ensure_schema(conn, {"x": "number"})
    conn.executemany(
        "INSERT INTO predictions (request_id, ts, role, features, f_x) VALUES (?, ?, 'c', '{}', 1)",
        [(str(i), 1000.0 + i) for i in range(250)],
    )
    b = number_binning("x", [0.0, 2.0])
    by_rows = scan_codes(conn, [b], WindowSpec("rows", 100))
    assert by_rows.counts["x"].sum(axis=1).tolist() == [100, 100, 50]
    by_time = scan_codes(conn, [b], WindowSpec("seconds", 60))
    assert by_time.counts["x"].sum(axis=1).sum() == 250
    assert by_time.windows.tolist() == list(range(16, 21))  # 1000 s .. 1249 s, 60 s spans
    with pytest.raises(MonitorError, match="window_by"):
        WindowSpec("days", 1).sql()


def test_ks_on_fine_grid_matches_exact_ks():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 5000), rng.normal(0.2, 1, 3000)
    binning = number_binning("x", a)
    ca = np.bincount(binning.codes(a), minlength=128)[:MISSING]
    cb = np.bincount(binning.codes(b), minlength=128)[:MISSING]
    d, p = ks_binned(ca, cb)
    exact = stats.ks_2samp(a, b)
    assert abs(d - exact.statistic) < 0.01
    assert p < 1e-6 and exact.pvalue < 1e-6


def test_chi_square_matches_scipy_and_psi_is_zero_for_same_shares():
    ref = np.array([500.0, 300.0, 200.0, 0.0])
    cur = np.array([40.0, 40.0, 20.0, 0.0])
    stat, p = chi_square(ref, cur)
    expected = stats.chi2_contingency(np.vstack([ref[:3], cur[:3]]), correction=False)
    assert stat == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)
    assert psi(ref, ref * 3) == pytest.approx(0.0, abs=1e-12)
    assert psi(ref, cur) > 0.01


def test_number_and_category_drift_detect_shift_but_not_resample():
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, 20000)
    binning = number_binning("x", ref)
    counts = np.bincount(binning.codes(ref), minlength=128)
    same = np.bincount(binning.codes(rng.normal(0, 1, 2000)), minlength=128)
    moved = np.bincount(binning.codes(rng.normal(1, 1, 2000)), minlength=128)
    quiet = number_drift("x", counts[:MISSING], 0, same[:MISSING], 0)
    loud = number_drift("x", counts[:MISSING], 0, moved[:MISSING], 0)
    assert quiet.psi < 0.05 and quiet.statistic < 0.05
    assert loud.psi > 0.5 and loud.statistic > 0.3 and loud.p_value < 1e-10
    c = category_drift("c", np.array([800, 200]), 0, np.array([200, 800]), 0)
    assert c.test == "chi2" and c.p_value < 1e-10 and c.psi > 1


def test_binned_auc_close_to_sklearn_and_quality_metrics():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 4000)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 4000), 0, 1)
    bins = np.minimum((p * 100).astype(int), 99)
    pos = np.bincount(bins[y == 1], minlength=100).astype(float)
    neg = np.bincount(bins[y == 0], minlength=100).astype(float)
    assert abs(binned_auc(pos, neg) - roc_auc_score(y, p)) < 0.01
    d = (p >= 0.5).astype(int)
    c = OutcomeCounts(
        tp=int(((d == 1) & (y == 1)).sum()), fp=int(((d == 1) & (y == 0)).sum()),
        tn=int(((d == 0) & (y == 0)).sum()), fn=int(((d == 0) & (y == 1)).sum()),
        pos_hist=pos, neg_hist=neg,
    )
    m = quality_metrics(c)
    assert m["accuracy"] == pytest.approx((d == y).mean())
    assert m["outcome_rate"] == pytest.approx(y.mean())
    assert np.isnan(quality_metrics(OutcomeCounts())["roc_auc"])


def test_roi_formula():
    c = OutcomeCounts(tp=10, fp=20, tn=60, fn=10)
    r = roi_figures(c, {"tp": 40, "fp": -15, "tn": 0, "fn": 0}, 1.0)
    assert r == {"value": 100.0, "cost": 100.0, "roi_pct": 0.0}
    r = roi_figures(c, {"tp": 40, "fp": -5, "tn": 0, "fn": 0}, 2.0)
    assert r["roi_pct"] == pytest.approx((300 - 200) / 200 * 100)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"window_by": "days"}, "window_by"),
        ({"quality_limits": {"roc_auc": [0.9, 0.6]}}, "quality_limits.roc_auc"),
        ({"quality_limits": {"auc": [0.6, 0.9]}}, "quality_limits"),
        ({"value_model": {"tp": 1.0}}, "value_model"),
        ({"cost_per_prediction": 0.0}, "cost_per_prediction"),
        ({"retrain_action": "email"}, "retrain_action"),
        ({"windw_size": 5}, "unknown setting"),
        ({"reference": "last_year"}, "reference"),
        ({"reference": "slice"}, "reference_data"),
        ({"reference": "slice", "reference_data": "t.csv"}, "reference_months"),
        ({"reference_months": [13]}, "reference_months"),
        ({"reference_windows": 0}, "reference_windows"),
        ({"drift_pvalue": 0.0}, "drift_pvalue"),
    ],
)
def test_bad_settings_name_the_field(change, field):
    with pytest.raises(MonitorError, match=field.replace(".", r"\.")):
        MonitorConfig.from_params(change)


def test_missing_log_is_no_traffic(tmp_path):
    from nbpipeline.monitor.scan import open_log

    assert open_log(tmp_path / "absent.db") is None
    sqlite3.connect(tmp_path / "empty.db").close()
    assert open_log(tmp_path / "empty.db") is None
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(MonitorError, match="junk.db"):
        open_log(tmp_path / "junk.db")


def test_no_traffic_needs_no_model_and_writes_a_summary(tmp_path):
    import json

    from nbpipeline.monitor import run_monitor

    result = run_monitor(MonitorConfig(), tmp_path)  # fresh clone: no log, no model yet
    assert result.status == "no traffic yet" and result.alarms == [] and result.actions == []
    summary = json.loads((tmp_path / "alarms" / "last_run.json").read_text())
    assert summary["status"] == "no traffic yet" and summary["predictions"] == 0
    conn = predlog.connect(tmp_path / "logs" / "predictions.db")
    predlog.ensure_schema(conn, {"x": "number"})
    conn.execute("INSERT INTO predictions (request_id, ts, role, features, f_x) "
                 "VALUES ('r1', 1.0, 'champion', '{}', 1.0)")
    with pytest.raises(MonitorError, match="reference.parquet: not found"):
        run_monitor(MonitorConfig(), tmp_path)  # traffic but no model: say what to run


def test_sparse_categories_are_pooled_so_sampling_noise_is_not_drift():
    from nbpipeline.monitor.drift import pool_rare, psi_many

    rng = np.random.default_rng(3)
    shares = rng.dirichlet(np.full(100, 0.5))  # ~100 destinations, a few dominant
    ref = rng.multinomial(20000, shares).astype(float)
    cur = rng.multinomial(400, shares)[None, :].astype(float)  # the same distribution
    assert psi_many(ref, cur)[0] > 0.15  # raw: sampling noise over sparse bins
    pooled_ref, pooled_cur = pool_rare(ref, cur)
    assert psi_many(pooled_ref, pooled_cur)[0] < 0.1
    assert pooled_cur.sum() == 400 and pooled_ref.sum() == 20000  # nothing dropped
    moved = rng.multinomial(400, np.roll(shares, 7))[None, :].astype(float)
    pooled_ref, pooled_moved = pool_rare(ref, moved)
    assert psi_many(pooled_ref, pooled_moved)[0] > 0.25  # a real move still shows


def test_rolling_reference_is_the_previous_windows():
    from nbpipeline.monitor.analysis import _rolling

    counts = np.array([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0], [1.0, 3.0]])
    fixed = np.array([9.0, 1.0])
    rolled = _rolling(counts, fixed, 2)
    assert rolled.tolist() == [[9.0, 1.0], [4.0, 0.0], [4.0, 4.0], [2.0, 6.0]]


def test_estimated_performance_matches_realised_on_calibrated_scores():
    from nbpipeline.monitor.estimate import expected_counts, fit_calibration

    rng = np.random.default_rng(5)
    p = rng.beta(2, 5, 40000)
    y = (rng.random(40000) < p).astype(int)  # calibrated by construction
    calibration = fit_calibration(p[:20000], y[:20000])
    assert not calibration.applied and calibration.ece < 0.02
    live_p, live_y = p[20000:], y[20000:]
    decision = (live_p >= 0.35).astype(int)
    bins = np.clip((live_p * 100).astype(int), 0, 99)
    count, prob_sum = np.zeros((2, 100)), np.zeros((2, 100))
    np.add.at(count, (decision, bins), 1)
    np.add.at(prob_sum, (decision, bins), live_p)
    est = quality_metrics(expected_counts(count, prob_sum, calibration))
    assert est["roc_auc"] == pytest.approx(roc_auc_score(live_y, live_p), abs=0.01)
    assert est["accuracy"] == pytest.approx(((live_p >= 0.35) == live_y).mean(), abs=0.01)

    # over-confident scores (squashed towards 0 and 1): calibrated first, then right again
    squashed = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))
    calibration = fit_calibration(squashed[:20000], y[:20000])
    assert calibration.applied and "calibrated" in calibration.describe()
    bins = np.clip((squashed[20000:] * 100).astype(int), 0, 99)
    decision = (squashed[20000:] >= 0.35).astype(int)
    count, prob_sum = np.zeros((2, 100)), np.zeros((2, 100))
    np.add.at(count, (decision, bins), 1)
    np.add.at(prob_sum, (decision, bins), squashed[20000:])
    est = quality_metrics(expected_counts(count, prob_sum, calibration))
    assert est["accuracy"] == pytest.approx((decision == live_y).mean(), abs=0.015)
    assert est["roc_auc"] == pytest.approx(roc_auc_score(live_y, squashed[20000:]), abs=0.015)


def test_slice_reference_errors_name_the_setting(tmp_path):
    import pandas as pd

    from nbpipeline.monitor.reference import build_reference, slice_reference

    frame = pd.DataFrame({"x": np.arange(100.0), "when": pd.date_range(
        "2013-01-01", periods=100, freq="D", tz="UTC")})
    ref = build_reference(frame, [{"name": "x", "kind": "number"}])
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(MonitorError, match="monitor.reference_data: .*names no time column"):
        slice_reference(ref, tmp_path / "t.parquet", months=[1])
    ref.metadata = {"time_column": "when"}
    with pytest.raises(MonitorError, match=r"monitor.reference_data: no rows of .* months 7"):
        slice_reference(ref, tmp_path / "t.parquet", months=[7])
    with pytest.raises(MonitorError, match=r"reference_data: data/x.parquet: no such file"):
        slice_reference(ref, tmp_path / "x.parquet", months=[2], shown="data/x.parquet")
    spring = slice_reference(ref, tmp_path / "t.parquet", months=[2], start="2013-01-01")
    assert spring.rows == 28 and "months 2" in spring.name
    assert spring.counts["x"].sum() == 28 and ref.counts["x"].sum() == 100
