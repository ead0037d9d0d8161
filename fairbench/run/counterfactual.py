r"""Counterfactual twins: does the prediction change when only the skin changes?

On data that can draw every test image again with only its skin switched to the other
group's (``synthderm``: :meth:`fairbench.data.dataset.DatasetAdapter.counterfactual_images`),
the returned model predicts each image :math:`x_i` and its twin :math:`x'_i` with the run's own
decision rule (the validation-chosen threshold on binary tasks, else argmax). With
:math:`\hat y_i, \hat y'_i` the two predictions, :math:`p_i, p'_i` the probabilities of the
image's true class :math:`t_i` and :math:`g_i` its group:

* ``flip_rate`` :math:`= \frac1n\sum_i [\hat y_i \ne \hat y'_i]`, overall and per group
  (``per_group``): 0 for a model that ignores skin, 1 for one that reads only skin (on a
  binary skin-coded task);
* ``flip_rate_chance`` :math:`= 1 - \sum_k q_k q'_k`, the flip rate two *independent*
  predictions with the observed class frequencies :math:`q` (images) and :math:`q'` (twins)
  would have, and ``flip_ratio`` = ``flip_rate`` / ``flip_rate_chance`` (the chance-corrected
  reading: 1 = the twin's prediction is as unrelated to the image's as chance);
* ``mean_abs_delta_p_true`` :math:`= \frac1n\sum_i |p_i - p'_i|`;
* ``swapped_F1`` per group: macro-F1 against the true labels of the group's twins (every dark
  image replaced by its light twin and vice versa), and ``delta_F1`` = swapped − original per
  group (``observed_F1`` the images' own): how much of a group's F1 its skin carries.

The per-image twin predictions go to ``predictions.csv`` (``twin_pred``) so that intervals can
resample them; the leaderboard's ``flip_rate`` reads them. Real data has no twins: its runs
carry no ``counterfactual`` (the leakage probe is what they have).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fairbench.data.dataset import ImageSpec
from fairbench.data.loaders import BatchLoader, DeviceData

if TYPE_CHECKING:
    import torch

    from fairbench.run.context import RunContext


def twin_predictions(ctx: RunContext, model: torch.nn.Module, positions: np.ndarray,
                     threshold: float | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(hard predictions, probabilities) of the twins of the rows ``positions`` by the run's
    decision rule, or ``None`` when the dataset has no twins."""
    from fairbench.metrics.decision import apply_threshold

    bundle = ctx.bundle
    images = bundle.adapter.counterfactual_images(bundle.table, ImageSpec(size=bundle.image_size),
                                                  positions)
    if images is None:
        return None
    table = bundle.table
    data = DeviceData(images, table.labels[positions],
                      {bundle.attribute: table.attr(bundle.attribute)[positions]}, ctx.device)
    loader = BatchLoader(data, np.arange(len(positions)), batch_size=ctx.train_config.eval_batch_size,
                         attribute=bundle.attribute,
                         channels_last=ctx.train_config.channels_last_on(ctx.device))
    pred = ctx.trainer.predict(model, loader, ctx.train_config)
    probs = pred.probs[np.argsort(pred.index)]
    return apply_threshold(probs, threshold), probs


def counterfactual_metrics(pred: np.ndarray, probs: np.ndarray, twin_pred: np.ndarray,
                           twin_probs: np.ndarray, true: np.ndarray, groups: np.ndarray,
                           names: list[str]) -> dict[str, Any]:
    """The twins' metrics (module docstring) of one part: ``pred``/``probs`` on the images,
    ``twin_*`` on their twins, ``true`` the true classes, ``groups`` the codes of ``names``."""
    from fairbench.metrics.classification import macro_prf

    n_classes = probs.shape[1]
    flips = pred != twin_pred
    q = np.bincount(pred, minlength=n_classes) / len(pred)
    q_twin = np.bincount(twin_pred, minlength=n_classes) / len(twin_pred)
    chance = float(1.0 - (q * q_twin).sum())
    rows = np.arange(len(true))
    out: dict[str, Any] = {
        "n": int(len(pred)),
        "flip_rate": float(flips.mean()),
        "flip_rate_chance": chance,
        "flip_ratio": float(flips.mean() / chance) if chance > 0 else float("nan"),
        "mean_abs_delta_p_true": float(np.abs(probs[rows, true] - twin_probs[rows, true]).mean()),
        "per_group": {},
    }
    for code, name in enumerate(names):
        sel = groups == code
        if not sel.any():
            continue
        original = macro_prf(true[sel], pred[sel])[2]
        swapped = macro_prf(true[sel], twin_pred[sel])[2]
        out["per_group"][name] = {"n": int(sel.sum()), "flip_rate": float(flips[sel].mean()),
                                  "observed_F1": original, "swapped_F1": swapped,
                                  "delta_F1": swapped - original}
    return out
