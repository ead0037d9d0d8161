"""Statistics against scipy, statsmodels and by hand: paired tests (and when a comparison is not
testable), Holm, Friedman and Iman-Davenport with average ranks and the Nemenyi CD, the fast
prediction metrics behind the bootstrap, the bootstrap itself and the coverage of the two-stage
(seeds, then samples) interval on simulated seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from bench_helpers import make_run
from scipy import stats as sps

from fairbench import FairbenchError, evaluate_classification
from fairbench.bench.stats import (
    RunPredictions,
    average_ranks,
    bootstrap_runs,
    compare_to_reference,
    friedman,
    holm,
    iman_davenport,
    nemenyi_cd,
    nemenyi_q,
    paired_test,
    prediction_metrics,
    untestable_reason,
)
from fairbench.metrics import flatten


def test_paired_tests_match_scipy():
    a = [0.71, 0.74, 0.69, 0.73, 0.75]
    b = [0.70, 0.70, 0.66, 0.71, 0.70]
    assert paired_test(a, b) == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert paired_test(a, b, test="wilcoxon") == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert paired_test(a, a) == 1.0
    assert math.isnan(paired_test([0.1], [0.2]))
    # two seeds (one degree of freedom) are never tested, whatever the values
    assert math.isnan(paired_test([0.71, 0.74], [0.60, 0.61]))
    # a constant non-zero shift has zero variance: not testable (it used to give p = 0)
    assert math.isnan(paired_test([0.2, 0.3, 0.4], [0.1, 0.2, 0.3]))
    assert "zero variance" in untestable_reason([0.2, 0.3, 0.4], [0.1, 0.2, 0.3])
    assert "2 paired seeds" in untestable_reason([0.71, 0.74, float("nan")], [0.6, 0.61, 0.6])
    assert untestable_reason(a, b) is None
    with pytest.raises(FairbenchError, match="unknown paired test"):
        paired_test(a, b, test="z")


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 0.8*2 capped at 1, then monotone


def test_compare_to_reference_pairs_by_seed_and_corrects():
    ref = {0: 0.70, 1: 0.71, 2: 0.69, 3: 0.70}
    better = {0: 0.75, 1: 0.77, 2: 0.74, 3: 0.76, 9: 0.1}   # seed 9 has no partner
    same = {0: 0.71, 1: 0.70, 2: 0.70, 3: 0.69}
    comps = {c.method: c for c in compare_to_reference(
        {"vanilla": ref, "better": better, "same": same}, "vanilla", "F1")}
    s = [0, 1, 2, 3]
    p_better = sps.ttest_rel([better[i] for i in s], [ref[i] for i in s]).pvalue
    p_same = sps.ttest_rel([same[i] for i in s], [ref[i] for i in s]).pvalue
    expected = holm([p_better, p_same])
    assert comps["better"].n_pairs == 4
    assert comps["better"].p == pytest.approx(p_better)
    assert comps["better"].p_holm == pytest.approx(expected[0])
    assert comps["same"].p_holm == pytest.approx(expected[1])
    assert comps["better"].significant and not comps["same"].significant
    assert comps["better"].mean_diff == pytest.approx(0.055)
    assert comps["better"].direction == "better" and comps["same"].direction is None


def test_holm_against_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random(int(rng.integers(2, 9))) ** 2
        assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_direction_follows_the_metric_and_untestable_cells_are_not_marked():
    ref = {0: 0.10, 1: 0.12, 2: 0.11, 3: 0.10}
    fairer = {0: 0.05, 1: 0.06, 2: 0.04, 3: 0.05}      # lower EqOddsGap: better
    shifted = {s: v + 0.02 for s, v in ref.items()}   # constant shift: not testable
    two = {0: 0.30, 1: 0.31}                           # two seeds only
    comps = {c.method: c for c in compare_to_reference(
        {"vanilla": ref, "fairer": fairer, "shifted": shifted, "two": two}, "vanilla",
        "EqOddsGap")}
    assert comps["fairer"].significant and comps["fairer"].direction == "better"
    for name in ("shifted", "two"):
        assert not comps[name].significant and comps[name].direction is None
        assert math.isnan(comps[name].p) and comps[name].untestable
    # Holm's family holds only the testable comparison
    assert comps["fairer"].p_holm == pytest.approx(comps["fairer"].p)
    worse = {0: 0.60, 1: 0.62, 2: 0.65, 3: 0.61}
    comp = compare_to_reference({"vanilla": {0: .7, 1: .72, 2: .71, 3: .7}, "w": worse},
                                "vanilla", "F1")[0]
    assert comp.significant and comp.direction == "worse"


def test_friedman_matches_scipy_and_ranks_by_hand():
    scores = pd.DataFrame({
        "vanilla": [0.80, 0.75, 0.90, 0.60, 0.70],
        "A": [0.82, 0.77, 0.91, 0.65, 0.69],
        "B": [0.79, 0.70, 0.85, 0.61, 0.68],
        "C": [0.60, 0.72, 0.80, 0.50, 0.71],
    }, index=[f"d{i}" for i in range(5)])
    res = friedman(scores, metric="F1")
    ref = sps.friedmanchisquare(*[scores[c] for c in scores.columns])
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue)
    # ranks by hand (1 = highest F1): d0: A1 v2 B3 C4; d1: A1 v2 C3 B4; d2: A1 v2 B3 C4;
    # d3: A1 B2 v3 C4; d4: C1 v2 A3 B4
    assert res.avg_ranks == pytest.approx({"vanilla": 11 / 5, "A": 7 / 5, "B": 16 / 5,
                                           "C": 16 / 5})
    assert res.cd == pytest.approx(2.569 * math.sqrt(4 * 5 / 30), abs=1e-3)
    # Iman-Davenport by hand: F = (N-1) chi2 / (N(k-1) - chi2), F(k-1, (k-1)(N-1))
    chi2, k, n = ref.statistic, 4, 5
    f_by_hand = (n - 1) * chi2 / (n * (k - 1) - chi2)
    assert res.f_statistic == pytest.approx(f_by_hand)
    assert res.f_pvalue == pytest.approx(sps.f.sf(f_by_hand, k - 1, (k - 1) * (n - 1)))
    assert iman_davenport(chi2, k, n) == pytest.approx((res.f_statistic, res.f_pvalue))
    # the pairwise reading is gated on the omnibus test
    assert res.significant == (res.pvalue < 0.05)
    assert friedman(scores, gate="iman_davenport").significant == (res.f_pvalue < 0.05)
    # lower-is-better metrics rank the smallest first
    low = average_ranks(scores, higher_is_better=False)
    assert low["C"] == pytest.approx(5 - 16 / 5)
    with pytest.raises(FairbenchError, match="at least 3 methods"):
        friedman(scores[["A", "B"]])
    with pytest.raises(FairbenchError, match="at least 2 datasets"):
        friedman(scores.iloc[:1])


def test_nemenyi_critical_values_from_the_studentized_range():
    # Demšar (2006), Table 5 (q_alpha, three decimals), k = 2..10
    q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    q10 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]
    for k, (a, b) in enumerate(zip(q05, q10), start=2):
        assert nemenyi_q(k, 0.05) == pytest.approx(a, abs=1e-3)
        assert nemenyi_q(k, 0.10) == pytest.approx(b, abs=1e-3)
        assert nemenyi_q(k) == pytest.approx(
            sps.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2))
    assert nemenyi_cd(10, 4, alpha=0.10) == pytest.approx(nemenyi_q(10, 0.1) * math.sqrt(110 / 24))
    assert nemenyi_q(30) > nemenyi_q(20)  # any number of methods (the old table stopped at 20)
    with pytest.raises(FairbenchError):
        nemenyi_cd(1, 4)


@pytest.mark.parametrize("n_groups, n_classes", [(2, 3), (3, 4), (2, 2)])
def test_fast_prediction_metrics_equal_the_metrics_module(n_groups, n_classes):
    rng = np.random.default_rng(n_groups * 10 + n_classes)
    n = 400
    y = rng.integers(0, n_classes, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, n_classes, n))
    g = rng.integers(-1, n_groups, n)     # -1: missing group, excluded
    names = [f"g{i}" for i in range(n_groups)]
    probs = np.eye(n_classes)[pred] * 0.5 + 0.5 / n_classes
    ref = flatten(evaluate_classification(y, probs, g, names, y_pred=pred))
    fast = prediction_metrics(y, pred, g, names, n_classes)
    keys = [k for k in ref if k.rsplit(".", 1)[-1] in ("accuracy", "precision", "recall", "F1")
            or k in ("EqOddsGap", "EqOddsGap_maxclass", "EOpp0", "EOpp1", "EOdd")]
    assert "EqOddsGap" in keys
    assert len(keys) > 20
    for k in keys:
        if isinstance(ref[k], float) and math.isnan(ref[k]):
            assert math.isnan(fast[k]), k
        else:
            assert fast[k] == pytest.approx(ref[k], abs=1e-12), k
    # asked for one key (as the bootstrap does), the same value, only its family computed
    for k in keys:
        one = prediction_metrics(y, pred, g, names, n_classes, keys=(k,))
        assert k in one and (one[k] == fast[k] or math.isnan(one[k]) and math.isnan(fast[k]))
    assert "F1" not in prediction_metrics(y, pred, g, names, n_classes, keys=("EqOddsGap",))
    assert "EOdd" not in prediction_metrics(y, pred, g, names, n_classes, keys=("worst.F1",))


def test_bootstrap_is_seeded_patient_level_and_averages_seeds(tmp_path):
    d0 = make_run(tmp_path, seed=0, acc=0.7)
    d1 = make_run(tmp_path, seed=1, acc=0.6)
    r0, r1 = RunPredictions.read(d0), RunPredictions.read(d1)
    assert r0.clusters is not None and len(np.unique(r0.clusters)) == len(r0.y) // 2
    iv = bootstrap_runs([r0], "F1", n_resamples=200, seed=3)
    assert iv == bootstrap_runs([r0], "F1", n_resamples=200, seed=3)
    assert iv.low <= iv.estimate <= iv.high
    m = flatten(__import__("json").loads((d0 / "metrics.json").read_text())["test"])
    assert iv.estimate == pytest.approx(m["F1"])
    both = bootstrap_runs([r0, r1], "EOdd", n_resamples=100, seed=0)
    assert both.estimate == pytest.approx((r0.metric("EOdd") + r1.metric("EOdd")) / 2)
    # a slow-path metric (AUC) works too
    auc = bootstrap_runs([r0], "AUC", n_resamples=20, seed=0)
    assert auc.estimate == pytest.approx(m["AUC"])
    other = make_run(tmp_path / "other", seed=0, n=200)
    with pytest.raises(FairbenchError, match="share their test samples"):
        bootstrap_runs([r0, RunPredictions.read(other)], "F1", n_resamples=10)


class _SimulatedRun:
    """A 'run' whose test predictions are right with probability p_seed (a seed effect) on
    fixed samples; ``metric`` is the accuracy of the rows ``idx``."""

    def __init__(self, right: np.ndarray) -> None:
        self.right = right
        self.sample_id = np.arange(len(right))
        self.clusters = None

    def metric(self, key: str, idx: np.ndarray | None = None) -> float:
        return float(self.right[slice(None) if idx is None else idx].mean())


def test_two_stage_interval_covers_the_seed_mean_and_the_sample_interval_does_not():
    """Simulated benchmark: accuracy mu = 0.80, a training-seed effect of sd 0.04 and 400 test
    samples per run, 8 seeds per setting. The two-stage interval (seeds, then samples) must
    cover the population mean close to its nominal 90 %; the samples-only interval, which
    leaves the seed out, covers it far less often."""
    rng = np.random.default_rng(2024)
    mu, sd_seed, n, n_seeds, trials = 0.80, 0.04, 400, 8, 60
    cover = {"seeds+samples": 0, "samples": 0}
    for t in range(trials):
        runs = [_SimulatedRun(rng.random(n) < np.clip(mu + sd_seed * rng.standard_normal(),
                                                      0, 1)) for _ in range(n_seeds)]
        for kind in cover:
            iv = bootstrap_runs(runs, "accuracy", n_resamples=300, confidence=0.90, seed=t,
                                kind=kind)
            cover[kind] += iv.low <= mu <= iv.high
    two_stage, samples = cover["seeds+samples"] / trials, cover["samples"] / trials
    assert two_stage >= 0.75, cover
    assert samples <= 0.6 and samples < two_stage - 0.2, cover


def test_two_stage_with_one_seed_is_the_sample_bootstrap_and_kind_is_checked(tmp_path):
    r0 = RunPredictions.read(make_run(tmp_path, seed=0, acc=0.7))
    one = bootstrap_runs([r0], "F1", n_resamples=200, seed=1)
    assert one.low <= one.estimate <= one.high
    with pytest.raises(FairbenchError, match="interval kind"):
        bootstrap_runs([r0], "F1", kind="seeds")
