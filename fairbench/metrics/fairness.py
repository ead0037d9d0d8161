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
``EqOddsGap`` equals fairlearn's ``equalized_odds_difference`` **when every group has samples
of both classes**. Where a group lacks a class, fairbench leaves that group's undefined rate
out while fairlearn counts it as 0: ``y=[0,0,1]``, ``pred=[1,1,1]``, groups ``[0,1,1]``
(group 0 has no positive, so no TPR) give 0 here and 1.0 in fairlearn. It is 0 only when every
group has the same TPR and the same FPR on every class: no combination of gaps can cancel.

**Signs.** Every signed difference of ``metrics.json`` runs one way, group a − group b (the
lower code first, e.g. light − dark), named by ``meta.signed_direction``: the ``*_signed``
twins below (as the released code computes them) and the group summaries' ``Diff_signed``.
Runs written before 2026-12-07 stored ``Diff_signed`` the other way (their
``meta.diff_sign`` says "dark minus light").

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

import numpy as np

from .catalog import EQODDS_GAP, PAPER_FAIRNESS, PAPER_SIGNED
from .counts import GroupConfusion, equalized_odds_from_counts


def _counts(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> GroupConfusion:
    """The group-wise confusion counts of the rows with a group (negative codes left out),
    classes ``0 .. max(y_true, y_pred)``."""
    y_true, y_pred, groups = (np.asarray(a, dtype=np.int64) for a in (y_true, y_pred, groups))
    keep = groups >= 0
    n_groups = int(groups[keep].max()) + 1 if keep.any() else 0
    n_classes = int(max(y_true[keep].max(), y_pred[keep].max())) + 1 if keep.any() else 1
    return GroupConfusion.from_labels(y_true, y_pred, groups, n_groups=n_groups,
                                      n_classes=n_classes)


def equalized_odds_family(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray
                          ) -> dict[str, float]:
    """EOpp0, EOpp1, EOdd and their ``*_signed`` twins (see the module docstring), from the
    group-wise confusion counts (:func:`fairbench.metrics.counts.equalized_odds_from_counts`).

    ``groups`` holds integer codes; rows with a negative code are ignored. The signed variants
    are group(lowest code) − group(next code).
    """
    eo = equalized_odds_from_counts(_counts(y_true, y_pred, groups))
    return {k: eo[k] for k in (*PAPER_FAIRNESS, *PAPER_SIGNED)}


def equalized_odds_gap(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray
                       ) -> dict[str, float]:
    """``EqOddsGap`` (macro mean over classes of the largest between-group gap in TPR or FPR)
    and ``EqOddsGap_maxclass`` (the worst class); see the module docstring.

    ``groups`` holds integer codes; rows with a negative code are ignored. Classes are
    ``0 .. max(y_true, y_pred)``. ``nan`` with fewer than two groups.
    """
    eo = equalized_odds_from_counts(_counts(y_true, y_pred, groups), signed=False)
    return {k: eo[k] for k in EQODDS_GAP}
