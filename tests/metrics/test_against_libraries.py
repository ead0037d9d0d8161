"""fairbench's metrics against two independent libraries on 300 random cases each, where
their definitions coincide: torchmetrics (macro F1, macro one-vs-rest AUC, top-label ECE,
accuracy) and FairMedFM's metric package (group AUC gap and worst-group AUC, the accuracy
gap and its equalized-odds score at one decision threshold). Where they differ, nothing is
compared: FairMedFM's ECE is of the positive-class probability in 10 equal-width bins over the
scores' observed range (``pandas.cut``), fairbench's (and torchmetrics') top-label in 15 bins
over [0, 1]; FairMedFM's threshold is the best overall F1 of the positive class on the scored
rows themselves, fairbench's the best validation macro-F1 (so the comparison below gives both
the same predictions). fairlearn's side of the equalized-odds gap, both where it agrees and
where it counts an undefined rate as 0, is in ``test_metrics.py``.

Cases: 40–400 rows, 2–5 classes (binary for FairMedFM, which scores binary tasks only), two
groups each holding every class, probabilities from a random Dirichlet with a random
signal; seeds 0–299."""

from __future__ import annotations

import numpy as np
import pytest

from fairbench import evaluate_classification

torch = pytest.importorskip("torch")
tm = pytest.importorskip("torchmetrics.functional.classification")
fairmedfm = pytest.importorskip("fairmedfm")

CASES = range(300)
GROUPS = ["a", "b"]


def random_case(seed: int, n_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """(labels, probabilities, groups) of one random case; every group holds every class."""
    rng = np.random.default_rng(seed)
    k = n_classes or int(rng.integers(2, 6))
    n = int(rng.integers(40, 401))
    while True:
        y = rng.integers(0, k, n)
        g = rng.integers(0, 2, n)
        if all(((y == c) & (g == h)).any() for c in range(k) for h in (0, 1)):
            break
    logits = rng.normal(0, 1, (n, k)) + rng.uniform(0, 3) * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs, g


def test_utility_metrics_equal_torchmetrics() -> None:
    """Macro F1 (torchmetrics' ``multiclass_f1_score``, average ``macro``), macro AUC
    (``multiclass_auroc``, exact), accuracy and the 15-bin top-label ECE
    (``multiclass_calibration_error``, norm ``l1``): equal on every case, overall and per
    group."""
    for seed in CASES:
        y, probs, g = random_case(seed)
        k = probs.shape[1]
        ours = evaluate_classification(y, probs, g, GROUPS)
        for name, rows in (("overall", slice(None)), ("a", g == 0), ("b", g == 1)):
            part = ours if name == "overall" else ours[name]
            p, t = torch.as_tensor(probs[rows]), torch.as_tensor(y[rows])
            ref = {"F1": tm.multiclass_f1_score(p, t, num_classes=k, average="macro"),
                   "accuracy": tm.multiclass_accuracy(p, t, num_classes=k, average="micro"),
                   "AUC": tm.multiclass_auroc(p, t, num_classes=k, average="macro",
                                              thresholds=None),
                   "ECE": tm.multiclass_calibration_error(p, t, num_classes=k, n_bins=15,
                                                          norm="l1")}
            for key, value in ref.items():
                assert part[key] == pytest.approx(float(value), abs=1e-6), (seed, name, key)


def test_binary_group_metrics_equal_fairmedfm() -> None:
    """FairMedFM scores binary tasks at its own threshold (the best overall F1 of the positive
    class on these rows, ``prob > t``); given the same predictions, fairbench's ``gap.AUC``,
    ``worst.AUC`` and ``gap.accuracy`` equal its ``auc_gap``, ``worst_group_auc`` and
    ``accuracy_gap``, and its ``equalized_odds_score`` = 1 − (|ΔTPR| + |ΔTNR|)/2 equals
    1 − EOpp1 (on a binary task EOpp1 = EOpp0 = the mean of the two classes' TPR gaps, class
    0's TPR being class 1's TNR)."""
    from fairmedfm.metrics import find_threshold

    for seed in CASES:
        y, probs, g = random_case(seed, n_classes=2)
        p1 = probs[:, 1]
        threshold = find_threshold(p1, y)
        pred = (p1 > threshold).astype(int)
        ours = evaluate_classification(y, probs, g, GROUPS, y_pred=pred)
        kw = {"sensitive_features": g, "score_type": "probability"}
        assert ours["gap"]["AUC"] == pytest.approx(fairmedfm.auc_gap(y, p1, **kw), abs=1e-9)
        assert ours["worst"]["AUC"] == pytest.approx(fairmedfm.worst_group_auc(y, p1, **kw),
                                                     abs=1e-9)
        assert ours["gap"]["accuracy"] == pytest.approx(fairmedfm.accuracy_gap(y, p1, **kw),
                                                        abs=1e-9), seed
        assert 1 - ours["EOpp1"] == pytest.approx(
            fairmedfm.equalized_odds_score(y, p1, **kw), abs=1e-9), seed
