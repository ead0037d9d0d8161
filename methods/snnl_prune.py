"""``snnl_prune``: sensitive-channel pruning by the soft nearest neighbour loss (SCP, Kong et
al., MICCAI 2024), following the official code (github.com/Kqp1227/Sensitive-Channel-Pruning:
``SNNL.py``, ``train_cnn.py``).

Decisions (the method's docstring lists them; the source of each in brackets):

* **Score.** For every output channel c of the scored layer and every training sample i, the
  channel's map (C×H×W output, one H×W map per channel) is flattened into z_ci (optionally
  average-pooled to ``pool``×``pool`` first, a spatial pooling per sample; the
  default 0 keeps the full map, as the released code does). The channel's score is the soft
  nearest neighbour loss of {z_ci} with respect to the sensitive group a_i::

      d_ij = 1 − cos(z_ci, z_cj),   w_ij = exp(−d_ij / T)
      SNNL_c = −(1/B) Σ_i log( Σ_{j≠i, a_j=a_i} w_ij / Σ_{j≠i} w_ij )

  computed for all channels at once (:func:`fairbench.training.snnl.snnl_per_channel`, one
  batched C×B×B computation) on batches of ``score_batch_size`` training samples in a fixed
  order, without augmentation, in eval mode, and averaged over the batches [released code]. The standard
  form leaves out j = i from the numerator; ``include_self=true`` keeps it, as released.
  Samples whose group is unknown (code −1) are left out of the score. A low score means the
  channel's maps cluster by group: the lowest-scoring channels are the sensitive ones.
* **Layer.** ``layer`` names a module of the model (``fairbench run ... --param layer=NAME``).
  Default: the last convolutional stage, found by a probe forward pass: the last ``Conv2d``
  that is a real convolution (not a pre-logits convolution acting as a fully connected layer,
  as in timm's VGG), and, when it sits in a residual block, the residual stage holding that
  block (``body.layer4`` of ResNet-18). For VGG-11 (torchvision or timm) this is
  ``body.0.18``, the last 3×3 convolution [released code: ``features[18]``]; for ``smallcnn``
  ``body.12``.
* **Pruning = masking.** A pruned channel's output is made exactly zero: for a ``Conv2d``, its
  weights, its bias and the scale and shift of the BatchNorm that follows it.
  ``mask_bias=false`` reproduces the released code, which masks the convolution's weights
  only (``torch.nn.utils.prune.custom_from_mask`` on ``features[18]``): the channel then
  outputs a constant, its bias (VGG-11 without BN), or with a BatchNorm after it that
  BatchNorm's normalised constant, so neither the bias nor the BatchNorm's scale and shift
  is masked in that mode. For a residual stage or
  block, the channel of the stage's output is removed by masking it in every layer that writes
  into the residual stream: each block's last convolution and its BatchNorm, and the
  downsample convolution and its BatchNorm; masking only the last convolution (a literal
  reading for ResNet-18) would leave the channel alive through the identity shortcut. A stage
  whose first block has an identity shortcut cannot be masked this way (name a convolution).
* **Rounds.** Each round re-scores the pruned model, prunes the ``n_per_round`` lowest-scoring
  channels not yet pruned, and fine-tunes the whole network for ``finetune_epochs`` with the
  run's train config (``finetune_lr``), the masked entries kept by the shared trainer's frozen
  masks and the checkpoint picked by validation macro-F1 (with 0 epochs, BatchNorm statistics
  are re-estimated instead). The released code has no stopping rule; here rounds stop when
  the validation ``select_metric`` (``EqOddsGap``) has not improved for ``patience`` rounds in a row or
  the budget ``max_channels`` (default 10 % of the layer, rounded up) is reached. The last
  round prunes only what the budget leaves.
* **Defaults against the released values.** The released code prunes 5 or 7 channels of
  512 (its comments suggest n ∈ {5, 10, 15, 20}; the hard-coded list in ``train_cnn.py``
  has 7) and fine-tunes for 200 epochs of SGD (lr 0.01, momentum 0.9, Nesterov, weight
  decay 1e-5, StepLR(100, 0.1), batch 256, class-balanced sampling). fairbench's defaults
  are sized for a CPU run on ``synthderm``: ``n_per_round`` 8 channels per round up to 10 %
  of the layer, ``finetune_epochs`` 2 per round with the run's optimizer (Adam) at
  ``finetune_lr`` 5e-4. For the released setting on a paper backbone:
  ``-p n_per_round=7 -p max_channels=7 -p finetune_epochs=200 -p finetune_lr=0.01`` with
  ``--train optimizer=sgd momentum=0.9 nesterov=true weight_decay=1e-5 schedule=step
  step_size=100 gamma=0.1 batch_size=256 sampler=class``.
* **Choice** of the round: every round's validation metrics and its score by the rule below
  go to ``snnl_prune.csv``; the run's notes name the chosen round (``chosen``).
* **Selection, validation only**: among the pruned rounds (the unpruned model is no
  candidate), the best validation ``select_metric`` whose validation macro-F1 is within
  ``f1_tolerance`` of the vanilla model's; if none is, the best F1. Each round's pruned
  channels and validation metrics go to the run's notes and ``snnl_prune.csv``, every channel
  score of every round to ``snnl_scores.csv``.
* The pruned model needs no sensitive attribute at inference; its module is the backbone
  itself, with zeroed entries.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fairbench.core.errors import FairbenchError, ParamError
from fairbench.core.params import Search, param
from fairbench.metrics import HEADLINE_FAIRNESS, flatten
from fairbench.metrics.catalog import SNNL_COLUMNS
from fairbench.run.context import RunContext
from fairbench.run.engagement import Engagement
from fairbench.run.method import Method, register_method
from fairbench.run.posthoc import (
    check_select_metric,
    recalibrate_batchnorm,
    snapshot,
    tolerance_rule,
    within_tolerance,
    write_rows,
)
from fairbench.training.curvature import select_lowest
from fairbench.training.snnl import snnl_per_channel
from fairbench.training.trainer import TrainHooks


@dataclass
class SNNLPruneParams:
    layer: str | None = param(None, help="module whose output channels are scored and pruned "
                                          "(None = the backbone's last convolutional stage)")
    temperature: float = param(1.0, help="SNNL temperature T", min=0.0, min_exclusive=True)
    distance: Literal["cosine", "sqeuclidean"] = param("cosine", help="SNNL distance")
    include_self: bool = param(False, help="count each sample's own term in the numerator "
                                           "(as the released code)")
    pool: int = param(0, help="average-pool each channel map to pool×pool before the distance "
                              "(0 = the full map)", min=0)
    n_per_round: int = param(8, help="channels pruned per round", min=1,
                              search=Search(2, 16, integer=True))
    max_channels: int | None = param(None, help="channel budget over all rounds (None = 10 percent "
                                                "of the layer's channels)", min=1)
    patience: int = param(2, help="stop after this many rounds without a better validation "
                                  "select_metric", min=1)
    score_batch_size: int = param(128, help="batch size of the SNNL (released: 128)", min=2)
    mask_bias: bool = param(True, help="also mask the conv bias and the following BatchNorm's "
                                       "scale and shift (false = weights only, as released)")
    finetune_epochs: int = param(2, help="fine-tuning epochs per round (0 = none)", min=0)
    finetune_lr: float = param(5e-4, help="fine-tuning learning rate", min=0.0,
                               min_exclusive=True)
    select_metric: str = param(HEADLINE_FAIRNESS, help="validation metric of the stopping rule and the "
                                            "final choice")
    f1_tolerance: float = param(0.02, help="allowed validation macro-F1 drop", min=0.0)

    def validate(self) -> None:
        check_select_metric(self.select_metric)
        if self.distance == "cosine" and self.pool == 1:
            raise ParamError("parameter pool=1 leaves one number per sample, whose cosine "
                             "distance is only its sign; use pool=0 (full map) or pool>=2")
        if self.max_channels is not None and self.n_per_round > self.max_channels:
            raise ParamError(f"parameter n_per_round={self.n_per_round} is larger than "
                             f"max_channels={self.max_channels}; lower n_per_round")


# -- the scored layer and the entries that write its channels --------------------------------------
@dataclass
class LayerPlan:
    """The module whose output channels are scored, and for each parameter that writes those
    channels, the axis-0 slice it masks (conv weight/bias, BatchNorm weight/bias)."""

    name: str
    module: nn.Module
    channels: int
    writers: list[str] = field(default_factory=list)  # parameter names, axis 0 = channel

    def masks(self, model: nn.Module, pruned: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter boolean masks (True = pruned entry) of the channels in ``pruned``."""
        named = dict(model.named_parameters())
        out = {}
        for n in self.writers:
            p = named[n]
            shape = (-1,) + (1,) * (p.dim() - 1)
            out[n] = pruned.to(p.device).view(shape).expand_as(p).clone()
        return out


def _is_block(m: nn.Module) -> bool:
    return hasattr(m, "downsample")  # timm and torchvision BasicBlock / Bottleneck


def _is_stage(m: nn.Module) -> bool:
    kids = list(m.children())
    return isinstance(m, nn.Sequential) and bool(kids) and all(_is_block(k) for k in kids)


def _following_bn(model: nn.Module, conv_name: str, channels: int) -> str | None:
    """The BatchNorm2d right after ``conv_name`` in module order (before any other conv)."""
    names = [(n, m) for n, m in model.named_modules()]
    idx = [n for n, _ in names].index(conv_name)
    for n, m in names[idx + 1:]:
        if isinstance(m, nn.Conv2d | nn.Linear):
            return None
        if isinstance(m, nn.BatchNorm2d) and m.num_features == channels:
            return n
    return None


def _conv_writers(model: nn.Module, conv_name: str, mask_bias: bool) -> list[str]:
    """The parameters masked for a pruned output channel of ``conv_name``: its weight, and
    unless ``mask_bias`` is false (the released code's weight-only mask) its bias and the
    scale and shift of the BatchNorm that follows it."""
    conv = dict(model.named_modules())[conv_name]
    assert isinstance(conv, nn.Conv2d)
    writers = [f"{conv_name}.weight"]
    if not mask_bias:
        return writers
    if conv.bias is not None:
        writers.append(f"{conv_name}.bias")
    bn = _following_bn(model, conv_name, conv.out_channels)
    if bn is not None and dict(model.named_modules())[bn].affine:
        writers += [f"{bn}.weight", f"{bn}.bias"]
    return writers


def _block_writers(model: nn.Module, block_name: str, mask_bias: bool,
                   needs_downsample: bool) -> list[str]:
    """Parameters writing a residual block's output channels: the last convolution of its
    branch (+ BatchNorm) and its downsample convolution (+ BatchNorm). Without a downsample
    the identity shortcut carries the block's input; that is fine only when an earlier block
    of the same stage is masked too (``needs_downsample=False``)."""
    block = dict(model.named_modules())[block_name]
    branch = [n for n, m in block.named_modules()
              if isinstance(m, nn.Conv2d) and not n.startswith("downsample")]
    if not branch:
        raise FairbenchError(f"residual block {block_name!r} holds no convolution to prune")
    writers = _conv_writers(model, f"{block_name}.{branch[-1]}", mask_bias)
    down = getattr(block, "downsample", None)
    if down is not None:
        for n, m in down.named_modules():
            if isinstance(m, nn.Conv2d):
                writers += _conv_writers(model, f"{block_name}.downsample.{n}", mask_bias)
    elif needs_downsample:
        raise FairbenchError(
            f"layer {block_name!r} passes its input through an identity shortcut, so its "
            "output channels cannot be removed by masking its own weights; name one of its "
            "convolutions or a stage that starts with a downsampling block")
    return writers


def _fc_like_convs(model: nn.Module, image_size: int, device: torch.device) -> set[str]:
    """Names of convolutions that act as fully connected layers (1×1 output from a kernel that
    covers the whole input without padding), found by one probe forward pass."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, n=n: shapes.__setitem__(
                    n, (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:])))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    except RuntimeError:  # the backbone cannot take this size: the run fails later, clearly
        return set()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    fc = set()
    mods = dict(model.named_modules())
    for n, (ins, outs) in shapes.items():
        conv = mods[n]
        assert isinstance(conv, nn.Conv2d)
        pad = conv.padding if isinstance(conv.padding, tuple) else (0, 0)
        if outs == (1, 1) and all(p == 0 for p in pad) and \
                all(k >= s for k, s in zip(conv.kernel_size, ins)):
            fc.add(n)
    return fc


def valid_layers(model: nn.Module) -> list[str]:
    """Module names that ``layer`` accepts: convolutions, residual blocks and stages."""
    return [n for n, m in model.named_modules()
            if n and (isinstance(m, nn.Conv2d) or _is_block(m) or _is_stage(m))]


def default_layer(model: nn.Module, image_size: int, device: torch.device) -> str:
    """The last convolutional stage (see the module docstring)."""
    fc = _fc_like_convs(model, image_size, device)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in fc]
    if not convs:
        raise FairbenchError("the backbone has no convolution to prune; snnl_prune needs a "
                             "convolutional backbone (e.g. smallcnn, vgg11, resnet18)")
    last = convs[-1]
    mods = dict(model.named_modules())
    parts = last.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the innermost residual block holding ``last``
        block = ".".join(parts[:i])
        if not _is_block(mods[block]):
            continue
        stage = ".".join(parts[:i - 1])
        if stage in mods and _is_stage(mods[stage]) and \
                getattr(next(iter(mods[stage].children())), "downsample", None) is not None:
            return stage
        if getattr(mods[block], "downsample", None) is not None:
            return block
        break
    return last


def plan_layer(model: nn.Module, layer: str | None, *, image_size: int,
               device: torch.device, mask_bias: bool = True) -> LayerPlan:
    """Resolve ``layer`` (None = :func:`default_layer`) into a :class:`LayerPlan`; an unknown
    or unsupported name raises :class:`FairbenchError` listing the valid ones."""
    name = layer if layer is not None else default_layer(model, image_size, device)
    mods = dict(model.named_modules())
    valid = valid_layers(model)
    if name not in mods or name not in valid:
        what = "is not a module of this backbone" if name not in mods else \
            f"is a {type(mods[name]).__name__}, not a convolution or residual block/stage"
        raise FairbenchError(f"layer {name!r} {what}; valid layers: {', '.join(valid)}")
    m = mods[name]
    if isinstance(m, nn.Conv2d):
        return LayerPlan(name, m, m.out_channels, _conv_writers(model, name, mask_bias))
    if _is_block(m):
        blocks = [(name, True)]
    else:  # a stage: the first block must own a downsample, the others follow it
        blocks = [(f"{name}.{k}", i == 0) for i, (k, _) in enumerate(m.named_children())]
    writers: list[str] = []
    for block_name, first in blocks:
        writers += _block_writers(model, block_name, mask_bias, first)
    named = dict(model.named_parameters())
    channels = {named[w].shape[0] for w in writers}
    if len(channels) != 1:  # pragma: no cover - defensive
        raise FairbenchError(f"layer {name!r} mixes channel counts {sorted(channels)}")
    return LayerPlan(name, m, channels.pop(), writers)


# -- scores ------------------------------------------------------------------------------------------
@torch.no_grad()
def channel_scores(ctx: RunContext, model: nn.Module, plan: LayerPlan,
                   params: SNNLPruneParams) -> torch.Tensor:
    """Mean per-batch SNNL of every channel of ``plan``'s layer over the training split (fixed
    order, no augmentation, eval mode, batches of ``score_batch_size``; the last partial batch
    is dropped as released, unless it is the only one). Returns C float64 values on the
    device; NaN where no batch had a defined value."""
    pos = ctx.positions("train")
    bs = params.score_batch_size
    loader = ctx.loader(positions=pos, batch_size=bs, sampler="sequential", augment=False,
                        drop_last=len(pos) > bs)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        out = out.detach().float()
        if params.pool > 0:
            out = F.adaptive_avg_pool2d(out, params.pool)
        captured.append(out.flatten(2).transpose(0, 1).contiguous())  # C×B×D (a copy)

    handle = plan.module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    total = torch.zeros(plan.channels, dtype=torch.float64, device=ctx.device)
    count = torch.zeros(plan.channels, dtype=torch.float64, device=ctx.device)
    try:
        for batch in loader:
            captured.clear()
            known = batch.g >= 0 if batch.g is not None else None
            if known is None or int(known.sum()) < 2:
                continue
            with ctx.trainer.autocast(ctx.train_config):
                model(batch.x[known])
            z = captured[0]
            s = snnl_per_channel(z, batch.g[known], temperature=params.temperature,
                                 distance=params.distance,
                                 include_self=params.include_self).double()
            ok = torch.isfinite(s)
            total += torch.where(ok, s, torch.zeros_like(s))
            count += ok.double()
    finally:
        handle.remove()
        model.train(was_training)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


# -- the method -----------------------------------------------------------------------------------------
@register_method("snnl_prune")
class SNNLPrune(Method):
    """Sensitive-channel pruning by soft nearest neighbour loss, fine-tuned in rounds (Kong et al. 2024)."""

    Params = SNNLPruneParams
    kind = "post-hoc"

    def run(self, ctx: RunContext, params: SNNLPruneParams) -> nn.Module:
        # the layer is resolved on an untrained copy first, so bad input fails before the
        # vanilla baseline is trained
        probe = ctx.new_model(seed_offset=991)
        plan = plan_layer(probe, params.layer, image_size=ctx.bundle.image_size,
                          device=ctx.device, mask_bias=params.mask_bias)
        budget = self._budget(plan, params)
        del probe

        model = ctx.vanilla()
        plan = plan_layer(model, plan.name, image_size=ctx.bundle.image_size, device=ctx.device,
                          mask_bias=params.mask_bias)
        start = ctx.evaluate(model, "val")
        rule = tolerance_rule(params.select_metric, start["F1"], params.f1_tolerance)
        rows: list[dict[str, Any]] = [self._row(0, [], 0, start, None)]
        score_rows: list[dict[str, Any]] = []
        pruned = torch.zeros(plan.channels, dtype=torch.bool, device=ctx.device)
        best: tuple[float, dict[str, torch.Tensor], int] | None = None
        since_best, rnd = 0, 0
        rounds: list[dict[str, Any]] = []
        while int(pruned.sum()) < budget:
            rnd += 1
            scores = channel_scores(ctx, model, plan, params)
            score_rows += [{"round": rnd, "channel": c, "snnl": float(s),
                            "pruned_before": bool(p)}
                           for c, (s, p) in enumerate(zip(scores.tolist(), pruned.tolist()))]
            k = min(params.n_per_round, budget - int(pruned.sum()))
            new_mask = select_lowest(scores, int(pruned.sum()) + k, pruned)
            new = sorted((new_mask & ~pruned).nonzero().squeeze(1).tolist())
            pruned = new_mask
            masks = plan.masks(model, pruned)
            self._apply(model, masks)
            epoch = self._finetune(ctx, model, masks, params, rnd)
            val = ctx.evaluate(model, "val")
            score = rule(val)
            rows.append(self._row(rnd, new, int(pruned.sum()), val, score))
            rounds.append({"round": rnd, "pruned": new,
                           "scores": [round(float(scores[c]), 6) for c in new],
                           "finetune_epoch": epoch, "val_F1": val["F1"],
                           "val_EqOddsGap": val["EqOddsGap"], "val_EOdd": val["EOdd"],
                           "score": score})
            ctx.logger.info("snnl_prune round %d: pruned %s val F1 %.4f EqOddsGap %.4f", rnd, new,
                            val["F1"], val["EqOddsGap"])
            if best is None or score > best[0]:
                best, since_best = (score, snapshot(model), rnd), 0
            else:
                since_best += 1
            if since_best >= params.patience:
                break
        assert best is not None
        model.load_state_dict(best[1])
        write_rows(ctx.run_dir / "snnl_prune.csv", rows)
        write_rows(ctx.run_dir / "snnl_scores.csv", score_rows)
        chosen = [c for r in rounds[:best[2]] for c in r["pruned"]]
        ctx.notes["chosen"] = {"round": best[2]}
        ctx.notes["snnl_prune"] = {
            "layer": plan.name, "layer_channels": plan.channels, "masked_parameters": plan.writers,
            "budget": budget, "rounds": rounds, "chosen_round": best[2],
            "pruned_channels": sorted(chosen),
            "stopped_by": "patience" if since_best >= params.patience else "budget",
            "vanilla_val_F1": start["F1"],
            "vanilla_val_EqOddsGap": start["EqOddsGap"], "vanilla_val_EOdd": start["EOdd"],
            "within_f1_tolerance": within_tolerance(best[0]),
        }
        return model

    def engagement(self, notes: dict) -> Engagement:
        info = notes["snnl_prune"]
        pruned = len(info["pruned_channels"])
        return Engagement(pruned > 0, "channels pruned > 0",
                          {"pruned_channels": pruned, "layer_channels": info["layer_channels"],
                           "within_f1_tolerance": info["within_f1_tolerance"]})

    @staticmethod
    def _budget(plan: LayerPlan, params: SNNLPruneParams) -> int:
        c = plan.channels
        if params.n_per_round >= c:
            raise ParamError(f"n_per_round={params.n_per_round} would prune every channel of "
                             f"layer {plan.name!r}, which has {c}; use n_per_round < {c}")
        budget = params.max_channels if params.max_channels is not None else \
            max(params.n_per_round, math.ceil(0.1 * c))
        if budget >= c:
            raise ParamError(f"max_channels={budget} would prune every channel of layer "
                             f"{plan.name!r}, which has {c}; use max_channels < {c}")
        return budget

    @staticmethod
    def _apply(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, m in masks.items():
                named[n].masked_fill_(m, 0.0)

    @staticmethod
    def _finetune(ctx: RunContext, model: nn.Module, masks: dict[str, torch.Tensor],
                  params: SNNLPruneParams, rnd: int) -> int:
        if params.finetune_epochs == 0:
            recalibrate_batchnorm(ctx, model)
            return 0
        config = dataclasses.replace(ctx.train_config, epochs=params.finetune_epochs,
                                     lr=params.finetune_lr, select="F1", patience=0)
        hooks = TrainHooks(frozen=masks, evaluate=lambda m, _loader: ctx.evaluate(m, "val"))
        result = ctx.fit(model, hooks=hooks, config=config,
                         train=ctx.loader("train", seed_offset=100 + rnd),
                         stage=f"snnl_prune round {rnd}")
        return result.best_epoch

    @staticmethod
    def _row(rnd: int, new: list[int], total: int, val: dict[str, Any],
             score: float | None) -> dict[str, Any]:
        flat = flatten(val)
        return {"round": rnd, "new_channels": " ".join(map(str, new)), "pruned_total": total,
                "score": score, **{f"val_{k}": flat.get(k) for k in SNNL_COLUMNS}}


__all__ = [
    "LayerPlan",
    "SNNLPrune",
    "SNNLPruneParams",
    "channel_scores",
    "default_layer",
    "plan_layer",
    "valid_layers",
]
