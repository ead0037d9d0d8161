"""``fairbench.training.multiexit``: the weighted multi-exit loss against the sum of per-exit
losses, and the combined per-exit curvature against an independent autograd computation of
each exit's GGN diagonal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fairbench import Batch, create_backbone
from fairbench.models.multiexit import (
    MultiExit,
    multi_exit_loss,
    resolve_exit_spec,
)
from fairbench.run.multiexit import MultiExitParams
from fairbench.training.multiexit import exit_loss, multi_exit_curvature, per_exit_curvature


def tiny_model(seed: int = 0, weights=(0.5, 1.0, 0.0, 2.0, 1.5), width: int = 2) -> MultiExit:
    torch.manual_seed(seed)
    backbone = create_backbone("smallcnn", num_classes=3, image_size=16, width=width)
    spec = resolve_exit_spec("smallcnn", MultiExitParams(exit_weights=tuple(weights)))
    return MultiExit(backbone, spec, image_size=16, num_classes=3, tau=0.9, policy="A")


# -- loss ------------------------------------------------------------------------------------------
def ggn_diag_autograd(model: MultiExit, k: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact GGN diagonal of the batch-mean CE of exit ``k`` from per-(sample, class) Jacobian
    rows: (1/B) Σ_n Σ_{c,c'} J_nc H_n,cc' J_nc' with H_n = diag(p_n) − p_n p_nᵀ."""
    params = {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    names = list(params)
    out = model.exits(x)[k]
    probs = torch.softmax(out.detach(), dim=1)
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    b, c = out.shape
    for i in range(b):
        rows = [torch.autograd.grad(out[i, j], list(params.values()), retain_graph=True,
                                    allow_unused=True) for j in range(c)]
        h = torch.diag(probs[i]) - torch.outer(probs[i], probs[i])
        for t, n in enumerate(names):
            if rows[0][t] is None:
                continue  # exit k does not reach this parameter
            jac = torch.stack([r[t] for r in rows])  # C × shape
            acc[n] += torch.einsum("c...,cd,d...->...", jac, h, jac) / b
    return acc


def test_weighted_loss_is_the_sum_of_per_exit_losses():
    model = tiny_model(width=4).train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    torch.manual_seed(1)
    exits = model.exits(x)
    total = multi_exit_loss(exits, y, model.exit_weights)
    separate = [F.cross_entropy(e, y) for e in exits]
    expected = sum(w * s for w, s in zip(model.exit_weights, separate))
    assert torch.allclose(total, expected)
    assert torch.allclose(multi_exit_loss(exits, y, (1.0,) * 5), sum(separate))
    # the trainer's hook reads the model's weights and gives the same value
    batch = Batch(x=x, y=y, g=None, index=torch.arange(8))
    model.eval()  # BatchNorm: the same statistics for both evaluations
    with torch.no_grad():
        assert torch.allclose(exit_loss(model, batch, None),
                              multi_exit_loss(model.exits(x), y, model.exit_weights))
    with pytest.raises(ValueError, match="weights"):
        multi_exit_loss(exits, y, (1.0, 1.0))


def test_combined_curvature_is_the_weighted_sum_of_per_exit_curvatures():
    model = tiny_model(weights=(0.5, 1.0, 0.0, 2.0, 1.5)).eval()
    torch.manual_seed(3)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))
    batches = [Batch(x=x, y=y, g=None, index=torch.arange(4))]
    combined = multi_exit_curvature(model, batches, estimator="ggn_exact", scope="conv_linear")
    per_exit = per_exit_curvature(model, batches, estimator="ggn_exact", scope="conv_linear")
    assert per_exit[2] == {}  # weight 0: skipped
    assert set(per_exit[0]) == {n for n in combined
                                if n.startswith("heads.0.") or n in ("backbone.body.0.weight",)}
    expected = {n: torch.zeros_like(v) for n, v in combined.items()}
    for k, w in enumerate(model.exit_weights):
        if w == 0:
            continue
        brute = ggn_diag_autograd(model, k, x)
        for n, v in per_exit[k].items():  # BackPACK per exit = autograd per exit
            torch.testing.assert_close(v, brute[n], rtol=1e-4, atol=1e-7)
        for n in expected:
            expected[n] += w * brute[n]
    assert any(n.startswith("heads.") for n in combined)  # heads are scored too
    assert "backbone.classifier.weight" in combined
    for n, v in combined.items():
        torch.testing.assert_close(v, expected[n], rtol=1e-4, atol=1e-7)
    # the unused head (weight 0) gets no curvature, and the model is unchanged (a copy is used)
    assert all(float(v.abs().sum()) == 0 for n, v in combined.items() if n.startswith("heads.2."))
    assert not any(hasattr(p, "diag_ggn_exact") for p in model.parameters())
