"""The A/B statistics (nbpipeline.monitor.abtest) on populations whose truth is known:
the needed-outcomes formula against the textbook value, bootstrap interval coverage, the
figures agreeing with the monitor's own quality and ROI, the verdict rules, the settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ab_simulation import coarse_population, simulate

from nbpipeline.errors import MonitorError
from nbpipeline.monitor import abtest
from nbpipeline.monitor.config import MonitorConfig
from nbpipeline.monitor.quality import OutcomeCounts, quality_metrics
from nbpipeline.monitor.roi import roi_figures
from nbpipeline.monitor.scan import PROB_BINS

CFG = MonitorConfig(min_feedback=100)


def population(separation: float, threshold_bin: int = 35) -> np.ndarray:
    """Cell probabilities (outcome x decision x bin): 30% positives; the positives' scores
    ``separation`` bins above the negatives'; decision = score >= threshold."""
    bins = np.arange(PROB_BINS)
    cells = np.zeros(abtest.CELLS)
    for y, share, centre in ((1, 0.3, 30 + separation), (0, 0.7, 30)):
        weight = np.exp(-0.5 * ((bins - centre) / 12) ** 2)
        weight *= share / weight.sum()
        decided = bins >= threshold_bin
        cells[y, 1, decided], cells[y, 0, ~decided] = weight[decided], weight[~decided]
    return cells


def draw(cells: np.ndarray, n: int, rng: np.random.Generator) -> abtest.Arm:
    count = rng.multinomial(n, cells.ravel()).reshape(abtest.CELLS).astype(float)
    score = (np.arange(PROB_BINS) + 0.5) / PROB_BINS
    squared = np.stack([np.broadcast_to(score ** 2, (2, PROB_BINS)),
                        np.broadcast_to((1 - score) ** 2, (2, PROB_BINS))])
    return abtest.Arm(count, count * squared)


def truth(cells: np.ndarray) -> tuple[float, float]:
    """The population's binned ROC AUC and ROI %."""
    auc = abtest.metric_values(cells[None], np.zeros(abtest.CELLS), "roc_auc")[0]
    return float(auc), float(abtest.roi_values(cells[None], CFG)[0])


def test_outcomes_needed_matches_the_textbook_two_sample_size() -> None:
    # two means, sigma 1, difference 0.5, alpha 0.05 two-sided, power 0.8: 63 per group
    # (normal approximation: 2 * (1.95996 + 0.84162)**2 / 0.5**2 = 62.8). With 100 per
    # group so far, the difference's standard error is sqrt(2/100).
    total = abtest.outcomes_needed(math.sqrt(2 / 100), 200, alpha=0.05, power=0.8,
                                   min_effect=0.5)
    assert total == 126  # 63 per group
    assert abtest.outcomes_needed(math.sqrt(2 / 100), 200, alpha=0.05, power=0.9,
                                  min_effect=0.5) == 169  # 84.1 per group


def test_bootstrap_intervals_cover_the_true_difference() -> None:
    champion, canary = population(8), population(14)
    (auc_a, roi_a), (auc_b, roi_b) = truth(champion), truth(canary)
    rng = np.random.default_rng(7)
    covered = {"auc": 0, "roi": 0}
    widths = []
    runs = 60
    for run in range(runs):
        f = abtest.compare_arms(draw(champion, 500, rng), draw(canary, 500, rng), "roc_auc",
                                CFG, seed=run, resamples=400)
        covered["auc"] += f["low"] <= auc_b - auc_a <= f["high"]
        covered["roi"] += f["roi_low"] <= roi_b - roi_a <= f["roi_high"]
        widths.append(f["high"] - f["low"])
    # nominal 95%: 57 of 60 expected; fewer than 51 would mean a broken interval
    assert covered["auc"] >= 51 and covered["roi"] >= 51, covered
    # four times the outcomes: about half as wide
    f = abtest.compare_arms(draw(champion, 2000, rng), draw(canary, 2000, rng), "roc_auc",
                            CFG, resamples=400)
    assert 0.35 < (f["high"] - f["low"]) / np.mean(widths) < 0.7


def test_figures_agree_with_the_monitors_quality_and_roi() -> None:
    rng = np.random.default_rng(3)
    arm = draw(population(10), 3000, rng)
    counts = OutcomeCounts(
        tp=int(arm.count[1, 1].sum()), fp=int(arm.count[0, 1].sum()),
        tn=int(arm.count[0, 0].sum()), fn=int(arm.count[1, 0].sum()),
        brier_sum=float(arm.brier.sum()), pos_hist=arm.count[1].sum(0),
        neg_hist=arm.count[0].sum(0))
    expected = quality_metrics(counts)
    f = abtest.compare_arms(arm, arm, "roc_auc", CFG)
    assert f["champion"] == pytest.approx(expected["roc_auc"])
    assert f["champion_roi_pct"] == pytest.approx(
        roi_figures(counts, CFG.value_model, CFG.cost_per_prediction)["roi_pct"])
    for metric in abtest.METRICS:
        same = abtest.compare_arms(arm, arm, metric, CFG, resamples=200)
        assert same["champion"] == pytest.approx(expected[metric]), metric
        assert same["difference"] == 0 and same["low"] < 0 < same["high"], metric


def figures(difference: float, se: float, roi: tuple[float, float] = (-1.0, 1.0),
            n: int = 1000) -> dict:
    """An overall comparison of n outcomes per arm with a 95% interval of difference +-
    1.96 se, and its sequential look (CFG: alpha 0.05, power 0.8, min_effect 0.02)."""
    f = {"champion_outcomes": n, "canary_outcomes": n, "difference": difference, "se": se,
         "low": difference - 1.96 * se, "high": difference + 1.96 * se,
         "roi_low": roi[0], "roi_high": roi[1]}
    return {**f, **abtest.sequential(f, CFG)}


def test_the_sequential_boundary() -> None:
    # the final look is a two-sided test at alpha/2 (z 2.241); earlier looks need more
    assert abtest.boundary_z(1.0, 0.05) == pytest.approx(2.2414, abs=1e-4)
    assert abtest.boundary_z(4.0, 0.05) == abtest.boundary_z(1.0, 0.05)  # capped at t = 1
    assert abtest.boundary_z(0.25, 0.05) == pytest.approx(2 * 2.2414, abs=1e-4)
    # 2,000 outcomes with se 0.01: (2.241 + 0.842)^2 * (0.01 / 0.02)^2 = 2.3763 -> 4,753
    look = figures(0.05, 0.01)
    assert look["planned_outcomes"] == 4753
    assert look["information"] == pytest.approx(2000 / 4753)
    assert look["boundary_z"] == pytest.approx(2.2414 / math.sqrt(2000 / 4753), abs=1e-3)
    assert abtest.look_text(look) == ("look at 42% of the planned 4,753 outcomes: a promote "
                                      "needs the 99.95% interval (3.46 standard errors) clear "
                                      "of 0")
    assert [abtest.level_text(x) for x in (0.975, 0.9996, 1 - 1e-9)] == [
        "97.5%", "99.96%", ">99.9999%"]


def test_the_verdict_rules() -> None:
    decide = abtest.decide
    assert decide(figures(0.05, 0.01), "roc_auc", CFG, 500)[0] == abtest.PROMOTE
    # the nominal 95% interval (+0.010 to +0.050) clears 0, but at 42% of the planned
    # outcomes the boundary asks for 3.46 standard errors: not yet (the naive rule promoted)
    verdict, why = decide(figures(0.03, 0.01), "roc_auc", CFG, 500)
    assert verdict == abtest.COLLECT and why.endswith("needs the 99.95% interval (3.46 "
                                                      "standard errors) clear of 0"), why
    # harm is judged at the nominal level on every look
    assert decide(figures(-0.03, 0.01), "roc_auc", CFG, 500)[0] == abtest.ROLL_BACK
    # ROI vetoes a better gate metric
    verdict, why = decide(figures(0.05, 0.01, (-9.0, -2.0)), "roc_auc", CFG, 500)
    assert verdict == abtest.ROLL_BACK and "earns less" in why
    verdict, why = decide(figures(0.01, 0.015), "roc_auc", CFG, 500)
    assert verdict == abtest.COLLECT and why.startswith("500 more outcomes")
    # the outcomes the power asks for are in, no gain shown: the champion stays
    assert decide(figures(0.01, 0.015), "roc_auc", CFG, 0)[0] == abtest.ROLL_BACK
    # lower is better (Brier): an interval below 0 is a better canary
    assert decide(figures(-0.05, 0.01), "brier", CFG, 500)[0] == abtest.PROMOTE
    verdict, why = decide(figures(0.05, 0.01, n=60), "roc_auc", CFG, 0)
    assert verdict == abtest.COLLECT and "min_feedback 100" in why


def test_repeated_looks_at_equal_arms_rarely_promote() -> None:
    """160 canaries as good as their champion, each looked at 20 times as 700 outcomes per
    arm arrive between looks (the planned outcomes, about 24,000, are in by the 17th look).
    Measured (seed 1): the sequential boundary promoted 3.1% of them (5), the naive rule it
    replaced (promote at the first 95% interval above 0) 13.1% (21). The boundary's promote
    rate is at most ab_alpha/2 = 2.5% under any number of looks (bench/abtest.py, 1,000
    runs of 20 looks: 2.8% +- 0.5% against 15.7% for the naive rule)."""
    cells = coarse_population()
    rates = simulate(cells, cells, CFG, runs=160, looks=20, step=700, seed=1)
    assert rates["sequential"]["promote"] <= 0.05, rates  # 8 of 160: P < 0.02 at 2.5%
    assert rates["naive"]["promote"] >= 0.10, rates
    assert rates["sequential"]["keep collecting"] == 0, rates  # every run reached a verdict


@pytest.mark.parametrize(("field", "value", "message"), [
    ("ab_alpha", 1.5, "monitor.ab_alpha: 1.5 must be a probability strictly between 0 and 1"),
    ("ab_power", 0, "monitor.ab_power: 0 must be a probability"),
    ("ab_min_effect", -0.1, "monitor.ab_min_effect: -0.1 must be > 0"),
    ("canary_auto", "yes", "monitor.canary_auto: 'yes' must be true or false"),
])
def test_ab_settings_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(MonitorError, match=f"^params.yaml {message}"):
        MonitorConfig.from_params({field: value})


def test_only_a_serving_classification_canary_is_compared() -> None:
    from nbpipeline.monitor.scan import OutcomeGroups
    from nbpipeline.release.registry import ModelVersion, ProductionState

    def version(name: str, task: str) -> ModelVersion:
        return ModelVersion(name, "0" * 64, "", "test", "", {"task": task}, {}, None, None)

    one = np.array([0])
    groups = OutcomeGroups(one, ["v2"], ["canary"], one + 1, one + 1, one + 50, one + 300,
                           np.array([0.25]))
    state = ProductionState(version("v1", "classification"), version("v2", "classification"),
                            0.5, False, None, "t")
    ab = abtest.compare(groups, state, CFG)
    assert ab is not None and ab.verdict == abtest.COLLECT
    assert ab.overall["canary_outcomes"] == 300 and ab.overall["champion_outcomes"] == 0
    assert "the champion has 0 outcomes" in ab.reason and ab.command is None
    assert ab.sentence().startswith("A/B canary v2 vs champion v1: roc_auc n/a, ROI n/a on "
                                    "300 canary / 0 champion outcomes; verdict: keep collecting")
    regression = ProductionState(version("v1", "regression"), version("v2", "regression"),
                                 0.5, False, None, "t")
    assert abtest.compare(groups, regression, CFG) is None
    no_canary = ProductionState(version("v1", "classification"), None, 0.0, False, None, "t")
    assert abtest.compare(groups, no_canary, CFG) is None
