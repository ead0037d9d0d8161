"""Multi-exit models (Chiu et al., MICCAI 2023): internal classifier heads after the stages of a
backbone, the weighted multi-exit loss, the batched early-exit policy, the exit histogram and
the compute per sample. Training and curvature: :mod:`fairbench.training.multiexit`; τ on
validation and the cached trained model of a run: :mod:`fairbench.run.multiexit`.

**Architecture** (:class:`MultiExit`): the backbone (a :class:`~fairbench.models.backbones.Classifier`,
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
per exit (:func:`multi_exit_loss`), through the shared trainer
(:func:`fairbench.training.multiexit.exit_loss`).

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
whole backbone plus every head (:func:`exit_fallback` finds them). :func:`exit_report` gives
the exit histogram and the mean cost per sample, absolute and relative to the plain backbone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairbench.core.errors import FairbenchError

if TYPE_CHECKING:
    from fairbench.models.backbones import Classifier


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


def stage_order(backbone: nn.Module, stages: Sequence[str], image_size: int
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
        order = stage_order(backbone, spec.stages, image_size)
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


def exit_fallback(exit_logits: Sequence[torch.Tensor] | torch.Tensor,
                  tau: float | torch.Tensor) -> torch.Tensor:
    """Per sample (B, bool): no exit reached confidence τ, so the policy fell back (policy A:
    to the most confident exit, policy B: to the final classifier) after running every exit."""
    logits = exit_logits if isinstance(exit_logits, torch.Tensor) else torch.stack(
        [lg.to(exit_logits[-1].dtype) for lg in exit_logits])
    conf = torch.softmax(logits.float(), dim=-1).amax(dim=-1)  # K×B
    return ~(conf >= tau).any(dim=0)


def exit_report(chosen: torch.Tensor | np.ndarray, costs: dict[str, Any],
                fell_back: torch.Tensor | np.ndarray | None = None) -> dict[str, Any]:
    """Exit histogram (counts and fractions, depth order) and mean compute per sample.

    A sample is charged its exit's cost (``costs["per_exit"]``), except one that fell back
    (``fell_back``, :func:`exit_fallback`): deciding that no exit is confident enough ran the
    whole backbone and every head, so it costs the final exit's total whatever exit it was
    given (``fallbacks`` counts them)."""
    chosen = np.asarray(torch.as_tensor(chosen).cpu())
    per_exit = np.asarray(costs["per_exit"], dtype=np.float64)
    counts = np.bincount(chosen, minlength=len(per_exit))
    n = max(1, int(counts.sum()))
    charged = per_exit[chosen]
    n_fallback = 0
    if fell_back is not None:
        back = np.asarray(torch.as_tensor(fell_back).cpu(), dtype=bool)
        charged = np.where(back, per_exit[-1], charged)
        n_fallback = int(back.sum())
    mean = float(charged.sum() / n)
    return {"counts": counts.tolist(), "fractions": [round(c / n, 4) for c in counts],
            "fallbacks": n_fallback,
            "mean_mmac_per_sample": round(mean / 1e6, 4),
            "mean_compute_vs_backbone": round(mean / max(1, costs["backbone"]), 4)}


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
        from fairbench.core.errors import CurvatureError

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
