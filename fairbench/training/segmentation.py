"""The segmentation task on the device: loss, hard masks and overlap counts (torch).

A segmentor's logits have one channel for a binary mask (mask classes ``background`` and one
structure) and one channel per mask class otherwise (see :mod:`fairbench.models.segmentors`).

* :func:`segmentation_loss`: soft Dice + cross-entropy (binary: BCE on the one channel;
  multi-class: CE over the classes). Soft Dice is computed per image and foreground class,
  :math:`1 - \\frac{2\\sum p t + 1}{\\sum p + \\sum t + 1}` (p the predicted probability of
  the class, t its one-hot truth, sums over the pixels, +1 smoothing so that an empty class
  predicted empty costs 0), averaged over images and classes.
* :func:`hard_masks`: the predicted class code per pixel (binary: logit > 0, i.e.
  p ≥ 0.5 up to the tie; multi-class: argmax).
* :func:`overlap_counts_torch`: per image and foreground class the pixel counts
  (intersection, predicted, true) that :func:`fairbench.metrics.dice_iou_from_counts` turns
  into Dice and IoU: the formula and the empty-mask convention live there only.
* :func:`class_log_probs` and :func:`as_class_logits`: per-pixel log-probabilities and logits
  over the mask classes (binary: the two classes from the one logit), for pixel-wise
  distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """B×K×H×W log-probabilities over the K mask classes (a 1-channel binary output gives
    K = 2: log(1 − σ(z)) and log σ(z))."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return F.log_softmax(logits, dim=1)


def as_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits over the K mask classes: a one-channel binary output z becomes [0, z] (so that
    softmax gives [1 − σ(z), σ(z)]); K-channel outputs are returned as they are."""
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def hard_masks(logits: torch.Tensor) -> torch.Tensor:
    """B×H×W predicted class codes."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, *, smooth: float = 1.0,
                   reduction: str = "mean") -> torch.Tensor:
    """Soft Dice loss per image (averaged over foreground classes); ``reduction="none"``
    keeps one value per image."""
    probs = class_log_probs(logits).exp()[:, 1:]  # foreground classes
    k = probs.shape[1] + 1
    target = F.one_hot(mask.long(), k).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    inter = (probs * target).sum(dim=(2, 3))
    denom = probs.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    per_image = (1 - (2 * inter + smooth) / (denom + smooth)).mean(dim=1)
    return per_image.mean() if reduction == "mean" else per_image


def pixel_cross_entropy(logits: torch.Tensor, mask: torch.Tensor, *,
                        reduction: str = "mean") -> torch.Tensor:
    """BCE (one channel) or CE (K channels) averaged over pixels (per image with
    ``reduction="none"``)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(
            logits[:, 0], mask.to(logits.dtype), reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, mask.long(), reduction="none")
    per_image = per_pixel.flatten(1).mean(dim=1)
    return per_image.mean() if reduction == "mean" else per_image


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, *,
                      reduction: str = "mean") -> torch.Tensor:
    """Soft Dice + (B)CE, the shared trainer's default segmentation objective."""
    return (soft_dice_loss(logits, mask, reduction=reduction)
            + pixel_cross_entropy(logits, mask, reduction=reduction))


def overlap_counts_torch(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """B × (n_classes − 1) × 3 counts [intersection, predicted, true] per foreground class."""
    pred, true = pred.long(), true.long()
    rows = []
    for c in range(1, n_classes):
        p, t = pred == c, true == c
        rows.append(torch.stack([(p & t).flatten(1).sum(1), p.flatten(1).sum(1),
                                 t.flatten(1).sum(1)], dim=1))
    return torch.stack(rows, dim=1)
