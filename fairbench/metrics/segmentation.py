r"""Segmentation metrics: per-image Dice and IoU, disaggregated by group, with the two
equity-scaled families of the segmentation-fairness literature. Pure numpy.

Conventions
-----------
* Masks are integer class-code arrays of shape :math:`(N, H, W)` (any trailing shape works):
  code 0 is background and codes :math:`1..K-1` are structures (binary task: :math:`K = 2`,
  code 1 = lesion; Harvard-FairSeg: background / rim / cup, :math:`K = 3`).
* Per image and per foreground class :math:`c`, with :math:`P` the pixels predicted :math:`c`
  and :math:`T` the pixels labelled :math:`c`:

  .. math::
      \mathrm{Dice}_c = \frac{2|P\cap T|}{|P| + |T|},\qquad
      \mathrm{IoU}_c = \frac{|P\cap T|}{|P\cup T|}.

* Empty convention: when both :math:`P` and :math:`T` are empty, Dice and IoU are 1 (perfect
  agreement); when exactly one is empty they are 0. This differs from Harvard-FairSeg's
  released code (medpy ``dc``), which gives 0 when both are empty and 1 when the prediction
  is non-empty but the truth is empty (github.com/Harvard-Ophthalmology-AI-Lab/FairSeg).
* An image's ``Dice`` is the mean over foreground classes of :math:`\mathrm{Dice}_c` (same for
  ``IoU``); with :math:`K > 2` the per-class values are kept as ``Dice_<class>`` and
  ``IoU_<class>`` (with :math:`K = 2` only ``Dice`` and ``IoU``).
* A group's value :math:`m_g` is the mean over that group's images (per image, then averaged);
  the overall value :math:`m` is the mean over all images with a known group (code
  :math:`\ge 0`); rows with group code :math:`-1` are excluded from every value and counted in
  ``n_missing_group``, as :func:`fairbench.metrics.evaluate_classification` does.
* Equity scaling over the groups :math:`G` present:

  - ``ES_fairseg``: :math:`m / (1 + \sum_{g\in G} |m_g - m|)` (Harvard-FairSeg's ES-Dice /
    ES-IoU with :math:`\alpha = 1`);
  - ``ES_fairmedfm``: :math:`m / (1 + \mathrm{std}_{g\in G}(m_g))` with the *population*
    standard deviation of the group means (FairMedFM's ES-Dice). FairSeg's code also has a
    std variant using the *sample* standard deviation (``statistics.stdev``); that one is not
    computed here.
  - ``skew``: :math:`(1 - \min_g m_g) / (1 - \max_g m_g)` (FairMedFM's skewness: the ratio of
    the worst to the best group's error; 1 = equal, lower is better; ``nan`` when
    :math:`\max_g m_g = 1`).

  With fewer than two groups present these are ``nan``, as are ``gap``/``worst``/``Diff``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .groups import disaggregate, summarise

ES_KEYS = ("ES_fairseg", "ES_fairmedfm", "skew")


def overlap_counts(pred: np.ndarray, true: np.ndarray, n_classes: int) -> np.ndarray:
    r"""Pixel counts per image and foreground class :math:`c \in 1..K-1`:

    .. math:: \mathrm{counts}[i, c-1] = \bigl(|P_{ic}\cap T_{ic}|,\ |P_{ic}|,\ |T_{ic}|\bigr)

    with :math:`P_{ic} = \{p : \hat y_{ip} = c\}` and :math:`T_{ic} = \{p : y_{ip} = c\}`.
    ``pred`` and ``true`` are integer code arrays of the same shape :math:`(N, H, W)` with codes
    in :math:`0..K-1` (``n_classes`` :math:`= K`, background included). Returns an int64 array
    of shape :math:`(N, K-1, 3)`.
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} differ in shape")
    if pred.ndim < 2:
        raise ValueError(f"masks must be (N, H, W) arrays, got shape {pred.shape}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2 (background + 1 structure), got {n_classes}")
    for name, arr in (("pred", pred), ("true", true)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} holds codes outside 0..{n_classes - 1}")
    n = pred.shape[0]
    p = pred.reshape(n, -1)
    t = true.reshape(n, -1)
    out = np.empty((n, n_classes - 1, 3), dtype=np.int64)
    for c in range(1, n_classes):
        pc, tc = p == c, t == c
        out[:, c - 1, 0] = np.count_nonzero(pc & tc, axis=1)
        out[:, c - 1, 1] = np.count_nonzero(pc, axis=1)
        out[:, c - 1, 2] = np.count_nonzero(tc, axis=1)
    return out


def dice_iou_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Dice and IoU from ``counts[..., :] = (I, |P|, |T|)`` (as :func:`overlap_counts` gives):

    .. math::
        \mathrm{Dice} = \frac{2I}{|P| + |T|},\qquad \mathrm{IoU} = \frac{I}{|P| + |T| - I},

    both 1 when :math:`|P| = |T| = 0` (both empty) and hence 0 when exactly one is empty.
    This is the single place where the formula and the empty convention live. Input of shape
    :math:`(N, K-1, 3)` gives two float64 arrays of shape :math:`(N, K-1)`.
    ``higher_is_better = True``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape[-1] != 3:
        raise ValueError(f"counts must end in (intersection, predicted, true), got {counts.shape}")
    inter, npred, ntrue = counts[..., 0], counts[..., 1], counts[..., 2]
    total = npred + ntrue
    union = total - inter
    empty = total == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(empty, 1.0, 2.0 * inter / np.where(empty, 1.0, total))
        iou = np.where(empty, 1.0, inter / np.where(empty, 1.0, union))
    return dice, iou


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def _equity(overall: dict[str, float], per_group: dict[str, dict[str, float]],
            metrics: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {k: {} for k in ES_KEYS}
    nan = float("nan")
    for m in metrics:
        vals = np.array([d[m] for d in per_group.values()], dtype=float)
        mo = overall[m]
        if len(vals) < 2 or not (np.isfinite(vals).all() and np.isfinite(mo)):
            for k in ES_KEYS:
                out[k][m] = nan
            continue
        out["ES_fairseg"][m] = float(mo / (1.0 + np.abs(vals - mo).sum()))
        out["ES_fairmedfm"][m] = float(mo / (1.0 + vals.std(ddof=0)))
        best_err = 1.0 - vals.max()
        out["skew"][m] = float((1.0 - vals.min()) / best_err) if best_err > 0 else nan
    return out


def segmentation_metric_names(class_names: list[str]) -> list[str]:
    """Base metric keys for mask classes ``class_names`` (background first): ``Dice``,
    ``IoU``, then ``Dice_<c>``, ``IoU_<c>`` per foreground class when there are more than one."""
    names = ["Dice", "IoU"]
    if len(class_names) > 2:
        for c in class_names[1:]:
            names += [f"Dice_{c}", f"IoU_{c}"]
    return names


def evaluate_segmentation(
    dice: np.ndarray,
    iou: np.ndarray,
    groups: np.ndarray,
    group_names: list[str],
    class_names: list[str],
) -> dict[str, Any]:
    r"""All segmentation metrics of one part, in the shape of
    :func:`~fairbench.metrics.evaluate_classification`'s dict.

    ``dice`` and ``iou`` are per image per foreground class, shape :math:`(N, K-1)` (as
    :func:`dice_iou_from_counts` gives; :math:`(N,)` is accepted when :math:`K = 2`);
    ``class_names`` are the :math:`K` mask class names, background included. With
    :math:`d_{ic}` the Dice of image :math:`i`, class :math:`c`, and :math:`S` the images of
    known group (:math:`S_g` those of group :math:`g`):

    .. math::
        \mathrm{Dice} = \frac1{|S|}\sum_{i\in S}\frac1{K-1}\sum_c d_{ic},\qquad
        \mathrm{Dice}_g = \frac1{|S_g|}\sum_{i\in S_g}\frac1{K-1}\sum_c d_{ic},\qquad
        \mathrm{Dice}_c = \frac1{|S|}\sum_{i\in S} d_{ic},

    the same for IoU. Keys: ``n_missing_group``, ``n``, the base metrics
    (:func:`segmentation_metric_names`), one sub-dict per present group (``n`` and the base
    metrics), ``Avg``/``gap``/``worst``/``Diff``/``Diff_signed`` (:func:`summarise`), and
    ``ES_fairseg``, ``ES_fairmedfm`` and ``skew`` sub-dicts over the base metrics (module
    docstring). All base metrics and both ES families are higher-is-better; ``skew`` is
    lower-is-better.
    """
    dice = np.asarray(dice, dtype=np.float64)
    iou = np.asarray(iou, dtype=np.float64)
    groups = np.asarray(groups)
    n_fg = len(class_names) - 1
    if n_fg < 1:
        raise ValueError("class_names must hold background and at least one structure")
    if dice.ndim == 1 and n_fg == 1:
        dice, iou = dice[:, None], iou[:, None]
    if dice.shape != iou.shape or dice.ndim != 2 or dice.shape[1] != n_fg:
        raise ValueError(f"dice {dice.shape} and iou {iou.shape} must both be (N, {n_fg})")
    if groups.shape != (dice.shape[0],):
        raise ValueError(f"groups {groups.shape} must be ({dice.shape[0]},)")
    keep = groups >= 0
    d, j, g = dice[keep], iou[keep], groups[keep]

    def compute(sel: np.ndarray) -> dict[str, float]:
        ds, js = d[sel], j[sel]
        vals: dict[str, float] = {"n": int(sel.sum()), "Dice": _mean(ds.mean(axis=1)),
                                  "IoU": _mean(js.mean(axis=1))}
        if n_fg > 1:
            for k, c in enumerate(class_names[1:]):
                vals[f"Dice_{c}"] = _mean(ds[:, k])
                vals[f"IoU_{c}"] = _mean(js[:, k])
        return vals

    out: dict[str, Any] = {"n_missing_group": int((~keep).sum())}
    overall = compute(np.ones(len(g), dtype=bool))
    out.update(overall)
    per_group = disaggregate(compute, g, group_names)
    out.update(per_group)
    metrics = segmentation_metric_names(class_names)
    values = {name: {m: v[m] for m in metrics} for name, v in per_group.items()}
    out.update(summarise(values, group_names, dict.fromkeys(metrics, True)))
    out.update(_equity(overall, values, metrics))
    return out
