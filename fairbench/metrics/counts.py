r"""Group-wise confusion counts, computed once per part, and every prediction-based metric
derived from them (as torchmetrics derives its classification metrics from one set of
``stat_scores``).

:class:`GroupConfusion` holds :math:`N_{g,t,p}`, the number of rows of group :math:`g` with
true class :math:`t` predicted :math:`p` (``counts``, :math:`G\times K\times K`, int64). For a
confusion matrix :math:`M` (one group's, or the sum over groups) and class :math:`c`, one vs
rest:

.. math::
    TP_c = M_{cc},\quad FN_c = \sum_p M_{cp} - TP_c,\quad FP_c = \sum_t M_{tc} - TP_c,\quad
    TN_c = \sum_{t,p} M_{tp} - TP_c - FN_c - FP_c.

From these, :func:`utility_from_confusion` gives accuracy :math:`\sum_c TP_c / n` and the
macro precision, recall and F1 of :func:`fairbench.metrics.classification.macro_prf` (over
the classes present in the truth or the predictions, 0 where a denominator is 0, so equal to
scikit-learn's ``precision_recall_fscore_support(average="macro", zero_division=0)``), and
:func:`equalized_odds_from_counts` the equalized-odds family of
:mod:`fairbench.metrics.fairness` (its docstring holds the definitions). The same numbers in
the same float operations whoever asks: a run's ``metrics.json``, a post-hoc method's
candidate and every bootstrap resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .catalog import COUNT_UTILITY, EQUALIZED_ODDS, HIGHER_IS_BETTER, PAPER_FAIRNESS, PAPER_SIGNED
from .groups import summarise

_NAN = float("nan")


@dataclass(frozen=True)
class GroupConfusion:
    """Confusion counts per group: ``counts[g, t, p]`` (see the module docstring)."""

    counts: np.ndarray

    @classmethod
    def from_labels(cls, y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, *,
                    n_groups: int, n_classes: int) -> GroupConfusion:
        """Counts of the rows with a group code in ``0..n_groups-1`` (negative codes, a
        missing group, are left out) and classes in ``0..n_classes-1``."""
        y_true, y_pred, groups = (np.asarray(a, dtype=np.int64) for a in (y_true, y_pred, groups))
        keep = groups >= 0
        g, t, p = groups[keep], y_true[keep], y_pred[keep]
        k = n_classes
        flat = np.bincount((g * k + t) * k + p, minlength=n_groups * k * k)
        return cls(flat.reshape(n_groups, k, k))

    @property
    def n_classes(self) -> int:
        return int(self.counts.shape[1])

    @property
    def overall(self) -> np.ndarray:
        """The confusion matrix of every row with a group (rows true, columns predicted)."""
        return self.counts.sum(0)

    def present(self) -> list[int]:
        """Group codes that have rows."""
        return [g for g in range(len(self.counts)) if self.counts[g].sum() > 0]

    def seen_classes(self) -> int:
        """:math:`C = \\max(\\max y, \\max\\hat y) + 1` over the rows (0 with no rows)."""
        seen = np.flatnonzero(self.overall.sum(0) + self.overall.sum(1))
        return int(seen.max()) + 1 if len(seen) else 0


def one_vs_rest(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class :math:`(TP_c, FN_c, FP_c, TN_c)` of a confusion matrix, as floats."""
    m = m.astype(float)
    tp = np.diag(m)
    fn = m.sum(1) - tp
    fp = m.sum(0) - tp
    tn = m.sum() - tp - fn - fp
    return tp, fn, fp, tn


def utility_from_confusion(m: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 of one confusion matrix (``nan`` with no
    rows); see the module docstring."""
    n = m.sum()
    if n == 0:
        return {k: _NAN for k in COUNT_UTILITY}
    tp = np.diag(m).astype(float)
    rows, cols = m.sum(1).astype(float), m.sum(0).astype(float)
    present = (rows + cols) > 0
    fp, fn = cols - tp, rows - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {"accuracy": float(tp.sum() / n), "precision": float(p[present].mean()),
            "recall": float(r[present].mean()), "F1": float(f[present].mean())}


def _spread(rates: np.ndarray) -> np.ndarray:
    """Per class (column) max − min over groups (rows) of the defined rates; 0 where fewer
    than two groups define it."""
    defined = np.isfinite(rates)
    hi = np.where(defined, rates, -np.inf).max(0)
    lo = np.where(defined, rates, np.inf).min(0)
    return np.where(defined.sum(0) >= 2, hi - lo, 0.0)


def equalized_odds_from_counts(cm: GroupConfusion, *, signed: bool = True) -> dict[str, float]:
    """``EqOddsGap``, ``EqOddsGap_maxclass``, the papers' ``EOpp0``, ``EOpp1``, ``EOdd`` and
    (with ``signed``) their ``*_signed`` twins, over the classes
    :math:`0..C-1` with :math:`C` = :meth:`GroupConfusion.seen_classes` (definitions in
    :mod:`fairbench.metrics.fairness`); ``nan`` with fewer than two groups present."""
    codes = cm.present()
    keys = EQUALIZED_ODDS + (PAPER_SIGNED if signed else ())
    if len(codes) < 2:
        return {k: _NAN for k in keys}
    c_max = cm.seen_classes()
    strict: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # 0 where undefined
    tpr_defined, fpr_defined = [], []
    for g in codes:
        tp, fn, fp, tn = one_vs_rest(cm.counts[g][:c_max, :c_max])
        with np.errstate(divide="ignore", invalid="ignore"):
            strict[g] = (np.where(tp + fn > 0, tp / (tp + fn), 0.0),
                         np.where(tn + fp > 0, tn / (tn + fp), 0.0),
                         np.where(tn + fp > 0, fp / (tn + fp), 0.0))
            tpr_defined.append(np.where(tp + fn > 0, tp / (tp + fn), np.nan))
            fpr_defined.append(np.where(tn + fp > 0, fp / (tn + fp), np.nan))
    gap = np.maximum(_spread(np.array(tpr_defined)), _spread(np.array(fpr_defined)))
    out = {"EqOddsGap": float(gap.mean()), "EqOddsGap_maxclass": float(gap.max())}
    e0, e1, eo = np.zeros(c_max), np.zeros(c_max), np.zeros(c_max)
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            (tpr_a, tnr_a, fpr_a), (tpr_b, tnr_b, fpr_b) = strict[a], strict[b]
            e0 = np.maximum(e0, np.abs(tnr_a - tnr_b))
            e1 = np.maximum(e1, np.abs(tpr_a - tpr_b))
            eo = np.maximum(eo, np.abs((tpr_a - tpr_b) + (fpr_a - fpr_b)) / 2)
    out.update(zip(PAPER_FAIRNESS, (float(e0.mean()), float(e1.mean()), float(eo.mean()))))
    if signed:
        if len(codes) == 2:
            (tpr_a, tnr_a, fpr_a), (tpr_b, tnr_b, fpr_b) = strict[codes[0]], strict[codes[1]]
            d_tpr, d_fpr = tpr_a - tpr_b, fpr_a - fpr_b
            out.update(EOpp0_signed=float((tnr_a - tnr_b).mean()),
                       EOpp1_signed=float(d_tpr.mean()),
                       EOdd_signed=float(((d_tpr + d_fpr) / 2).mean()))
        else:
            out.update({k: _NAN for k in PAPER_SIGNED})
    return out


def per_group_utility(cm: GroupConfusion, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`utility_from_confusion` of every group with rows, keyed by group name."""
    return {name: utility_from_confusion(cm.counts[code]) for code, name in enumerate(names)
            if cm.counts[code].sum() > 0}


def count_metrics(cm: GroupConfusion, names: Sequence[str], *,
                  families: Sequence[str] = ("utility", "equalized_odds")) -> dict[str, float]:
    """Flat prediction-based metrics from the counts: with ``utility``, accuracy and macro
    P/R/F1 overall, per group (``<group>.<metric>``) and as ``Avg``/``gap``/``worst``/
    ``Diff``/``Diff_signed`` (:func:`fairbench.metrics.groups.summarise`); with
    ``equalized_odds``, the family of :func:`equalized_odds_from_counts` (no signed twins).
    A bootstrap asks for the one family that holds its metric."""
    out: dict[str, float] = {}
    if "utility" in families:
        out.update(utility_from_confusion(cm.overall))
        per = per_group_utility(cm, names)
        for name, values in per.items():
            out.update({f"{name}.{m}": v for m, v in values.items()})
        for prefix, values in summarise(per, list(names), HIGHER_IS_BETTER).items():
            out.update({f"{prefix}.{m}": v for m, v in values.items()})
    if "equalized_odds" in families:
        out.update(equalized_odds_from_counts(cm, signed=False))
    return out
