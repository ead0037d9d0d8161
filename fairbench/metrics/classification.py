"""Utility metrics of a classifier: accuracy, macro precision/recall/F1, macro AUC, ECE.

All functions are pure numpy, keyword-only after the arrays, and return ``nan`` where the
metric is undefined (e.g. AUC on a subset that holds a single class).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .counts import GroupConfusion, utility_from_confusion


def _confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """The confusion matrix (rows true, columns predicted) of one group of rows."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = int(max(y_true.max(), y_pred.max())) + 1
    return GroupConfusion.from_labels(y_true, y_pred, np.zeros_like(y_true), n_groups=1,
                                      n_classes=k).overall


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    r"""Share of correct predictions, :math:`\frac1n\sum_i [\hat y_i = y_i]`.

    ``higher_is_better = True``.
    """
    if len(y_true) == 0:
        return float("nan")
    return utility_from_confusion(_confusion(y_true, y_pred))["accuracy"]


def macro_prf(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    r"""Macro precision, recall and F1 over the label set :math:`L` = labels present in
    ``y_true`` or ``y_pred`` (scikit-learn's convention), with 0 where a denominator is 0:

    .. math::
        P = \frac1{|L|}\sum_{c\in L}\frac{TP_c}{TP_c+FP_c},\quad
        R = \frac1{|L|}\sum_{c\in L}\frac{TP_c}{TP_c+FN_c},\quad
        F_1 = \frac1{|L|}\sum_{c\in L}\frac{2\,TP_c}{2\,TP_c+FP_c+FN_c}.

    Note that macro F1 is the mean of per-class F1, not the F1 of macro P and R. Computed
    from the confusion counts (:func:`fairbench.metrics.counts.utility_from_confusion`);
    equal to scikit-learn's ``precision_recall_fscore_support(average="macro",
    zero_division=0)``. ``higher_is_better = True`` for all three.
    """
    if len(y_true) == 0:
        return float("nan"), float("nan"), float("nan")
    u = utility_from_confusion(_confusion(y_true, y_pred))
    return u["precision"], u["recall"], u["F1"]


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    r"""One-vs-rest macro AUC: :math:`\frac1{|K|}\sum_{c\in K}\mathrm{AUC}(y=c,\ p_c)` over the
    classes :math:`K` that have both positives and negatives in ``y_true``; ``nan`` when
    :math:`K` is empty. For two classes this is the AUC of :math:`p_1`.
    ``higher_is_better = True``.

    Each AUC is the Mann-Whitney statistic over the average ranks :math:`r_i` of the scores
    (ties share their mean rank, which counts a tied positive-negative pair as 1/2, as the
    trapezoidal ROC area does):

    .. math:: \mathrm{AUC}_c = \frac{\sum_{i: y_i=c} r_i - n_1(n_1+1)/2}{n_1\,n_0}

    with :math:`n_1` positives and :math:`n_0` negatives; equal to scikit-learn's
    ``roc_auc_score`` (tested), computed for all classes from one ``scipy.stats.rankdata``
    call (the run scores every part and group each epoch, where sklearn's per-call checks
    cost more than the ranking).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(y_true) == 0:
        return float("nan")
    classes = [1] if probs.shape[1] == 2 else list(range(probs.shape[1]))
    positives = y_true[:, None] == np.asarray(classes)[None, :]
    n_pos = positives.sum(axis=0)
    n_neg = len(y_true) - n_pos
    kept = (n_pos > 0) & (n_neg > 0)
    if not kept.any():
        return float("nan")
    ranks = rankdata(probs[:, classes], axis=0)
    rank_sum = (ranks * positives).sum(axis=0)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / np.maximum(n_pos * n_neg, 1)
    return float(auc[kept].mean())


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, *, n_bins: int = 15) -> float:
    r"""Top-label expected calibration error with ``n_bins`` equal-width confidence bins:

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{n}\,\bigl|\mathrm{acc}_b - \mathrm{conf}_b\bigr|

    where the confidence of a sample is :math:`\max_c p_c`, bin :math:`b` holds the samples
    with confidence in :math:`(\frac{b-1}{B}, \frac bB]`, and acc/conf are the bin's accuracy
    and mean confidence. ``higher_is_better = False``.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if len(y_true) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        sel = bins == b
        total += sel.sum() / len(y_true) * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)
