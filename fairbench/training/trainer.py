"""The shared trainer: one training loop for every method, customised through hooks.

A method never copies this loop. It changes what the loop does through :class:`TrainHooks`:

* ``loss(model, batch, state) -> Tensor``: the objective of one step (default: cross-entropy
  of ``model(batch.x)``; for segmentation, soft Dice + (B)CE of the mask logits against
  ``batch.mask``). It runs under autocast, on a batch already on the device.
* ``aux``: extra modules (adversaries, perturbers...). An :class:`AuxModule` without a loss of
  its own is trained jointly with the model by the main optimizer; one with a loss gets its own
  optimizer and is stepped after the main step, ``steps`` times every ``every`` steps.
* ``frozen``: per-parameter boolean masks of entries that keep their values (pruned or
  quantized weights). Their gradients are zeroed and, after every optimizer step, their
  values are restored, so momentum and weight decay cannot move them either.
* ``on_step_end(state)`` and ``on_epoch_end(state)``: callbacks.
* ``evaluate(model, loader) -> dict``: the validation metrics of an epoch (default: the part
  metrics of :func:`fairbench.metrics.evaluate_classification`, or of
  :func:`fairbench.metrics.evaluate_segmentation` for a segmentation trainer); ``select``
  names the metric (a flat key such as ``F1``, ``EOdd``, ``worst.F1`` or ``Dice``) whose best
  value picks the checkpoint; ``score(metrics) -> float`` (higher is better) replaces it with
  any rule over the metrics.

The loop: seeded, bf16 autocast and channels-last on CUDA, optional ``torch.compile``
(``TrainConfig.compile``), SGD/Adam/AdamW with a step or
cosine schedule, best-on-validation checkpoint, early stopping, a tqdm bar, and one row per
epoch in the run's training log.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairbench.core.errors import ParamError, TrainingDiverged
from fairbench.core.params import param, params_to_dict
from fairbench.core.progress import progress_bar
from fairbench.core.timing import synchronize
from fairbench.data.loaders import Batch, BatchLoader
from fairbench.metrics import (
    dice_iou_from_counts,
    evaluate_classification,
    evaluate_segmentation,
    flatten,
    higher_is_better,
    selection_score,
)
from fairbench.metrics.catalog import EPOCH_LOG_COLUMNS

#: how training batches are drawn (:class:`fairbench.data.loaders.BatchLoader`)
Sampler = Literal["shuffle", "group", "class", "group_class"]
#: what a group-wise sampler or loss balances: groups, or group × class cells
GroupBy = Literal["group", "group_class"]


@dataclass
class TrainConfig:
    """Optimisation settings of one call to :meth:`Trainer.fit` (``--train key=value``)."""

    epochs: int = param(15, help="training epochs", min=0)
    batch_size: int = param(64, help="batch size", min=1)
    optimizer: Literal["sgd", "adam", "adamw"] = param("adam", help="optimizer")
    lr: float = param(2e-3, help="learning rate", min=0.0, min_exclusive=True)
    momentum: float = param(0.9, help="SGD momentum", min=0.0, max=1.0)
    nesterov: bool = param(False, help="Nesterov momentum (SGD)")
    weight_decay: float = param(1e-4, help="weight decay", min=0.0)
    schedule: Literal["constant", "step", "cosine"] = param("cosine", help="learning-rate schedule")
    step_size: int = param(20, help="epochs per step of the step schedule", min=1)
    gamma: float = param(0.1, help="decay factor of the step schedule", min=0.0, max=1.0)
    sampler: Sampler = param(
        "shuffle", help="training order: shuffled, or balanced per group / class / both")
    augment: bool = param(True, help="random crops and flips on the device")
    select: str = param("F1", help="validation metric that picks the checkpoint ('last' = none)")
    patience: int = param(0, help="early stopping after this many epochs without improvement "
                                  "(0 = off)", min=0)
    amp: bool = param(True, help="bf16 autocast on CUDA")
    channels_last: bool = param(True, help="channels-last memory format on CUDA")
    cpu_channels_last: bool = param(
        False, help="channels-last memory format on CPU too: oneDNN's faster convolutions "
                    "(1.8x per training step of smallcnn at 32 px on one thread); its numbers "
                    "differ from the default format's by rounding, so it is part of the run's "
                    "identity")
    grad_clip: float = param(0.0, help="gradient-norm clipping (0 = off)", min=0.0)
    eval_batch_size: int = param(256, help="batch size of prediction", min=1)
    compile: bool = param(False, help="torch.compile the model's forward pass in training and "
                                      "prediction (worth it for long runs; the first training "
                                      "step's time, compilation included, is logged)")

    def identity(self) -> dict[str, Any]:
        """The settings that define a result, for run and vanilla identities: every field,
        except that ``compile`` and ``cpu_channels_last`` appear only when on (so identities
        made before they existed stay valid)."""
        out = params_to_dict(self)
        for optional in ("compile", "cpu_channels_last"):
            if not out[optional]:
                out.pop(optional)
        return out

    def channels_last_on(self, device: torch.device) -> bool:
        """Whether tensors on ``device`` use the channels-last memory format."""
        if device.type == "cuda":
            return self.channels_last
        return device.type == "cpu" and self.cpu_channels_last

    def validate(self) -> None:
        if self.select != "last":
            try:
                direction = higher_is_better(self.select)
            except KeyError:
                raise ParamError(
                    f"train select={self.select!r} is not a metric; use e.g. F1, AUC, EOdd, "
                    "worst.F1, gap.F1 or last"
                ) from None
            if direction is None:
                raise ParamError(f"train select={self.select!r} has no direction; pick another")


@dataclass
class StepState:
    """What hooks see: the model, the position in training, and a per-step scratch dict."""

    model: nn.Module
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    cache: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    stop: bool = False


LossFn = Callable[[nn.Module, Batch, StepState], torch.Tensor]


@dataclass
class AuxModule:
    """An extra module trained alongside the model (see the module docstring)."""

    module: nn.Module
    loss: LossFn | None = None
    lr: float | None = None
    optimizer: Literal["sgd", "adam", "adamw"] | None = None
    weight_decay: float | None = None
    every: int = 1
    steps: int = 1


@dataclass
class TrainHooks:
    loss: LossFn | None = None
    aux: list[AuxModule] = field(default_factory=list)
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    on_step_end: Callable[[StepState], None] | None = None
    on_epoch_end: Callable[[StepState], None] | None = None
    evaluate: Callable[[nn.Module, BatchLoader], dict[str, Any]] | None = None
    score: Callable[[dict[str, Any]], float] | None = None
    #: end with the best epoch's weights (the default), or keep the last epoch's and only
    #: report the best one (``FitResult.best_state``): a schedule that continues from the
    #: last epoch but chooses among epochs (FairQuantize's retraining after each step)
    restore_best: bool = True


@dataclass
class FitResult:
    best_epoch: int
    best_score: float | None
    history: list[dict[str, Any]]
    seconds: float
    #: the best epoch's weights (CPU) when the epochs were scored, else None
    best_state: dict[str, torch.Tensor] | None = None


def better(score: float, best: float | None) -> bool:
    """Whether a candidate's ``score`` (higher is better) replaces the best so far: always the
    first one; later, a finite score above the best or above a NaN best. A NaN score never
    wins, and never blocks a later finite one; ties keep the earlier candidate."""
    return best is None or (bool(np.isfinite(score)) and (
        not np.isfinite(best) or score > best))


@dataclass
class Predictions:
    """Class probabilities (N×C, float32) of the rows ``index`` (positions in the table);
    ``features`` the pooled embeddings (N×D, float32) read in the same forward pass, where
    they were asked for and the model computes its logits from them (else None)."""

    probs: np.ndarray
    index: np.ndarray
    features: np.ndarray | None = None


def splits_features(model: nn.Module) -> bool:
    """Whether ``model(x)`` is exactly ``model.head(model.features(x))``: a
    :class:`~fairbench.models.backbones.Classifier` whose ``forward``, ``features`` and
    ``head`` are not overridden (a method's own module may compute its output otherwise)."""
    from fairbench.models.backbones import Classifier

    kind = type(model)
    names = ("forward", "features", "head")
    return (isinstance(model, Classifier)
            and all(getattr(kind, name) is getattr(Classifier, name) for name in names)
            and not any(name in vars(model) for name in names)
            and not (model._forward_hooks or model._forward_pre_hooks))


@dataclass
class SegmentationScores:
    """Per-image Dice and IoU (N × foreground classes, float64) of the rows ``index``."""

    dice: np.ndarray
    iou: np.ndarray
    index: np.ndarray


def cross_entropy_loss(model: nn.Module, batch: Batch, state: StepState) -> torch.Tensor:
    return F.cross_entropy(model(batch.x), batch.y)


def dice_ce_loss(model: nn.Module, batch: Batch, state: StepState) -> torch.Tensor:
    from fairbench.training.segmentation import segmentation_loss

    assert batch.mask is not None, "segmentation needs masks in the batch"
    return segmentation_loss(model(batch.x), batch.mask)


def make_optimizer(params: Any, name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9, nesterov: bool = False) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ParamError(f"unknown optimizer {name!r}; use sgd, adam or adamw")


def _lr_factor(config: TrainConfig, epoch_float: float) -> float:
    if config.schedule == "cosine" and config.epochs > 0:
        return 0.5 * (1 + math.cos(math.pi * min(1.0, epoch_float / config.epochs)))
    if config.schedule == "step":
        return config.gamma ** int(epoch_float // config.step_size)
    return 1.0


def _selection_score(metrics: dict[str, Any], select: str, task: str) -> float:
    try:
        return selection_score(metrics, select)
    except KeyError:
        example = "Dice, IoU, worst.Dice" if task == "segmentation" else "F1, AUC, worst.F1"
        raise ParamError(f"train select={select!r} is not a validation metric of this {task} "
                         f"task; use e.g. {example} or last") from None


def _check_finite_outputs(values: torch.Tensor, config: TrainConfig | None) -> None:
    """One :class:`TrainingDiverged` line when a model's outputs hold NaN or inf (weights that
    diverged without a non-finite training loss, or a method's own optimisation)."""
    if not bool(torch.isfinite(values).all()):
        raise _outputs_diverged(config)


def _outputs_diverged(config: TrainConfig | None) -> TrainingDiverged:
    """The error of non-finite outputs; the training advice only where a training config is
    at hand (an evaluation outside training has no learning rate to lower)."""
    advice = (f"; lower the learning rate (--train lr={config.lr:g} now) or clip gradients "
              "(--train grad_clip=1)" if config is not None else "")
    return TrainingDiverged("the model's outputs are not finite (NaN or inf): its weights "
                            f"diverged{advice}")


class EpochLog:
    """Appends one CSV row per epoch to ``path`` (columns grow as new keys appear)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.path is None:
            return
        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


#: torch.compile's backend for ``TrainConfig.compile`` (tests use "aot_eager": no C++ build)
COMPILE_BACKEND = "inductor"


def _compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: the same parameters; attribute access (``features``,
    ``head``...) reaches the original module, so method losses work unchanged."""
    return torch.compile(model, backend=COMPILE_BACKEND)  # type: ignore[return-value]


class _FrozenEntries:
    """Masked entries of parameters held at their values: the gradient masked by a hook and
    the values restored after every optimizer step (weight decay and momentum move them)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], device: torch.device):
        self.named = dict(model.named_parameters())
        frozen = {k: m.to(device, torch.bool) for k, m in masks.items()}
        unknown = sorted(set(frozen) - set(self.named))
        if unknown:
            raise ValueError(f"frozen masks name unknown parameters: {unknown[:3]}")
        # a mask freezing nothing costs a copy, a gradient hook and a restore per step for
        # nothing
        self.masks = {k: m for k, m in frozen.items() if bool(m.any())}
        self.values = {k: self.named[k].detach().clone() for k in self.masks}
        self.handles = [self.named[k].register_hook(lambda g, m=m: g.masked_fill(m, 0))
                        for k, m in self.masks.items()]

    def restore(self) -> None:
        if self.masks:
            with torch.no_grad():
                for k, m in self.masks.items():
                    self.named[k].copy_(torch.where(m, self.values[k], self.named[k]))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class _Optimizers:
    """The model's optimizer (with the jointly trained auxiliary modules) and one per
    auxiliary module with a loss of its own, with their initial learning rates."""

    trainable: list[nn.Parameter]
    main: torch.optim.Optimizer
    separate: list[AuxModule]
    aux: list[torch.optim.Optimizer]
    base_lrs: list[list[float]]

    @classmethod
    def build(cls, model: nn.Module, aux: list[AuxModule], config: TrainConfig) -> _Optimizers:
        joint = [a for a in aux if a.loss is None]
        separate = [a for a in aux if a.loss is not None]
        trainable = [p for p in model.parameters() if p.requires_grad]
        for a in joint:
            trainable += [p for p in a.module.parameters() if p.requires_grad]
        main = make_optimizer(trainable, config.optimizer, config.lr, config.weight_decay,
                              config.momentum, config.nesterov)
        aux_opts = [make_optimizer([p for p in a.module.parameters() if p.requires_grad],
                                   a.optimizer or config.optimizer, a.lr or config.lr,
                                   config.weight_decay if a.weight_decay is None else a.weight_decay,
                                   config.momentum)
                    for a in separate]
        base_lrs = [[g["lr"] for g in o.param_groups] for o in [main, *aux_opts]]
        return cls(trainable, main, separate, aux_opts, base_lrs)

    def scale_lr(self, factor: float) -> None:
        for opt, lrs in zip([self.main, *self.aux], self.base_lrs):
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr * factor


@dataclass
class _BestEpoch:
    """The best validation score so far, its epoch and weights, and epochs since."""

    epoch: int
    score: float | None = None
    state: dict[str, torch.Tensor] | None = None
    since: int = 0

    def update(self, score: float, epoch: int, model: nn.Module) -> None:
        if better(score, self.score):
            self.score, self.epoch, self.since = score, epoch, 0
            self.state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            self.since += 1


@dataclass
class _EpochLoop:
    """One training epoch of :meth:`Trainer.fit`: the learning-rate schedule, the loss, the
    optimizer steps, frozen entries restored, the auxiliary modules' own steps, the hooks."""

    trainer: Trainer
    config: TrainConfig
    hooks: TrainHooks
    stage: str
    loss_fn: LossFn
    frozen: _FrozenEntries
    optimizers: _Optimizers
    forward_model: nn.Module
    compile_seconds: float | None = None

    def train_epoch(self, model: nn.Module, train: BatchLoader, state: StepState, epoch: int,
                    bar: Any) -> dict[str, Any]:
        """Train one epoch; returns its log row (loss, learning rate, seconds)."""
        config, device = self.config, self.trainer.device
        state.epoch = epoch
        model.train()
        for a in self.hooks.aux:
            a.module.train()
        steps_per_epoch = max(1, len(train))
        # the loss sum stays on the device: no host sync per step (CUDA)
        total = torch.zeros((), device=device, dtype=torch.float64
                            if device.type != "mps" else torch.float32)
        count, t0 = 0, time.perf_counter()
        for step, batch in enumerate(train):
            self.optimizers.scale_lr(_lr_factor(config, epoch + step / steps_per_epoch))
            state.step, state.cache = step, {}
            loss = self._step(batch, state)
            if self.hooks.on_step_end is not None:
                self.hooks.on_step_end(state)
            state.global_step += 1
            total += loss.detach().to(total.dtype) * len(batch)
            count += len(batch)
            bar.update(1)
        mean_loss = float(total) / max(1, count)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"training diverged in stage {self.stage!r}, epoch {epoch + 1}: the "
                f"training loss is {mean_loss} (not finite); lower the learning "
                f"rate (--train lr={config.lr:g} now) or clip gradients "
                f"(--train grad_clip=1)", stage=self.stage, epoch=epoch + 1)
        row: dict[str, Any] = {
            "stage": self.stage, "epoch": epoch + 1,
            "train_loss": mean_loss,
            "lr": self.optimizers.main.param_groups[0]["lr"],
            "train_seconds": round(time.perf_counter() - t0, 3),
        }
        if self.compile_seconds is not None and epoch == 0:
            # the first step, compilation included
            row["compile_seconds"] = round(self.compile_seconds, 3)
        return row

    def _step(self, batch: Batch, state: StepState) -> torch.Tensor:
        """One optimizer step of the model (the first one timed under torch.compile), then
        the auxiliary modules' steps; returns the model's loss."""
        config, device, opts = self.config, self.trainer.device, self.optimizers
        first_compiled = config.compile and self.compile_seconds is None
        if first_compiled:
            synchronize(device)
            t_compile = time.perf_counter()
        with self.trainer.autocast(config):
            loss = self.loss_fn(self.forward_model, batch, state)
        opts.main.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(opts.trainable, config.grad_clip)
        opts.main.step()
        if first_compiled:
            synchronize(device)
            self.compile_seconds = time.perf_counter() - t_compile
        self.frozen.restore()
        for a, opt in zip(opts.separate, opts.aux):
            if state.global_step % a.every == 0:
                for _ in range(a.steps):
                    with self.trainer.autocast(config):
                        aux_loss = a.loss(self.forward_model, batch,  # type: ignore[misc]
                                          state)
                    opt.zero_grad(set_to_none=True)
                    aux_loss.backward()
                    opt.step()
        return loss


class Trainer:
    """Runs :meth:`fit` and :meth:`predict` on ``device``; ``seed`` fixes every random draw.

    ``mask_classes`` (the mask class names, background first) makes it a segmentation
    trainer: its default loss, evaluation and checkpoint metrics are those of segmentation.
    """

    def __init__(self, device: torch.device, *, seed: int = 0, log: EpochLog | None = None,
                 progress: bool = True, mask_classes: list[str] | None = None) -> None:
        self.device = torch.device(device)
        self.seed = seed
        self.log = log or EpochLog(None)
        self.progress = progress
        self.mask_classes = list(mask_classes) if mask_classes else None

    @property
    def task(self) -> str:
        return "segmentation" if self.mask_classes else "classification"

    # -- helpers -------------------------------------------------------------------------------
    def autocast(self, config: TrainConfig | None = None) -> Any:
        amp = config.amp if config is not None else True
        if self.device.type == "cuda" and amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, model: nn.Module, config: TrainConfig | None = None) -> nn.Module:
        model.to(self.device)
        if (self.device.type == "cuda" if config is None
                else config.channels_last_on(self.device)):
            model.to(memory_format=torch.channels_last)
        return model

    # -- prediction ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, loader: BatchLoader,
                config: TrainConfig | None = None, *, features: bool = False) -> Predictions:
        """Softmax probabilities over ``loader`` (eval mode, no attribute given to the model).

        ``features=True`` also keeps the pooled embeddings ``model.features(x)`` of the same
        pass where the logits are ``model.head(model.features(x))`` (:func:`splits_features`),
        computed in full precision and uncompiled: the numbers the leakage probe would read
        in a pass of its own, without a second forward pass over the part."""
        self.prepare(model, config)
        was_training = model.training
        model.eval()
        probs, index, embeddings = [], [], []
        compiled = config is not None and config.compile
        keep = features and splits_features(model) and not compiled and not (
            self.device.type == "cuda" and (config is None or config.amp))
        forward = _compiled(model) if compiled else model
        with self.autocast(config):
            for batch in loader:
                if keep:
                    z = model.features(batch.x)  # type: ignore[operator]
                    logits = model.head(z)  # type: ignore[operator]
                    embeddings.append(z.float().flatten(1).cpu())
                else:
                    logits = forward(batch.x)
                probs.append(torch.softmax(logits.float(), dim=1))
                index.append(batch.index)
        model.train(was_training)
        out = torch.cat(probs)
        _check_finite_outputs(out, config)
        return Predictions(out.cpu().numpy(), torch.cat(index).cpu().numpy(),
                           torch.cat(embeddings).numpy() if keep else None)

    @torch.no_grad()
    def predict_segmentation(self, model: nn.Module, loader: BatchLoader,
                             config: TrainConfig | None = None) -> SegmentationScores:
        """Per-image Dice and IoU of ``model``'s hard masks over ``loader`` (eval mode, no
        attribute given to the model); counts are taken on the device, batch by batch."""
        from fairbench.training.segmentation import hard_masks, overlap_counts_torch

        assert self.mask_classes is not None, "predict_segmentation needs mask_classes"
        self.prepare(model, config)
        was_training = model.training
        model.eval()
        counts, index = [], []
        forward = _compiled(model) if config is not None and config.compile else model
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        with self.autocast(config):
            for batch in loader:
                if batch.mask is None:
                    raise ValueError("the loader's data has no masks")
                logits = forward(batch.x)
                finite &= torch.isfinite(logits).all()  # checked once, after the loop
                pred = hard_masks(logits)
                counts.append(overlap_counts_torch(pred, batch.mask, len(self.mask_classes)))
                index.append(batch.index)
        model.train(was_training)
        if not bool(finite):
            raise _outputs_diverged(config)
        dice, iou = dice_iou_from_counts(torch.cat(counts).cpu().numpy())
        return SegmentationScores(dice, iou, torch.cat(index).cpu().numpy())

    def evaluate(self, model: nn.Module, loader: BatchLoader,
                 config: TrainConfig | None = None) -> dict[str, Any]:
        """The part metrics of ``model`` on ``loader``'s rows, groups of its attribute."""
        data = loader.data
        assert loader.attribute is not None, "evaluation needs the loader's attribute"
        all_groups = data.attrs[loader.attribute].cpu().numpy()
        names = getattr(loader, "group_names", None) or [
            str(i) for i in range(int(all_groups.max()) + 1)]
        if self.mask_classes is not None:
            scores = self.predict_segmentation(model, loader, config)
            return evaluate_segmentation(scores.dice, scores.iou, all_groups[scores.index],
                                         names, self.mask_classes)
        pred = self.predict(model, loader, config)
        labels = data.labels.cpu().numpy()[pred.index]
        return evaluate_classification(labels, pred.probs, all_groups[pred.index], names)

    # -- training ------------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        train: BatchLoader,
        val: BatchLoader | None = None,
        *,
        config: TrainConfig,
        hooks: TrainHooks | None = None,
        stage: str = "train",
    ) -> FitResult:
        """Train ``model`` in place; it ends with the weights of the best validation epoch
        (or of the last one with ``hooks.restore_best=False``)."""
        hooks = hooks or TrainHooks()
        loss_fn = hooks.loss or (dice_ce_loss if self.mask_classes else cross_entropy_loss)
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        self.prepare(model, config)
        for aux in hooks.aux:
            self.prepare(aux.module, config)
        frozen = _FrozenEntries(model, hooks.frozen, self.device)
        optimizers = _Optimizers.build(model, hooks.aux, config)
        # torch.compile wraps the model for the loss functions (and predict): the module
        # itself (its state dict, deep copies of it, hooks' access to it) is left as it is
        loop = _EpochLoop(self, config, hooks, stage, loss_fn, frozen, optimizers,
                          _compiled(model) if config.compile else model)
        select = config.select if val is not None else "last"
        best = _BestEpoch(epoch=config.epochs)
        history: list[dict[str, Any]] = []
        state = StepState(model=model)
        steps_per_epoch = max(1, len(train))
        try:
            with progress_bar(total=config.epochs * steps_per_epoch, desc=stage, unit="step",
                              enabled=self.progress) as bar:
                for epoch in range(config.epochs):
                    row = loop.train_epoch(model, train, state, epoch, bar)
                    if val is not None:
                        flat = self._validate_epoch(model, val, config, hooks, state, row,
                                                    select, best, stage, epoch)
                        bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                                        val=f"{flat.get(select, flat.get('F1', flat.get('Dice', float('nan')))):.3f}")
                    history.append(row)
                    self.log.write(row)
                    if hooks.on_epoch_end is not None:
                        hooks.on_epoch_end(state)
                    if state.stop or (config.patience and best.since >= config.patience):
                        break
        finally:
            frozen.remove()
        if best.state is not None and hooks.restore_best:
            model.load_state_dict(best.state)
        return FitResult(best.epoch, best.score, history, time.perf_counter() - start,
                         best.state)

    def _validate_epoch(self, model: nn.Module, val: BatchLoader, config: TrainConfig,
                        hooks: TrainHooks, state: StepState, row: dict[str, Any], select: str,
                        best: _BestEpoch, stage: str, epoch: int) -> dict[str, Any]:
        """Evaluate an epoch on validation: its metrics into ``state`` and the epoch's log
        ``row``, the score into ``best``; returns the flat metrics."""
        evaluate = hooks.evaluate or (lambda m, ld: self.evaluate(m, ld, config))
        try:
            metrics = evaluate(model, val)
        except TrainingDiverged as exc:
            raise TrainingDiverged(
                f"training diverged in stage {stage!r}, epoch {epoch + 1}: "
                f"{exc}", stage=stage, epoch=epoch + 1) from None
        state.metrics = metrics
        flat = flatten(metrics)
        for key in EPOCH_LOG_COLUMNS:
            if key in flat:
                row[f"val_{key}"] = flat[key]
        if hooks.score is not None or select != "last":
            score = (hooks.score(metrics) if hooks.score is not None
                     else _selection_score(metrics, select, self.task))
            best.update(score, epoch + 1, model)
        return flat
