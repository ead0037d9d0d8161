"""Second-order saliency shared by FairPrune, FairQuantize and ME-FairPrune.

:func:`diagonal_curvature` computes, for every scored parameter tensor, the diagonal of a
curvature matrix of the cross-entropy loss over a stream of batches, with the model in eval
mode (BatchNorm uses its running statistics):

==================  ======================================================================
``ggn_exact``       exact diagonal of the generalised Gauss-Newton matrix (the FairQuantize
                    default, BackPACK's ``DiagGGNExact``). For cross-entropy it is PSD, so
                    h ≥ 0. It back-propagates C−1 columns (C classes): cost grows with C.
``ggn_mc``          Monte-Carlo estimate of the same diagonal with one sampled label per
                    sample (BackPACK's ``DiagGGNMC``); the fast one.
``hessian_exact``   exact diagonal of the Hessian (BackPACK's ``DiagHessian``); BackPACK
                    supports it only for some layers (not BatchNorm, not ``nn.Identity``): a
                    clear error names the layer otherwise. Works for torchvision's VGG-11.
``fisher``          empirical Fisher diagonal, the mean of squared per-sample gradients (as
                    BackPACK's ``SumGradSquared`` gives them), as StructuredFairPrune uses.
==================  ======================================================================

Two engines (:data:`ENGINES`): ``ggn_exact``, ``ggn_mc`` and ``fisher`` are sums of squared
per-sample products, computed by :mod:`fairbench.training.persample` with plain autograd (one
backward pass per column, per-sample weight products from each scored layer's input and output
gradient; several times faster than BackPACK, ``benchmarks/README.md``); a model that engine
cannot handle (a scored layer type other than Conv/Linear/BatchNorm, shared layers, ...) and
``hessian_exact`` go through BackPACK, with fairbench's Conv2d weight-diagonal paths
(:func:`conv_weight_diag_few_positions`, :func:`conv_weight_diag_chunked`).

Scale: every estimator is computed for the batch-mean loss and **summed over batches**, as
the released FairQuantize code does; a final partial batch is weighted by its size, so the
total is :math:`\\frac1B\\sum_n c_n` for per-sample contributions :math:`c_n` and nominal batch
size :math:`B`. Both groups' score sets have the same size, so their totals are on the same
scale.

Memory: the exact GGN back-propagates one column per class (C−1 with the autograd engine,
one at a time; through BackPACK C all at once, so at 114 classes and 224 px a batch of 32 can
need tens of GiB). When a backward pass runs out of memory (CUDA's
``OutOfMemoryError`` or the CPU allocator's error), the batch is split in halves, and the
smaller size is kept for the rest of the pass, down to one sample; a run keeps it for its later
passes too (``RunContext.curvature_pass_size``) and records it in its notes. Each piece is
weighted by its size, so the result is the same sum (up to float rounding) and the method's
score batch size, which sets the scale, does not change.

Scored tensors (``scope``): ``"all"`` is every ``weight`` of Conv, Linear and BatchNorm
modules, as released; ``"conv_linear"`` drops BatchNorm. Other parameters (biases, BN shifts)
are not scored and do not require gradients during the computation, which saves time.

The curvature of a run's two group score sets: :func:`fairbench.run.posthoc.group_curvature`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fairbench.core.errors import CurvatureError, FairbenchError
from fairbench.core.progress import progress_bar
from fairbench.data.loaders import Batch
from fairbench.training.persample import SquaredProducts, Unsupported, columns_for

Estimator = Literal["ggn_exact", "ggn_mc", "hessian_exact", "fisher"]


Scope = Literal["all", "conv_linear"]


ESTIMATORS: tuple[str, ...] = ("ggn_exact", "ggn_mc", "hessian_exact", "fisher")


_SAVED_AS = {"ggn_exact": "diag_ggn_exact", "ggn_mc": "diag_ggn_mc", "hessian_exact": "diag_h",
             "fisher": "sum_grad_squared"}


log = logging.getLogger(__name__)


def scored_parameters(model: nn.Module, scope: Scope = "all") -> dict[str, nn.Parameter]:
    """The ``weight`` of every Conv/Linear (and BatchNorm, for ``scope="all"``) module."""
    kinds: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)
    if scope == "all":
        kinds += (nn.modules.batchnorm._BatchNorm,)
    elif scope != "conv_linear":
        raise ValueError(f"unknown scope {scope!r}; use all or conv_linear")
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, kinds) and getattr(module, "weight", None) is not None:
            out[f"{mod_name}.weight" if mod_name else "weight"] = module.weight
    return out


#: a Conv2d with at most this many output positions gets its GGN weight diagonal from
#: :func:`conv_weight_diag_few_positions` (see there); larger ones use BackPACK's own
FEW_POSITIONS = 4


def conv_weight_diag_few_positions(unfolded: torch.Tensor, sqrt_ggn: torch.Tensor,
                                   weight_shape: torch.Size) -> torch.Tensor:
    """Diagonal of ``(Jᵀ S)(Jᵀ S)ᵀ`` for a Conv2d weight (groups 1), summed over the batch,
    as a few GEMMs instead of per-sample products.

    With ``U`` the unfolded input (N × K × L, K = C_in·kh·kw, L output positions) and ``S``
    the back-propagated square-root factor (V × N × M × L), BackPACK forms
    ``(JᵀS)[v,n,m,k] = Σ_l S[v,n,m,l]·U[n,k,l]`` (V·N·M·K numbers: hundreds of MB for deep
    layers) and sums its squares. Expanding the square,

        diag[m,k] = Σ_{l,l'} Σ_{v,n} (S[v,n,m,l]·S[v,n,m,l']) · (U[n,k,l]·U[n,k,l'])

    which is, per pair l ≤ l' (counted twice when l ≠ l'), one (M × V·N) @ (V·N × K)
    product. It costs L(L+1) GEMM FLOPs per (v,n,m,k) against BackPACK's 2L + 1, but needs
    no V·N·M·K tensor, whose memory traffic dominates: for the last stages of a ResNet or
    VGG on small images it is much faster. Measured with ``benchmarks/bench_few_positions.py``
    on one idle CPU thread, 32 px, 5 classes (``FEW_POSITIONS`` 0 → 4, time relative to a
    forward+backward): ResNet-18 ``ggn_mc`` 5.5× → 1.9×, ``ggn_exact`` 28.0× → 4.3×; VGG-11
    ``ggn_mc`` 3.6× → 2.9×; smallcnn unchanged (2.9×). Thresholds on ResNet-18 (loaded
    machine): 2 → 2.6×, 4 → 2.1×, 9 → 2.2×, 16 → 2.5×, 64 → 8.5×. Per layer, against the
    blocked product of :func:`conv_weight_diag_chunked` (one thread, batch 32): 3-4× faster
    at 1 to 4 positions, 6× slower at 16, hence the threshold. Exact up to float rounding
    (tested against BackPACK's ``extract_weight_diagonal``)."""
    v, n, m = sqrt_ggn.shape[:3]
    s = sqrt_ggn.reshape(v, n, m, -1)
    positions = s.shape[-1]
    k = unfolded.shape[1]
    out = torch.zeros(m, k, device=s.device, dtype=s.dtype)
    for l1 in range(positions):
        for l2 in range(l1, positions):
            a = (s[..., l1] * s[..., l2]).reshape(v * n, m)
            b = (unfolded[:, :, l1] * unfolded[:, :, l2]).unsqueeze(0).expand(v, n, k)
            term = a.t() @ b.reshape(v * n, k)
            out += term if l1 == l2 else 2.0 * term
    return out.reshape(weight_shape)


#: bytes of the ``(JᵀS)`` block that :func:`conv_weight_diag_chunked` forms at once, per device
#: type (CPU: cache-sized blocks measured fastest; CUDA: bounded memory, few launches). 0 turns
#: the chunked path off (BackPACK's whole-batch product).
CHUNK_BYTES: dict[str, int] = {"cpu": 4 << 20, "cuda": 256 << 20}


def conv_weight_diag_chunked(unfolded: torch.Tensor, sqrt_ggn: torch.Tensor,
                             weight_shape: torch.Size, chunk_bytes: int) -> torch.Tensor:
    """BackPACK's product for a Conv2d weight diagonal (groups 1), formed block by block.

    BackPACK forms ``(JᵀS)[v,n,m,k] = Σ_l S[v,n,m,l]·U[n,k,l]`` for the whole batch at once
    and sums its squares: V·N·M·K numbers, 34 GB for ResNet-18's last stage at 224 px with 114
    classes and 32 images. Here the same sum is taken over blocks of samples (and of the V
    columns when one sample's block is too big) of at most ``chunk_bytes``, so the memory is
    bounded and, on a CPU, a block stays in cache: 1.2-3× faster than the whole-batch product
    on smallcnn's and ResNet-18's convolutions with 16 to 256 positions (one thread, batch 32;
    2.4-3.1× for the deepest smallcnn layer). Exact up to float rounding."""
    v, n, m = sqrt_ggn.shape[:3]
    s = sqrt_ggn.reshape(v, n, m, -1)
    k = unfolded.shape[1]
    per_column = m * k * s.element_size()  # one (v, n) pair
    cols = max(1, chunk_bytes // per_column)
    n_step = max(1, min(n, cols // v))
    v_step = min(v, cols)  # several columns of one sample when a whole sample is too big
    out = torch.zeros(m, k, device=s.device, dtype=s.dtype)
    for a in range(0, n, n_step):
        u = unfolded[a:a + n_step]
        for b in range(0, v, v_step):
            js = torch.einsum("nkl,vnml->vnmk", u, s[b:b + v_step, a:a + n_step])
            out += js.pow_(2).sum((0, 1))
    return out.reshape(weight_shape)


def _conv2d_weight_diagonal() -> object:
    """BackPACK's DiagGGN Conv2d extension, with the weight diagonal of a groups-1 convolution
    taken by :func:`conv_weight_diag_few_positions` (at most :data:`FEW_POSITIONS` output
    positions) or :func:`conv_weight_diag_chunked` (more)."""
    from backpack.extensions.secondorder.diag_ggn.conv2d import DiagGGNConv2d
    from backpack.utils import conv as conv_utils

    class FairbenchDiagGGNConv2d(DiagGGNConv2d):
        def weight(self, ext, module, grad_inp, grad_out, backproped):  # type: ignore[no-untyped-def]
            positions = backproped[0, 0, 0].numel()
            few = positions <= FEW_POSITIONS
            chunk = CHUNK_BYTES.get(backproped.device.type, 0)
            if module.groups != 1 or not (few or chunk):
                return super().weight(ext, module, grad_inp, grad_out, backproped)
            unfolded = conv_utils.unfold_input(module, module.input0)
            if few:
                return conv_weight_diag_few_positions(unfolded, backproped, module.weight.shape)
            return conv_weight_diag_chunked(unfolded, backproped, module.weight.shape, chunk)

    return FairbenchDiagGGNConv2d()


def _extension(estimator: str, mc_samples: int) -> object:
    from backpack.extensions import DiagGGNExact, DiagGGNMC, DiagHessian, SumGradSquared

    if estimator in ("ggn_exact", "ggn_mc"):
        ext = DiagGGNExact() if estimator == "ggn_exact" else DiagGGNMC(mc_samples=mc_samples)
        ext.set_module_extension(nn.Conv2d, _conv2d_weight_diagonal(), overwrite=True)
        return ext
    if estimator == "hessian_exact":
        return DiagHessian()
    if estimator == "fisher":
        return SumGradSquared()
    raise ValueError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")


#: which engine computes each estimator: ``"autograd"`` (:mod:`fairbench.training.persample`,
#: BackPACK only where it cannot handle the model) or ``"backpack"``. Measured with
#: ``benchmarks/bench_curvature.py --engines auto backpack``: the autograd engine is 1.6-2.3×
#: faster for ggn_mc and ggn_exact and 5-20× for fisher on smallcnn, ResNet-18 and VGG-11
#: (``benchmarks/README.md``); the exact Hessian diagonal has no per-sample form and stays
#: with BackPACK.
ENGINES: dict[str, str] = {"ggn_exact": "autograd", "ggn_mc": "autograd", "fisher": "autograd",
                           "hessian_exact": "backpack"}


class _AutogradPass:
    """The autograd engine's counterpart of a BackPACK extension: one pass's results."""

    def __init__(self, engine: SquaredProducts, estimator: str, mc_samples: int) -> None:
        self.engine, self.estimator, self.mc_samples = engine, estimator, mc_samples
        self.values: dict[str, torch.Tensor] = {}

    def run(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.values = self.engine.step(x, columns_for(self.estimator, y, self.mc_samples))


def _backpack_step(model: nn.Module, loss_fn: nn.Module, ext: object, x: torch.Tensor,
                   y: torch.Tensor) -> None:
    """One forward and backward pass of the batch-mean loss with the extension active (or the
    autograd engine's pass; tests inject allocator failures here)."""
    if isinstance(ext, _AutogradPass):
        ext.run(x, y)
        return
    from backpack import backpack

    with backpack(ext):
        loss = loss_fn(model(x), y)
        loss.backward()


def _is_out_of_memory(exc: BaseException) -> bool:
    """An allocator failure (CUDA's ``OutOfMemoryError`` or the CPU allocator's error)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("out of memory", "not enough memory", "can't allocate memory"))


def _raised_in_backpack(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}backpack{os.sep}" in tb.tb_frame.f_code.co_filename


def _unsupported_message(estimator: str, backpack_message: str) -> str:
    """One line naming the layer BackPACK rejected (from its "... Module <class 'X'>", or its
    assertion text) and a way out that differs from the estimator that failed."""
    found = re.search(r"<class '([^']+)'>", backpack_message)
    lines = backpack_message.strip().splitlines() or ["(no message)"]
    what = (f"for layer {found.group(1)} of this backbone" if found
            else f"for this backbone ({lines[-1][:160]})")
    if estimator == "hessian_exact":
        hint = ("use ggn_exact, ggn_mc or fisher (hessian_exact works for backbones without "
                "BatchNorm, such as vgg11)")
    else:
        hint = ("use fisher (first-order, it needs no second-order support from the layers) "
                "or a backbone built from layers BackPACK supports, such as smallcnn")
    return f"estimator {estimator} is not supported by BackPACK {what}; {hint}"


@dataclass
class PassSize:
    """Samples per backward pass that fit in memory, carried from one
    :func:`diagonal_curvature` call to the next (``None``: whole batches), so that only the
    first call of a run pays for finding it."""

    samples: int | None = None


class _CurvaturePass:
    """The state of one :func:`diagonal_curvature` call: a float32 copy of the model with only
    the scored parameters requiring gradients, the engine (fairbench's autograd products
    where they cover the model, else BackPACK, switched to on the first unsupported layer),
    and the accumulated diagonal per parameter name."""

    def __init__(self, model: nn.Module, estimator: Estimator, scope: Scope,
                 mc_samples: int) -> None:
        self.estimator, self.mc_samples = estimator, mc_samples
        work = copy.deepcopy(model).float().eval()
        self.work = work.to(memory_format=torch.contiguous_format)
        targets = scored_parameters(self.work, scope)
        self.target_ids = {id(p): name for name, p in targets.items()}
        for p in self.work.parameters():
            p.requires_grad_(id(p) in self.target_ids)
        self.engine: SquaredProducts | None = None
        if ENGINES.get(estimator) == "autograd":
            try:
                self.engine = SquaredProducts(self.work, targets)
            except Unsupported as exc:
                log.debug("%s through BackPACK: %s", estimator, exc)
        self.attr = _SAVED_AS[estimator]
        self.acc = {name: torch.zeros_like(p) for name, p in targets.items()}
        self.state: dict[str, object] = {}
        if self.engine is None:
            self.use_backpack()
        else:
            self.state.update(model=self.work, params=[], loss=None)
        self.ext = self.new_extension()

    def use_backpack(self) -> None:
        from backpack import extend

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.state["model"] = extend(self.work, use_converter=True)
        except Exception as exc:  # noqa: BLE001  (torch.fx cannot trace it)
            raise CurvatureError(
                f"BackPACK cannot trace this backbone ({type(exc).__name__}: {str(exc)[:120]}); "
                "use smallcnn, resnet18, tv_resnet18, vgg11 or timm_vgg11") from None
        self.state["params"] = [p for p in self.state["model"].parameters()  # type: ignore[attr-defined]
                                if id(p) in self.target_ids]
        self.state["loss"] = extend(nn.CrossEntropyLoss())

    def new_extension(self) -> object:
        if self.engine is not None:
            return _AutogradPass(self.engine, self.estimator, self.mc_samples)
        return _extension(self.estimator, self.mc_samples)

    def clear(self) -> None:
        for p in self.state["params"]:  # type: ignore[attr-defined]
            if hasattr(p, self.attr):
                delattr(p, self.attr)
            p.grad = None

    def accumulate(self, x: torch.Tensor, y: torch.Tensor, weight: float) -> None:
        estimator = self.estimator
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _backpack_step(self.state["model"], self.state["loss"], self.ext, x,  # type: ignore[arg-type]
                               y)
        except Unsupported as exc:  # usually in the first pass; pieces already added stay
            # (the same sums: BackPACK adds the rest)
            log.debug("%s through BackPACK: %s", estimator, exc)
            self.engine = None
            self.use_backpack()
            self.ext = self.new_extension()
            self.accumulate(x, y, weight)
            return
        except NotImplementedError as exc:
            raise CurvatureError(_unsupported_message(estimator, str(exc))) from None
        except AssertionError as exc:  # BackPACK asserts on layer settings it cannot handle
            if not _raised_in_backpack(exc):
                raise
            raise CurvatureError(_unsupported_message(estimator, str(exc))) from None
        if isinstance(self.ext, _AutogradPass):
            for name, value in self.ext.values.items():
                self.acc[name].add_(value, alpha=weight)
            self.ext.values = {}
            return
        for p in self.state["params"]:  # type: ignore[attr-defined]
            value = getattr(p, self.attr)
            if estimator == "fisher":
                value = value * int(x.shape[0])  # (1/m) Σ g_n² from Σ (g_n / m)²
            self.acc[self.target_ids[id(p)]].add_(value.detach(), alpha=weight)
        self.clear()

    def add_batch(self, batch: Batch, nominal: int, size: PassSize) -> None:
        """Add one batch (weighted by its size over the first batch's), in micro-batches of
        ``size.samples``, halved whenever memory runs out."""
        x = batch.x.float().contiguous()
        y = batch.y
        b = int(x.shape[0])
        start = 0
        while start < b:
            m = min(size.samples or b, b - start)
            try:
                self.accumulate(x[start:start + m], y[start:start + m], m / nominal)
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if not _is_out_of_memory(exc):
                    raise
                self.clear()
                self.ext = self.new_extension()  # drop half-backpropagated state
                if x.device.type == "cuda":
                    torch.cuda.empty_cache()
                if m == 1:
                    raise CurvatureError(
                        f"out of memory computing {self.estimator} for a single sample; use "
                        "ggn_mc, a smaller image size or a device with more memory"
                    ) from None
                size.samples = m // 2
                log.warning("%s: out of memory on %d samples at once; going on in "
                            "micro-batches of %d (same result)", self.estimator, m,
                            size.samples)
                continue
            start += m


def diagonal_curvature(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    estimator: Estimator = "ggn_exact",
    scope: Scope = "all",
    mc_samples: int = 1,
    progress: bool = False,
    desc: str = "curvature",
    total: int | None = None,
    pass_size: PassSize | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal curvature of the cross-entropy loss of ``model`` over ``batches``, per scored
    parameter name (names as in ``model.named_parameters()``). ``model`` is not modified.
    ``pass_size``, if given, starts from its size and keeps the size that fitted."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
    curvature = _CurvaturePass(model, estimator, scope, mc_samples)
    nominal: int | None = None
    size = pass_size if pass_size is not None else PassSize()  # shrinks when memory runs out
    with progress_bar(total=total, desc=desc, unit="batch", enabled=progress) as bar:
        for batch in batches:
            nominal = nominal or int(batch.x.shape[0])
            curvature.add_batch(batch, nominal, size)
            bar.update(1)
    if nominal is None:
        raise FairbenchError("curvature was asked for over an empty set of samples")
    return curvature.acc


# -- group score sets ------------------------------------------------------------------------------
@dataclass
class GroupCurvature:
    """Curvature of the unprivileged (``h_u``) and privileged (``h_p``) score sets."""

    h_u: dict[str, torch.Tensor]
    h_p: dict[str, torch.Tensor]
    n_per_group: int


# -- scores and selection ----------------------------------------------------------------------------
def fair_saliency(delta: torch.Tensor, h_u: torch.Tensor, h_p: torch.Tensor, beta: float
                  ) -> torch.Tensor:
    r""":math:`\tfrac12\,\Delta\theta^2\,(h_u - \beta h_p)`: the second-order loss change of
    moving the weights by :math:`\Delta\theta` on the unprivileged group, minus β times that
    on the privileged group. Low scores are changed first (they matter to the privileged
    group more than to the unprivileged one). FairPrune uses :math:`\Delta\theta=-\theta`."""
    return 0.5 * delta.pow(2) * (h_u - beta * h_p)


def select_lowest(score: torch.Tensor, k_total: int, already: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Boolean mask of ``already`` plus the lowest-scored other entries, ``k_total`` in all
    (already-selected entries count toward ``k_total`` and stay selected). NaN scores rank
    after every other score, ``+inf`` included."""
    flat = score.reshape(-1)
    prev = already.reshape(-1) if already is not None else torch.zeros_like(flat, dtype=torch.bool)
    k_new = max(0, min(int(k_total), flat.numel()) - int(prev.sum()))
    mask = prev.clone()
    if k_new > 0:
        # rank the free entries only (masking the selected ones with +inf let them win ties
        # against +inf/NaN scores of free entries, which then fell short of k_total); NaN last
        free = (~prev).nonzero().squeeze(1)
        nan = torch.isnan(flat[free])
        ordered, unordered = free[~nan], free[nan]
        k_ordered = min(k_new, ordered.numel())
        if k_ordered > 0:
            top = torch.topk(flat[ordered], k_ordered, largest=False, sorted=False).indices
            mask[ordered[top]] = True
        mask[unordered[:k_new - k_ordered]] = True
    return mask.view_as(score)


def select_as_released(score: torch.Tensor, ratio: float, already: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """The released FairQuantize selection, kept for parity studies: already-quantized
    entries get score −1e38, ``order = argsort(score)``, and position ``j`` is marked when
    ``order[j] <= round(ratio · N)`` — argsort read as ranks, which selects a near-random
    set larger than the target (``quantize.py`` of github.com/guoyb17/FairQuantize)."""
    flat = score.reshape(-1)
    prev = already.reshape(-1) if already is not None else torch.zeros_like(flat, dtype=torch.bool)
    kth = round(ratio * flat.numel())
    order = torch.argsort(flat.masked_fill(prev, -1e38))
    mask = prev | (order <= kth)
    return mask.view_as(score)
