"""End to end through the CLI: `nbp serve` (real uvicorn on 127.0.0.1), `nbp replay` of real
2013 months with their outcomes, `nbp monitor` (the real notebook through the runner),
the off switch answered by the server, and `nbp promote` lifting it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from candidates import flights_candidate
from monitor_support import BIN, flights_project, months, nbp, nbp_serve, write_gate
from projects import REPO
from serve_fixtures import free_port

from nbpipeline.monitor.command import ALARM_EXIT, WARN_EXIT, served_features
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.core import run_monitor
from nbpipeline.monitor.replay import json_row, replay
from nbpipeline.release.registry import Registry

WINDOW = 400


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "monitor.ipynb", root / "notebooks")
    flights_project(root, window_size=WINDOW, min_rows=200, min_feedback=150, roi_windows=2)
    return root


def test_monitor_cli_no_traffic_then_replayed_drift(project):
    quiet = nbp("monitor", cwd=project)
    assert "no traffic yet" in quiet.stdout
    assert (project / "reports" / "monitor.html").is_file()

    write_gate(project, None)
    nbp("promote", "--reason", "first model", cwd=project)
    with nbp_serve(project) as url:
        months(list(range(1, 9))).to_parquet(project / "jan-aug.parquet")
        control = nbp("replay", "--data", "jan-aug.parquet", "--from", "2013-01-01",
                      "--to", "2013-09-02", "--rows", str(WINDOW), "--rate", "400",
                      "--url", url, "--seed", "3", cwd=project)
        assert f"replayed {WINDOW}/{WINDOW} rows" in control.stdout
        assert f"{WINDOW} outcomes sent" in control.stdout
        cfg = MonitorConfig.from_params(yaml.safe_load(
            (project / "params.yaml").read_text())["monitor"])
        first = run_monitor(cfg, project)  # same library as the notebook, without a kernel
        assert not [a for a in first.alarms if "drift" in a.kind], first.lines()

        features = served_features(url)
        sent = replay(url, months([12], rows=WINDOW, seed=0), features, target="delayed",
                      rate=400)
        assert sent.feedback == WINDOW and sent.errors == 0
        # December: the inputs moved, the model still earns: warnings, exit 4, no retrain
        december = nbp("monitor", cwd=project, check_code=WARN_EXIT)
        assert "WARN input_drift: Feature 'temp' drifted against the training data: PSI " \
            in december.stdout
        assert "ACTION" not in december.stdout and "ALARM" not in december.stdout
        said = december.stdout.splitlines()
        assert [line.split(":")[2].strip() for line in said[-5:]] == [
            "quality", "estimated quality", "ROI", "output drift", "what to do"], said
        assert said[-1].endswith("model performance unchanged: no action."), said
        assert not (project / "retrain" / "requested.json").exists()

        # autumn: the model stops paying (ROI < 0 for roi_windows windows) -> off switch
        replay(url, months([9, 10, 11], rows=2 * WINDOW, seed=5), features, target="delayed",
               rate=400)
        result = run_monitor(cfg, project)
        assert [a.kind for a in result.actions if a.kind == "switch_off"] == ["switch_off"]
        assert Registry(project / "registry").state().switched_off
        time.sleep(1.0)  # the server polls the registry every 0.2 s
        row = _one_row(url)
        answer = httpx.post(f"{url}/predict", json=row, timeout=10).json()
        assert answer["fallback"] is True and answer["role"] == "fallback"

        lifted = nbp("on", "--reason", "value model reviewed", cwd=project)
        assert "v1 serves again" in lifted.stdout
        assert not Registry(project / "registry").state().switched_off
        time.sleep(1.0)
        answer = httpx.post(f"{url}/predict", json=row, timeout=10).json()
        assert answer["fallback"] is False and answer["model_version"] == "v1"
        after = run_monitor(cfg, project)
        assert not [a for a in after.actions if a.kind == "switch_off"]
    events = [e.kind for e in Registry(project / "registry").events()]
    # autumn loses money (an alarm) and its inputs moved: a retrain request, after the off
    # switch; December's moved inputs alone requested none; `nbp on` lifted the switch
    assert events == ["register", "promote", "switch_off", "retrain_requested", "switch_on"]


def _one_row(url: str) -> dict:

    from flights import month_rows

    from nbpipeline.monitor.command import served_features

    frame = month_rows([12], rows=1, seed=9)
    return json_row(frame.to_dict("records")[0], served_features(url))


def test_retrain_action_dvc_without_a_champion_has_nothing_new_to_learn_from(tmp_path):
    """The retrain request is written, but no experiment runs: no champion served the
    logged rows (the loop itself: tests/monitor/test_retrain.py)."""
    from monitor_support import kinds, log_traffic, run_monitor_command

    from nbpipeline.predlog import table as predlog

    root = tmp_path / "retrain"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "monitor.ipynb", root / "notebooks")
    (root / "dvc.yaml").write_text(
        "stages:\n  retrain:\n    cmd: python -c \"open('retrained.txt', 'w').write('ok')\"\n"
        "    outs:\n      - retrained.txt\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {"monitor": dict(params["monitor"], window_size=WINDOW, min_rows=200,
                              retrain_action="dvc")}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    model, meta = flights_candidate(root / "models" / "candidate", rows=4000, seed=0)
    conn = predlog.connect(root / "logs" / "predictions.db")
    predlog.ensure_schema(conn, kinds(meta))
    # December's inputs with broken outputs: moved inputs alone would only warn
    log_traffic(conn, model, months([12], rows=WINDOW, seed=4), version="v1", shift=0.3)
    conn.close()
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True)
    code, lines = run_monitor_command(root)
    assert code == ALARM_EXIT, lines
    assert any("retrain: nothing new to learn from: no champion" in line for line in lines)
    assert not (root / "retrained.txt").exists()
    assert json.loads((root / "retrain" / "requested.json").read_text())["action"] == "dvc"


def test_replay_waits_briefly_for_a_starting_server_then_names_the_address() -> None:
    import time

    from nbpipeline.errors import MonitorError

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(MonitorError, match=rf"cannot read {url}/schema .*start the server"):
        served_features(url, wait=0.5)
    assert time.monotonic() - started >= 0.5
