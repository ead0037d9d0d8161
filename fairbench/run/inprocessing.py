"""Shared pieces of the in-training baselines (``mfd``, ``adv_conf``, ``adv_rev``,
``resampling``, ``groupdro``): the group check, the training loader with a chosen sampler,
the Gaussian-kernel MMD of MFD, the gradient-reversal layer, the confusion loss and the
feature-map tap."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairbench.core.errors import FairbenchError
from fairbench.data.loaders import BatchLoader
from fairbench.run.context import RunContext
from fairbench.training.trainer import Sampler, TrainConfig


# -- run setup -------------------------------------------------------------------------------------
def batch_mix(ctx: RunContext, loader: BatchLoader) -> dict[str, Any]:
    """The smallest group's share (known groups only) of one epoch of ``loader``'s batches
    and of the training part: what a group-balanced sampler changes."""
    train_groups = ctx.table.attr(ctx.attribute)[ctx.positions("train")]
    known = train_groups[train_groups >= 0]
    counts = np.bincount(known, minlength=ctx.n_groups)
    smallest = int(np.argmin(counts))
    drawn = np.zeros(ctx.n_groups, dtype=np.int64)
    for batch in loader:
        if batch.g is not None:
            g = batch.g[batch.g >= 0].cpu().numpy()
            drawn += np.bincount(g, minlength=ctx.n_groups)
    return {"group": ctx.group_names[smallest],
            "train_smallest_share": round(float(counts[smallest] / max(1, counts.sum())), 4),
            "batches_smallest_share": round(float(drawn[smallest] / max(1, drawn.sum())), 4)}


def require_groups(ctx: RunContext, method: str) -> None:
    """Raise one clear :class:`FairbenchError` unless the attribute in use has two or more
    groups (every method here contrasts or reweights groups)."""
    if ctx.n_groups < 2:
        names = ", ".join(ctx.group_names) or "none"
        raise FairbenchError(
            f"method {method!r} needs a sensitive attribute with at least 2 groups, but "
            f"attribute {ctx.attribute!r} has {ctx.n_groups} ({names}); choose another "
            "attribute with --attribute or a dataset where it takes two or more values")


def train_setup(ctx: RunContext, sampler: Sampler | None) -> tuple[TrainConfig, BatchLoader]:
    """The run's train config with ``sampler`` (None = the run's own) and its train loader.

    ``ctx.fit`` builds its default loader from ``ctx.train_config``, so a method that changes
    the sampler must hand in the loader as well."""
    config = ctx.train_config if sampler is None else dataclasses.replace(
        ctx.train_config, sampler=sampler)
    return config, ctx.loader("train", sampler=config.sampler)


def seeded(ctx: RunContext, offset: int) -> None:
    """Seed the global RNG before building an extra module, so it is the same for a seed."""
    torch.manual_seed(ctx.seed * 7919 + 104729 + offset)


# -- MMD (MFD) -------------------------------------------------------------------------------------
def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``‖a_i − b_j‖²`` (clamped at 1e-12), float32."""
    a, b = a.float(), b.float()
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * a @ b.t()
    return d.clamp_min(1e-12)


def mfd_mmd_terms(
    teacher: torch.Tensor,
    student: torch.Tensor,
    y: torch.Tensor,
    g: torch.Tensor,
    sigma: float,
    n_classes: int,
    n_groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_c Σ_g MMD²(T_c, S_{c,g}) of MFD (Jung et al. 2021) and the number of non-empty cells.

    ``teacher``/``student``: B×D features of the same batch; ``T_c`` = teacher features of
    the samples of class c (all groups), ``S_{c,g}`` = student features of class c and group g.
    Rows with ``g < 0`` (unknown group) are left out of the student side; they still belong
    to ``T_c``. Empty cells are skipped.

    MMD² is the biased V-statistic, diagonals included:
    ``MMD²(X, Y) = mean K(X,X) + mean K(Y,Y) − 2 mean K(X,Y)``, with the Gaussian kernel
    ``K(u,v) = exp(−‖u−v‖² / (2 σ σ̄))`` whose scale σ̄ is the mean squared distance between
    all teacher and all student features of the batch (no gradient).
    """
    teacher, student = teacher.float().flatten(1), student.float().flatten(1)
    d_ts = sq_dists(teacher, student)
    scale = 2.0 * sigma * d_ts.detach().mean()
    k_tt = torch.exp(-sq_dists(teacher, teacher) / scale)
    k_ss = torch.exp(-sq_dists(student, student) / scale)
    k_ts = torch.exp(-d_ts / scale)
    # cell indicators: T (B×C) class c; S (B×C·G) class c and group g (known groups only)
    t_ind = F.one_hot(y, n_classes).float()
    known = g >= 0
    cell = torch.where(known, y * n_groups + g.clamp_min(0), torch.zeros_like(y))
    s_ind = F.one_hot(cell, n_classes * n_groups).float() * known.unsqueeze(1).float()
    n_t = t_ind.sum(0).repeat_interleave(n_groups)  # count of T_c for every cell (c, g)
    n_s = s_ind.sum(0)
    t_rep = t_ind.repeat_interleave(n_groups, dim=1)  # column (c, g) = indicator of T_c
    tt = (t_rep * (k_tt @ t_rep)).sum(0)
    ss = (s_ind * (k_ss @ s_ind)).sum(0)
    ts = (t_rep * (k_ts @ s_ind)).sum(0)
    valid = n_s > 0
    n_t1, n_s1 = n_t.clamp_min(1.0), n_s.clamp_min(1.0)
    mmd2 = tt / (n_t1 * n_t1) + ss / (n_s1 * n_s1) - 2.0 * ts / (n_t1 * n_s1)
    return torch.where(valid, mmd2, torch.zeros_like(mmd2)).sum(), valid.sum()


# -- adversaries ------------------------------------------------------------------------------
class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Gradient reversal (Ganin & Lempitsky 2015): identity forward, ``−λ·grad`` backward."""
    return _GradReverse.apply(x, lam)


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Alvi et al.'s confusion loss: cross-entropy of the adversary's softmax against the
    uniform distribution over its |A| outputs, ``−mean_i (1/|A|) Σ_a log p_a(x_i)``.

    It is ≥ log|A| (Gibbs' inequality) with equality exactly at the uniform output."""
    return -F.log_softmax(logits.float(), dim=1).mean(dim=1).mean()


def known_group_ce(logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of group predictions over the rows with a known group (``g ≥ 0``);
    zero (still attached to the graph) when there are none."""
    known = g >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known].float(), g[known])


def mlp(d_in: int, d_out: int, hidden: int, layers: int) -> nn.Module:
    """``layers`` Linear layers (ReLU between) of width ``hidden``; 1 = a linear head."""
    if layers <= 1:
        return nn.Linear(d_in, d_out)
    mods: list[nn.Module] = [nn.Linear(d_in, hidden), nn.ReLU()]
    for _ in range(layers - 2):
        mods += [nn.Linear(hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden, d_out))
    return nn.Sequential(*mods)
