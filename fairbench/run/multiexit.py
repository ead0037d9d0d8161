"""Multi-exit models inside a run (Chiu et al., MICCAI 2023): the parameters shared by
``me_vanilla`` and ``me_fairprune`` (registered in ``fairbench.methods.me_fairprune``), the
multi-exit model trained once per run identity and cached beside the vanilla baseline, τ
chosen on validation (:func:`sweep_tau`, :func:`best_tau`), the per-group curvature of its
score sets (:func:`group_multi_exit_curvature`) and the notes a run records (exit histogram,
compute per sample). The network, exit policy and compute rule:
:mod:`fairbench.models.multiexit`; its loss and curvature: :mod:`fairbench.training.multiexit`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from fairbench.core.errors import ParamError
from fairbench.core.params import param
from fairbench.metrics import HEADLINE_FAIRNESS
from fairbench.metrics.catalog import TAU_SWEEP_COLUMNS
from fairbench.models.multiexit import (
    TAU_GRID,
    ExitSpec,
    MultiExit,
    Policy,
    exit_costs,
    exit_fallback,
    exit_module,
    exit_policy,
    exit_report,
    stage_order,
)
from fairbench.training.multiexit import combine, exit_loss, to_model_names

if TYPE_CHECKING:
    from fairbench.run.context import RunContext
    from fairbench.training.curvature import GroupCurvature


# -- parameters shared by the multi-exit methods ---------------------------------------------------
@dataclass
class MultiExitParams:
    """Hyperparameters of the multi-exit model and its exit policy."""

    stages: tuple[str, ...] = param(
        (), help="modules of the backbone after which internal heads go, e.g. "
                 "body.layer1,body.layer2 (empty = the known list of the backbone)")
    exit_weights: tuple[float, ...] = param(
        (), help="loss weight per exit, internal heads then the final classifier (empty = "
                 "1 each for ResNet/smallcnn, 0.3,0.45,0.6,0.75,0.9 for VGG)")
    head_pool: int = param(8, help="pooled map size inside each head (the released code "
                                   "used 64 with up-sampling)", min=1)
    head_upsample: bool = param(False, help="pool every map to exactly head_pool (up-sampling "
                                "small maps, as released; BackPACK rejects it) instead of the "
                                "largest divisor of the map size not above head_pool")
    policy: Literal["A", "B"] = param("A", help="A: first exit with confidence >= tau, else the most "
                                     "confident exit (final included); B: else the final one")
    tau: float | None = param(None, help="confidence threshold (None = choose on validation "
                                         "from tau_grid)", min=0.0, max=1.0, min_exclusive=True)
    tau_grid: tuple[float, ...] = param(TAU_GRID, help="candidate thresholds when tau is None")
    select_metric: str = param(HEADLINE_FAIRNESS, help="validation metric that picks the candidate")
    f1_tolerance: float = param(0.02, help="allowed validation macro-F1 drop from the "
                                           "multi-exit model's final exit", min=0.0)

    def validate(self) -> None:
        from fairbench.run.posthoc import check_select_metric

        validate_exit_params(self)
        check_select_metric(self.select_metric)


def validate_exit_params(p: Any) -> None:
    """The checks of :class:`MultiExitParams` that need several fields (one line each)."""
    if not p.tau_grid:
        raise ParamError("parameter tau_grid is empty; give at least one threshold, e.g. "
                         "0.8,0.9,0.99")
    bad = [t for t in p.tau_grid if not 0.0 < t <= 1.0]
    if bad:
        raise ParamError(f"parameter tau_grid holds {bad[0]}, outside (0, 1]; use thresholds "
                         "such as 0.8,0.9,0.99")
    if any(w < 0 for w in p.exit_weights):
        raise ParamError("parameter exit_weights must hold non-negative values, e.g. "
                         "0.3,0.45,0.6,0.75,0.9")
    if p.exit_weights and not any(w > 0 for w in p.exit_weights):
        raise ParamError("parameter exit_weights are all zero; give at least one positive "
                         "weight")
    if len(set(p.stages)) != len(p.stages):
        raise ParamError("parameter stages names a module twice; give each stage once")


# -- prediction, metrics and τ -----------------------------------------------------------------------
@torch.no_grad()
def exit_logits(ctx: RunContext, model: MultiExit, part: str = "val", loader: Any = None
                ) -> tuple[np.ndarray, torch.Tensor]:
    """Row positions and every exit's logits (K×N×C, float32, CPU) over a part, eval mode,
    in one pass."""
    loader = loader if loader is not None else ctx.loader(part)  # type: ignore[arg-type]
    ctx.trainer.prepare(model, ctx.train_config)
    was_training = model.training
    model.eval()
    out, index = [], []
    with ctx.trainer.autocast(ctx.train_config):
        for batch in loader:
            out.append(torch.stack([lg.float() for lg in model.exits(batch.x)]).cpu())
            index.append(batch.index.cpu())
    model.train(was_training)
    return torch.cat(index).numpy(), torch.cat(out, dim=1)


def part_metrics(ctx: RunContext, index: np.ndarray, logits: torch.Tensor) -> dict[str, Any]:
    """Validation metrics of chosen logits under the run's decision rule (as
    :meth:`RunContext.evaluate` on ``val``: argmax, or for a binary task the threshold that
    maximises these probabilities' macro-F1). Only for validation rows."""
    from fairbench.metrics import evaluate_classification
    from fairbench.metrics.decision import apply_threshold, binary_threshold

    probs = torch.softmax(logits.float(), dim=1).numpy()
    labels = ctx.table.labels[index]
    codes = ctx.table.attr(ctx.attribute)[index]
    y_pred = None
    if ctx.n_classes == 2:
        y_pred = apply_threshold(probs, binary_threshold(labels, probs[:, 1]))
    return evaluate_classification(labels, probs, codes, ctx.group_names, y_pred=y_pred)


@dataclass
class TauResult:
    tau: float
    score: float
    metrics: dict[str, Any]
    chosen: torch.Tensor
    fell_back: torch.Tensor | None = None


def sweep_tau(ctx: RunContext, index: np.ndarray, logits: torch.Tensor, taus: Iterable[float],
              policy: Policy, score: Any) -> list[TauResult]:
    """Every τ's validation metrics and ``score`` (higher is better) from one set of exit
    logits."""
    out = []
    for tau in taus:
        chosen_logits, chosen = exit_policy(logits, float(tau), policy)
        metrics = part_metrics(ctx, index, chosen_logits)
        out.append(TauResult(float(tau), float(score(metrics)), metrics, chosen,
                             exit_fallback(logits, float(tau))))
    return out


def best_tau(results: Sequence[TauResult]) -> TauResult:
    """The highest score (a NaN never wins; ties: the first, i.e. the lower τ of the grid)."""
    from fairbench.training.trainer import better

    best = results[0]
    for r in results[1:]:
        if better(r.score, best.score):
            best = r
    return best


def group_multi_exit_curvature(ctx: RunContext, model: MultiExit, *, estimator: str,
                               scope: str = "conv_linear", batch_size: int = 32, seed: int = 0,
                               max_per_group: int | None = None) -> GroupCurvature:
    """:func:`fairbench.run.posthoc.group_curvature` (balanced unprivileged and privileged score
    sets) of every exit, combined with the exit weights."""
    from fairbench.run.posthoc import group_curvature
    from fairbench.training.curvature import GroupCurvature, scored_parameters

    like = {n: p.detach() for n, p in scored_parameters(model, scope).items()}  # type: ignore[arg-type]
    h_u, h_p, n = [], [], 0
    for k, w in enumerate(model.exit_weights):
        if w == 0:
            continue
        view = exit_module(model, k)
        g = group_curvature(ctx, view, estimator=estimator, scope=scope,  # type: ignore[arg-type]
                            batch_size=batch_size, seed=seed, max_per_group=max_per_group)
        h_u.append((to_model_names(model, view, g.h_u), w))
        h_p.append((to_model_names(model, view, g.h_p), w))
        n = g.n_per_group
    return GroupCurvature(combine([h for h, _ in h_u], [w for _, w in h_u], like),
                          combine([h for h, _ in h_p], [w for _, w in h_p], like), n)


# -- building, training and caching ------------------------------------------------------------------
def build_multi_exit(ctx: RunContext, spec: ExitSpec, *, policy: Policy = "A",
                     tau: float = 0.9, seed_offset: int = 0) -> MultiExit:
    """A fresh multi-exit model: the run's backbone initialised as ``ctx.new_model`` does (the
    same initial weights as the vanilla baseline), heads seeded from the run's seed."""
    backbone = ctx.new_model(seed_offset=seed_offset)
    torch.manual_seed(ctx.seed * 7919 + seed_offset + 104729)
    model = MultiExit(backbone, spec, image_size=ctx.bundle.image_size,
                      num_classes=ctx.n_classes, tau=tau, policy=policy)
    return ctx.trainer.prepare(model, ctx.train_config)  # type: ignore[return-value]


def multi_exit_identity(ctx: RunContext, spec: ExitSpec, policy: Policy,
                        taus: Sequence[float]) -> dict[str, Any]:
    """What identifies a trained multi-exit model: the vanilla baseline's identity, the exit
    architecture and the policy and τ grid of checkpoint selection."""
    return {**ctx.vanilla_identity(), "multiexit": spec.identity(),
            "checkpoint": {"policy": policy, "taus": [float(t) for t in taus]}}


def multi_exit_dir(ctx: RunContext, spec: ExitSpec, policy: Policy, taus: Sequence[float]
                   ) -> Path:
    from fairbench.core.files import config_hash

    key = config_hash(multi_exit_identity(ctx, spec, policy, taus))[:16]
    return ctx.runs_dir / "_me_vanilla" / key


def training_evaluate(ctx: RunContext, taus: Sequence[float], policy: Policy) -> Any:
    """The trainer's ``evaluate`` hook of a multi-exit model: one pass through all exits on the
    validation loader, then the metrics of the τ (from ``taus``) that is best by the train
    config's ``select`` metric (macro-F1 when it is ``last``)."""
    from fairbench.metrics import selection_score

    select = ctx.train_config.select if ctx.train_config.select != "last" else "F1"

    def evaluate(model: nn.Module, loader: Any) -> dict[str, Any]:
        index, logits = exit_logits(ctx, model, loader=loader)  # type: ignore[arg-type]
        results = sweep_tau(ctx, index, logits, taus, policy,
                            lambda m: selection_score(m, select))
        return best_tau(results).metrics

    return evaluate


def trained_multi_exit(ctx: RunContext, spec: ExitSpec, *, policy: Policy = "A",
                       taus: Sequence[float] = TAU_GRID) -> tuple[MultiExit, dict[str, Any]]:
    """The multi-exit model trained with :math:`\\sum_k w_k\\mathrm{CE}_k` by the shared trainer
    and the run's train config (checkpoint: best validation ``select`` metric of the exit
    policy at its best τ of ``taus``), trained once per (vanilla identity, exit spec) and cached
    under ``<runs_dir>/_me_vanilla/`` like the vanilla baseline, with its identity and the
    sha256 of its weights: a damaged or swapped entry is removed with one warning line and
    trained again. Concurrent runs wait for one another. Returns the model (τ = the first of
    ``taus``) and the cache's meta."""
    from fairbench.run.store import cached_model

    final = multi_exit_dir(ctx, spec, policy, taus)

    def load(folder: Path) -> MultiExit:
        model = _multi_exit_model(ctx, spec, policy, taus)
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu",
                                         weights_only=True))
        return model

    def train(tmp: Path) -> dict[str, Any]:
        from fairbench.training.trainer import EpochLog, Trainer, TrainHooks

        model = build_multi_exit(ctx, spec, policy=policy, tau=taus[0])
        trainer = Trainer(ctx.device, seed=ctx.seed, log=EpochLog(tmp / "train_log.csv"),
                          progress=ctx.progress)
        hooks = TrainHooks(loss=exit_loss, evaluate=training_evaluate(ctx, taus, policy))
        result = trainer.fit(model, ctx.loader("train"), ctx.loader("val"),
                             config=ctx.train_config, hooks=hooks, stage="multi-exit")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   tmp / "model.pt")
        return {"best_epoch": result.best_epoch, "seconds": round(result.seconds, 3)}

    model, meta = cached_model(final, multi_exit_identity(ctx, spec, policy, taus),
                               train=train, load=load, what="multi-exit model",
                               logger=ctx.logger)
    model.tau.fill_(float(taus[0]))
    ctx.trainer.prepare(model, ctx.train_config)
    ctx.append_log(final / "train_log.csv")
    return model, meta


def _multi_exit_model(ctx: RunContext, spec: ExitSpec, policy: Policy,
                      taus: Sequence[float]) -> MultiExit:
    """An untrained multi-exit model of the run's backbone, to load cached weights into."""
    from fairbench.models.backbones import create_backbone

    backbone = create_backbone(ctx.backbone.name, num_classes=ctx.n_classes,
                               image_size=ctx.bundle.image_size, **ctx.backbone.params)
    return MultiExit(backbone, spec, image_size=ctx.bundle.image_size,
                     num_classes=ctx.n_classes, tau=taus[0], policy=policy)


def probe_curvature(ctx: RunContext, spec: ExitSpec, *, estimator: str, scope: str) -> None:
    """Fail fast, before any training: BackPACK must handle every internal exit of the
    multi-exit model with ``estimator`` (an untrained copy, two training images)."""
    probe = build_multi_exit(ctx, spec, seed_offset=991)
    loader = ctx.loader(positions=ctx.positions("train")[:2], batch_size=2,
                        sampler="sequential", augment=False, drop_last=False)
    from fairbench.training.curvature import diagonal_curvature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(probe.n_exits - 1):
            diagonal_curvature(exit_module(probe, k), loader, estimator=estimator,  # type: ignore[arg-type]
                               scope=scope)  # type: ignore[arg-type]


# -- reporting ----------------------------------------------------------------------------------------
def check_stages(ctx: RunContext, spec: ExitSpec) -> None:
    """Fail fast, before any training: every stage of ``spec`` is a module of the run's backbone
    that runs once and gives a B×C×H×W map (an untrained CPU copy, one zero image)."""
    from fairbench.models.backbones import create_backbone

    backbone = create_backbone(ctx.backbone.name, num_classes=ctx.n_classes,
                               image_size=ctx.bundle.image_size, **ctx.backbone.params)
    stage_order(backbone, spec.stages, ctx.bundle.image_size)


def exit_notes(ctx: RunContext, model: MultiExit, results: Sequence[TauResult] | None = None
               ) -> dict[str, Any]:
    """What the run's notes record about the exits: stages, weights, policy, τ, the MACs per
    exit and, for validation and test, the exit histogram and the mean compute per sample at
    the model's τ (test is reported, never used for a decision)."""
    costs = exit_costs(model, ctx.bundle.image_size)
    tau = round(float(model.tau), 6)
    out: dict[str, Any] = {
        "stages": list(model.stages), "exit_weights": list(model.exit_weights),
        "policy": model.policy, "tau": tau,
        "head_pools": [int(h[1].output_size if isinstance(h[1].output_size, int)
                           else h[1].output_size[0]) for h in model.heads],
        "mmac_per_exit": [round(c / 1e6, 4) for c in costs["per_exit"]],
        "backbone_mmac": round(costs["backbone"] / 1e6, 4),
    }
    for part in ("val", "test"):
        _, logits = exit_logits(ctx, model, part)
        _, chosen = exit_policy(logits, tau, model.policy)
        out[part] = exit_report(chosen, costs, exit_fallback(logits, tau))
    if results:
        out["tau_sweep_val"] = [
            {"tau": r.tau, "score": round(r.score, 6),
             **{k: r.metrics[k] for k in TAU_SWEEP_COLUMNS},
             **exit_report(r.chosen, costs, r.fell_back)} for r in results]
    return out
