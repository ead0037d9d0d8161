"""Multi-exit models (Chiu et al., MICCAI 2023): internal classifier heads after the stages of a
backbone, the weighted multi-exit loss, the batched early-exit policy, τ chosen on validation,
the exit histogram and the compute per sample, and the per-exit curvature ME-FairPrune needs.
Usable by any method; ``methods/me_fairprune.py`` registers ``me_vanilla`` and
``me_fairprune``. The released code and its bugs: ``reference/methods_quant_prune.md`` §4.

**Architecture** (:class:`MultiExit`): the backbone (a :class:`~fairbench.backbones.Classifier`,
unchanged) plus one :class:`ExitHead` after each named stage. Known stage lists
(:data:`KNOWN_STAGES`, names inside the ``Classifier``):

================  ================================================  =========================
backbone          stages (an internal head after each)               default exit weights
================  ================================================  =========================
``resnet18``      ``body.layer1`` … ``body.layer4`` (timm)           1, 1, 1, 1, 1
``tv_resnet18``   ``body.layer1`` … ``body.layer4`` (torchvision)    1, 1, 1, 1, 1
``vgg11``         ``body.0.5/10/15/20``: max-pools 2–5               0.3, 0.45, 0.6, 0.75, 0.9
``timm_vgg11``    ``body.0.5/10/15/20``: max-pools 2–5               0.3, 0.45, 0.6, 0.75, 0.9
``smallcnn``      ``body.3/7/11/15``: the max-pool of each block     1, 1, 1, 1, 1
================  ================================================  =========================

Any other backbone takes an explicit stage list (``stages=body.layer1,body.layer2``): any
modules whose output is a B×C×H×W map, each called once per forward. Exits are ordered by
depth (the order in which the stages run); the backbone's own classifier is the last exit, so
a backbone with S stages has S+1 exits and S+1 exit weights (ResNet: the layer4 head runs in
parallel with the final classifier, as released).

**Head** (as released, ``model.py`` l.90–96): Conv 3×3 to 64 channels, adaptive average
pooling to s×s, Conv 3×3 to 32, global average pooling, flatten, Linear; no BN and no ReLU.
Two fairbench choices: (1) both convolutions use padding 1 (the released padding 0 needs maps
of at least 3 px after pooling, which small inputs such as 16-px CPU runs do not have);
(2) the pooled size s: the released code pools *or up-samples* every map to 64×64
(``head_upsample=true, head_pool=64`` reproduces it), which costs about 70 MMAC per head and
sample for the second convolution alone and which BackPACK rejects (it handles adaptive pooling
only when the output size divides the input size). The default, ``head_pool=8`` without
up-sampling, pools each H×H map to the largest divisor of H not above 8 (H itself when H ≤ 8):
exact average pooling, never up-sampling, cheap, and BackPACK-compatible.

**Training**: :math:`L=\\sum_k w_k\\,\\mathrm{CE}(\\hat y_k, y)`, batch-mean cross-entropy
per exit (:func:`multi_exit_loss`), through the shared trainer (:func:`exit_loss`).

**Exit policy** (:func:`exit_policy`, batched: one pass through all exits, then each sample's
exit is picked with tensor operations). Confidence = maximum softmax probability. Policy ``A``
(default): the first exit, in depth order, whose confidence reaches τ (``>=``), else the most
confident exit *with the final classifier among the candidates* (the released
``eval_me.early_exit_inference`` never evaluated it and returned ``None``; ties go to the
shallower exit, as ``argmax`` does). Policy ``B``: the first confident exit, else the final
classifier. τ is chosen on validation from ``tau_grid`` ({0.8, 0.85, 0.9, 0.95, 0.99, 0.999},
the released sweep). ``MultiExit.forward`` returns the chosen exit's logits in train and eval
mode alike, so the module maps images to logits for the run's metrics and never reads the
sensitive attribute; ``tau`` is a buffer, so it travels with the state dict.

**Compute** (:func:`exit_costs`): multiply-accumulates of the convolutions and linear layers
(BN, activations and pooling not counted) that a sequential early-exit deployment runs to
decide at each exit: the trunk up to the stage plus every head up to and including it; a
sample that no head lets out (the final exit, or policy A's fallback to any exit) costs the
whole backbone plus every head. :func:`exit_report` gives the exit histogram and the mean cost
per sample, absolute and relative to the plain backbone.

**Curvature** (:func:`multi_exit_curvature`, :func:`group_multi_exit_curvature`): BackPACK
needs one scalar loss from one output, so each exit's diagonal curvature is computed separately
on a module that returns that exit's logits (:func:`exit_module`: the backbone truncated at
the stage with torch.fx, then the head; the backbone itself for the final exit) and the
results are combined with :math:`w_k` (the GGN is additive over loss terms; for the empirical
Fisher and the MC GGN this is the usual per-loss-term approximation). Parameters that an exit
does not reach get zero from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import FairbenchError, ParamError
from .params import param

if TYPE_CHECKING:
    from .backbones import Classifier
    from .context import RunContext
    from .loaders import Batch
    from .saliency import GroupCurvature
    from .trainer import StepState

#: stage module names (inside the ``Classifier``) after which an internal head goes
KNOWN_STAGES: dict[str, tuple[str, ...]] = {
    "resnet18": ("body.layer1", "body.layer2", "body.layer3", "body.layer4"),
    "tv_resnet18": ("body.layer1", "body.layer2", "body.layer3", "body.layer4"),
    "vgg11": ("body.0.5", "body.0.10", "body.0.15", "body.0.20"),
    "timm_vgg11": ("body.0.5", "body.0.10", "body.0.15", "body.0.20"),
    "smallcnn": ("body.3", "body.7", "body.11", "body.15"),
}
#: default exit weights (internal heads in depth order, then the final classifier)
VGG_WEIGHTS = (0.3, 0.45, 0.6, 0.75, 0.9)
DEFAULT_WEIGHTS: dict[str, tuple[float, ...]] = {"vgg11": VGG_WEIGHTS, "timm_vgg11": VGG_WEIGHTS}
TAU_GRID = (0.8, 0.85, 0.9, 0.95, 0.99, 0.999)
Policy = Literal["A", "B"]


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
    select_metric: str = param("EOdd", help="validation metric that picks the candidate")
    f1_tolerance: float = param(0.02, help="allowed validation macro-F1 drop from the "
                                           "multi-exit model's final exit", min=0.0)

    def validate(self) -> None:
        from .posthoc import check_select_metric

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


@dataclass(frozen=True)
class ExitSpec:
    """The resolved multi-exit architecture of a run."""

    stages: tuple[str, ...]
    weights: tuple[float, ...]
    head_pool: int
    head_upsample: bool

    def identity(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "weights": list(self.weights),
                "head_pool": self.head_pool, "head_upsample": self.head_upsample}


def resolve_exit_spec(backbone: str, params: Any) -> ExitSpec:
    """Stages and weights for ``backbone`` from ``params`` (given ones win over the known
    lists); raises :class:`FairbenchError` when there is no stage list or the weights do not
    match the number of exits."""
    stages = tuple(params.stages) or KNOWN_STAGES.get(backbone, ())
    if not stages:
        known = ", ".join(KNOWN_STAGES)
        raise FairbenchError(
            f"backbone {backbone!r} has no known stage list for the multi-exit heads; give one "
            f"with --param stages=<module>,<module> (e.g. body.layer1,body.layer2) or use one "
            f"of {known}")
    n_exits = len(stages) + 1
    weights = tuple(float(w) for w in params.exit_weights)
    if not weights:
        weights = DEFAULT_WEIGHTS.get(backbone, (1.0,) * n_exits) if not params.stages else \
            (1.0,) * n_exits
    if len(weights) != n_exits:
        raise FairbenchError(
            f"parameter exit_weights has {len(weights)} values but the multi-exit {backbone} "
            f"has {n_exits} exits ({len(stages)} internal heads + the final classifier); give "
            f"{n_exits} weights or none")
    return ExitSpec(stages, weights, int(params.head_pool), bool(params.head_upsample))


# -- the model ---------------------------------------------------------------------------------
def pooled_size(h: int, head_pool: int, upsample: bool) -> int:
    """The head's pooled map size for an h×h stage map (see the module docstring)."""
    if upsample:
        return head_pool
    return max(d for d in range(1, min(h, head_pool) + 1) if h % d == 0)


class ExitHead(nn.Sequential):
    """Conv3×3→64, adaptive average pool to ``pool``, Conv3×3→32, global average pool,
    flatten, Linear (the released internal classifier, padding 1; no BN, no ReLU)."""

    def __init__(self, in_channels: int, num_classes: int, pool: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.AdaptiveAvgPool2d(pool),
            nn.Conv2d(64, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(32, num_classes))


@contextlib.contextmanager
def _capture(backbone: nn.Module, stages: Sequence[str], out: list[Any]) -> Iterator[None]:
    """Record each stage module's output into ``out`` (by stage position) during a forward."""
    handles = []
    for i, name in enumerate(stages):
        def hook(_m: nn.Module, _inp: Any, output: Any, i: int = i) -> None:
            out[i] = output
        handles.append(backbone.get_submodule(name).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _stage_order(backbone: nn.Module, stages: Sequence[str], image_size: int
                 ) -> list[tuple[str, torch.Size]]:
    """``(stage, C×H×W)`` in the order the stages run, from one forward of a zero image
    (eval mode, no gradients); one clear error for a stage that is unknown, unused, called
    twice or not a B×C×H×W map."""
    names = dict(backbone.named_modules())
    for s in stages:
        if s not in names or s == "":
            import difflib

            close = difflib.get_close_matches(s, [n for n in names if n], n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(close)}?" if close else
                    "see `dict(model.named_modules())` of the backbone for names such as "
                    "body.layer1")
            raise FairbenchError(f"stage {s!r} is not a module of the backbone; {hint}")
    order: list[tuple[str, Any]] = []
    handles = []
    for s in stages:
        def hook(_m: nn.Module, _inp: Any, output: Any, s: str = s) -> None:
            order.append((s, output))
        handles.append(names[s].register_forward_hook(hook))
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        backbone.train(was_training)
        for h in handles:
            h.remove()
    seen = [s for s, _ in order]
    for s in stages:
        if seen.count(s) != 1:
            raise FairbenchError(
                f"stage {s!r} runs {seen.count(s)} times in one forward pass; heads need a "
                "module that runs exactly once, such as body.layer1")
    out = []
    for s, output in order:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise FairbenchError(
                f"stage {s!r} outputs {shape}, not a B×C×H×W feature map; choose convolutional "
                "stages such as body.layer1")
        out.append((s, output.shape[1:]))
    return out


class MultiExit(nn.Module):
    """A backbone with internal classifier heads; ``forward`` returns the exit policy's logits
    (see the module docstring), ``exits`` every exit's logits in depth order."""

    def __init__(self, backbone: Classifier, spec: ExitSpec, *, image_size: int,
                 num_classes: int, tau: float = 0.9, policy: Policy = "A") -> None:
        super().__init__()
        order = _stage_order(backbone, spec.stages, image_size)
        self.backbone = backbone
        self.stages = [s for s, _ in order]
        position = {s: i for i, s in enumerate(spec.stages)}
        # weights follow the stages into depth order (the final classifier stays last)
        self.exit_weights = tuple(spec.weights[position[s]] for s in self.stages) + \
            (spec.weights[-1],)
        self.policy: Policy = policy
        device = next(backbone.parameters()).device
        self.heads = nn.ModuleList(
            ExitHead(int(shape[0]), num_classes,
                     pooled_size(int(shape[1]), spec.head_pool, spec.head_upsample))
            for _, shape in order).to(device)
        self.register_buffer("tau", torch.tensor(float(tau), device=device))

    @property
    def n_exits(self) -> int:
        return len(self.stages) + 1

    def exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit (internal heads in depth order, then the final classifier)."""
        feats: list[Any] = [None] * len(self.stages)
        with _capture(self.backbone, self.stages, feats):
            final = self.backbone(x)
        return [head(f) for head, f in zip(self.heads, feats)] + [final]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = exit_policy(self.exits(x), self.tau, self.policy)
        return logits


# -- loss and policy -----------------------------------------------------------------------------
def multi_exit_loss(exit_logits: Sequence[torch.Tensor], y: torch.Tensor,
                    weights: Sequence[float]) -> torch.Tensor:
    """:math:`\\sum_k w_k\\,\\mathrm{CE}(\\text{logits}_k, y)` (batch-mean CE per exit)."""
    if len(exit_logits) != len(weights):
        raise ValueError(f"{len(exit_logits)} exits but {len(weights)} weights")
    return sum((w * F.cross_entropy(lg, y) for lg, w in zip(exit_logits, weights) if w != 0),
               torch.zeros((), device=y.device))


def exit_loss(model: nn.Module, batch: Batch, state: StepState) -> torch.Tensor:
    """The shared trainer's loss hook of a :class:`MultiExit` model (weights of the model)."""
    return multi_exit_loss(model.exits(batch.x), batch.y, model.exit_weights)  # type: ignore[operator]


def exit_policy(exit_logits: Sequence[torch.Tensor] | torch.Tensor, tau: float | torch.Tensor,
                policy: Policy = "A") -> tuple[torch.Tensor, torch.Tensor]:
    """Batched early exit: ``exit_logits`` is K×B×C (or a list of K B×C tensors, the final
    classifier last). Returns the chosen logits (B×C) and each sample's exit index (B)."""
    logits = exit_logits if isinstance(exit_logits, torch.Tensor) else torch.stack(
        [lg.to(exit_logits[-1].dtype) for lg in exit_logits])
    k = logits.shape[0]
    conf = torch.softmax(logits.float(), dim=-1).amax(dim=-1)  # K×B
    confident = conf >= tau
    depth = torch.arange(k, device=logits.device).unsqueeze(1).expand_as(conf)
    first = torch.where(confident, depth, torch.full_like(depth, k)).amin(dim=0)
    if policy == "A":
        fallback = conf.argmax(dim=0)  # first maximum: the shallower exit on ties
    elif policy == "B":
        fallback = torch.full_like(first, k - 1)
    else:
        raise ValueError(f"unknown exit policy {policy!r}; use A or B")
    chosen = torch.where(first < k, first, fallback)
    index = chosen.view(1, -1, 1).expand(1, logits.shape[1], logits.shape[2])
    return logits.gather(0, index).squeeze(0), chosen


# -- compute -------------------------------------------------------------------------------------
def exit_costs(model: MultiExit, image_size: int) -> dict[str, Any]:
    """Multiply-accumulates per sample of deciding at each exit (see the module docstring):
    ``per_exit`` (K values), ``backbone`` (the plain network) and ``heads`` (each head)."""
    calls: list[tuple[str, int]] = []
    names = {m: n for n, m in model.named_modules()}

    def count(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        if isinstance(m, nn.modules.conv._ConvNd):
            macs = out[0].numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))
        else:
            macs = out[0].numel() * m.in_features
        calls.append((names[m], int(macs)))

    def mark(s: str) -> Any:
        return lambda *_: calls.append((f"@{s}", 0))

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    handles += [model.backbone.get_submodule(s).register_forward_hook(mark(s))
                for s in model.stages]
    device = model.tau.device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.exits(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    trunk, running = {}, 0
    for name, macs in calls:
        if name.startswith("@"):
            trunk[name[1:]] = running
        elif name.startswith("backbone."):
            running += macs
    heads = [sum(m for n, m in calls if n.startswith(f"heads.{i}.")) for i in range(len(model.heads))]
    per_exit = [trunk[s] + sum(heads[:i + 1]) for i, s in enumerate(model.stages)]
    per_exit.append(running + sum(heads))
    return {"per_exit": per_exit, "backbone": running, "heads": heads}


def exit_report(chosen: torch.Tensor | np.ndarray, costs: dict[str, Any]) -> dict[str, Any]:
    """Exit histogram (counts and fractions, depth order) and mean compute per sample."""
    chosen = np.asarray(torch.as_tensor(chosen).cpu())
    per_exit = np.asarray(costs["per_exit"], dtype=np.float64)
    counts = np.bincount(chosen, minlength=len(per_exit))
    n = max(1, int(counts.sum()))
    mean = float((counts * per_exit).sum() / n)
    return {"counts": counts.tolist(), "fractions": [round(c / n, 4) for c in counts],
            "mean_mmac_per_sample": round(mean / 1e6, 4),
            "mean_compute_vs_backbone": round(mean / max(1, costs["backbone"]), 4)}


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
    from .metrics import evaluate_classification
    from .selection import apply_threshold, binary_threshold

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


def sweep_tau(ctx: RunContext, index: np.ndarray, logits: torch.Tensor, taus: Iterable[float],
              policy: Policy, score: Any) -> list[TauResult]:
    """Every τ's validation metrics and ``score`` (higher is better) from one set of exit
    logits."""
    out = []
    for tau in taus:
        chosen_logits, chosen = exit_policy(logits, float(tau), policy)
        metrics = part_metrics(ctx, index, chosen_logits)
        out.append(TauResult(float(tau), float(score(metrics)), metrics, chosen))
    return out


def best_tau(results: Sequence[TauResult]) -> TauResult:
    """The highest score (a NaN never wins; ties: the first, i.e. the lower τ of the grid)."""
    best = results[0]
    for r in results[1:]:
        if np.isfinite(r.score) and (not np.isfinite(best.score) or r.score > best.score):
            best = r
    return best


# -- curvature -------------------------------------------------------------------------------------
class _ExitView(nn.Module):
    """``head(trunk(x))``: one internal exit as a plain chain BackPACK can extend."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def truncate(backbone: nn.Module, stage: str) -> nn.Module:
    """The part of ``backbone`` that computes ``stage``'s output (torch.fx graph cut at the
    stage; the submodules are shared, not copied)."""
    from torch import fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname == stage or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(backbone)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the same user problem
        from .saliency import CurvatureError

        raise CurvatureError(
            f"torch.fx cannot trace this backbone to cut it at stage {stage!r} "
            f"({type(exc).__name__}: {str(exc)[:100]}); use smallcnn, resnet18, tv_resnet18, "
            "vgg11 or timm_vgg11") from None
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == stage]
    if len(nodes) != 1:
        raise FairbenchError(f"stage {stage!r} is not called exactly once in the traced "
                             "backbone; choose another stage module")
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (nodes[0],)
    gm = fx.GraphModule(backbone, graph)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()  # so the deeper layers are not parameters of the cut
    gm.recompile()
    return gm


def exit_module(model: MultiExit, k: int) -> nn.Module:
    """A module mapping images to exit ``k``'s logits, sharing ``model``'s parameters."""
    if k == model.n_exits - 1:
        return model.backbone
    return _ExitView(truncate(model.backbone, model.stages[k]), model.heads[k])


def _to_model_names(model: MultiExit, view: nn.Module, values: dict[str, torch.Tensor]
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
    """Each exit's diagonal curvature (:func:`fairbench.saliency.diagonal_curvature` of its
    own cross-entropy; keyword arguments passed on), by ``model``'s parameter names.
    ``batches`` must be iterable several times (a loader or a list). Exits with weight 0
    are skipped (an empty dict)."""
    from .saliency import diagonal_curvature

    out = []
    for k, w in enumerate(model.exit_weights):
        if w == 0:
            out.append({})
            continue
        view = exit_module(model, k)
        out.append(_to_model_names(model, view, diagonal_curvature(view, batches, **kw)))
    return out


def multi_exit_curvature(model: MultiExit, batches: Iterable[Batch], *, scope: str = "all",
                         **kw: Any) -> dict[str, torch.Tensor]:
    """Diagonal curvature of :math:`\\sum_k w_k\\,\\mathrm{CE}_k` over every scored parameter
    of ``model`` (heads included), as the ``w``-weighted sum of the per-exit curvatures."""
    from .saliency import scored_parameters

    per_exit = per_exit_curvature(model, batches, scope=scope, **kw)
    like = {n: p.detach() for n, p in scored_parameters(model, scope).items()}  # type: ignore[arg-type]
    return combine(per_exit, model.exit_weights, like)


def group_multi_exit_curvature(ctx: RunContext, model: MultiExit, *, estimator: str,
                               scope: str = "conv_linear", batch_size: int = 32, seed: int = 0,
                               max_per_group: int | None = None) -> GroupCurvature:
    """:func:`fairbench.saliency.group_curvature` (balanced unprivileged and privileged score
    sets) of every exit, combined with the exit weights."""
    from .saliency import GroupCurvature, group_curvature, scored_parameters

    like = {n: p.detach() for n, p in scored_parameters(model, scope).items()}  # type: ignore[arg-type]
    h_u, h_p, n = [], [], 0
    for k, w in enumerate(model.exit_weights):
        if w == 0:
            continue
        view = exit_module(model, k)
        g = group_curvature(ctx, view, estimator=estimator, scope=scope,  # type: ignore[arg-type]
                            batch_size=batch_size, seed=seed, max_per_group=max_per_group)
        h_u.append((_to_model_names(model, view, g.h_u), w))
        h_p.append((_to_model_names(model, view, g.h_p), w))
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
    from .runstore import config_hash

    key = config_hash(multi_exit_identity(ctx, spec, policy, taus))[:16]
    return ctx.runs_dir / "_me_vanilla" / key


def training_evaluate(ctx: RunContext, taus: Sequence[float], policy: Policy) -> Any:
    """The trainer's ``evaluate`` hook of a multi-exit model: one pass through all exits on the
    validation loader, then the metrics of the τ (from ``taus``) that is best by the train
    config's ``select`` metric (macro-F1 when it is ``last``)."""
    from .metrics import selection_score

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
    under ``<runs_dir>/_me_vanilla/`` like the vanilla baseline; concurrent runs wait for one
    another. Returns the model (τ = the first of ``taus``) and the cache's meta."""
    from .context import _file_lock
    from .runstore import remove_stale_temporaries, temporary_path, write_json
    from .trainer import EpochLog, Trainer, TrainHooks

    final = multi_exit_dir(ctx, spec, policy, taus)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.with_suffix(".lock")):
        if not (final / "meta.json").is_file():
            remove_stale_temporaries(final)
            tmp = temporary_path(final)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                model = build_multi_exit(ctx, spec, policy=policy, tau=taus[0])
                trainer = Trainer(ctx.device, seed=ctx.seed,
                                  log=EpochLog(tmp / "train_log.csv"), progress=ctx.progress)
                hooks = TrainHooks(loss=exit_loss,
                                   evaluate=training_evaluate(ctx, taus, policy))
                result = trainer.fit(model, ctx.loader("train"), ctx.loader("val"),
                                     config=ctx.train_config, hooks=hooks, stage="multi-exit")
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                           tmp / "model.pt")
                write_json(tmp / "meta.json", {
                    "identity": multi_exit_identity(ctx, spec, policy, taus),
                    "best_epoch": result.best_epoch, "seconds": round(result.seconds, 3)})
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        meta = json.loads((final / "meta.json").read_text())
        from .backbones import create_backbone

        backbone = create_backbone(ctx.backbone.name, num_classes=ctx.n_classes,
                                   image_size=ctx.bundle.image_size, **ctx.backbone.params)
        ctx.trainer.prepare(backbone, ctx.train_config)
        model = MultiExit(backbone, spec, image_size=ctx.bundle.image_size,
                          num_classes=ctx.n_classes, tau=taus[0], policy=policy)
        state = torch.load(final / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.tau.fill_(float(taus[0]))
        ctx.trainer.prepare(model, ctx.train_config)
        log_rows = final / "train_log.csv"
        if log_rows.is_file():
            import csv

            with log_rows.open() as fh:
                for row in csv.DictReader(fh):
                    ctx.log.write(row)
    return model, meta


def probe_curvature(ctx: RunContext, spec: ExitSpec, *, estimator: str, scope: str) -> None:
    """Fail fast, before any training: BackPACK must handle every internal exit of the
    multi-exit model with ``estimator`` (an untrained copy, two training images)."""
    probe = build_multi_exit(ctx, spec, seed_offset=991)
    loader = ctx.loader(positions=ctx.positions("train")[:2], batch_size=2,
                        sampler="sequential", augment=False, drop_last=False)
    from .saliency import diagonal_curvature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(probe.n_exits - 1):
            diagonal_curvature(exit_module(probe, k), loader, estimator=estimator,  # type: ignore[arg-type]
                               scope=scope)  # type: ignore[arg-type]


# -- reporting ----------------------------------------------------------------------------------------
def check_stages(ctx: RunContext, spec: ExitSpec) -> None:
    """Fail fast, before any training: every stage of ``spec`` is a module of the run's backbone
    that runs once and gives a B×C×H×W map (an untrained CPU copy, one zero image)."""
    from .backbones import create_backbone

    backbone = create_backbone(ctx.backbone.name, num_classes=ctx.n_classes,
                               image_size=ctx.bundle.image_size, **ctx.backbone.params)
    _stage_order(backbone, spec.stages, ctx.bundle.image_size)


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
        out[part] = exit_report(chosen, costs)
    if results:
        out["tau_sweep_val"] = [
            {"tau": r.tau, "score": round(r.score, 6), "F1": r.metrics["F1"],
             "EOdd": r.metrics["EOdd"], **exit_report(r.chosen, costs)} for r in results]
    return out
