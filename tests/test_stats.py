"""Statistics against scipy and by hand: paired tests, Holm, Friedman with average ranks and
the Nemenyi CD, the fast prediction metrics behind the bootstrap, and the bootstrap itself."""

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
    nemenyi_cd,
    paired_test,
    prediction_metrics,
)
from fairbench.metrics import flatten


def test_paired_tests_match_scipy():
    a = [0.71, 0.74, 0.69, 0.73, 0.75]
    b = [0.70, 0.70, 0.66, 0.71, 0.70]
    assert paired_test(a, b) == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert paired_test(a, b, test="wilcoxon") == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert paired_test(a, a) == 1.0
    assert math.isnan(paired_test([0.1], [0.2]))
    assert paired_test([0.2, 0.3, 0.4], [0.1, 0.2, 0.3]) == 0.0  # constant shift
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
    assert res.cd == pytest.approx(2.569 * math.sqrt(4 * 5 / 30))
    # lower-is-better metrics rank the smallest first
    low = average_ranks(scores, higher_is_better=False)
    assert low["C"] == pytest.approx(5 - 16 / 5)
    with pytest.raises(FairbenchError, match="at least 3 methods"):
        friedman(scores[["A", "B"]])
    with pytest.raises(FairbenchError, match="at least 2 datasets"):
        friedman(scores.iloc[:1])


def test_nemenyi_table():
    assert nemenyi_cd(2, 10) == pytest.approx(1.960 * math.sqrt(2 * 3 / 60))
    assert nemenyi_cd(10, 4, alpha=0.10) == pytest.approx(2.920 * math.sqrt(110 / 24))
    with pytest.raises(FairbenchError):
        nemenyi_cd(30, 4)


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
            or k in ("EOpp0", "EOpp1", "EOdd")]
    assert len(keys) > 20
    for k in keys:
        if isinstance(ref[k], float) and math.isnan(ref[k]):
            assert math.isnan(fast[k]), k
        else:
            assert fast[k] == pytest.approx(ref[k], abs=1e-12), k


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
