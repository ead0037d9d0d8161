"""Helpers shared by the post-hoc, curvature-based methods (FairQuantize, FairPrune,
ME-FairPrune): an early check that the backbone and estimator work, the validation-only
selection rule, model snapshots and the per-step CSV logs they write into the run directory."""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import FairbenchError, ParamError
from .metrics import higher_is_better, selection_score

if TYPE_CHECKING:
    from .context import RunContext


def check_select_metric(name: str, owner: str = "select_metric") -> None:
    """Raise :class:`ParamError` unless ``name`` is a metric with a direction."""
    try:
        direction = higher_is_better(name)
    except KeyError:
        raise ParamError(f"parameter {owner}={name!r} is not a metric; use e.g. EOdd, EOpp1, "
                         "gap.F1 or worst.F1") from None
    if direction is None:
        raise ParamError(f"parameter {owner}={name!r} has no direction; pick another metric")


def preflight_curvature(ctx: RunContext, *, estimator: str, scope: str) -> None:
    """Fail fast, before the vanilla baseline is trained: every group of the attribute must have
    training samples (the score sets are drawn from them), and BackPACK must handle the backbone
    with ``estimator`` (checked on an untrained copy and two training images)."""
    from .saliency import diagonal_curvature

    codes = ctx.table.attr(ctx.attribute)[ctx.positions("train")]
    for code, name in enumerate(ctx.group_names):
        if not np.any(codes == code):
            raise FairbenchError(
                f"group {name!r} of attribute {ctx.attribute!r} has no training samples, so "
                "its curvature score set would be empty; use another split or attribute")
    probe = ctx.new_model(seed_offset=991)
    positions = ctx.positions("train")[:2]
    loader = ctx.loader(positions=positions, batch_size=2, sampler="sequential", augment=False,
                        drop_last=False)
    diagonal_curvature(probe, loader, estimator=estimator, scope=scope)  # type: ignore[arg-type]


def tolerance_rule(select_metric: str, f1_start: float, tolerance: float, *,
                   utility: str = "F1") -> Callable[[dict[str, Any]], float]:
    """A higher-is-better score over validation part metrics: the oriented ``select_metric``
    for candidates whose ``utility`` (macro-F1; Dice for segmentation) is at least
    ``f1_start - tolerance``; every other candidate scores below all of those
    (``-1000 + utility``), so among them the best utility wins."""

    def score(metrics: dict[str, Any]) -> float:
        f1 = float(metrics[utility])
        if f1 >= f1_start - tolerance - 1e-12:
            return selection_score(metrics, select_metric)
        return -1e3 + f1

    return score


def within_tolerance(score: float) -> bool:
    """Whether a :func:`tolerance_rule` score came from a candidate within the F1 tolerance."""
    return score > -1e2


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state dict."""
    return copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV (the union of their keys, in first-seen order)."""
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def recalibrate_batchnorm(ctx: RunContext, model: nn.Module) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance on the training split
    (one pass, no augmentation, no gradients, labels unused), as an exact average over the
    split (``momentum=None``). Zeroing or moving weights shifts each channel's statistics,
    which the frozen running statistics of the unpruned model do not know. Returns the number
    of layers recalibrated (0 for a backbone without BatchNorm); the model ends in eval mode."""
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    loader = ctx.loader("train", sampler="sequential", augment=False, drop_last=False)
    with torch.no_grad():
        for batch in loader:
            model(batch.x)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
    return len(layers)
