"""The canary's A/B verdict on real July 2013 flights replayed through the real `nbp serve`
(uvicorn on 127.0.0.1) with their real outcomes as feedback.

Three real models of the example's shape: v1 fitted on January (ROC AUC about 0.59 on
July), v2 on May-June, i.e. on more recent data (about 0.74), v3 on shuffled outcomes (about
0.5). A better canary is promoted by the monitor itself (``canary_auto``); a worse one gets
the verdict "roll back" with the command to run, and that command works.
"""

from __future__ import annotations

import json
import shlex

import httpx
import pytest
import yaml
from candidates import flights_candidate
from monitor_support import flights_project, months, nbp, nbp_serve, run_monitor_command
from projects import REPO
from serve_fixtures import register, wait_for

from nbpipeline.monitor import abtest
from nbpipeline.monitor.command import served_features
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.core import run_monitor
from nbpipeline.monitor.replay import replay
from nbpipeline.release.registry import AB_VERDICT, Registry

pytestmark = pytest.mark.slow
MONITOR = {"window_size": 400, "min_rows": 200, "min_feedback": 150,
           # the A/B verdict alone judges the canary here (no alarm-driven actions)
           "auto_rollback": False, "off_switch": False, "retrain_action": "none"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """The project, its registry (v1 champion; v2, v3 registered) and its running server."""
    import shutil

    root = tmp_path_factory.mktemp("ab") / "project"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "monitor.ipynb", root / "notebooks")
    flights_project(root, candidate=False, **MONITOR)
    models = tmp_path_factory.mktemp("ab-models")
    flights_candidate(models / "january", rows=2000, months=[1])
    flights_candidate(models / "may-june", rows=4000, months=[5, 6])
    flights_candidate(models / "shuffled", rows=3000, shuffled_labels=True)
    reg = Registry(root / "registry")
    assert register(reg, models / "january") == "v1"
    assert register(reg, models / "may-june", champion=False) == "v2"
    assert register(reg, models / "shuffled", champion=False) == "v3"
    with nbp_serve(root) as url:
        yield root, reg, url


def serve_canary(url: str, reg: Registry, champion: str, canary: str) -> None:
    """Make ``champion`` the champion and ``canary`` a 50% canary; wait for the server."""
    if reg.state().champion.version != champion:  # type: ignore[union-attr]
        reg.promote(champion, canary_fraction=None, reason="test", actor="test")
    reg.promote(canary, canary_fraction=0.5, reason="try it", actor="test")
    wait_for(lambda: httpx.get(f"{url}/health", timeout=5).json()["canary"] == canary)


def send_july(url: str, rows: int, seed: int) -> None:
    sent = replay(url, months([7], rows=rows, seed=seed), served_features(url),
                  target="delayed", rate=1000)
    assert sent.errors == 0 and sent.feedback == rows


def test_a_canary_trained_on_recent_data_is_promoted_by_the_monitor(served) -> None:
    # 2,400 outcomes: ROC AUC about 0.61 vs 0.72 on these rows, se of the difference about
    # 0.023 (z 4.6). A gain worth acting on of 0.05 plans about 4,900 outcomes: this look at
    # half of them needs z 3.2 (O'Brien-Fleming-type boundary); one of 0.02 plans 30,000,
    # and this look at 8% needs z 8 (below: keep collecting on the same figures)
    root, reg, url = served
    serve_canary(url, reg, "v1", "v2")
    send_july(url, 2400, seed=0)
    cfg = MonitorConfig.from_params({**MONITOR, "canary_auto": True, "ab_min_effect": 0.05})
    result = run_monitor(cfg, root)
    ab = result.ab
    assert ab is not None and (ab.champion, ab.canary, ab.metric) == ("v1", "v2", "roc_auc")
    assert ab.verdict == "promote", ab.sentence()
    overall = ab.overall
    assert overall["low"] > 0 and overall["canary"] > overall["champion"], overall
    assert overall["boundary_low"] > 0 and 0.3 < overall["information"] < 0.7, overall
    assert "look at " in ab.reason and "% of the planned" in ab.reason, ab.reason
    small = MonitorConfig.from_params({**MONITOR, "ab_min_effect": 0.02})
    look = {**overall, **abtest.sequential(overall, small)}
    assert look["information"] < 0.15 and look["boundary_low"] < 0, look
    assert abtest.decide(look, "roc_auc", small, 1)[0] == "keep collecting"
    assert overall["canary_outcomes"] >= 150 and overall["champion_outcomes"] >= 150
    assert overall["canary_outcomes"] + overall["champion_outcomes"] == 2400
    assert len(ab.windows) >= 3 and (ab.windows["canary_outcomes"] > 0).all()
    assert [a.kind for a in result.actions] == ["promote"], result.lines()
    state = reg.state()
    assert state.champion.version == "v2" and state.canary is None  # type: ignore[union-attr]
    promote, verdict = reg.events()[-2:]
    assert promote.kind == "promote" and promote.data["version"] == "v2"
    assert verdict.kind == AB_VERDICT and verdict.data["event_seq"] == promote.seq
    assert verdict.data["verdict"] == "promote" and verdict.data["metric"] == "roc_auc"
    figures = verdict.data["figures"]
    assert figures["canary_outcomes"] == overall["canary_outcomes"]
    assert figures["low"] == pytest.approx(overall["low"]) and figures["low"] > 0
    boundary = verdict.data["boundary"]
    assert boundary["method"].startswith("O'Brien-Fleming") and boundary["boundary_low"] > 0
    assert boundary["information"] == pytest.approx(overall["information"])
    assert boundary["look"].startswith("look at ") and "interval" in boundary["look"]
    assert "done: v2 is the champion now" in ab.sentence()
    # the same log read again gives the same figures, to the byte (seeded bootstrap)
    again = run_monitor(cfg, root, act_on_alarms=False, write_summary=False, log_alarms=False)
    assert again.ab is None  # v2 is the champion now: no canary to compare
    assert json.dumps(result.ab.to_dict()) == json.dumps(ab.to_dict())


def test_a_worse_canary_gets_roll_back_with_the_command_to_run(served) -> None:
    root, reg, url = served
    serve_canary(url, reg, "v2", "v3")
    send_july(url, 600, seed=1)
    code, lines = run_monitor_command(root)  # `nbp monitor`: the notebook, then the summary
    said = [line for line in lines if "A/B canary v3 vs champion v2" in line]
    assert len(said) == 1, lines
    assert "verdict: roll back - the canary's roc_auc is worse than the champion's" in said[0]
    command = said[0].split("; run `", 1)[1].rstrip("`")
    assert command.startswith("nbp rollback --canary --reason 'A/B verdict: roc_auc -0.")
    assert reg.state().canary.version == "v3"  # type: ignore[union-attr]  # not carried out
    summary = json.loads((root / "alarms" / "last_run.json").read_text())
    assert summary["ab"]["verdict"] == "roll back" and summary["ab"]["command"] == command
    assert summary["ab"]["overall"]["high"] < 0
    report = (root / "reports" / "monitor.html").read_text()
    assert "A/B canary v3 vs champion v2" in report
    assert "outcomes still needed to detect a roc_auc difference of 0.02 with 80% power" in report

    done = nbp(*shlex.split(command)[1:], cwd=root)
    assert "canary" in done.stdout
    state = reg.state()
    assert state.canary is None and state.champion.version == "v2"  # type: ignore[union-attr]
    assert reg.events()[-1].reason.startswith("A/B verdict: roc_auc -0.")
    assert yaml.safe_load((root / "params.yaml").read_text())["monitor"]["canary_auto"] is False
