"""False alarms measured (issue 15, point 6) through a real `nbp serve` on real 2013 flights.

One served champion (the example's model shape fitted on January-August) and one
prediction log; each case replays one window of real rows with their real outcomes, then
the monitor judges that window:

1. K windows drawn from the training period, against the training data: 0 warnings and
   0 alarms expected;
2. one spring window (March-May) against the training data (its temperatures warn, as the
   issue found) and against a same-period reference — the March-May slice of the
   January-August table: 0 expected;
3. October, where the same model really gets worse (fewer delays, more false alarms, ROI
   below 0): an alarm expected.

The counts are printed (``pytest -s``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from monitor_support import flights_project, months, nbp, nbp_serve, write_gate

from nbpipeline.monitor import MonitorConfig, run_monitor
from nbpipeline.monitor.command import served_features
from nbpipeline.monitor.replay import replay

WINDOW = 400
K = 3
SPRING = [3, 4, 5]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("false-alarms") / "project"
    settings = flights_project(root, window_size=WINDOW, min_rows=200, min_feedback=150)
    months(list(range(1, 9)), rows=20000, seed=7).to_parquet(root / "jan-aug.parquet")
    write_gate(root, None)
    nbp("promote", "--reason", "first model", cwd=root)
    with nbp_serve(root) as url:
        yield root, url, MonitorConfig.from_params(settings)


def _window(url: str, ms: list[int], seed: int) -> None:
    sent = replay(url, months(ms, rows=WINDOW, seed=seed), served_features(url),
                  target="delayed", rate=800)
    assert sent.predicted == WINDOW and sent.feedback == WINDOW and sent.errors == 0


def _judge(root: Path, cfg: MonitorConfig) -> tuple[str, list[str]]:
    result = run_monitor(cfg, root, act_on_alarms=False, log_alarms=False,
                         write_summary=False)
    return result.level, [a.line() for a in result.alarms]


def test_false_alarms_measured_through_a_real_server(served):
    root, url, training = served
    same_period = MonitorConfig(**{**training.as_dict(), "reference": "slice",
                                   "reference_data": "jan-aug.parquet",
                                   "reference_months": SPRING})
    found: dict[str, list[str]] = {}

    in_distribution = []
    for k in range(K):
        _window(url, list(range(1, 9)), seed=100 + k)
        level, lines = _judge(root, training)
        in_distribution.append(level)
        found[f"training period, window {k}, training reference"] = lines

    _window(url, SPRING, seed=200)
    spring_training, found["March-May, training reference"] = _judge(root, training)
    spring_same, found["March-May, same-period reference"] = _judge(root, same_period)

    _window(url, [10], seed=300)
    october, found["October, training reference"] = _judge(root, training)

    print(f"\nfalse alarms over {WINDOW}-prediction windows (warnings + alarms):")
    for case, lines in found.items():
        print(f"  {case}: {len(lines)}")
        for line in lines:
            print(f"    {line}")
    assert in_distribution == ["ok"] * K, found
    assert spring_training == "warn"  # seasonal inputs moved: a warning, not an alarm
    assert spring_same == "ok", found["March-May, same-period reference"]
    assert october == "alarm", found["October, training reference"]
    assert any(line.startswith("ALARM roi_low") for line in found["October, training reference"])
