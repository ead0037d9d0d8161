"""The decision rule every part is scored under, chosen on validation only.

A binary task predicts class 1 when :math:`p_1` reaches the threshold that maximises the
*validation* macro-F1 (:func:`binary_threshold`); the runner applies it to val and test
predictions (:func:`apply_threshold`) and stores it in ``metrics.json`` (``meta.threshold``)
and ``config.json``. Tasks with more classes take the argmax."""

from __future__ import annotations

import numpy as np


def binary_threshold(y_true: np.ndarray, p1: np.ndarray, *, max_candidates: int = 512) -> float:
    r"""The threshold :math:`t` (predict class 1 iff :math:`p_1 \ge t`) that maximises the
    macro-F1 of ``y_true`` (0/1) — call it with **validation** data only.

    Candidates are 0.5 and the midpoints between consecutive distinct scores (at most
    ``max_candidates`` quantiles of them); ties go to the candidate closest to 0.5. Macro-F1
    follows :func:`fairbench.metrics.macro_prf` (labels present in ``y_true`` or the
    predictions, 0 where a denominator is 0).
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p1, dtype=np.float64)
    if len(y) == 0:
        return 0.5
    uniq = np.unique(p)
    mids = (uniq[1:] + uniq[:-1]) / 2 if len(uniq) > 1 else np.array([])
    if len(mids) > max_candidates:
        mids = np.unique(np.quantile(mids, np.linspace(0, 1, max_candidates)))
    cands = np.unique(np.concatenate([[0.5], mids, [uniq[0], uniq[-1] + 1e-12]]))
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    pred1 = p[None, :] >= cands[:, None]
    tp1 = (pred1 & pos).sum(1).astype(float)
    fp1 = (pred1 & ~pos).sum(1).astype(float)
    fn1 = n1 - tp1
    tp0, fp0, fn0 = n0 - fp1, fn1, fp1
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_1 = np.where(2 * tp1 + fp1 + fn1 > 0, 2 * tp1 / (2 * tp1 + fp1 + fn1), 0.0)
        f1_0 = np.where(2 * tp0 + fp0 + fn0 > 0, 2 * tp0 / (2 * tp0 + fp0 + fn0), 0.0)
    present1 = (n1 > 0) | (tp1 + fp1 > 0)
    present0 = (n0 > 0) | (tp0 + fp0 > 0)
    macro = (f1_1 * present1 + f1_0 * present0) / np.maximum(present1.astype(int)
                                                             + present0.astype(int), 1)
    best = macro.max()
    tied = np.flatnonzero(macro >= best - 1e-12)
    pick = tied[np.argmin(np.abs(cands[tied] - 0.5))]
    return float(cands[pick])


def apply_threshold(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class predictions: argmax, or for two classes ``p1 >= threshold`` when given."""
    probs = np.asarray(probs)
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return (probs[:, 1] >= threshold).astype(np.int64)
