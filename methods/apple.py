"""``apple``: APPLE, adversarial perturbation of a frozen model's latent (Xu et al., 2024).

APPLE improves an already deployed model without changing its weights: a small perturber
``G`` adds ``G(f)`` to the latent ``f`` before the decoder, ``f_p = f + G(f)``, and is trained
against a discriminator ``D`` that tries to recover the sensitive attribute from ``f_p``. No
code was released (github.com/XuZikang/APPLE holds only a README); the losses follow FAAP
(Wang et al., CVPR 2022), which APPLE adapts to the latent space, and the other choices are
fairbench's where the paper is silent.

* **Base model**: the cached vanilla model of the run (``ctx.vanilla()``), frozen: no
  gradient, always in eval mode (BatchNorm statistics included), so its weights are
  bit-identical after training (tested).
* **Latent**: for a U-Net (:class:`~fairbench.models.segmentors.Segmentor`) the bottleneck, the
  deepest feature map of ``encode(x)``; with ``perturb_skips=true`` also every skip feature
  map (one perturber each; the input image that smp passes as the first "feature" is never
  perturbed). For a classifier the pooled embedding ``features(x)`` before the head (the
  paper is about segmentors; fairbench offers it for classifiers too).
* **Perturber** ``G``: a residual block, ``conv3×3 → BatchNorm → ReLU → conv3×3`` for
  feature maps, ``Linear → ReLU → Linear`` for vectors, hidden width ``hidden`` (0 = the
  latent's width); its last layer starts at zero, so ``G(f) = 0`` and the perturbed model
  equals the base model before training (tested).
* **Discriminator** ``D``: global average pooling of each perturbed map (concatenated when
  skips are perturbed), then ``Linear → ReLU → Linear`` to one logit per group.
* **Losses** (alternating, per batch: one ``G`` step through the shared trainer, then
  ``disc_steps`` ``D`` steps on the same, detached ``f_p``):
  ``L_D = CE(D(f_p), a)``;
  ``L_G = task_weight · L_task − α · CE(D(f_p), a) − β · H(softmax(D(f_p)))``,
  ``L_task`` = cross-entropy for classification, soft Dice + (B)CE against the true masks for
  segmentation (the task's usual loss, :meth:`RunContext.task_loss`), optionally
  ``+ norm_penalty · mean ‖G(f)‖²``. Rows whose group is unknown enter ``L_task`` only.
  FAAP-style defaults: α = 0.4, β = 0.1, D's learning rate 0.2 × G's (Adam, D weight decay
  1e-4); task weight 1 (FAAP's 0.7 is available as ``task_weight``). α was checked on
  ``synthderm`` validation (classification, smallcnn, seed 0; vanilla: EOdd 0.0725, macro-F1
  0.9425): α = 0.1 / 0.4 / 1.0 gave validation EOdd 0.0609 / 0.0485 / 0.0631 at macro-F1
  0.9461 / 0.9291 / 0.9459, so FAAP's 0.4 is kept (lowest EOdd within 2 F1 points); β was not
  tuned. Segmentation (U-Net, seed 0 validation; vanilla Dice 0.9066, gap 0.1735): with the
  defaults no epoch beat the base model (the perturbed latent costs Dice at once), nor with
  α 0.05 or 0.1, with skips at α 0.1 or 0.4, or with ``norm_penalty`` 1; the best variant
  tried, ``perturb_skips=true, lr=2e-4`` (α 0.4), reached gap 0.1669 at Dice 0.8905 by lowering
  the light group's Dice. The defaults are kept for both tasks (README, "Segmentation"). G trains with the run's
  train config (optimizer, lr, schedule, epochs) on group-balanced batches (``sampler``,
  default ``group``: the discriminator otherwise learns mostly the majority group).
* **Checkpoint**: chosen on validation only, with FairQuantize's rule: the lowest
  ``select_metric`` (default ``EqOddsGap`` for classification, ``gap.Dice`` for segmentation) among
  epochs whose validation utility (macro-F1 / Dice) is within ``tolerance`` of the base
  model's; the base model itself (G = 0) is a candidate, so when no epoch helps the result is
  the base model, recorded as such in the run's notes.
* **Inference**: ``x → encode → f + G(f) → decode``; no attribute is needed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fairbench.core.errors import FairbenchError, ParamError
from fairbench.core.params import param
from fairbench.metrics import HEADLINE_FAIRNESS, is_segmentation_metric
from fairbench.run.context import RunContext
from fairbench.run.method import Method, register_method
from fairbench.run.posthoc import check_select_metric, tolerance_rule, within_tolerance
from fairbench.training.trainer import AuxModule, StepState, TrainHooks

from ._inprocessing import require_groups


@dataclass
class AppleParams:
    alpha: float = param(0.4, help="weight of the discriminator's cross-entropy (maximised)",
                         min=0.0)
    beta: float = param(0.1, help="weight of the discriminator's entropy (maximised)", min=0.0)
    task_weight: float = param(1.0, help="weight of the task loss", min=0.0, min_exclusive=True)
    norm_penalty: float = param(0.0, help="weight of mean ||G(f)||^2", min=0.0)
    hidden: int = param(0, help="hidden width of the perturber (0 = the latent's width)", min=0)
    disc_hidden: int = param(64, help="hidden width of the discriminator", min=1)
    disc_lr_ratio: float = param(0.2, help="discriminator lr / perturber lr", min=0.0,
                                 min_exclusive=True)
    disc_steps: int = param(1, help="discriminator steps per perturber step", min=1, max=10)
    perturb_skips: bool = param(False, help="also perturb a U-Net's skip connections")
    epochs: int = param(0, help="perturber epochs (0 = the run's train epochs)", min=0)
    lr: float = param(0.0, help="perturber learning rate (0 = the run's train lr)", min=0.0)
    sampler: Literal["shuffle", "group", "group_class"] = param(
        "group", help="training batches: shuffled or balanced per group / group x class")
    select_metric: str = param("auto", help="fairness metric picking the checkpoint "
                                            "(auto = EqOddsGap, or gap.Dice for segmentation)")
    tolerance: float = param(0.02, help="allowed validation utility (F1 or Dice) drop from "
                                        "the base model", min=0.0, max=1.0)


def _zero_last(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


class MapPerturber(nn.Module):
    """``G`` for a feature map: conv3×3 → BatchNorm → ReLU → conv3×3 (last conv zero)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 3, padding=1))
        _zero_last(self.net[-1])

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class VectorPerturber(nn.Module):
    """``G`` for an embedding: Linear → ReLU → Linear (last layer zero)."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, features))
        _zero_last(self.net[-1])

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class Discriminator(nn.Module):
    """Pools each perturbed latent, concatenates, and predicts the group."""

    def __init__(self, in_features: int, hidden: int, n_groups: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, n_groups))

    def forward(self, latents: list[torch.Tensor]) -> torch.Tensor:
        pooled = [f.float().mean(dim=(2, 3)) if f.dim() == 4 else f.float() for f in latents]
        return self.net(torch.cat(pooled, dim=1))


class PerturbedModel(nn.Module):
    """A frozen base model with latent perturbers: ``forward(x)`` gives the task's logits.

    ``last_latents`` holds the perturbed latents of the last forward (for the
    discriminator) and ``last_offsets`` the perturbations ``G(f)``."""

    def __init__(self, base: nn.Module, perturbers: dict[int, nn.Module],
                 segmentation: bool, latent_width: int) -> None:
        super().__init__()
        self.base = base
        #: channels (or features) of the perturbed latents together: the discriminator's input
        self.latent_width = latent_width
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.perturbers = nn.ModuleDict({str(k): m for k, m in perturbers.items()})
        self.segmentation = segmentation
        self.last_latents: list[torch.Tensor] = []
        self.last_offsets: list[torch.Tensor] = []
        self.base.eval()

    def train(self, mode: bool = True) -> PerturbedModel:
        super().train(mode)
        self.base.eval()  # the base model never updates its BatchNorm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents, offsets = [], []
        if self.segmentation:
            feats = self.base.encode(x)
            for key, g in self.perturbers.items():
                k = int(key)
                delta = g(feats[k])
                feats[k] = feats[k] + delta
                latents.append(feats[k])
                offsets.append(delta)
            out = self.base.decode(feats)
        else:
            z = self.base.features(x)
            delta = self.perturbers["0"](z)
            z = z + delta
            latents.append(z)
            offsets.append(delta)
            out = self.base.head(z)
        self.last_latents, self.last_offsets = latents, offsets
        return out

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The perturbed latents as the discriminator reads them (maps pooled, then
        concatenated): what the run's leakage probe reads (fairbench.run.leakage)."""
        self(x)
        return torch.cat([f.float().mean(dim=(2, 3)) if f.dim() == 4 else f.float()
                          for f in self.last_latents], dim=1)


def build_perturbed(ctx: RunContext, base: nn.Module, params: AppleParams) -> PerturbedModel:
    """Perturbers sized from a probe forward of ``base`` on one training image."""
    probe = ctx.loader("train", sampler="sequential", augment=False, batch_size=2,
                       drop_last=False)
    x = next(iter(probe)).x
    base.eval()
    segmentation = ctx.task == "segmentation"
    with torch.no_grad():
        if segmentation:
            if not hasattr(base, "encode"):
                raise FairbenchError("apple needs a segmentor with encode/decode (a unet:*)")
            feats = base.encode(x)
            levels = list(range(1, len(feats))) if params.perturb_skips else [len(feats) - 1]
            shapes = {k: int(feats[k].shape[1]) for k in levels}
        else:
            shapes = {0: int(base.features(x).shape[1])}
    perturbers: dict[int, nn.Module] = {}
    for k, width in shapes.items():
        hidden = params.hidden or width
        perturbers[k] = (MapPerturber(width, hidden) if segmentation
                         else VectorPerturber(width, hidden))
    return PerturbedModel(base, perturbers, segmentation, sum(shapes.values())).to(ctx.device)


def adversary_terms(logits: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Mean cross-entropy of the discriminator over rows with a known group (0 if none) and
    mean entropy of its softmax over all rows."""
    logits = logits.float()
    known = groups >= 0
    ce = (F.cross_entropy(logits[known], groups[known]) if bool(known.any())
          else logits.sum() * 0.0)
    logp = F.log_softmax(logits, dim=1)
    entropy = -(logp.exp() * logp).sum(dim=1).mean()
    return ce, entropy


@register_method("apple")
class Apple(Method):
    """APPLE: a latent perturber trained against a group discriminator; base model frozen."""

    Params = AppleParams
    kind = "post-hoc"
    tasks = ("classification", "segmentation")

    def run(self, ctx: RunContext, params: AppleParams) -> nn.Module:
        require_groups(ctx, self.name)
        segmentation = ctx.task == "segmentation"
        select = params.select_metric
        if select == "auto":
            select = "gap.Dice" if segmentation else HEADLINE_FAIRNESS
        check_select_metric(select)
        if is_segmentation_metric(select) != segmentation:
            raise ParamError(f"apple select_metric={select!r} is not a metric of a {ctx.task} "
                             "run; use e.g. " + ("gap.Dice or ES_fairseg.Dice" if segmentation
                                                 else "EqOddsGap, EOdd or gap.F1"))
        base = ctx.vanilla()
        base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        torch.manual_seed(ctx.seed * 7919 + 31)
        model = build_perturbed(ctx, base, params)
        disc = Discriminator(model.latent_width, params.disc_hidden, ctx.n_groups).to(ctx.device)
        start_perturbers = copy.deepcopy(model.perturbers.state_dict())

        utility = ctx.utility_metric
        start = ctx.evaluate(model, "val")
        rule = tolerance_rule(select, float(start[utility]), params.tolerance, utility=utility)
        start_score = rule(start)

        def generator_loss(m: nn.Module, batch: Any, state: StepState) -> torch.Tensor:
            out = m(batch.x)
            loss = params.task_weight * ctx.task_loss(out, batch)
            latents = model.last_latents
            state.cache["latents"] = [f.detach() for f in latents]
            ce, entropy = adversary_terms(disc(latents), batch.g)
            loss = loss - params.alpha * ce - params.beta * entropy
            if params.norm_penalty > 0:
                loss = loss + params.norm_penalty * sum(
                    d.float().pow(2).flatten(1).sum(1).mean() for d in model.last_offsets)
            return loss

        def disc_loss(m: nn.Module, batch: Any, state: StepState) -> torch.Tensor:
            ce, _ = adversary_terms(disc(state.cache["latents"]), batch.g)
            return ce

        config = replace(ctx.train_config, epochs=params.epochs or ctx.train_config.epochs,
                         lr=params.lr or ctx.train_config.lr, sampler=params.sampler)
        hooks = TrainHooks(
            loss=generator_loss,
            aux=[AuxModule(disc, loss=disc_loss, lr=config.lr * params.disc_lr_ratio,
                           optimizer="adam", weight_decay=1e-4, steps=params.disc_steps)],
            score=rule)
        result = ctx.fit(model, hooks=hooks, config=config, stage="apple")
        kept_start = result.best_score is None or result.best_score <= start_score
        if kept_start:
            model.perturbers.load_state_dict(start_perturbers)
        final = ctx.evaluate(model, "val")
        unchanged = all(torch.equal(v, base_state[k].to(v.device))
                        for k, v in model.base.state_dict().items())
        if not unchanged:  # pragma: no cover - guarded by design, checked by the tests
            raise RuntimeError("apple changed the base model's weights")
        ctx.notes["apple"] = {
            "select_metric": select,
            "utility": utility,
            "start_val": {utility: start[utility], select: _flat(start, select)},
            "final_val": {utility: final[utility], select: _flat(final, select)},
            "best_epoch": None if kept_start else result.best_epoch,
            "kept_base_model": kept_start,
            "start_within_tolerance": within_tolerance(start_score),
            "latent_levels": [int(k) for k in model.perturbers],
        }
        model.eval()
        return model


def _flat(metrics: dict[str, Any], key: str) -> float:
    from fairbench.metrics import flatten

    return float(flatten(metrics)[key])
