"""Task-independent knowledge-distillation losses (classification and segmentation alike).

Logits carry the classes on ``class_dim`` (1 by default: B×C for classification, B×C×H×W for
segmentation); every other axis after the batch axis is averaged per sample, so the same
function serves per-image and per-pixel distillation.

Hinton et al.'s soft-target loss with temperature τ > 0, teacher distribution as the target::

    p_t = softmax(t / τ),  p_s = softmax(s / τ)
    KD_i = τ² · KL(p_t ‖ p_s) = τ² · Σ_k p_t,k (log p_t,k − log p_s,k)

(averaged over the positions of sample i). KD_i ≥ 0, with equality iff the two distributions
agree at every position; the τ² factor keeps the gradient's size roughly independent of τ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    class_dim: int = 1,
) -> torch.Tensor:
    """Per-sample ``τ²·KL(softmax(t/τ) ‖ softmax(s/τ))`` (shape B), averaged over every
    non-batch, non-class axis. The teacher's logits get no gradient."""
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    log_ps = F.log_softmax(s, dim=class_dim)
    log_pt = F.log_softmax(t, dim=class_dim)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(class_dim)  # B × positions...
    kl = kl.reshape(kl.shape[0], -1).mean(1) if kl.dim() > 1 else kl
    return temperature ** 2 * kl


def distillation_objective(
    supervised: torch.Tensor,
    distill: torch.Tensor,
    has_teacher: torch.Tensor,
    weight: float,
) -> torch.Tensor:
    """Mean over the batch of ``(1 − λ)·L_sup,i + λ·KD_i`` for samples with a teacher and
    ``L_sup,i`` alone for the others (λ = ``weight``; all inputs per sample, shape B)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation weight must lie in [0, 1], got {weight}")
    mixed = (1.0 - weight) * supervised + weight * torch.where(
        has_teacher, distill, torch.zeros_like(distill))
    return torch.where(has_teacher, mixed, supervised).mean()
