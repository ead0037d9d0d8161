"""``fairbench.training.curvature``: selection rules against brute force, the fair score by hand, the
scored tensors, and every curvature estimator against an independent computation (a closed
form for a linear-softmax model, ``torch.func`` Jacobians/Hessians and per-sample gradient
loops for a small conv net), plus the paper backbones (VGG-11 and ResNet-18 from timm and
torchvision) at 32 px.

Scale convention under test (module docstring): batch-mean loss, summed over batches, a final
partial batch weighted by its size, so the total is (1/B)·Σ_n c_n for nominal batch size B."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairbench import Batch, FairbenchError, diagonal_curvature, fair_saliency
from fairbench.core.errors import CurvatureError
from fairbench.training.curvature import scored_parameters, select_as_released, select_lowest


def make_batches(x: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> list[Batch]:
    out, start = [], 0
    for b in sizes:
        idx = torch.arange(start, start + b)
        out.append(Batch(x=x[idx], y=y[idx], g=None, index=idx))
        start += b
    assert start == len(x)
    return out


# -- selection ---------------------------------------------------------------------------------
def distinct_scores(shape, seed=0) -> torch.Tensor:
    """Distinct values in random positions (so the lowest-k set is unique)."""
    n = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    values = rng.permutation(n).astype(np.float32) * 0.37 - 3.0
    return torch.from_numpy(values).reshape(shape)


def brute_lowest(score: np.ndarray, k: int, already: np.ndarray | None = None) -> np.ndarray:
    flat = score.reshape(-1)
    prev = np.zeros(flat.size, bool) if already is None else already.reshape(-1).copy()
    k_new = max(0, min(k, flat.size) - int(prev.sum()))
    free = [i for i in np.argsort(flat, kind="stable") if not prev[i]]
    prev[free[:k_new]] = True
    return prev.reshape(score.shape)


@pytest.mark.parametrize("shape", [(17,), (4, 5), (2, 3, 2, 2)])
def test_select_lowest_matches_brute_force(shape):
    score = distinct_scores(shape, seed=len(shape))
    n = score.numel()
    for k in range(n + 3):
        got = select_lowest(score, k)
        assert got.shape == score.shape and got.dtype == torch.bool
        want = brute_lowest(score.numpy(), k)
        assert np.array_equal(got.numpy(), want), k
        assert int(got.sum()) == min(k, n)


def test_select_lowest_with_already_mask():
    score = distinct_scores((6, 5), seed=3)
    rng = np.random.default_rng(7)
    already = torch.from_numpy(rng.random((6, 5)) < 0.3)
    # make sure some already-selected entries are high-scored (not among the lowest)
    already.view(-1)[torch.argmax(score)] = True
    n_prev = int(already.sum())
    for k in range(score.numel() + 2):
        got = select_lowest(score, k, already.clone())
        want = brute_lowest(score.numpy(), k, already.numpy())
        assert np.array_equal(got.numpy(), want), k
        assert bool(got[already].all()), "already-selected entries stay selected"
        assert int(got.sum()) == max(n_prev, min(k, score.numel()))
    # the mask passed in is not modified
    assert int(already.sum()) == n_prev


def test_select_lowest_by_hand():
    score = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -0.5]])
    assert select_lowest(score, 2).tolist() == [[False, True, False], [False, False, True]]
    already = torch.tensor([[False, False, False], [False, True, False]])  # the 3.0
    # k=2 with one already: only the single lowest other entry (-1.0) is added
    assert select_lowest(score, 2, already).tolist() == [[False, True, False],
                                                         [False, True, False]]
    assert select_lowest(score, 3, already).tolist() == [[False, True, False],
                                                         [False, True, True]]


def test_select_lowest_non_finite_scores_still_reach_k():
    inf, nan = float("inf"), float("nan")
    # NaN and +inf scores of free entries come last but still count toward k_total
    score = torch.tensor([nan, 1.0, 0.5, 2.0])
    already = torch.tensor([False, False, True, True])
    assert select_lowest(score, 4, already).tolist() == [True, True, True, True]
    assert select_lowest(score, 3, already).tolist() == [False, True, True, True]
    score = torch.tensor([inf, 1.0, inf, -inf, nan])
    already = torch.tensor([False, True, False, False, False])
    got = select_lowest(score, 4, already)
    assert int(got.sum()) == 4 and bool(got[1]) and bool(got[3]) and not bool(got[4])
    assert select_lowest(score, 2).tolist() == [False, True, False, True, False]


def test_select_as_released_by_hand():
    # argsort([0.3, 0.1, 0.4, 0.2, 0.5, 0.0]) = [5, 1, 3, 0, 2, 4]; ratio 1/3 of 6 -> kth = 2;
    # position j is selected when argsort[j] <= 2: j = 1, 3, 4 (three entries, not the two
    # lowest-scored 5 and 1)
    score = torch.tensor([0.3, 0.1, 0.4, 0.2, 0.5, 0.0])
    got = select_as_released(score, 1 / 3)
    assert got.tolist() == [False, True, False, True, True, False]
    lowest = select_lowest(score, 2)
    assert lowest.tolist() == [False, True, False, False, False, True]
    # already-quantized entry 4 gets -1e38: argsort = [4, 5, 1, 3, 0, 2] -> j = 2, 4, 5
    already = torch.tensor([False, False, False, False, True, False])
    got = select_as_released(score, 1 / 3, already)
    assert got.tolist() == [False, False, True, False, True, True]
    # 2-D input: the same on the flattened view, returned in the input's shape
    got2 = select_as_released(score.reshape(2, 3), 1 / 3)
    assert got2.shape == (2, 3)
    assert got2.reshape(-1).tolist() == [False, True, False, True, True, False]


def test_select_as_released_matches_argsort_as_rank_rule():
    score = distinct_scores((40,), seed=11)
    already = torch.zeros(40, dtype=torch.bool)
    already[17] = True  # one entry only: several at -1e38 would tie (argsort is not stable)
    for ratio in (0.05, 0.2, 0.5):
        s = score.numpy().copy()
        s[already.numpy()] = -1e38
        order = np.argsort(s, kind="stable")
        kth = round(ratio * 40)
        want = already.numpy() | (order <= kth)
        assert np.array_equal(select_as_released(score, ratio, already).numpy(), want)


# -- fair score --------------------------------------------------------------------------------
def test_fair_saliency_by_hand():
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0])
    h_u = torch.tensor([2.0, 1.0, 4.0, 7.0])
    h_p = torch.tensor([1.0, 3.0, 2.0, 1.0])
    got = fair_saliency(delta, h_u, h_p, 0.5)
    # 0.5 * d^2 * (h_u - 0.5 h_p)
    assert got.tolist() == pytest.approx([0.75, -1.0, 0.375, 0.0])
    assert fair_saliency(delta, h_u, h_p, 0.0).tolist() == pytest.approx([1.0, 2.0, 0.5, 0.0])
    got2 = fair_saliency(delta.reshape(2, 2), h_u.reshape(2, 2), h_p.reshape(2, 2), 2.0)
    assert got2.reshape(-1).tolist() == pytest.approx([0.0, -10.0, 0.0, 0.0])


# -- scored tensors ----------------------------------------------------------------------------
class ConvBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv1d(1, 1, 1)  # any _ConvNd counts
        self.fc = nn.Linear(2 * 4 * 4, 3)
        self.ln = nn.LayerNorm(3)  # neither conv, linear nor BN: never scored

    def forward(self, x):
        z = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.ln(self.fc(z.flatten(1)))


def test_scored_parameters_scopes():
    model = ConvBNNet()
    all_ = scored_parameters(model, "all")
    cl = scored_parameters(model, "conv_linear")
    assert set(all_) == {"conv.weight", "bn.weight", "conv2.weight", "fc.weight"}
    assert set(cl) == {"conv.weight", "conv2.weight", "fc.weight"}
    named = dict(model.named_parameters())
    for name, p in all_.items():
        assert p is named[name]
    assert not any(n.endswith("bias") for n in all_)
    assert scored_parameters(model) == all_  # "all" is the default, as released
    # a bare module names its weight "weight"
    assert set(scored_parameters(nn.Linear(2, 2))) == {"weight"}
    with pytest.raises(ValueError, match="scope"):
        scored_parameters(model, "everything")  # type: ignore[arg-type]


# -- curvature: independent references ---------------------------------------------------------
def tiny_conv_net(seed: int = 0) -> nn.Module:
    """Conv + ReLU + max-pool + linear, no BN: every estimator applies."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 3))


def tiny_data(n: int = 10, size: int = 6, classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _functional(model: nn.Module):
    model = copy.deepcopy(model).double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def call(sub: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**params, **buffers, **sub}, (x,))

    return params, call


def reference_ggn(model, x, y, sizes, names):
    """Σ_n diag(J_nᵀ (diag p_n − p_n p_nᵀ) J_n) / B from explicit per-sample Jacobians."""
    params, call = _functional(model)
    total = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(len(x)):
        xi = x[i:i + 1].double()
        sub = {n: params[n] for n in names}
        jac = torch.func.jacrev(lambda s, xi=xi: call(s, xi)[0])(sub)
        p = torch.softmax(call({}, xi)[0], dim=0)
        hess = torch.diag(p) - torch.outer(p, p)
        for n in names:
            j = jac[n].reshape(p.numel(), -1)
            total[n] += torch.einsum("ki,kl,li->i", j, hess, j).reshape(params[n].shape)
    return {n: v / sizes[0] for n, v in total.items()}


def reference_hessian(model, x, y, sizes, names):
    """Diagonal of the exact Hessian of each batch's mean CE (torch.func.hessian per tensor),
    weighted by batch size / nominal size and summed."""
    params, call = _functional(model)
    total = {n: torch.zeros_like(params[n]) for n in names}
    start = 0
    for b in sizes:
        xb, yb = x[start:start + b].double(), y[start:start + b]
        start += b
        for n in names:
            def loss(w, n=n, xb=xb, yb=yb):
                return F.cross_entropy(call({n: w}, xb), yb)

            h = torch.func.hessian(loss)(params[n])
            k = params[n].numel()
            total[n] += torch.diagonal(h.reshape(k, k)).reshape(params[n].shape) * (b / sizes[0])
    return total


def reference_fisher(model, x, y, sizes, names):
    """Σ_n g_n² / B with g_n the gradient of sample n's own cross-entropy (a plain loop)."""
    model = copy.deepcopy(model).double().eval()
    named = dict(model.named_parameters())
    total = {n: torch.zeros_like(named[n]) for n in names}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1].double()), y[i:i + 1]).backward()
        for n in names:
            total[n] += named[n].grad.detach() ** 2
    return {n: v / sizes[0] for n, v in total.items()}


def assert_tensors_close(got: dict, want: dict, rtol: float = 1e-4) -> None:
    assert set(got) == set(want)
    for n, value in want.items():
        w = value.float()
        assert got[n].shape == w.shape, n
        scale = float(w.abs().max())
        assert scale > 0, f"degenerate reference for {n}"
        torch.testing.assert_close(got[n], w, rtol=rtol, atol=rtol * scale, msg=n)


def test_ggn_exact_linear_softmax_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
    sizes = [4, 4, 2]  # a partial final batch
    got = diagonal_curvature(model, make_batches(x, y, sizes), estimator="ggn_exact")
    assert set(got) == {"0.weight"}  # the bias is never scored
    with torch.no_grad():
        p = torch.softmax(model(x).double(), dim=1)  # N×C
    # GGN diagonal of W_ij for CE: Σ_n x_nj² · p_ni (1 − p_ni), batch-mean, summed over batches
    want = torch.einsum("ni,nj->ij", p * (1 - p), x.double() ** 2) / sizes[0]
    torch.testing.assert_close(got["0.weight"], want.float(), rtol=1e-5, atol=1e-7)
    # for a model linear in W the Hessian equals the GGN
    h = diagonal_curvature(model, make_batches(x, y, sizes), estimator="hessian_exact")
    torch.testing.assert_close(h["0.weight"], want.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sizes", [[10], [4, 4, 2]])
def test_ggn_exact_matches_jacobian_reference(sizes):
    model = tiny_conv_net()
    x, y = tiny_data()
    names = list(scored_parameters(model))
    got = diagonal_curvature(model, make_batches(x, y, sizes), estimator="ggn_exact")
    assert_tensors_close(got, reference_ggn(model, x, y, sizes, names))


def test_hessian_exact_matches_autograd_hessian():
    model = tiny_conv_net()
    x, y = tiny_data()
    sizes = [4, 4, 2]
    names = list(scored_parameters(model))
    got = diagonal_curvature(model, make_batches(x, y, sizes), estimator="hessian_exact")
    assert_tensors_close(got, reference_hessian(model, x, y, sizes, names))


def test_fisher_matches_per_sample_gradient_loop():
    model = tiny_conv_net()
    x, y = tiny_data()
    sizes = [4, 4, 2]
    names = list(scored_parameters(model))
    got = diagonal_curvature(model, make_batches(x, y, sizes), estimator="fisher")
    assert_tensors_close(got, reference_fisher(model, x, y, sizes, names))
    # the same samples in one batch of 10 are scaled by 1/10 instead of 1/4
    one = diagonal_curvature(model, make_batches(x, y, [10]), estimator="fisher")
    for n in names:
        torch.testing.assert_close(one[n] * 10, got[n] * 4, rtol=1e-4, atol=1e-9)


def test_ggn_mc_estimates_ggn_exact():
    model = tiny_conv_net()
    x, y = tiny_data()
    batches = make_batches(x, y, [5, 5])
    exact = diagonal_curvature(model, batches, estimator="ggn_exact")
    torch.manual_seed(0)
    mc = diagonal_curvature(model, batches, estimator="ggn_mc", mc_samples=3000)
    for n, e in exact.items():
        assert bool((mc[n] >= 0).all())
        # per-tensor totals within a few percent, elementwise within a loose band
        assert float(mc[n].sum()) == pytest.approx(float(e.sum()), rel=0.05), n
        torch.testing.assert_close(mc[n], e, rtol=0.25, atol=0.05 * float(e.abs().max()))
    # one sample is a noisy but non-negative estimate of the same thing
    torch.manual_seed(1)
    one = diagonal_curvature(model, batches, estimator="ggn_mc")
    assert all(bool((v >= 0).all()) and v.shape == exact[n].shape for n, v in one.items())


@pytest.mark.parametrize("estimator", ["ggn_exact", "ggn_mc", "hessian_exact", "fisher"])
def test_every_estimator_shapes_and_sign(estimator):
    model = tiny_conv_net(seed=2)
    x, y = tiny_data(seed=4)
    before = copy.deepcopy(model.state_dict())
    model.train()
    got = diagonal_curvature(model, make_batches(x, y, [6, 4]), estimator=estimator)
    scored = scored_parameters(model)
    assert list(got) == list(scored)
    for n, p in scored.items():
        assert got[n].shape == p.shape and got[n].dtype == torch.float32
        assert bool(torch.isfinite(got[n]).all()) and float(got[n].abs().sum()) > 0
        if estimator != "hessian_exact":
            assert bool((got[n] >= 0).all()), (estimator, n)
    # the model is not modified: weights, training flag, gradients, requires_grad
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_curvature_uses_eval_mode_batchnorm_and_scope():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    bn = model[1]
    with torch.no_grad():  # running statistics far from the batch statistics
        bn.running_mean.copy_(torch.tensor([0.7, -0.4]))
        bn.running_var.copy_(torch.tensor([2.5, 0.3]))
        bn.weight.copy_(torch.tensor([1.3, 0.6]))
    model.train()
    x, y = tiny_data(seed=6)
    sizes = [5, 5]
    got = diagonal_curvature(model, make_batches(x, y, sizes), estimator="ggn_exact")
    assert set(got) == {"0.weight", "1.weight", "5.weight"}
    assert_tensors_close(got, reference_ggn(model, x, y, sizes, list(got)))  # eval-mode ref
    assert model.training and bn.num_batches_tracked.item() == 0
    cl = diagonal_curvature(model, make_batches(x, y, sizes), estimator="ggn_exact",
                            scope="conv_linear")
    assert set(cl) == {"0.weight", "5.weight"}
    for n in cl:
        torch.testing.assert_close(cl[n], got[n])


def test_hessian_exact_with_batchnorm_is_a_clear_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    x, y = tiny_data(n=4)
    with pytest.raises(CurvatureError) as info:
        diagonal_curvature(model, make_batches(x, y, [4]), estimator="hessian_exact")
    msg = str(info.value)
    assert isinstance(info.value, FairbenchError)
    assert "BatchNorm2d" in msg and "hessian_exact" in msg and "\n" not in msg


@pytest.fixture
def backpack_engine(monkeypatch):
    """Every estimator through BackPACK (the fallback of the autograd engine)."""
    import fairbench.training.curvature as S

    monkeypatch.setattr(S, "ENGINES", {e: "backpack" for e in S.ESTIMATORS})


@pytest.mark.parametrize("estimator", ["ggn_exact", "ggn_mc", "hessian_exact"])
def test_unsupported_layer_is_named_in_full(estimator, backpack_engine):
    # BackPACK has no second-order rule for Softplus: the error names the whole class (a
    # name ending in s/l/a/c was once clipped) and suggests another estimator than the one
    # that failed; the first-order fisher works on the same model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Softplus(), nn.Flatten(), nn.Linear(32, 3))
    x, y = tiny_data(n=4)
    with pytest.raises(CurvatureError) as info:
        diagonal_curvature(model, make_batches(x, y, [4]), estimator=estimator)
    msg = str(info.value)
    assert "torch.nn.modules.activation.Softplus " in msg and "\n" not in msg
    hint = msg.split(";", 1)[1]
    assert "fisher" in hint
    if estimator != "hessian_exact":
        assert estimator not in hint, "the way out must not be the estimator that failed"
    got = diagonal_curvature(model, make_batches(x, y, [4]), estimator="fisher")
    assert set(got) == {"0.weight", "3.weight"}


def test_autograd_engine_needs_no_rule_per_activation():
    # the GGN is defined for any differentiable layer between the scored ones: the autograd
    # engine gets Softplus's Jacobian from autograd (BackPACK has no rule for it, above)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Softplus(), nn.Flatten(), nn.Linear(32, 3))
    x, y = tiny_data(n=6)
    names = list(scored_parameters(model))
    got = diagonal_curvature(model, make_batches(x, y, [4, 2]), estimator="ggn_exact")
    assert_tensors_close(got, reference_ggn(model, x, y, [4, 2], names))


def test_backpack_assertion_is_a_clear_error(backpack_engine):
    # timm's ResNet-10-T down-samples with AvgPool2d(count_include_pad=False), on which BackPACK
    # asserts during the second-order backward pass: a CurvatureError, not a bare
    # AssertionError; the first-order fisher works
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batches = make_batches(x, torch.tensor([1, 0]), [2])
    model = paper_backbone("timm:resnet10t")
    with pytest.raises(CurvatureError) as info:
        diagonal_curvature(model, batches, estimator="ggn_mc")
    msg = str(info.value)
    assert "AvgPool2d" in msg and "fisher" in msg and "\n" not in msg
    got = diagonal_curvature(model, batches, estimator="fisher")
    assert all(bool(torch.isfinite(v).all()) for v in got.values())


def test_autograd_engine_handles_what_backpack_rejects():
    # the same ResNet-10-T through the autograd engine: every estimator but the exact Hessian
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batches = make_batches(x, torch.tensor([1, 0]), [2])
    model = paper_backbone("timm:resnet10t")
    got = diagonal_curvature(model, batches, estimator="ggn_exact")
    assert list(got) == list(scored_parameters(model))
    assert all(bool(torch.isfinite(v).all()) and bool((v >= 0).all()) for v in got.values())


def test_curvature_bad_arguments():
    model = tiny_conv_net()
    with pytest.raises(FairbenchError, match="empty"):
        diagonal_curvature(model, [], estimator="fisher")
    x, y = tiny_data(n=2)
    with pytest.raises(ValueError, match="estimator"):
        diagonal_curvature(model, make_batches(x, y, [2]), estimator="kfac")  # type: ignore


# -- paper backbones at 32 px ------------------------------------------------------------------
_BACKBONES: dict[str, nn.Module] = {}


@pytest.fixture(scope="module", autouse=True)
def _free_backbones():
    yield
    _BACKBONES.clear()  # three VGG-11s hold ~0.3 GB


def paper_backbone(name: str) -> nn.Module:
    from fairbench import create_backbone

    if name not in _BACKBONES:
        torch.manual_seed(0)
        _BACKBONES[name] = create_backbone(name, num_classes=2, image_size=32)
    return _BACKBONES[name]


def check_backbone_curvature(name: str, estimator: str) -> None:
    model = paper_backbone(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1])
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2)
    torch.manual_seed(0)
    got = diagonal_curvature(model, make_batches(x, y, [2]), estimator=estimator)
    scored = scored_parameters(model)
    assert list(got) == list(scored) and len(got) >= 11
    for n, p in scored.items():
        assert got[n].shape == p.shape, n
        assert bool(torch.isfinite(got[n]).all()), n
        assert bool((got[n] >= 0).all()), n
    assert sum(float(v.sum()) for v in got.values()) > 0


# each case takes 0.5-4 s on one CPU thread (VGG-11 builds are the slow part), so all run by
# default; timm's VGG-11 is the registered ``timm_vgg11`` (timm:vgg11: the test below)
CASES = [("tv:vgg11", "ggn_mc"), ("tv:vgg11", "ggn_exact"), ("vgg11", "ggn_mc"),
         ("timm_vgg11", "ggn_mc"), ("timm_vgg11", "ggn_exact"),
         ("tv:resnet18", "ggn_mc"), ("tv:resnet18", "ggn_exact"), ("tv_resnet18", "ggn_mc"),
         ("timm:resnet18", "ggn_mc"), ("timm:resnet18", "ggn_exact"), ("resnet18", "ggn_mc")]


@pytest.mark.parametrize("name,estimator", CASES)
def test_paper_backbones_curvature(name, estimator):
    check_backbone_curvature(name, estimator)


def test_tv_vgg11_adaptive_pool_is_handled():
    model = paper_backbone("tv:vgg11")
    # the AdaptiveAvgPool2d(7), which would up-sample the 1×1 map of a 32-px input, is gone
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert all(m.output_size in (1, (1, 1)) for m in pools)
    names = list(scored_parameters(model))
    assert sum(n.startswith("body.0.") for n in names) == 8  # the 8 convolutions
    assert len(names) == 11  # plus 3 linear layers, no BN in VGG-11


def test_tv_vgg11_hessian_exact():
    # VGG-11 has no BatchNorm: the exact Hessian diagonal works (and may be negative)
    model = paper_backbone("tv:vgg11")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = diagonal_curvature(model, make_batches(x, torch.tensor([1, 0]), [2]),
                             estimator="hessian_exact")
    assert list(got) == list(scored_parameters(model))
    assert all(bool(torch.isfinite(v).all()) for v in got.values())


@pytest.mark.parametrize("name", ["timm:resnet18", "tv:resnet18"])
def test_resnet_hessian_exact_is_a_clear_error(name):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(CurvatureError, match="hessian_exact") as info:
        diagonal_curvature(paper_backbone(name), make_batches(x, torch.tensor([1, 0]), [2]),
                           estimator="hessian_exact")
    assert "\n" not in str(info.value)


def test_timm_vgg11_by_prefix_curvature(monkeypatch):
    """timm:vgg11 keeps timm's ConvMlp pre-logits (a 4096-d embedding after the 512-channel
    trunk: the head is sized from timm's head_hidden_size). The autograd engine handles it;
    BackPACK cannot trace its data-dependent branch, a clear CurvatureError naming the way out
    (the registered timm_vgg11 adapts the block)."""
    import fairbench.training.curvature as S
    from fairbench import create_backbone

    model = create_backbone("timm:vgg11", num_classes=3, image_size=32)
    assert model.classifier.in_features == 4096
    check_backbone_curvature("timm:vgg11", "ggn_mc")
    monkeypatch.setitem(S.ENGINES, "ggn_mc", "backpack")
    with pytest.raises(CurvatureError, match="cannot trace this backbone.*timm_vgg11"):
        check_backbone_curvature("timm:vgg11", "ggn_mc")


@pytest.mark.parametrize("estimator", ["ggn_mc", "ggn_exact"])
def test_many_batches_equal_the_sum_of_single_batches(estimator):
    """Curvature over many batches (freshly allocated inputs, as a loader gives them) is the
    sum of per-batch calls: nothing BackPACK keeps between batches leaks into the next one
    (a backward taken w.r.t. the input once left such a quantity behind and crashed)."""
    from fairbench import create_backbone

    torch.manual_seed(0)
    model = create_backbone("smallcnn", num_classes=3, image_size=32, width=4).eval()
    x, y = torch.randn(96, 3, 32, 32), torch.randint(0, 3, (96,))
    batches = make_batches(x, y, [8] * 12)

    def fresh():  # like a loader: each batch a new tensor, dropped after use
        for b in batches:
            yield Batch(x=b.x.clone(), y=b.y, g=None, index=b.index)

    torch.manual_seed(1)
    together = diagonal_curvature(model, fresh(), estimator=estimator)
    single = {}
    torch.manual_seed(1)
    for b in fresh():
        for k, v in diagonal_curvature(model, [b], estimator=estimator).items():
            single[k] = single.get(k, 0) + v
    for k in together:
        assert torch.allclose(together[k], single[k], rtol=1e-4, atol=1e-7), k


# -- the few-positions Conv2d path ------------------------------------------------------------
@pytest.mark.parametrize("v, positions", [(1, 1), (1, 2), (3, 4), (2, 9)])
def test_few_positions_conv_diagonal_equals_backpacks(v, positions):
    from backpack.utils.conv import extract_weight_diagonal

    from fairbench.training.curvature import conv_weight_diag_few_positions

    torch.manual_seed(positions)
    conv = torch.nn.Conv2d(3, 4, 2)
    n, k = 5, 3 * 2 * 2
    unfolded = torch.randn(n, k, positions, dtype=torch.float64)
    sqrt_ggn = torch.randn(v, n, 4, positions, 1, dtype=torch.float64)  # V × N × M × H × W
    ours = conv_weight_diag_few_positions(unfolded, sqrt_ggn, conv.weight.shape)
    ref = extract_weight_diagonal(conv, unfolded, sqrt_ggn, sum_batch=True)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("v, n, chunk_bytes", [
    (1, 6, 1 << 30),   # one block: the whole batch
    (3, 6, 2 * 8 * 12 * 4 * 3),  # blocks of 2 samples × all 3 columns
    (5, 4, 2 * 8 * 12 * 4),  # one sample is too big: blocks of 2 columns
    (2, 3, 1),  # the smallest blocks: one column of one sample
])
def test_chunked_conv_diagonal_equals_backpacks(v, n, chunk_bytes):
    from backpack.utils.conv import extract_weight_diagonal

    from fairbench.training.curvature import conv_weight_diag_chunked

    torch.manual_seed(v * 10 + n)
    conv = torch.nn.Conv2d(3, 8, 2)  # M = 8 output channels, K = 12
    unfolded = torch.randn(n, 12, 9)
    sqrt_ggn = torch.randn(v, n, 8, 3, 3)  # V × N × M × H × W, 9 positions
    ours = conv_weight_diag_chunked(unfolded, sqrt_ggn, conv.weight.shape, chunk_bytes)
    ref = extract_weight_diagonal(conv, unfolded, sqrt_ggn, sum_batch=True)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["ggn_exact", "ggn_mc"])
@pytest.mark.parametrize("name, size", [("resnet18", 32), ("smallcnn", 16)])
def test_fairbench_conv_paths_leave_the_curvature_unchanged(monkeypatch, backpack_engine,
                                                           estimator, name, size):
    """The few-positions and chunked weight diagonals (BackPACK engine) give BackPACK's own
    result on whole models (ResNet-18 at 32 px has convolutions with 1 to 256 positions)."""
    import fairbench.training.curvature as S
    from fairbench import create_backbone

    torch.manual_seed(0)
    model = create_backbone(name, num_classes=3, image_size=size).eval()
    batches = [Batch(x=torch.randn(4, 3, size, size), y=torch.randint(0, 3, (4,)), g=None,
                     index=torch.arange(4))]
    results = []
    # BackPACK's own extension for every layer; then fairbench's paths, with small blocks
    for few, chunks in ((0, {}), (S.FEW_POSITIONS, {"cpu": 64 << 10})):
        monkeypatch.setattr(S, "FEW_POSITIONS", few)
        monkeypatch.setattr(S, "CHUNK_BYTES", chunks)
        torch.manual_seed(1)  # the same MC labels
        results.append(S.diagonal_curvature(model, batches, estimator=estimator))
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], rtol=1e-4, atol=1e-9), key


# -- micro-batches when the memory runs out --------------------------------------------------------
def _oom_above(monkeypatch, limit: int, error: BaseException) -> list[int]:
    """Make every backward pass on more than ``limit`` samples fail as the allocator would;
    returns the sizes of the passes tried."""
    import fairbench.training.curvature as S

    tried: list[int] = []
    real = S._backpack_step

    def step(model, loss_fn, ext, x, y):
        tried.append(int(x.shape[0]))
        if x.shape[0] > limit:
            real(model, loss_fn, ext, x, y)  # a pass whose results must be dropped
            raise error
        real(model, loss_fn, ext, x, y)

    monkeypatch.setattr(S, "_backpack_step", step)
    return tried


@pytest.mark.parametrize("estimator", ["ggn_exact", "fisher", "hessian_exact"])
@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
                                   RuntimeError("DefaultCPUAllocator: not enough memory")])
def test_out_of_memory_goes_on_in_micro_batches_with_the_same_result(monkeypatch, estimator,
                                                                     error):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.randn(23, 3, 8, 8), torch.randint(0, 5, (23,))
    batches = make_batches(x, y, [8, 8, 7])
    whole = diagonal_curvature(model, batches, estimator=estimator)
    tried = _oom_above(monkeypatch, 3, error)
    split = diagonal_curvature(model, batches, estimator=estimator)
    # 8 fails, 4 fails, then 2 per pass for the rest (the smaller size is kept)
    assert tried[:3] == [8, 4, 2] and max(tried[3:]) == 2 and sum(t for t in tried if t <= 3) == 23
    for k in whole:
        assert torch.allclose(whole[k], split[k], rtol=1e-5, atol=1e-8), k


def test_out_of_memory_for_one_sample_is_a_clear_error(monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))
    _oom_above(monkeypatch, 0, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(CurvatureError, match="single sample; use ggn_mc"):
        diagonal_curvature(model, make_batches(x, y, [4]), estimator="ggn_exact")


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))
    tried = _oom_above(monkeypatch, 0, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        diagonal_curvature(model, make_batches(x, y, [4]), estimator="ggn_exact")
    assert tried == [4]


def test_the_size_that_fitted_is_kept_for_the_next_call(monkeypatch):
    from fairbench.training.curvature import PassSize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    tried = _oom_above(monkeypatch, 5, torch.OutOfMemoryError("CUDA out of memory"))
    size = PassSize()
    first = diagonal_curvature(model, make_batches(x, y, [8, 8]), pass_size=size)
    assert size.samples == 4 and tried[:2] == [8, 4]
    tried.clear()
    second = diagonal_curvature(model, make_batches(x, y, [8, 8]), pass_size=size)
    assert tried == [4, 4, 4, 4]  # no failed attempt at 8 this time
    for k in first:
        assert torch.allclose(first[k], second[k])


# -- the autograd engine -------------------------------------------------------------------------
def tiny_net_114(seed: int = 0) -> nn.Module:
    """A tiny conv net with 114 classes (Fitzpatrick-17k's count)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 114))


def sampled_labels(model: nn.Module, x: torch.Tensor, sizes: list[int], seed: int
                   ) -> torch.Tensor:
    """The labels ggn_mc draws after ``torch.manual_seed(seed)``: one per sample from the
    softmax, batch by batch, as BackPACK's DiagGGNMC draws them."""
    from torch.distributions import Categorical

    torch.manual_seed(seed)
    out, start = [], 0
    with torch.no_grad():
        for b in sizes:
            p = torch.softmax(model.eval()(x[start:start + b]), dim=1)
            out.append(Categorical(probs=p).sample(torch.Size([1]))[0])
            start += b
    return torch.cat(out)


@pytest.mark.parametrize("estimator", ["ggn_exact", "ggn_mc", "fisher", "hessian_exact"])
def test_every_estimator_at_114_classes_matches_autograd(estimator):
    model = tiny_net_114()
    x, y = tiny_data(n=10, classes=114, seed=7)
    sizes = [4, 4, 2]
    names = list(scored_parameters(model))
    torch.manual_seed(3)
    got = diagonal_curvature(model, make_batches(x, y, sizes), estimator=estimator)
    if estimator == "ggn_exact":
        want = reference_ggn(model, x, y, sizes, names)
    elif estimator == "ggn_mc":  # squared per-sample gradients at the labels it drew
        want = reference_fisher(model, x, sampled_labels(model, x, sizes, 3), sizes, names)
    elif estimator == "fisher":
        want = reference_fisher(model, x, y, sizes, names)
    else:
        want = reference_hessian(model, x, y, sizes, names)
    assert_tensors_close(got, want)


def test_softmax_hessian_factor_has_c_minus_one_columns():
    from fairbench.training.persample import softmax_hessian_factor

    for c in (2, 3, 8, 114):
        logits = torch.randn(6, c, generator=torch.Generator().manual_seed(c)) * 3
        logits[0, 1] = 40.0  # a confident sample: p ≈ e_1
        p = torch.softmax(logits.double(), dim=1)
        s = softmax_hessian_factor(p)
        assert s.shape == (c - 1, 6, c)
        h = torch.einsum("vnc,vnd->ncd", s, s)
        want = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        torch.testing.assert_close(h, want, rtol=0, atol=1e-12)


class MixedNet(nn.Module):
    """Every layer kind the autograd engine scores, with in-place operations on captured
    tensors: a grouped Conv2d, BatchNorm2d (running statistics), a residual ``+=`` on a
    BatchNorm output and in-place ReLUs, a Conv1d, a Linear over a sequence, BatchNorm1d."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv1d = nn.Conv1d(6, 4, 3, stride=2)
        self.seq = nn.Linear(4, 5)
        self.bn1d = nn.BatchNorm1d(35)
        self.head = nn.Linear(35, classes)
        g = torch.Generator().manual_seed(11)
        for bn in (self.bn, self.bn2, self.bn1d):
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.bn(self.conv(x)), inplace=True)
        r = self.bn2(self.conv2(z))
        r += z
        r = F.relu(r, inplace=True)
        s = self.conv1d(r.flatten(2))  # N × 4 × 7
        s = self.seq(s.transpose(1, 2))  # N × 7 × 5
        return self.head(self.bn1d(s.flatten(1)))


@pytest.mark.parametrize("blocks", ["default", "tiny", "budget"])
@pytest.mark.parametrize("gemm", ["onednn", "torch"])
@pytest.mark.parametrize("mode", ["auto", "direct", "pairs", "grouped"])
def test_autograd_engine_every_product_form_on_every_layer_kind(monkeypatch, mode, gemm,
                                                                 blocks):
    """Every product form, with the products' GEMMs through oneDNN (where this torch has it)
    and through torch's own ``@``/``bmm``, against the Jacobian and per-sample references;
    ``tiny`` blocks reduce every column on its own and split each product into one-row
    blocks (and the pairs form's inputs into one-sample blocks); ``budget``: no per-layer
    bound, every layer reduced after each column by the bound over all layers."""
    import fairbench.training.persample as P

    if blocks == "tiny":
        monkeypatch.setattr(P, "CHUNK_BYTES", {"cpu": 1, "cuda": 1})
        monkeypatch.setattr(P, "PRODUCT_BYTES", {"cpu": 1, "cuda": 1})
    if blocks == "budget":
        monkeypatch.setattr(P, "CHUNK_BYTES", {"cpu": 1 << 40, "cuda": 1 << 40})
        monkeypatch.setattr(P, "PENDING_BYTES", {"cpu": 1, "cuda": 1})
    if gemm == "torch":
        monkeypatch.setattr(P, "_onednn_matmul", lambda: None)
    elif P._onednn_matmul() is None:
        pytest.skip("this torch build has no oneDNN GEMM")
    if mode != "auto":
        monkeypatch.setattr(P, "product_mode", lambda kind, *a, **k: (
            "direct" if mode == "grouped" and kind != "conv" else mode))
    torch.manual_seed(0)
    model = MixedNet(classes=5)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(5, 4, 4, 4, generator=g), torch.randint(0, 5, (5,), generator=g)
    sizes = [3, 2]
    names = list(scored_parameters(model))
    assert len(names) == 8
    got = diagonal_curvature(model, make_batches(x, y, sizes), estimator="ggn_exact")
    assert_tensors_close(got, reference_ggn(model, x, y, sizes, names))
    fisher = diagonal_curvature(model, make_batches(x, y, sizes), estimator="fisher")
    assert_tensors_close(fisher, reference_fisher(model, x, y, sizes, names))


def test_onednn_gemms_equal_torch_ones():
    """``matmul`` of the engine (oneDNN on the CPU where available) equals torch's to float
    rounding, also for transposed (non-contiguous) operands and row slices, and falls back to
    torch's for other dtypes."""
    import fairbench.training.persample as P

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(40, 70, generator=g), torch.randn(70, 30, generator=g)
    torch.testing.assert_close(P.matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(P.matmul(a, b.t().contiguous().t()), a @ b, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(P.matmul(a[7:31], b), a[7:31] @ b, rtol=1e-5, atol=1e-5)
    assert torch.equal(P.matmul(a.double(), b.double()), a.double() @ b.double())


@pytest.mark.parametrize("estimator", ["ggn_exact", "ggn_mc", "fisher"])
@pytest.mark.parametrize("name", ["resnet18", "tv_resnet18",
                                  pytest.param("vgg11", marks=pytest.mark.slow)])
def test_autograd_engine_equals_backpack_on_paper_backbones(monkeypatch, name, estimator):
    """The autograd engine and BackPACK give the same curvature on the paper backbones at
    32 px: residual additions, in-place ReLUs, convolutions with 1 to 256 positions (every
    product form), BatchNorm, Linear. ggn_mc draws the same labels from the same random state
    for one batch (BackPACK then leaves the generator elsewhere, so the next batch's differ)."""
    import fairbench.training.curvature as S
    from fairbench import create_backbone

    torch.manual_seed(0)
    model = create_backbone(name, num_classes=5, image_size=32).eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5, 3, 32, 32, generator=g), torch.randint(0, 5, (5,), generator=g)
    batches = make_batches(x, y, [5] if estimator == "ggn_mc" else [3, 2])
    results = []
    for engine in ("backpack", "autograd"):
        monkeypatch.setitem(S.ENGINES, estimator, engine)
        torch.manual_seed(1)
        results.append(S.diagonal_curvature(model, batches, estimator=estimator))
    assert results[0].keys() == results[1].keys()
    for key, want in results[0].items():
        scale = float(want.abs().max())
        torch.testing.assert_close(results[1][key], want, rtol=1e-4, atol=1e-5 * scale,
                                   msg=key)


class SharedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


class WeightOutsideForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(F.linear(x, self.lin.weight)))


class TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)
        self.head.weight = self.lin.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lin(x)))


@pytest.mark.parametrize("model, reason", [(SharedLayer(), "called more than once"),
                                           (WeightOutsideForward(), "outside its module"),
                                           (TiedHead(), "share one weight")])
def test_autograd_engine_refuses_what_it_cannot_compute(model, reason):
    """A layer called twice or two layers with one weight (their per-sample products add up
    before squaring), a weight used without its module's forward: the engine says so
    (diagonal_curvature then uses BackPACK) rather than returning a wrong sum."""
    from fairbench.training.persample import SquaredProducts, Unsupported, columns_for

    work = copy.deepcopy(model).eval()
    targets = scored_parameters(work)
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(Unsupported, match=reason):
        SquaredProducts(work, targets).step(x, columns_for("fisher", y, 1))


def test_unsupported_layer_type_falls_back_to_backpack():
    # a scored ConvTranspose2d: no per-sample form here, BackPACK's result (checked against
    # the Jacobian reference)
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 2, 2, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 12 * 12, 3))
    x, y = tiny_data(n=5)
    names = list(scored_parameters(model))
    got = diagonal_curvature(model, make_batches(x, y, [3, 2]), estimator="ggn_exact")
    assert_tensors_close(got, reference_ggn(model, x, y, [3, 2], names))


_FAULTS_SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
import fairbench.training.persample as P
from fairbench import create_backbone
from fairbench.training.curvature import scored_parameters
if sys.argv[1] == "off":
    P.retain_heap = lambda: False
torch.manual_seed(0)
model = create_backbone("smallcnn", num_classes=5, image_size=32).eval()
targets = scored_parameters(model, "all")
for p in model.parameters():
    p.requires_grad_(any(p is q for q in targets.values()))
engine = P.SquaredProducts(model, targets)
x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 5, (32,))
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    engine.step(x, P.columns_for("ggn_exact", y, 1))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc only")
def test_engine_passes_do_not_fault_the_heap_back_in():
    """With :func:`retain_heap` the engine's passes reuse the C heap: after two warm-up
    passes a pass of 32 images at 32 px takes almost no page faults (without it, glibc hands
    the freed top of the heap back after every column: about 10,000 faults per pass here)."""
    import subprocess
    import sys

    import fairbench.training.persample as P

    if not P.retain_heap():
        pytest.skip("not glibc")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}

    def faults(setting: str) -> int:
        return int(subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, setting],
                                  capture_output=True, text=True, check=True, env=env).stdout)

    kept, control = faults("on"), faults("off")
    assert kept < 300, (kept, control)
    assert kept <= control
