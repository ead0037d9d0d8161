"""Helpers shared by the post-hoc, curvature-based methods (FairQuantize, FairPrune,
ME-FairPrune): an early check that the backbone and estimator work, the curvature of the two
group score sets, the validation-only selection rule, model snapshots and the per-step CSV logs
they write into the run directory.

Group score sets (:func:`balanced_score_sets`): the whole smaller group plus a seeded draw of
the same size from the larger (capped by ``max_per_group``), from the training split, without
augmentation. With more than two groups, every non-privileged group is pooled as the
unprivileged set. :func:`group_curvature` runs
:func:`fairbench.training.curvature.diagonal_curvature` on each."""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fairbench.core.errors import FairbenchError
from fairbench.metrics import check_directed_metric, selection_score
from fairbench.training.curvature import Estimator, GroupCurvature, Scope, diagonal_curvature

if TYPE_CHECKING:
    from fairbench.run.context import RunContext


def check_select_metric(name: str, owner: str = "select_metric") -> None:
    """Raise :class:`ParamError` unless ``name`` is a metric with a direction (a method
    parameter named ``owner``)."""
    check_directed_metric(name, f"parameter {owner}")


def preflight_curvature(ctx: RunContext, *, estimator: str, scope: str) -> None:
    """Fail fast, before the vanilla baseline is trained: every group of the attribute must have
    training samples (the score sets are drawn from them), and BackPACK must handle the backbone
    with ``estimator`` (checked on an untrained copy and two training images)."""
    from fairbench.training.curvature import diagonal_curvature

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
    (one pass, no augmentation, no gradients, labels unused). Batch i of n_i rows enters with
    momentum n_i / (n_1 + … + n_i), so the running mean is the exact mean over the split's
    rows and the running variance the row-weighted mean of the batches' (unbiased) variances
    (a final batch smaller than the others counts for its rows only, not as a whole batch).
    Zeroing or moving weights shifts each channel's statistics, which the frozen running
    statistics of the unpruned model do not know. Returns the number of layers recalibrated
    (0 for a backbone without BatchNorm); the model ends in eval mode."""
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
    model.train()
    loader = ctx.loader("train", sampler="sequential", augment=False, drop_last=False)
    seen = 0
    with torch.no_grad():
        for batch in loader:
            seen += len(batch)
            for m in layers:
                m.momentum = len(batch) / seen
            model(batch.x)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
    return len(layers)


def balanced_score_sets(ctx: RunContext, *, seed: int, max_per_group: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the unprivileged and privileged score sets (equal sizes)."""
    pos = ctx.positions("train")
    codes = ctx.table.attr(ctx.attribute)[pos]
    p = ctx.privileged
    unpriv = pos[(codes >= 0) & (codes != p)]
    priv = pos[codes == p]
    for name, members in (("unprivileged", unpriv), ("privileged", priv)):
        if len(members) == 0:
            raise FairbenchError(
                f"the {name} group has no training samples for the score set "
                f"(attribute {ctx.attribute!r}); curvature-based methods need both groups")
    n = min(len(unpriv), len(priv))
    if max_per_group is not None:
        n = min(n, max_per_group)
    rng = np.random.default_rng([ctx.seed, seed, 4242])

    def draw(members: np.ndarray) -> np.ndarray:
        return np.sort(members if len(members) == n else rng.choice(members, n, replace=False))

    return draw(unpriv), draw(priv)


def group_curvature(
    ctx: RunContext,
    model: nn.Module,
    *,
    estimator: Estimator = "ggn_exact",
    scope: Scope = "all",
    batch_size: int = 32,
    seed: int = 0,
    max_per_group: int | None = None,
) -> GroupCurvature:
    """Curvature of ``model`` on balanced unprivileged and privileged score sets."""
    pos_u, pos_p = balanced_score_sets(ctx, seed=seed, max_per_group=max_per_group)
    out = []
    for label, positions in (("unprivileged", pos_u), ("privileged", pos_p)):
        loader = ctx.loader(positions=positions, batch_size=batch_size, sampler="sequential",
                            augment=False, drop_last=False)
        with ctx.phase("curvature"):
            out.append(diagonal_curvature(
                model, loader, estimator=estimator, scope=scope, progress=ctx.progress,
                desc=f"{estimator} ({label})", total=len(loader),
                pass_size=ctx.curvature_pass_size))
    if ctx.curvature_pass_size.samples is not None:  # recorded in config.json
        ctx.notes["curvature_samples_per_pass"] = ctx.curvature_pass_size.samples
    return GroupCurvature(out[0], out[1], len(pos_u))
