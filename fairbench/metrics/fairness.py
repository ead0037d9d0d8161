"""Group-fairness metrics: the standard equalized-odds gap (the headline criterion) and the
dermatology papers' EOpp0, EOpp1 and EOdd (FairPrune, ME-FairPrune, SNNL, FairQuantize).

Per group :math:`g` and class :math:`c` (one-vs-rest counts within the group):

.. math::
    \\mathrm{TPR}_{g,c}=\\frac{TP}{TP+FN},\\quad \\mathrm{TNR}_{g,c}=\\frac{TN}{TN+FP},\\quad
    \\mathrm{FPR}_{g,c}=\\frac{FP}{TN+FP}.

**Equalized-odds gap** (:func:`equalized_odds_gap`, keys ``EqOddsGap`` and
``EqOddsGap_maxclass``): per class, the largest gap between groups in TPR or in FPR,

.. math::
    G_c = \\max\\big(\\max_g \\mathrm{TPR}_{g,c} - \\min_g \\mathrm{TPR}_{g,c},\\;
    \\max_g \\mathrm{FPR}_{g,c} - \\min_g \\mathrm{FPR}_{g,c}\\big),

(for two groups :math:`\\max(|\\Delta\\mathrm{TPR}_c|, |\\Delta\\mathrm{FPR}_c|)`), then
``EqOddsGap`` :math:`= \\tfrac1C\\sum_c G_c` (macro mean) and ``EqOddsGap_maxclass``
:math:`= \\max_c G_c` (the worst class). A group's rate enters only where its denominator is
positive (a class absent from a group has no TPR there); a rate that fewer than two groups
define contributes 0. On a binary task :math:`G_0 = G_1` (one-vs-rest swaps TPR and FPR), so
``EqOddsGap`` equals fairlearn's ``equalized_odds_difference``. It is 0 only when every group
has the same TPR and the same FPR on every class: no combination of gaps can cancel.

**The papers' definitions** (kept exactly as released, for comparison with their tables:
``fairness_metrics.py`` of github.com/guoyb17/FairQuantize, the same code as
``fairness_metric.py`` of github.com/chiuhaohao/Fair-Multi-Exit-Framework). For groups
:math:`a` (the lower code, e.g. light or female) and :math:`b` (e.g. dark or male), every class
:math:`c < C` with :math:`C = \\max(\\max y, \\max \\hat y) + 1` over the evaluated rows, and
every rate 0 when its denominator is 0 (as released: a class absent from a group gets TPR 0),
with :math:`\\Delta X_c = X_{a,c} - X_{b,c}`:

.. math::
    \\mathrm{EOpp0} = \\tfrac1C\\textstyle\\sum_c |\\Delta\\mathrm{TNR}_c|,\\quad
    \\mathrm{EOpp1} = \\tfrac1C\\sum_c |\\Delta\\mathrm{TPR}_c|,\\quad
    \\mathrm{EOdd} = \\tfrac1{2C}\\sum_c |\\Delta\\mathrm{TPR}_c + \\Delta\\mathrm{FPR}_c|

and the ``*_signed`` twins drop the absolute values (so ``EOdd_signed = (EOpp1_signed -
EOpp0_signed)/2``). All are macro means over classes; ``higher_is_better = False`` for the
absolute ones.

**Blind spots of the papers' measures.** EOdd takes the absolute value of the *sum* of the two
gaps, so it reads 0 when one group is worse on both rates: group a TPR .9 / FPR .1 and group b
TPR .7 / FPR .3 on a binary task give EOdd 0, while the equalized-odds gap (and fairlearn's
``equalized_odds_difference``) is 0.2 and the accuracy gap 0.2. On a binary task EOpp0 and
EOpp1 are always equal (class 0's TNR gap is class 1's TPR gap and vice versa), so EOpp0 adds
nothing there. Use ``EqOddsGap`` for choices and verdicts; read the papers' three beside it.

With more than two groups, the papers' absolute variants take, per class, the largest gap over
all pairs of groups (which equals the two-group definition when there are two); the signed
variants are ``nan``.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np


def group_rates(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_classes: int,
                group_codes: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Per group, the per-class one-vs-rest TPR, TNR and FPR (0 where undefined)."""
    out: dict[int, dict[str, np.ndarray]] = {}
    classes = np.arange(n_classes)
    for g in group_codes:
        sel = groups == g
        yt, yp = y_true[sel][:, None] == classes, y_pred[sel][:, None] == classes
        tp = (yt & yp).sum(0).astype(float)
        fn = (yt & ~yp).sum(0).astype(float)
        fp = (~yt & yp).sum(0).astype(float)
        tn = (~yt & ~yp).sum(0).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            tpr = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            tnr = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
            fpr = np.where(tn + fp > 0, fp / (tn + fp), 0.0)
        out[g] = {"TPR": tpr, "TNR": tnr, "FPR": fpr}
    return out


def equalized_odds_family(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray
                          ) -> dict[str, float]:
    """EOpp0, EOpp1, EOdd and their ``*_signed`` twins (see the module docstring).

    ``groups`` holds integer codes; rows with a negative code are ignored. The signed variants
    are group(lowest code) − group(next code).
    """
    y_true, y_pred, groups = map(np.asarray, (y_true, y_pred, groups))
    keep = groups >= 0
    y_true, y_pred, groups = y_true[keep], y_pred[keep], groups[keep]
    nan = float("nan")
    codes = sorted(set(groups.tolist()))
    if len(codes) < 2 or len(y_true) == 0:
        return {k: nan for k in ("EOpp0", "EOpp1", "EOdd",
                                 "EOpp0_signed", "EOpp1_signed", "EOdd_signed")}
    n_classes = int(max(y_true.max(), y_pred.max())) + 1
    rates = group_rates(y_true, y_pred, groups, n_classes, codes)
    eopp0 = np.zeros(n_classes)
    eopp1 = np.zeros(n_classes)
    eodd = np.zeros(n_classes)
    for a, b in itertools.combinations(codes, 2):
        d_tnr = rates[a]["TNR"] - rates[b]["TNR"]
        d_tpr = rates[a]["TPR"] - rates[b]["TPR"]
        d_fpr = rates[a]["FPR"] - rates[b]["FPR"]
        eopp0 = np.maximum(eopp0, np.abs(d_tnr))
        eopp1 = np.maximum(eopp1, np.abs(d_tpr))
        eodd = np.maximum(eodd, np.abs(d_tpr + d_fpr) / 2)
    out = {"EOpp0": float(eopp0.mean()), "EOpp1": float(eopp1.mean()),
           "EOdd": float(eodd.mean())}
    if len(codes) == 2:
        a, b = codes
        d_tnr = rates[a]["TNR"] - rates[b]["TNR"]
        d_tpr = rates[a]["TPR"] - rates[b]["TPR"]
        d_fpr = rates[a]["FPR"] - rates[b]["FPR"]
        out.update(EOpp0_signed=float(d_tnr.mean()), EOpp1_signed=float(d_tpr.mean()),
                   EOdd_signed=float(((d_tpr + d_fpr) / 2).mean()))
    else:
        out.update(EOpp0_signed=nan, EOpp1_signed=nan, EOdd_signed=nan)
    return out


def equalized_odds_gap(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray
                       ) -> dict[str, float]:
    """``EqOddsGap`` (macro mean over classes of the largest between-group gap in TPR or FPR)
    and ``EqOddsGap_maxclass`` (the worst class); see the module docstring.

    ``groups`` holds integer codes; rows with a negative code are ignored. Classes are
    ``0 .. max(y_true, y_pred)``. ``nan`` with fewer than two groups.
    """
    y_true, y_pred, groups = map(np.asarray, (y_true, y_pred, groups))
    keep = groups >= 0
    y_true, y_pred, groups = y_true[keep], y_pred[keep], groups[keep]
    codes = sorted(set(groups.tolist()))
    if len(codes) < 2 or len(y_true) == 0:
        return {"EqOddsGap": float("nan"), "EqOddsGap_maxclass": float("nan")}
    classes = np.arange(int(max(y_true.max(), y_pred.max())) + 1)
    tpr = np.full((len(codes), len(classes)), np.nan)
    fpr = np.full((len(codes), len(classes)), np.nan)
    for i, g in enumerate(codes):
        sel = groups == g
        yt, yp = y_true[sel][:, None] == classes, y_pred[sel][:, None] == classes
        pos, neg = yt.sum(0), (~yt).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            tpr[i] = np.where(pos > 0, (yt & yp).sum(0) / pos, np.nan)
            fpr[i] = np.where(neg > 0, (~yt & yp).sum(0) / neg, np.nan)

    def spread(rates: np.ndarray) -> np.ndarray:
        defined = (~np.isnan(rates)).sum(0)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns
            gap = np.nanmax(rates, 0) - np.nanmin(rates, 0)
        return np.where(defined >= 2, gap, 0.0)

    per_class = np.maximum(spread(tpr), spread(fpr))
    return {"EqOddsGap": float(per_class.mean()), "EqOddsGap_maxclass": float(per_class.max())}
