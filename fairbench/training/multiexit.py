"""The multi-exit model in training: the shared trainer's loss hook (:func:`exit_loss`,
:math:`L=\\sum_k w_k\\,\\mathrm{CE}(\\hat y_k, y)`) and the per-exit curvature ME-FairPrune
needs. The model itself: :mod:`fairbench.models.multiexit`.

**Curvature** (:func:`multi_exit_curvature`; per group:
:func:`fairbench.run.multiexit.group_multi_exit_curvature`): BackPACK
needs one scalar loss from one output, so each exit's diagonal curvature is computed separately
on a module that returns that exit's logits (:func:`~fairbench.models.multiexit.exit_module`: the backbone truncated at
the stage with torch.fx, then the head; the backbone itself for the final exit) and the
results are combined with :math:`w_k` (the GGN is additive over loss terms; for the empirical
Fisher and the MC GGN this is the usual per-loss-term approximation). Parameters that an exit
does not reach get zero from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fairbench.models.multiexit import MultiExit, exit_module, multi_exit_loss

if TYPE_CHECKING:
    from fairbench.data.loaders import Batch
    from fairbench.training.trainer import StepState


def exit_loss(model: nn.Module, batch: Batch, state: StepState) -> torch.Tensor:
    """The shared trainer's loss hook of a :class:`MultiExit` model (weights of the model)."""
    return multi_exit_loss(model.exits(batch.x), batch.y, model.exit_weights)  # type: ignore[operator]


def to_model_names(model: MultiExit, view: nn.Module, values: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    model_names = {id(p): n for n, p in model.named_parameters()}
    view_params = dict(view.named_parameters())
    return {model_names[id(view_params[n])]: v for n, v in values.items()}


def combine(per_exit: Sequence[dict[str, torch.Tensor]], weights: Sequence[float],
            like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:math:`\\sum_k w_k h_k` over the names of ``like`` (missing names count as 0)."""
    out = {n: torch.zeros_like(t) for n, t in like.items()}
    for h, w in zip(per_exit, weights):
        for n, v in h.items():
            if n in out and w != 0:
                out[n].add_(v.to(out[n].device), alpha=float(w))
    return out


def per_exit_curvature(model: MultiExit, batches: Iterable[Batch], **kw: Any
                       ) -> list[dict[str, torch.Tensor]]:
    """Each exit's diagonal curvature (:func:`fairbench.training.curvature.diagonal_curvature` of its
    own cross-entropy; keyword arguments passed on), by ``model``'s parameter names.
    ``batches`` must be iterable several times (a loader or a list). Exits with weight 0
    are skipped (an empty dict)."""
    from fairbench.training.curvature import diagonal_curvature

    out = []
    for k, w in enumerate(model.exit_weights):
        if w == 0:
            out.append({})
            continue
        view = exit_module(model, k)
        out.append(to_model_names(model, view, diagonal_curvature(view, batches, **kw)))
    return out


def multi_exit_curvature(model: MultiExit, batches: Iterable[Batch], *, scope: str = "all",
                         **kw: Any) -> dict[str, torch.Tensor]:
    """Diagonal curvature of :math:`\\sum_k w_k\\,\\mathrm{CE}_k` over every scored parameter
    of ``model`` (heads included), as the ``w``-weighted sum of the per-exit curvatures."""
    from fairbench.training.curvature import scored_parameters

    per_exit = per_exit_curvature(model, batches, scope=scope, **kw)
    like = {n: p.detach() for n, p in scored_parameters(model, scope).items()}  # type: ignore[arg-type]
    return combine(per_exit, model.exit_weights, like)
