"""Metrics checked against independent computations: fairlearn's MetricFrame and scikit-learn
for the utility metrics, and a hand-written loop of the papers' released metric code for
EOpp0, EOpp1 and EOdd."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from fairbench import evaluate_classification, higher_is_better
from fairbench.metrics import (
    HIGHER_IS_BETTER,
    bootstrap_ci,
    equalized_odds_family,
    equalized_odds_gap,
    expected_calibration_error,
    flatten,
    macro_auc,
    macro_prf,
    selection_score,
)


def _random_case(seed: int, n: int = 300, n_classes: int = 4, n_groups: int = 2,
                 acc: float = 0.6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    g = rng.integers(0, n_groups, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), y] += rng.random(n) < acc  # informative but imperfect
    logits[np.arange(n), y] += 1.5 * (g == 0)  # better on group 0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs, g


# -- reference implementation of §1.4 --------------------------------------------------------------
def ref_rates(y, yhat, g, group, n_classes):
    """TPR, TNR, FPR per class within one group, by explicit counting (0 for 0/0)."""
    out = {"TPR": [], "TNR": [], "FPR": []}
    for c in range(n_classes):
        tp = fn = fp = tn = 0
        for yi, pi, gi in zip(y, yhat, g):
            if gi != group:
                continue
            if yi == c and pi == c:
                tp += 1
            elif yi == c:
                fn += 1
            elif pi == c:
                fp += 1
            else:
                tn += 1
        out["TPR"].append(tp / (tp + fn) if tp + fn else 0.0)
        out["TNR"].append(tn / (tn + fp) if tn + fp else 0.0)
        out["FPR"].append(fp / (tn + fp) if tn + fp else 0.0)
    return out


def ref_eo(y, yhat, g):
    """EOpp0/EOpp1/EOdd, their absolute versions, C = max(max y, max ŷ) + 1; groups 0 and 1."""
    C = max(max(y), max(yhat)) + 1
    r0, r1 = ref_rates(y, yhat, g, 0, C), ref_rates(y, yhat, g, 1, C)
    d_tnr = [r0["TNR"][c] - r1["TNR"][c] for c in range(C)]
    d_tpr = [r0["TPR"][c] - r1["TPR"][c] for c in range(C)]
    d_fpr = [r0["FPR"][c] - r1["FPR"][c] for c in range(C)]
    return {
        "EOpp0_signed": sum(d_tnr) / C,
        "EOpp1_signed": sum(d_tpr) / C,
        "EOdd_signed": sum(d_tpr[c] + d_fpr[c] for c in range(C)) / (2 * C),
        "EOpp0": sum(abs(v) for v in d_tnr) / C,
        "EOpp1": sum(abs(v) for v in d_tpr) / C,
        "EOdd": sum(abs(d_tpr[c] + d_fpr[c]) for c in range(C)) / (2 * C),
    }


@pytest.mark.parametrize("seed", range(6))
def test_eo_family_matches_reference_loop(seed):
    rng = np.random.default_rng(100 + seed)
    n, C = int(rng.integers(20, 200)), int(rng.integers(2, 7))
    y = rng.integers(0, C, n)
    yhat = np.where(rng.random(n) < 0.5, y, rng.integers(0, C, n))
    g = rng.integers(0, 2, n)
    got = equalized_odds_family(y, yhat, g)
    want = ref_eo(y.tolist(), yhat.tolist(), g.tolist())
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    # the identities of §1.4
    assert got["EOdd_signed"] == pytest.approx((got["EOpp1_signed"] - got["EOpp0_signed"]) / 2)


def test_eo_zero_denominators_give_zero():
    # class 2 never occurs in group 1 (TPR_1 = 0 by convention), class 3 only predicted
    y = np.array([0, 1, 2, 2, 0, 1, 0, 1, 0, 1])
    yhat = np.array([0, 1, 2, 0, 0, 0, 1, 1, 3, 1])
    g = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    got = equalized_odds_family(y, yhat, g)
    want = ref_eo(y.tolist(), yhat.tolist(), g.tolist())
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    # C comes from max(y, ŷ) + 1 = 4: class 3 (predicted only) counts in the mean
    assert got["EOpp1"] == pytest.approx(want["EOpp1"])
    C4 = ref_rates(y, yhat, g, 0, 4)
    assert C4["TPR"][3] == 0.0 and len(C4["TPR"]) == 4
    # hand check of one number: class 2 TPR gap is 0.5 - 0 (absent in group 1)
    r0, r1 = ref_rates(y, yhat, g, 0, 4), ref_rates(y, yhat, g, 1, 4)
    assert r0["TPR"][2] == 0.5 and r1["TPR"][2] == 0.0


def test_eo_signed_sign_and_symmetry():
    y, probs, g = _random_case(3)
    yhat = probs.argmax(1)
    a = equalized_odds_family(y, yhat, g)
    b = equalized_odds_family(y, yhat, 1 - g)  # swap the groups
    for k in ("EOpp0", "EOpp1", "EOdd"):
        assert a[k] == pytest.approx(b[k])
        assert a[f"{k}_signed"] == pytest.approx(-b[f"{k}_signed"])
    # group 0 is favoured in _random_case: its TPR is higher, so EOpp1_signed (0 minus 1) > 0
    assert a["EOpp1_signed"] > 0
    assert a["EOpp1"] >= abs(a["EOpp1_signed"]) - 1e-12


def test_eo_more_than_two_groups():
    rng = np.random.default_rng(7)
    n, C = 250, 4
    y = rng.integers(0, C, n)
    yhat = np.where(rng.random(n) < 0.6, y, rng.integers(0, C, n))
    g = rng.integers(0, 3, n)
    got = equalized_odds_family(y, yhat, g)
    rates = {k: ref_rates(y, yhat, g, k, C) for k in range(3)}
    want = {"EOpp0": 0.0, "EOpp1": 0.0, "EOdd": 0.0}
    for c in range(C):
        best = {"EOpp0": 0.0, "EOpp1": 0.0, "EOdd": 0.0}
        for a, b in itertools.combinations(range(3), 2):
            best["EOpp0"] = max(best["EOpp0"], abs(rates[a]["TNR"][c] - rates[b]["TNR"][c]))
            best["EOpp1"] = max(best["EOpp1"], abs(rates[a]["TPR"][c] - rates[b]["TPR"][c]))
            best["EOdd"] = max(best["EOdd"], abs(rates[a]["TPR"][c] - rates[b]["TPR"][c]
                                                 + rates[a]["FPR"][c] - rates[b]["FPR"][c]) / 2)
        for k in want:
            want[k] += best[k] / C
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    assert all(np.isnan(got[f"{k}_signed"]) for k in ("EOpp0", "EOpp1", "EOdd"))
    # with two of the three groups it is the two-group definition
    keep = g < 2
    two = equalized_odds_family(y[keep], yhat[keep], g[keep])
    ref = ref_eo(y[keep].tolist(), yhat[keep].tolist(), g[keep].tolist())
    assert two["EOdd"] == pytest.approx(ref["EOdd"])


def test_eo_ignores_missing_group_rows():
    y, probs, g = _random_case(4)
    yhat = probs.argmax(1)
    g2 = g.copy()
    g2[::7] = -1
    got = equalized_odds_family(y, yhat, g2)
    keep = g2 >= 0
    want = ref_eo(y[keep].tolist(), yhat[keep].tolist(), g2[keep].tolist())
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12)


# -- utility metrics against fairlearn / sklearn --------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_per_group_utility_matches_fairlearn(seed):
    y, probs, g = _random_case(seed, n_groups=2)
    names = ["light", "dark"]
    out = evaluate_classification(y, probs, g, names)
    yhat = probs.argmax(1)
    mf = MetricFrame(
        metrics={
            "accuracy": accuracy_score,
            "precision": lambda a, b: precision_score(a, b, average="macro", zero_division=0),
            "recall": lambda a, b: recall_score(a, b, average="macro", zero_division=0),
            "F1": lambda a, b: f1_score(a, b, average="macro", zero_division=0),
        },
        y_true=y, y_pred=yhat, sensitive_features=np.array(names)[g])
    for metric in ("accuracy", "precision", "recall", "F1"):
        for name in names:
            assert out[name][metric] == pytest.approx(mf.by_group.loc[name, metric]), (name, metric)
        assert out[metric] == pytest.approx(mf.overall[metric])
        per = mf.by_group[metric]
        assert out["gap"][metric] == pytest.approx(per.max() - per.min())
        assert out["gap"][metric] == pytest.approx(mf.difference()[metric])
        assert out["worst"][metric] == pytest.approx(per.min())
        assert out["worst"][metric] == pytest.approx(mf.group_min()[metric])
        assert out["Avg"][metric] == pytest.approx(per.mean())
        assert out["Diff_signed"][metric] == pytest.approx(per["light"] - per["dark"])
        assert out["Diff"][metric] == pytest.approx(abs(per["dark"] - per["light"]))
    assert out["light"]["n"] == int((g == 0).sum()) and out["n"] == len(y)
    assert out["dark"]["F1"] < out["light"]["F1"]  # the case is built to favour group 0


def test_macro_prf_label_set_convention():
    # label 3 is only predicted, label 2 is never predicted: both count (sklearn's union)
    y = np.array([0, 0, 1, 1, 2, 2])
    yhat = np.array([0, 1, 1, 1, 0, 3])
    p, r, f = macro_prf(y, yhat)
    assert p == pytest.approx(precision_score(y, yhat, average="macro", zero_division=0))
    assert r == pytest.approx(recall_score(y, yhat, average="macro", zero_division=0))
    assert f == pytest.approx(f1_score(y, yhat, average="macro", zero_division=0))
    # by hand: per-class F1 = [0.5, 0.8, 0, 0] → 0.325 (not the F1 of macro P and R)
    assert f == pytest.approx((0.5 + 0.8) / 4)
    assert p == pytest.approx((0.5 + 2 / 3) / 4) and r == pytest.approx((0.5 + 1.0) / 4)
    assert np.isnan(macro_prf(np.array([]), np.array([]))[2])


def test_macro_auc_matches_sklearn_ovr():
    y, probs, _ = _random_case(5, n_classes=4)
    assert macro_auc(y, probs) == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    # binary: the AUC of p1
    yb = (y > 1).astype(int)
    pb = np.stack([1 - probs[:, 0], probs[:, 0]], 1)
    assert macro_auc(yb, pb) == pytest.approx(roc_auc_score(yb, pb[:, 1]))
    # a class without positives is left out of the mean
    y3 = np.where(y == 3, 0, y)
    want = np.mean([roc_auc_score(y3 == c, probs[:, c]) for c in range(3)])
    assert macro_auc(y3, probs) == pytest.approx(want)
    assert np.isnan(macro_auc(np.zeros(5, int), probs[:5]))


def test_macro_auc_rank_formula_matches_sklearn_with_ties():
    """The rank (Mann-Whitney) computation equals sklearn's trapezoidal ROC area, ties
    included: scores rounded to one decimal tie often."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        k = 2 + trial % 4
        n = 30 + 7 * trial
        y = rng.integers(0, k, n)
        probs = np.round(rng.dirichlet(np.ones(k), n), 1).astype(np.float32)
        if k == 2:
            want = roc_auc_score(y == 1, probs[:, 1])
        else:
            want = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(k)
                            if 0 < (y == c).sum() < n])
        assert macro_auc(y, probs) == pytest.approx(want, abs=1e-12)


def ref_ece(y, probs, n_bins=15):
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    total = 0.0
    for b in range(1, n_bins + 1):
        lo, hi = (b - 1) / n_bins, b / n_bins
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() / len(y) * abs(correct[sel].mean() - conf[sel].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_loop(seed):
    y, probs, _ = _random_case(seed, n_classes=3)
    assert expected_calibration_error(y, probs) == pytest.approx(ref_ece(y, probs))
    assert expected_calibration_error(y, probs, n_bins=5) == pytest.approx(ref_ece(y, probs, 5))


def test_ece_known_values():
    # always confident 0.9 and right 90% of the time: perfectly calibrated
    y = np.array([0] * 9 + [1])
    probs = np.tile([0.9, 0.1], (10, 1))
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)
    # confident 0.9 but always wrong: ECE = 0.9
    assert expected_calibration_error(np.ones(10, int), probs) == pytest.approx(0.9)


def test_evaluate_per_group_values_and_summaries_three_groups():
    y, probs, g = _random_case(8, n_groups=3)
    names = ["a", "b", "c"]
    out = evaluate_classification(y, probs, g, names)
    for k, name in enumerate(names):
        sel = g == k
        assert out[name]["AUC"] == pytest.approx(
            roc_auc_score(y[sel], probs[sel], multi_class="ovr", average="macro"))
        assert out[name]["ECE"] == pytest.approx(ref_ece(y[sel], probs[sel]))
    ece = np.array([out[n]["ECE"] for n in names])
    f1 = np.array([out[n]["F1"] for n in names])
    assert out["worst"]["ECE"] == pytest.approx(ece.max())  # lower is better
    assert out["worst"]["F1"] == pytest.approx(f1.min())
    assert out["gap"]["F1"] == pytest.approx(f1.max() - f1.min())
    assert out["Diff"]["F1"] == pytest.approx(f1.max() - f1.min())
    assert np.isnan(out["Diff_signed"]["F1"])
    assert np.isnan(out["EOdd_signed"]) and out["EOdd"] >= 0


def test_evaluate_excludes_missing_group_rows_and_uses_given_predictions():
    y, probs, g = _random_case(9)
    g2 = g.copy()
    g2[:30] = -1
    out = evaluate_classification(y, probs, g2, ["light", "dark"])
    ref = evaluate_classification(y[30:], probs[30:], g2[30:], ["light", "dark"])
    assert out["n_missing_group"] == 30 and out["n"] == len(y) - 30
    assert out["F1"] == pytest.approx(ref["F1"]) and out["EOdd"] == pytest.approx(ref["EOdd"])
    assert out["dark"]["F1"] == pytest.approx(ref["dark"]["F1"])
    # explicit predictions override the argmax
    yhat = np.zeros(len(y), int)
    forced = evaluate_classification(y, probs, g, ["light", "dark"], y_pred=yhat)
    assert forced["accuracy"] == pytest.approx(np.mean(y == 0))


def test_group_without_rows_gives_nan_summaries():
    y, probs, g = _random_case(10)
    out = evaluate_classification(y, probs, np.zeros_like(g), ["light", "dark"])
    assert "dark" not in out and "light" in out
    assert np.isnan(out["gap"]["F1"]) and np.isnan(out["EOdd"])


# -- directions --------------------------------------------------------------------------------
def test_higher_is_better_for_flat_keys():
    assert higher_is_better("F1") is True and higher_is_better("AUC") is True
    assert higher_is_better("ECE") is False
    for k in ("EOpp0", "EOpp1", "EOdd"):
        assert higher_is_better(k) is False and higher_is_better(f"{k}_signed") is None
    assert higher_is_better("gap.F1") is False and higher_is_better("Diff.accuracy") is False
    assert higher_is_better("Diff_signed.F1") is None
    assert higher_is_better("worst.F1") is True and higher_is_better("worst.ECE") is False
    assert higher_is_better("dark.F1") is True and higher_is_better("Avg.recall") is True
    with pytest.raises(KeyError):
        higher_is_better("F2")
    assert set(HIGHER_IS_BETTER) >= {"accuracy", "precision", "recall", "F1", "AUC", "ECE"}


def test_flatten_and_selection_score():
    y, probs, g = _random_case(11)
    out = evaluate_classification(y, probs, g, ["light", "dark"])
    flat = flatten(out)
    assert flat["dark.F1"] == out["dark"]["F1"] and flat["gap.F1"] == out["gap"]["F1"]
    assert selection_score(out, "F1") == pytest.approx(out["F1"])
    assert selection_score(out, "EOdd") == pytest.approx(-out["EOdd"])
    assert selection_score(out, "gap.F1") == pytest.approx(-out["gap"]["F1"])
    with pytest.raises(ValueError):
        selection_score(out, "EOdd_signed")
    with pytest.raises(KeyError):
        selection_score(out, "nothing")


# -- bootstrap -----------------------------------------------------------------------------------
def test_bootstrap_seeded_and_covering():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)

    def mean(idx):
        return float(x[idx].mean())

    a = bootstrap_ci(mean, len(x), n_resamples=300, seed=5)
    b = bootstrap_ci(mean, len(x), n_resamples=300, seed=5)
    c = bootstrap_ci(mean, len(x), n_resamples=300, seed=6)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.estimate == pytest.approx(x.mean())
    assert a.low < a.estimate < a.high
    # the percentile interval of a mean is about ±1.96 standard errors
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert (a.high - a.low) == pytest.approx(2 * 1.96 * se, rel=0.25)
    narrow = bootstrap_ci(mean, len(x), n_resamples=300, seed=5, confidence=0.5)
    assert narrow.high - narrow.low < a.high - a.low and narrow.confidence == 0.5


def test_bootstrap_resamples_whole_clusters():
    rng = np.random.default_rng(1)
    n_clusters, size = 40, 5
    clusters = np.repeat(np.arange(n_clusters), size)
    # values identical within a cluster: the effective sample size is the number of clusters
    x = np.repeat(rng.normal(0, 1, n_clusters), size)
    seen = []

    def mean(idx):
        seen.append(np.asarray(idx))
        return float(x[idx].mean())

    clustered = bootstrap_ci(mean, len(x), n_resamples=200, seed=0, clusters=clusters)
    for idx in seen[1:]:
        counts = np.bincount(idx, minlength=len(x)).reshape(n_clusters, size)
        # every member of a drawn cluster is taken, as often as the cluster is drawn
        assert (counts == counts[:, :1]).all()
        assert counts[:, 0].sum() == n_clusters
    naive = bootstrap_ci(lambda i: float(x[i].mean()), len(x), n_resamples=200, seed=0)
    assert (clustered.high - clustered.low) > 1.5 * (naive.high - naive.low)
    again = bootstrap_ci(lambda i: float(x[i].mean()), len(x), n_resamples=200, seed=0,
                         clusters=clusters)
    assert again == clustered


def test_bootstrap_all_nan_gives_nan_interval():
    iv = bootstrap_ci(lambda i: float("nan"), 10, n_resamples=20)
    assert np.isnan(iv.low) and np.isnan(iv.high)


# -- the equalized-odds gap (the headline fairness criterion) ------------------------------------
def _rates_example():
    """Group a: TPR .9 / FPR .1; group b: TPR .7 / FPR .3 (binary, 10 positives and 10
    negatives each): worse on both rates, which the papers' EOdd cannot see."""
    ya = np.r_[np.ones(10), np.zeros(10)]
    pa = np.r_[np.ones(9), 0, 1, np.zeros(9)]
    pb = np.r_[np.ones(7), np.zeros(3), np.ones(3), np.zeros(7)]
    y = np.r_[ya, ya].astype(int)
    pred = np.r_[pa, pb].astype(int)
    g = np.r_[np.zeros(20), np.ones(20)].astype(int)
    return y, pred, g


def test_eqodds_gap_sees_a_group_worse_on_both_rates():
    from fairlearn.metrics import equalized_odds_difference

    y, pred, g = _rates_example()
    gap = equalized_odds_gap(y, pred, g)
    assert gap["EqOddsGap"] == pytest.approx(0.2)
    assert gap["EqOddsGap"] == pytest.approx(equalized_odds_difference(y, pred,
                                                                        sensitive_features=g))
    # the papers' EOdd reads zero here, and EOpp0 == EOpp1 on a binary task
    family = equalized_odds_family(y, pred, g)
    assert family["EOdd"] == pytest.approx(0.0, abs=1e-12)
    assert family["EOpp0"] == pytest.approx(family["EOpp1"])


@pytest.mark.parametrize("seed", range(20))
def test_eqodds_gap_equals_fairlearn_on_binary_tasks(seed):
    from fairlearn.metrics import equalized_odds_difference

    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 300))
    n_groups = int(rng.integers(2, 5))
    g = rng.integers(0, n_groups, n)
    y = rng.integers(0, 2, n)
    # every group holds both classes, so every rate is defined (as fairlearn assumes)
    for code in range(n_groups):
        y[np.flatnonzero(g == code)[:2]] = [0, 1]
    pred = np.where(rng.random(n) < 0.7, y, 1 - y)
    expected = equalized_odds_difference(y, pred, sensitive_features=g)
    got = equalized_odds_gap(y, pred, g)
    assert got["EqOddsGap"] == pytest.approx(expected, abs=1e-12)
    assert got["EqOddsGap_maxclass"] == pytest.approx(expected, abs=1e-12)  # G_0 == G_1


def _gap_by_loop(y, pred, g):
    """Per class the largest between-group gap in TPR or FPR (groups defining the rate only),
    by explicit loops; macro mean and max over classes."""
    codes = sorted(set(g))
    per_class = []
    for c in range(max(y.max(), pred.max()) + 1):
        tprs, fprs = [], []
        for code in codes:
            pos = [i for i in range(len(y)) if g[i] == code and y[i] == c]
            neg = [i for i in range(len(y)) if g[i] == code and y[i] != c]
            if pos:
                tprs.append(sum(pred[i] == c for i in pos) / len(pos))
            if neg:
                fprs.append(sum(pred[i] == c for i in neg) / len(neg))
        spread = [max(r) - min(r) if len(r) >= 2 else 0.0 for r in (tprs, fprs)]
        per_class.append(max(spread))
    return float(np.mean(per_class)), float(np.max(per_class))


@pytest.mark.parametrize("seed", range(10))
def test_eqodds_gap_multiclass_many_groups_matches_loop(seed):
    rng = np.random.default_rng(100 + seed)
    n = 120
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 4, n))
    g = rng.integers(-1, 3, n)  # -1: missing group, ignored
    keep = g >= 0
    mean, worst = _gap_by_loop(y[keep], pred[keep], g[keep])
    got = equalized_odds_gap(y, pred, g)
    assert got["EqOddsGap"] == pytest.approx(mean)
    assert got["EqOddsGap_maxclass"] == pytest.approx(worst)


def test_eqodds_gap_property_worse_on_both_rates_is_never_zero():
    """Whenever one group has a lower TPR and a higher FPR than another on some class, the
    measure is > 0 (500 random multi-class, multi-group cases)."""
    rng = np.random.default_rng(7)
    seen = 0
    for _ in range(500):
        n, k, n_groups = int(rng.integers(10, 80)), int(rng.integers(2, 5)), int(rng.integers(2, 4))
        y, g = rng.integers(0, k, n), rng.integers(0, n_groups, n)
        pred = np.where(rng.random(n) < rng.random(), y, rng.integers(0, k, n))
        worse_on_both = False
        for c in range(k):
            rates = {}
            for code in range(n_groups):
                pos, neg = (g == code) & (y == c), (g == code) & (y != c)
                if pos.any() and neg.any():
                    rates[code] = ((pred[pos] == c).mean(), (pred[neg] == c).mean())
            worse_on_both |= any(ta < tb and fa > fb for ta, fa in rates.values()
                                 for tb, fb in rates.values())
        if worse_on_both:
            seen += 1
            assert equalized_odds_gap(y, pred, g)["EqOddsGap"] > 0
    assert seen > 100


def test_eqodds_gap_is_zero_only_for_equal_rates_and_nan_with_one_group():
    y = np.array([0, 1, 0, 1])
    assert equalized_odds_gap(y, y, np.array([0, 0, 1, 1]))["EqOddsGap"] == 0.0
    assert np.isnan(equalized_odds_gap(y, y, np.zeros(4, int))["EqOddsGap"])


def test_eqodds_gap_is_the_headline_and_in_every_part():
    from fairbench.bench.selection import RULES
    from fairbench.metrics import HEADLINE_FAIRNESS

    assert HEADLINE_FAIRNESS == "EqOddsGap" and higher_is_better("EqOddsGap") is False
    assert RULES["fair_within_eps"][0]["fairness"] == HEADLINE_FAIRNESS
    y, pred, g = _rates_example()
    probs = np.eye(2)[pred]
    out = evaluate_classification(y, probs, g, ["a", "b"])
    assert out["EqOddsGap"] == pytest.approx(0.2) and "EqOddsGap_maxclass" in out


# -- where EqOddsGap and fairlearn's equalized_odds_difference part ---------------------------
def test_eqodds_gap_is_fairlearn_when_every_group_has_both_classes():
    fairlearn = pytest.importorskip("fairlearn.metrics")
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(8, 60))
        y, pred, g = rng.integers(0, 2, n), rng.integers(0, 2, n), rng.integers(0, 2, n)
        if any(len(set(y[g == k])) < 2 for k in (0, 1)):
            continue  # the other side of the definition: the test below
        ours = equalized_odds_gap(y, pred, g)["EqOddsGap"]
        theirs = fairlearn.equalized_odds_difference(y, pred, sensitive_features=g)
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_eqodds_gap_leaves_an_undefined_rate_out_where_fairlearn_counts_it_as_zero():
    """Group 0 has no positive sample, so no TPR: fairbench compares the FPRs only (both 1:
    gap 0); fairlearn takes the missing TPR as 0 against group 1's 1.0 (gap 1.0)."""
    fairlearn = pytest.importorskip("fairlearn.metrics")
    y, pred, g = np.array([0, 0, 1]), np.array([1, 1, 1]), np.array([0, 1, 1])
    assert equalized_odds_gap(y, pred, g)["EqOddsGap"] == 0.0
    assert fairlearn.equalized_odds_difference(y, pred, sensitive_features=g) == 1.0
