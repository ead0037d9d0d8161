r"""Diagonal curvature as sums of squared per-sample products, through plain autograd.

Three of the estimators of :func:`fairbench.training.curvature.diagonal_curvature` share one
form. For a weight ``w``, the Jacobian ``J_n`` of sample ``n``'s logits and columns ``s_vn``
at the logits,

.. math::  \operatorname{diag} \sum_v \sum_n (J_n^\top s_{vn})(J_n^\top s_{vn})^\top
           = \sum_v \sum_n (J_n^\top s_{vn})^{\odot 2},

with (``p_n`` the softmax, ``e_c`` a one-hot vector, ``B`` the samples in the pass)

==============  ==================================================================  ========
estimator       columns ``s_vn``                                                    ``V``
==============  ==================================================================  ========
``ggn_exact``   the C−1 columns of a symmetric factor of :math:`\mathrm{diag}(p_n)    C−1
                - p_n p_n^\top` (:func:`softmax_hessian_factor`), over :math:`\sqrt B`
``ggn_mc``      :math:`(p_n - e_{\hat y_{vn}})/\sqrt{B\,V}`, :math:`\hat y \sim p_n`  mc_samples
``fisher``      :math:`(p_n - e_{y_n})/\sqrt B`: per-sample gradients of the loss     1
==============  ==================================================================  ========

These give BackPACK's results (``DiagGGNExact``, ``DiagGGNMC``, the rescaled
``SumGradSquared``) to float rounding; ``ggn_mc`` draws its labels as BackPACK does (one
``Categorical(probs=softmax).sample`` per pass), so a single batch gets the same labels from the
same random state. For ``ggn_exact`` the factor has C−1 columns instead of BackPACK's C
(:func:`softmax_hessian_factor`): the same matrix, one backward pass fewer.

With the model in eval mode the samples of a batch do not interact, so one backward pass of
column ``v`` for the whole batch, ``autograd.grad(logits, outputs, s_v)`` taken at the outputs
of the scored layers (never at the weights), gives each layer's output gradient ``g`` per
sample, and the weight's per-sample product from the layer input ``a``:

* Linear: :math:`(J^\top s)[m,k] = \sum_l g[m,l]\,a[k,l]` (``l``: positions of a
  sequence, one for a plain vector);
* Conv (any dimension, groups): the same with the unfolded input ``U[k,l]`` (``k`` runs over
  input channel × kernel offset, ``l`` over output positions);
* BatchNorm in eval mode: :math:`(J^\top s)[c] = \sum_l g[c,l]\,\hat a[c,l]` with
  :math:`\hat a = (a - \mu)/\sqrt{\sigma^2 + \epsilon}` from the running statistics.

The output gradients of a Linear or convolution are kept for a few columns (up to
:data:`CHUNK_BYTES`; a BatchNorm reduces each column at once) and their products' squares
summed in one of three exact forms, the one :func:`product_mode` predicts cheapest for the
layer's shape (V columns, N samples, M outputs, K inputs per output, L positions):

* **direct**: the per-sample products ``G_vn = g_vn U_nᵀ`` with the columns stacked as rows
  (on the CPU one oneDNN GEMM per sample, whose blocks of :data:`PRODUCT_BYTES` are squared
  into the sums while in cache; elsewhere batched GEMMs) squared and summed: ``V·N·M·K``
  products of ``2L`` FLOPs each, plus their squares;
* **grouped** (convolutions with few rows per sample): the same products as the weight
  gradient of one convolution with a group per (column, sample), through the backend's
  convolution kernels;
* **pairs**: expanding the square, :math:`\sum_v (\sum_l g_l U_l)^2 = \sum_{l \le l'}
  w_{ll'} (\sum_v g_l g_{l'}) (U_l U_{l'})` with ``w`` 1 on the diagonal and 2 off it: the
  column sums :math:`P = \sum_v g_l g_{l'}` (a small batched GEMM per group of columns) and
  then one GEMM of P with the input pair products over (sample, pair), once per batch. Its
  cost hardly grows with V, so it wins for layers with few positions (the last stages, and
  every Linear: one position, where it is exactly the weight-gradient GEMM of ``g²`` and
  ``a²``).

Cost against the floor: a backward pass computes, per layer, the gradient for its input and
the weight gradient ``Σ_n g_n U_nᵀ`` (the same GEMM FLOPs as one column's direct per-sample
products). Here each column pays the input gradients (``autograd.grad`` at the layer outputs
computes no weight gradient) plus the products, so V columns cost about V backward passes:
less where the pairs form applies, more where the per-sample products (``N·M·K`` numbers per
column instead of ``M·K``) are bound by memory traffic. On the CPU the first pass sets glibc's
heap to keep freed memory (:func:`retain_heap`): the columns' gradients are freed and
allocated again V times per pass.

What this engine does not handle is reported by :class:`Unsupported` before anything is
accumulated, and :func:`~fairbench.training.curvature.diagonal_curvature` then uses BackPACK:
a scored layer of another type or with a padding mode other than zeros, a BatchNorm without
running statistics, a layer called twice in one forward pass or two layers sharing a weight
(the per-sample products would have to be added before squaring), a scored weight used outside
its module's forward, a layer called without a positional input, logits that are not
``batch × classes``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: output gradients a layer keeps before reducing them, in bytes (also the GPU product
#: blocks). More columns per reduction mean fewer, larger GEMMs and one pass over the layer's
#: input per group of columns: on one CPU thread smallcnn's first convolution (4 MiB per
#: column at batch 32) took 14.3 ms for 7 columns with 4 MiB, 8.9 ms with 32 MiB
CHUNK_BYTES: dict[str, int] = {"cpu": 32 << 20, "cuda": 64 << 20}

#: at most this many bytes of output gradients kept over all layers before every layer
#: reduces what it holds (CPU; none elsewhere): bounds :data:`CHUNK_BYTES` times the number of
#: layers (ResNet-18, 114 classes, 4 images at 224 px: peak 2.19 GiB with 32 MiB per layer and
#: no bound, 1.64 GiB with 4 MiB per layer)
PENDING_BYTES: dict[str, int] = {"cpu": 64 << 20}

#: per-sample product blocks of the direct and grouped forms and input pair blocks of the
#: pairs form, in bytes (CPU: written, squared and summed while in the last-level cache)
PRODUCT_BYTES: dict[str, int] = {"cpu": 4 << 20}

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm


@functools.cache
def _onednn_matmul() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``a @ b`` for float32 CPU matrices through oneDNN's GEMM (the kernel torch's compiler
    uses for linear layers), or None where this torch lacks it or it disagrees with ``@`` on a
    small check. On CPUs where the BLAS library takes a slower path (MKL on AMD processors
    with AVX-512) it runs the pairs form's large GEMM about twice as fast (measured: 11 ms
    against 24 ms for 256 × 4,352 by 4,352 × 1,152 on one thread)."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None

    def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return op(a, b.t(), None, "none", [], "")  # a @ (bᵀ)ᵀ; oneDNN reads bᵀ's strides

    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(7, 33, generator=gen)
        b = torch.randn(33, 5, generator=gen)
        if not torch.allclose(matmul(a, b), a @ b, rtol=1e-5, atol=1e-5):
            return None
    except Exception:  # noqa: BLE001 - an op that this build cannot run: use @
        return None
    return matmul


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``a``, ``b``: through oneDNN for float32 on the CPU where available
    (:func:`_onednn_matmul`), else torch's ``@``. The two differ only by float rounding."""
    if a.device.type == "cpu" and a.dtype == b.dtype == torch.float32 and a.numel() and \
            b.numel():
        onednn = _onednn_matmul()
        if onednn is not None:
            return onednn(a, b)
    return a @ b


#: glibc ``mallopt`` settings made once before the first pass on the CPU
#: (:func:`retain_heap`): allocations up to 32 MiB from the heap (glibc's own ceiling for its
#: adaptive threshold) and up to 256 MiB of freed memory kept at the heap's top
HEAP_SETTINGS = {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 256 << 20}


@functools.cache
def retain_heap() -> bool:
    """Keep freed memory in the C heap instead of returning it to the kernel after every
    backward column (glibc only; elsewhere nothing is changed): returns whether it was set.

    Each column's backward pass allocates the output gradients of every layer above the
    tensors the forward pass keeps, and frees them: with glibc's adaptive thresholds that
    free space at the top of the heap is handed back to the kernel (``brk``) and faulted back
    in, page by page, on the next column. Measured on one CPU thread, smallcnn at 32 px, batch
    32: 10,000–17,000 page faults and 20–28 ms of system time per pass of 32 images (a
    quarter of the pass at 5 classes); with these settings none. The settings are the
    process's (``mallopt`` has no scope): the heap then keeps up to
    ``HEAP_SETTINGS["M_TRIM_THRESHOLD"]`` of freed memory for reuse."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc's: other C libraries differ
    except (OSError, AttributeError):
        return False
    codes = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}  # glibc's malloc.h
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(codes[name], value) == 1 for name, value in HEAP_SETTINGS.items())


def _fast_gemm(t: torch.Tensor) -> bool:
    """Whether :func:`matmul` runs oneDNN's GEMM for ``t``'s device and dtype."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and _onednn_matmul() is not None


class Unsupported(Exception):
    """The model needs BackPACK: the message says why."""


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` (owner of a scored weight) cannot be handled here, or ``None``."""
    if isinstance(module, _CONV):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return f"{type(module).__name__} with padding {module.padding!r}/{module.padding_mode}"
        return None
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, _BN):
        if module.running_mean is None or module.running_var is None:
            return f"{type(module).__name__} without running statistics"
        return None
    return f"layer type {type(module).__name__}"


#: cost constants of :func:`product_mode`, in GEMM FLOPs per (sample, output, input) entry
SQUARE_COST = 16.0  # squaring and summing one per-sample product (memory-bound)
PAIR_INPUT_COST = 8.0  # one input pair product U_l·U_l' (per output channel: divided by M)
PAIR_SUM_COST = 4.0  # one column's g_l·g_l' (per input: divided by K)
#: at most this many bytes for the pairs form's per-sample pair tensors (else direct)
PAIRS_BYTES = 256 << 20


def product_mode(kind: str, columns: int, n: int, m: int, k: int, positions: int,
                 itemsize: int = 4, *, fast_gemm: bool = False) -> str:
    """How the squares of a Linear/Conv layer's per-sample products are summed, for
    ``columns`` backward columns ``V``, ``n`` samples, ``m`` output channels, ``k`` inputs per
    output (channels × kernel) and ``positions`` output positions ``L`` (module docstring).

    Predicted cost per (sample, output, input) entry, in GEMM FLOPs:

    * direct: ``V·(2L + SQUARE_COST)``: V per-sample products and their squares;
    * pairs: ``2T + T·PAIR_INPUT_COST/M + V·L²·PAIR_SUM_COST/K`` with ``T = L(L+1)/2``: the
      final GEMM over (sample, pair), the input pair products and the column sums.

    The cheaper one is used (pairs only while its pair tensors stay under
    :data:`PAIRS_BYTES`); a direct convolution with few rows per sample (``V·M ≤ 4L``, ``L ≥
    32``) is ``"grouped"``: the backend's convolution weight-gradient kernel with a group
    per (column, sample) beats batched GEMMs of ``V·M × L`` by ``L × K`` there. Constants
    and thresholds from per-layer timings on one CPU thread (ResNet-18, VGG-11 and smallcnn
    layers at 32 and 64 px, V = 1, 8 and 114). With ``fast_gemm`` (the products run as one
    oneDNN GEMM per sample, their squares added while in cache) the direct form is faster
    more often, and the grouped form needs ``V·M ≤ L`` and (``K ≥ 256`` or ``V·M ≤ 128``).
    Measured per layer on one CPU thread, 32 px, batch 32, grouped against direct: with one
    column (``ggn_mc``, ``fisher``) grouped wins where ``V·M ≤ L`` (smallcnn's second
    convolution 2.4 against 5.3 ms, VGG-11's second 8.4 against 12.0 ms, ResNet-18's stem 3.0
    against 3.9 ms) and loses above it (VGG-11's third and fourth, ``M = 256, L = 64``: 17.5
    against 9.8 ms and 30.2 against 18.8 ms); with 7 columns (``ggn_exact``, 8 classes)
    direct wins on every layer that the old bound ``V·M ≤ 4L`` sent to grouped (smallcnn's
    second convolution 15.0 against 16.5 ms, VGG-11's second 47.6 against 60.0 ms)."""
    v, l = columns, positions
    t = l * (l + 1) // 2
    direct = v * (2 * l + SQUARE_COST)
    pairs = 2 * t + t * PAIR_INPUT_COST / m + v * l * l * PAIR_SUM_COST / k
    fits = n * t * max(m, k) * itemsize <= PAIRS_BYTES and n * m * l * l * itemsize <= PAIRS_BYTES
    if pairs < direct and fits:
        return "pairs"
    if kind == "conv" and l >= 32 and (
            not fast_gemm and v * m <= 4 * l or
            fast_gemm and v * m <= l and (k >= 256 or v * m <= 128)):
        return "grouped"
    return "direct"


class _Layer:
    """One scored module: its captured input and output, the output gradients of the columns
    not yet reduced, and the running sums."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        self.kind = "bn" if isinstance(module, _BN) else "linear" if isinstance(
            module, nn.Linear) else "conv"
        self.clone_in = False  # the input is modified in place later in the forward pass
        self.clone_out = False  # the output is
        self.begin()

    def begin(self) -> None:
        self.inp: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.versions = (0, 0)
        self.calls = 0
        self.mode: str | None = None  # "bn", "pairs", "grouped" or "direct": at column 1
        self.acc: torch.Tensor | None = None  # direct sums (G × Mg × Kg) or BN sums (C)
        self.pairs: torch.Tensor | None = None  # N·G·Mg × L × L column sums of g gᵀ
        self.pending: list[torch.Tensor] = []
        self.pending_bytes = 0
        self._cache: dict[str, torch.Tensor] = {}

    # forward ------------------------------------------------------------------------------
    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        self.calls += 1
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise Unsupported(f"{self.name}: its module is called without a positional input")
        a = inputs[0]
        self.inp = (a.detach().clone() if self.clone_in else a.detach())
        self.out = output
        self.versions = (a._version, output._version)
        return output.clone() if self.clone_out else None

    def modified_in_place(self) -> bool:
        """Flags (and says whether) the captured input or output changed after capture."""
        if self.inp is None or self.out is None:
            return False
        changed = False
        if self.inp._version != self.versions[0] and not self.clone_in:
            self.clone_in = changed = True
        if self.out._version != self.versions[1] and not self.clone_out:
            self.clone_out = changed = True
        return changed

    # shapes ---------------------------------------------------------------------------------
    def _groups(self) -> int:
        return int(getattr(self.module, "groups", 1))

    def unfolded(self) -> torch.Tensor:
        """The input as N × G × Kg × L (groups G, Kg inputs per output, L positions)."""
        if "u" not in self._cache:
            a = self.inp
            assert a is not None
            if self.kind == "linear":
                u = a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)  # N × K × L
            else:
                u = _unfold(self.module, a)
            n, k, l = u.shape
            g = self._groups()
            self._cache["u"] = u.reshape(n, g, k // g, l)
        return self._cache["u"]

    def as_positions(self, grad: torch.Tensor) -> torch.Tensor:
        """Output gradients V × N × (output shape) as V × N × G × Mg × L."""
        v, n = grad.shape[:2]
        if self.kind == "linear":
            g = grad.reshape(v, n, -1, grad.shape[-1]).transpose(2, 3)
        else:
            g = grad.reshape(v, n, grad.shape[2], -1)
        groups = self._groups()
        return g.reshape(v, n, groups, g.shape[2] // groups, g.shape[3])

    # backward ---------------------------------------------------------------------------------
    def add(self, grad: torch.Tensor, columns: int, chunk_bytes: int) -> None:
        """One column's output gradient (N × output shape); reduced in groups of columns that
        fill ``chunk_bytes`` (fewer Python calls and larger GEMMs for small layers)."""
        if self.mode is None:
            if self.kind == "bn":
                self.mode = "bn"
            else:
                m = grad.shape[1] if self.kind == "conv" else grad.shape[-1]
                n = grad.shape[0]
                k = self.module.weight[0].numel()
                fast = _fast_gemm(grad)
                self.mode = product_mode(self.kind, columns, n, m, k, grad[0].numel() // m,
                                         grad.element_size(), fast_gemm=fast)
        if self.mode == "bn":  # element-wise: nothing gained by stacking columns
            self._add_bn(grad.unsqueeze(0))
            return
        self.pending.append(grad)
        self.pending_bytes += grad.numel() * grad.element_size()
        if self.pending_bytes >= chunk_bytes:
            self.flush(chunk_bytes)

    def flush(self, chunk_bytes: int) -> None:
        if not self.pending:
            return
        if self.mode == "direct":  # N × V × output: each sample's columns side by side
            grads = torch.stack(self.pending, 1) if len(self.pending) > 1 else \
                self.pending[0].unsqueeze(1)
            self.pending, self.pending_bytes = [], 0
            self._add_direct(grads, chunk_bytes)
            return
        grads = torch.stack(self.pending) if len(self.pending) > 1 else self.pending[0][None]
        self.pending, self.pending_bytes = [], 0
        if self.mode == "bn":
            self._add_bn(grads)
        elif self.mode == "pairs":
            self._add_pairs(self.as_positions(grads))
        elif self.mode == "grouped":
            self._add_grouped(grads, chunk_bytes)

    def _add_bn(self, grads: torch.Tensor) -> None:
        if "xhat" not in self._cache:
            a = self.inp
            assert a is not None
            bn = self.module  # x̂ = (a − μ)/√(σ² + ε): the eval-mode batch norm without affine
            self._cache["xhat"] = F.batch_norm(
                a, bn.running_mean.to(a.dtype), bn.running_var.to(a.dtype), None, None,
                False, 0.0, bn.eps)
        xhat = self._cache["xhat"]
        if grads.dim() > 3:  # Σ over positions: V × N × C
            per_sample = torch.linalg.vecdot(grads.flatten(3), xhat.flatten(2).unsqueeze(0))
        else:
            per_sample = grads * xhat
        sq = per_sample.square_().sum((0, 1))
        self.acc = sq if self.acc is None else self.acc.add_(sq)

    def _add_pairs(self, g: torch.Tensor) -> None:
        v, n, groups, mg, l = g.shape
        if l == 1:
            term = g.square().sum(0).reshape(n * groups * mg, 1, 1)
            self.pairs = term if self.pairs is None else self.pairs.add_(term)
            return
        rows = g.permute(1, 2, 3, 4, 0).reshape(n * groups * mg, l, v)  # per row: L × V
        if self.pairs is None:
            self.pairs = torch.bmm(rows, rows.transpose(1, 2))
        else:
            self.pairs.baddbmm_(rows, rows.transpose(1, 2))

    def _add_grouped(self, grads: torch.Tensor, chunk_bytes: int) -> None:
        """Per-(column, sample) weight gradients as the weight gradient of one convolution
        with a group per (column, sample), in blocks whose products fill ``chunk_bytes``."""
        conv = self.module
        a = self.inp
        assert a is not None
        v, n = grads.shape[:2]
        m = grads.shape[2]
        w = conv.weight
        per_item = w.numel() * w.element_size()
        step = max(1, min(v * n, PRODUCT_BYTES.get(a.device.type, chunk_bytes) // per_item))
        flat = grads.reshape(v * n, *grads.shape[2:])
        spatial = a.shape[2:]
        if self.acc is None:
            self.acc = torch.zeros_like(w)
        for i in range(0, v * n, step):
            j = min(v * n, i + step)
            samples = torch.arange(i, j, device=a.device) % n
            x = a.index_select(0, samples).reshape(1, -1, *spatial)
            go = flat[i:j].reshape(1, (j - i) * m, *grads.shape[3:])
            shape = ((j - i) * m, *w.shape[1:])
            gw = torch.ops.aten.convolution_backward(
                go, x, go.new_empty(1).expand(shape), None, conv.stride, conv.padding,
                conv.dilation, False, [0] * len(spatial), conv.groups * (j - i),
                (False, True, False))[1]
            if j - i == 1:
                self.acc.addcmul_(gw, gw)
            else:
                self.acc.add_(gw.reshape(j - i, *w.shape).square_().sum(0))

    def _add_direct(self, grads: torch.Tensor, chunk_bytes: int) -> None:
        """Output gradients N × V × (output shape), each sample's columns side by side."""
        g = self.as_positions(grads.transpose(0, 1))  # V × N × G × Mg × L (a view)
        v, n, groups, mg, l = g.shape
        u = self.unfolded()  # N × G × Kg × L
        kg = u.shape[2]
        items = n * groups  # (sample, group), sample-major
        u = u.reshape(items, kg, l).contiguous()  # a view for a convolution's unfolded input
        if self.acc is None:
            self.acc = torch.zeros(groups, mg, kg, device=g.device, dtype=g.dtype)
        if self.kind == "conv" and groups == 1:  # per item rows (column, output): a view
            lhs = grads.reshape(items, v * mg, l)
        else:
            lhs = g.permute(1, 2, 0, 3, 4).reshape(items, v * mg, l)
        # blocks of columns × channels whose products fill at most block_bytes (on a CPU a
        # cache-sized block: the products are written, squared and summed in cache); with
        # oneDNN one item per GEMM, elsewhere as many items as fit in one batched GEMM
        block_bytes = PRODUCT_BYTES.get(g.device.type, chunk_bytes)
        row = kg * g.element_size()
        m_step = max(1, min(mg, block_bytes // row))
        v_step = max(1, min(v, block_bytes // (mg * row))) if m_step == mg else 1
        if _fast_gemm(g):
            self._add_direct_per_item(lhs, u, v, m_step, v_step)
            return
        i_step = max(1, min(items, block_bytes // (v * mg * row))) if v_step == v else 1
        group_of = torch.arange(items, device=g.device) % groups
        for i in range(0, items, i_step):
            j = min(items, i + i_step)
            for c in range(0, v, v_step):
                d = min(v, c + v_step)
                for m in range(0, mg, m_step):
                    e = min(mg, m + m_step)
                    rows = slice(c * mg, d * mg) if m_step == mg else \
                        slice(c * mg + m, c * mg + e)
                    js = torch.bmm(lhs[i:j, rows], u[i:j].transpose(1, 2)).square_().reshape(
                        j - i, d - c, e - m, kg).sum(1)
                    if groups == 1:
                        self.acc[0, m:e].add_(js.sum(0))
                    else:
                        self.acc[:, m:e].index_add_(0, group_of[i:j], js)

    def _add_direct_per_item(self, lhs: torch.Tensor, u: torch.Tensor, v: int, m_step: int,
                             v_step: int) -> None:
        """The direct form with one oneDNN GEMM per (item, block) whose products' squares go
        straight into the sums (read once, while in cache). The blocks are the same for every
        item, so they are laid out once; the loop is kept lean (its Python overhead is
        comparable to a small layer's GEMMs)."""
        assert self.acc is not None
        groups, mg, kg = self.acc.shape
        gemm = _onednn_matmul()
        assert gemm is not None
        blocks = []  # (rows of an item's lhs, columns in it, the sums they add to) per group
        for c in range(0, v, v_step):
            d = min(v, c + v_step)
            for m in range(0, mg, m_step):
                e = min(mg, m + m_step)
                rows = slice(c * mg, d * mg) if m_step == mg else slice(c * mg + m, c * mg + e)
                blocks.append((rows, d - c, e - m, [self.acc[k, m:e] for k in range(groups)]))
        for i, (a, b) in enumerate(zip(lhs.unbind(0), u.unbind(0))):
            bt = b.t()  # Uᵀ (L × Kg): oneDNN reads U, its weight layout, as it is
            for rows, cols, width, sums in blocks:
                js = gemm(a[rows], bt)
                target = sums[i % groups]
                if cols == 1:
                    target.addcmul_(js, js)
                else:
                    for col in js.view(cols, width, kg).unbind(0):
                        target.addcmul_(col, col)

    def _rows_by_position(self) -> torch.Tensor:
        """The input as N·G × L × Kg, contiguous (a GEMM operand per sample and group)."""
        if "ut" not in self._cache:
            u = self.unfolded()
            n, groups, kg, l = u.shape
            self._cache["ut"] = u.transpose(2, 3).reshape(n * groups, l, kg).contiguous()
        return self._cache["ut"]

    def result(self, weight: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
        """The sum of squares in the weight's shape (zeros for a layer never reached)."""
        self.flush(chunk_bytes)
        out = None if self.acc is None else self.acc.reshape(weight.shape)
        if self.pairs is None:
            return torch.zeros_like(weight) if out is None else out
        ut = self._rows_by_position()  # N·G × L × Kg
        items, l, kg = ut.shape
        groups = self._groups()
        n = items // groups
        if l == 1:
            p = self.pairs.reshape(n, groups, -1, 1)
            prod = self._pair_gemm(p, ut.square().reshape(n, groups, 1, kg))
        else:  # upper triangle of the L × L pairs, row by row; off-diagonal ones count twice
            t = l * (l + 1) // 2
            p = torch.empty(self.pairs.shape[0], t, device=ut.device, dtype=ut.dtype)
            off = 0
            for r in range(l):
                width = l - r
                torch.mul(self.pairs[:, r, r:], 2.0, out=p[:, off:off + width])
                p[:, off] = self.pairs[:, r, r]
                off += width
            p = p.reshape(n, groups, -1, t)
            # the input pair products U_l·U_l' for a block of samples at a time (a cache-sized
            # block on a CPU), each block's GEMM added to the sums
            per_sample = groups * t * kg * ut.element_size()
            step = max(1, PRODUCT_BYTES.get(ut.device.type, chunk_bytes) // per_sample)
            prod = None
            for i in range(0, n, step):
                j = min(n, i + step)
                u = ut[i * groups:j * groups]
                b = torch.empty(u.shape[0], t, kg, device=ut.device, dtype=ut.dtype)
                off = 0
                for r in range(l):
                    width = l - r
                    torch.mul(u[:, r:r + 1], u[:, r:], out=b[:, off:off + width])
                    off += width
                block = self._pair_gemm(p[i:j], b.reshape(j - i, groups, t, kg))
                prod = block if prod is None else prod.add_(block)
            assert prod is not None
        prod = prod.reshape(weight.shape)
        return prod if out is None else out.add_(prod)

    @staticmethod
    def _pair_gemm(p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Σ_{n,t} P[n,g,m,t] B[n,g,t,k] for P: n × G × Mg × T and B: n × G × T × Kg, one GEMM
        per group over (sample, pair); G × Mg × Kg."""
        n, groups, _, t = p.shape
        kg = b.shape[-1]
        if groups == 1:
            lhs = p.reshape(n, -1, t).permute(1, 0, 2).reshape(-1, n * t)
            return matmul(lhs, b.reshape(n * t, kg)).unsqueeze(0)
        lhs = p.permute(1, 2, 0, 3).reshape(groups, -1, n * t)
        rhs = b.transpose(0, 1).reshape(groups, n * t, kg)
        return torch.bmm(lhs, rhs)


def _unfold(conv: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """The input of a convolution as N × (C_in·kernel) × positions."""
    if isinstance(conv, nn.Conv2d):
        return F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                        stride=conv.stride)
    from unfoldNd import unfoldNd  # a BackPACK dependency

    return unfoldNd(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                    stride=conv.stride)


Factor = Callable[[torch.Tensor], torch.Tensor]


def softmax_hessian_factor(p: torch.Tensor) -> torch.Tensor:
    r"""``S`` of shape (C−1) × N × C with :math:`\sum_v s_{vn} s_{vn}^\top = \mathrm{diag}(p_n) -
    p_n p_n^\top` for probabilities ``p`` (N × C): the Hessian of the cross-entropy in the
    logits has rank C−1, so C−1 columns suffice (BackPACK back-propagates C).

    With :math:`q = \sqrt{p}` (a unit vector), :math:`H = D^{1/2}(I - qq^\top)D^{1/2}` and
    :math:`I - qq^\top = QQ^\top` for any orthonormal basis Q of :math:`q^\perp`. The
    Householder reflection :math:`R = I - 2ww^\top/w^\top w` with :math:`w = q + e_k`, k the
    largest entry of q (so :math:`w^\top w = 2(1 + q_k) \ge 2`), maps q to :math:`-e_k`; its
    columns other than k are such a basis, and :math:`s_j = D^{1/2} R e_j`, j ≠ k. Computed in
    float64 (where the device has it) and rounded once."""
    n, c = p.shape
    wide = torch.float64 if p.device.type in ("cpu", "cuda") else p.dtype  # MPS has no float64
    q = p.to(wide).sqrt()
    k = q.argmax(dim=1)
    w = q.clone()
    w[torch.arange(n, device=p.device), k] += 1.0
    r = torch.eye(c, device=p.device, dtype=q.dtype) - (
        2.0 / (w * w).sum(1)).reshape(n, 1, 1) * w.unsqueeze(2) * w.unsqueeze(1)  # N × C × C
    cols = torch.arange(c - 1, device=p.device).unsqueeze(0)  # column v of sample n is
    cols = cols + (cols >= k.unsqueeze(1)).long()  # j = v, or v + 1 from k on
    s = torch.gather(r, 2, cols.unsqueeze(1).expand(n, c, c - 1))  # N × C × (C−1), R[:, j]
    s = s * q.unsqueeze(2)
    return s.permute(2, 0, 1).to(p.dtype)


def columns_for(estimator: str, y: torch.Tensor, mc_samples: int) -> Factor:
    """``logits → V × N × C`` columns of the module docstring's table, for a pass of N."""

    def exact(logits: torch.Tensor) -> torch.Tensor:
        return softmax_hessian_factor(torch.softmax(logits, dim=1)) / math.sqrt(logits.shape[0])

    def sampled(logits: torch.Tensor) -> torch.Tensor:
        from torch.distributions import Categorical

        p = torch.softmax(logits, dim=1)
        labels = Categorical(probs=p).sample(torch.Size([mc_samples]))  # as BackPACK draws
        onehot = F.one_hot(labels, p.shape[1]).to(p.dtype)
        return (p.unsqueeze(0) - onehot) / math.sqrt(p.shape[0] * mc_samples)

    def empirical(logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits, dim=1)
        onehot = F.one_hot(y, p.shape[1]).to(p.dtype)
        return ((p - onehot) / math.sqrt(p.shape[0])).unsqueeze(0)

    table = {"ggn_exact": exact, "ggn_mc": sampled, "fisher": empirical}
    if estimator not in table:
        raise ValueError(f"no per-sample form for estimator {estimator!r}")
    return table[estimator]


class SquaredProducts:
    """:math:`\\sum_v \\sum_n (J_n^\\top s_{vn})^2` for every scored weight of ``model``
    (module docstring). ``model`` must be in eval mode with only the scored weights requiring
    gradients; ``targets`` maps names to those weights."""

    def __init__(self, model: nn.Module, targets: dict[str, nn.Parameter]) -> None:
        self.model = model
        owner = {id(m.weight): (name, m) for name, m in model.named_modules()
                 if isinstance(getattr(m, "weight", None), torch.Tensor)}
        self.layers: list[_Layer] = []
        self.weights: dict[str, nn.Parameter] = {}
        if len({id(p) for p in targets.values()}) < len(targets):
            raise Unsupported("two scored layers share one weight tensor")
        for name, p in targets.items():
            mod_name, module = owner[id(p)]
            reason = unsupported_reason(module)
            if reason is not None:
                raise Unsupported(f"{reason} ({mod_name or 'the model'})")
            self.layers.append(_Layer(name, module))
            self.weights[name] = p
        self._checked_unused = False
        self._probed = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        handles = [layer.module.register_forward_hook(layer.hook) for layer in self.layers]
        try:
            for layer in self.layers:
                layer.begin()
            return self.model(x)
        finally:
            for h in handles:
                h.remove()

    def step(self, x: torch.Tensor, columns: Factor) -> dict[str, torch.Tensor]:
        """One pass over the samples ``x``: the sums of squares per scored weight name."""
        if x.device.type == "cpu":
            retain_heap()
        if not self._probed:  # which captured tensors the forward overwrites: one sample
            self._probed = True  # without a graph finds them (version counters count anyway)
            with torch.no_grad():
                self._forward(x[:1])
            for layer in self.layers:
                layer.modified_in_place()
        logits = self._forward(x)
        for _ in range(len(self.layers)):  # again, copying what was overwritten, until none is
            if not [layer for layer in self.layers if layer.modified_in_place()]:
                break
            logits = self._forward(x)
        shared = [layer.name for layer in self.layers if layer.calls > 1]
        if shared:
            raise Unsupported(f"a scored layer is called more than once ({shared[0]})")
        if logits.dim() != 2:
            raise Unsupported(f"logits of shape {tuple(logits.shape)}, not batch × classes")
        self._check_unused(logits)
        live = [layer for layer in self.layers
                if layer.out is not None and layer.out.requires_grad]
        s = columns(logits.detach())
        v = int(s.shape[0])
        chunk = CHUNK_BYTES.get(x.device.type, 4 << 20)
        budget = PENDING_BYTES.get(x.device.type)
        for col in range(v):
            grads = torch.autograd.grad(logits, [layer.out for layer in live], s[col],
                                        retain_graph=col < v - 1, allow_unused=True)
            for layer, g in zip(live, grads):
                if g is not None:
                    layer.add(g, v, chunk)
            if budget is not None and sum(layer.pending_bytes for layer in live) > budget:
                for layer in live:
                    layer.flush(chunk)
        out = {layer.name: layer.result(self.weights[layer.name], chunk).detach()
               for layer in self.layers}
        for layer in self.layers:
            layer.begin()  # drop the captured tensors
        return out

    def _check_unused(self, logits: torch.Tensor) -> None:
        """A scored layer that never ran contributes zeros, unless its weight reaches the logits
        some other way (e.g. ``F.linear(x, layer.weight)``): checked once."""
        if self._checked_unused:
            return
        self._checked_unused = True
        idle = [layer for layer in self.layers if layer.calls == 0]
        if not idle or not logits.requires_grad:
            return
        grads = torch.autograd.grad(logits.sum(), [self.weights[lay.name] for lay in idle],
                                    retain_graph=True, allow_unused=True)
        for layer, g in zip(idle, grads):
            if g is not None:
                raise Unsupported(f"weight {layer.name} is used outside its module's forward")
