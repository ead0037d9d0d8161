"""The soft nearest neighbour loss (SNNL) of every channel of a layer, in one batched computation.

Used by :mod:`fairbench.methods.snnl_prune`. For one channel, each sample i of a batch has a
vector z_i (the channel's feature map, flattened) and a group a_i. With the cosine distance
d_ij = 1 − ⟨z_i, z_j⟩ / (‖z_i‖·‖z_j‖) (or the squared Euclidean distance ‖z_i − z_j‖²) and a
temperature T > 0, w_ij = exp(−d_ij / T) and

    SNNL = −(1/|I|) Σ_{i∈I} log( Σ_{j≠i, a_j=a_i} w_ij  /  Σ_{j≠i} w_ij )

(Frosst, Papernot & Hinton 2019). ``include_self=True`` adds the j = i term w_ii to the
numerator only, as the released SCP code does (``SNNL.py``), which makes every ratio larger and
the loss smaller (it can drop below 0). I is the set of samples whose numerator has at least
one term (a sample that is the only member of its group in the batch has an empty numerator
under the standard form, and its term is undefined: it is left out instead of adding the
released code's 1e-9); a batch where I is empty gives NaN. A zero vector (a dead or pruned
channel) has cosine distance 1 to every sample.

Low SNNL: a sample's nearest neighbours share its group, i.e. the channel separates the groups.
For features unrelated to two balanced groups the value is about log 2 ≈ 0.69.

All C channels are scored together: the features are a C×B×D tensor, the C Gram matrices one
batched matrix product, and both sums log-sum-exps over the last axis (no exponent underflow at
small T), so there is no Python loop over channels.
"""

from __future__ import annotations

from typing import Literal

import torch

Distance = Literal["cosine", "sqeuclidean"]


def pairwise_distances(z: torch.Tensor, distance: Distance = "cosine") -> torch.Tensor:
    """``z``: C×B×D (C independent sets of B vectors) → C×B×B distances (float32 or wider)."""
    if z.dim() != 3:
        raise ValueError(f"expected C×B×D features, got shape {tuple(z.shape)}")
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    if distance == "cosine":
        zn = torch.nn.functional.normalize(z, dim=2, eps=1e-12)
        return (1.0 - zn @ zn.transpose(1, 2)).clamp_min(0.0)
    if distance == "sqeuclidean":
        sq = (z * z).sum(2)
        d = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * (z @ z.transpose(1, 2))
        return d.clamp_min(0.0)
    raise ValueError(f"unknown distance {distance!r}; use cosine or sqeuclidean")


def snnl_per_channel(
    z: torch.Tensor,
    groups: torch.Tensor,
    *,
    temperature: float = 1.0,
    distance: Distance = "cosine",
    include_self: bool = False,
) -> torch.Tensor:
    """SNNL of each of C channels (see the module docstring).

    ``z``: C×B×D features (channel c's vector of sample i is ``z[c, i]``); ``groups``: B group
    codes (samples with code < 0 must be removed before). Returns C values (float32/64).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if groups.dim() != 1 or groups.numel() != z.shape[1]:
        raise ValueError("groups must hold one code per sample (B)")
    b = z.shape[1]
    logits = -pairwise_distances(z, distance) / temperature  # C×B×B, log w_ij
    eye = torch.eye(b, dtype=torch.bool, device=z.device)
    same = groups.view(-1, 1) == groups.view(1, -1)
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=z.device)
    log_den = torch.logsumexp(torch.where(eye, neg_inf, logits), dim=2)  # C×B
    num_mask = same if include_self else same & ~eye
    log_num = torch.logsumexp(torch.where(num_mask, logits, neg_inf), dim=2)  # C×B
    valid = num_mask.any(1) & (~eye).any(1)  # B: a numerator term exists (and a denominator)
    if not bool(valid.any()):
        return torch.full((z.shape[0],), float("nan"), dtype=logits.dtype, device=z.device)
    terms = (log_den - log_num)[:, valid]
    return terms.mean(1)
