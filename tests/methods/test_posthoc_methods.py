"""FairQuantize and FairPrune: the quantizer, the schedule, the selection of weights, and tiny
end-to-end runs through the CLI whose saved weights are checked independently (exact powers of
two, exact zeros) plus the bad-input contract (one line, exit 2, no traceback)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fairbench.methods.fairquantize import pow2_quantize, schedule

from fairbench.cli.main import main
from fairbench.run.pruning import prune_masks

TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=200", "--data-param", "n_classes=2",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "-q"]
FAST_CURVATURE = ["-p", "estimator=fisher", "-p", "score_samples=16",
                  "-p", "score_batch_size=8"]


def is_pow2_or_zero(t: torch.Tensor) -> torch.Tensor:
    """Independent check: |x| == 2**k for an integer k (frexp mantissa exactly 0.5), or x == 0."""
    mantissa, _ = torch.frexp(t)
    return (t == 0) | (mantissa.abs() == 0.5)


# -- quantizer and schedule ------------------------------------------------------------------------
def test_pow2_quantize_log_domain_rounding() -> None:
    w = torch.tensor([3.0, 0.7, -0.3, 0.0, 1.0, -5.0, 2.9, 1e-6])
    q = pow2_quantize(w)
    # log2: 1.585 -> 2, -0.515 -> -1, log2 0.3 = -1.74 -> -2, 0, log2 5 = 2.32 -> 2, 1.54 -> 2
    expected = torch.tensor([4.0, 0.5, -0.25, 0.0, 1.0, -4.0, 4.0, 2.0 ** -20])
    assert torch.equal(q, expected)
    assert bool(is_pow2_or_zero(q).all())


def test_pow2_quantize_random_tensor_is_pow2_and_keeps_sign() -> None:
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    q = pow2_quantize(w)
    assert bool(is_pow2_or_zero(q).all())
    assert torch.equal(torch.sign(q), torch.sign(w))
    ratio = (q.abs() / w.abs()).numpy()
    assert ratio.min() >= 2 ** -0.5 - 1e-6 and ratio.max() <= 2 ** 0.5 + 1e-6


def test_pow2_quantize_bits_limit_the_exponents() -> None:
    w = torch.tensor([1.0, 0.5, 0.25, 0.125, 0.01])
    q = pow2_quantize(w, bits=3)  # 2**(3-1)-1 = 3 exponents: 0, -1, -2; smaller ones -> 0
    assert torch.equal(q, torch.tensor([1.0, 0.5, 0.25, 0.0, 0.0]))


def test_schedule_steps_up_to_the_target() -> None:
    assert schedule(0.2, 0.05) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert schedule(0.2, 0.15) == pytest.approx([0.15, 0.2])
    assert schedule(0.1, 0.1) == pytest.approx([0.1])


# -- pruning masks -------------------------------------------------------------------------------------
def test_prune_masks_per_layer_is_the_brute_force_lowest_k() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = {"a": torch.randn(7, 5, generator=gen), "b": torch.randn(40, generator=gen)}
    masks = prune_masks(scores, 0.23, ranking="per_layer")
    for name, s in scores.items():
        k = math.ceil(0.23 * s.numel())
        flat = s.reshape(-1).numpy()
        lowest = set(np.argsort(flat)[:k].tolist())
        assert set(np.flatnonzero(masks[name].reshape(-1).numpy()).tolist()) == lowest


def test_prune_masks_global_and_already_pruned() -> None:
    scores = {"a": torch.tensor([5.0, 1.0, 9.0, 2.0]), "b": torch.tensor([0.5, 8.0, 3.0, 7.0])}
    masks = prune_masks(scores, 0.375, ranking="global")  # ceil(0.375 * 8) = 3 lowest: .5, 1, 2
    assert masks["a"].tolist() == [False, True, False, True]
    assert masks["b"].tolist() == [True, False, False, False]
    already = {"a": torch.tensor([False, False, True, False]),
               "b": torch.zeros(4, dtype=torch.bool)}
    masks = prune_masks(scores, 0.375, ranking="global", already=already)
    # the already-pruned 9.0 counts toward the 3 and stays; then the two lowest others: .5, 1
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [True, False, False, False]


# -- end to end ----------------------------------------------------------------------------------------
def _run(tmp_path: Path, cache: Path, method: str, *extra: str) -> tuple[int, str, Path]:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        main, ["run", "--method", method, *TINY, "--runs-dir", str(runs), "--cache-dir",
               str(cache), *extra], catch_exceptions=False)
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    found = list((runs / "synthderm" / method).glob("*/metrics.json"))
    return result.exit_code, out, (found[0].parent if found else runs)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "weights.pt", weights_only=True)


def _conv_linear_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith("weight") and v.dim() in (2, 4)}


def test_fairquantize_end_to_end_weights_are_quantized(tmp_path: Path, tiny_cache: Path) -> None:
    code, out, run_dir = _run(
        tmp_path, tiny_cache, "fairquantize", *FAST_CURVATURE, "-p", "target_ratio=0.3",
        "-p", "step=0.15", "-p", "retrain_epochs=1", "--save-weights")
    assert code == 0, out
    steps = (run_dir / "steps.csv").read_text().splitlines()
    assert len(steps) >= 3  # header + two steps
    tensors = _conv_linear_weights(_weights(run_dir))
    assert tensors
    for name, w in tensors.items():
        # after retraining, only the frozen quantized entries are exact powers of two
        assert int(is_pow2_or_zero(w).sum()) >= math.ceil(0.3 * w.numel() - 1e-9), name
    import json
    meta = json.loads((run_dir / "metrics.json").read_text())["meta"]
    assert meta["privileged"] in ("light", "dark")


def test_fairprune_end_to_end_pruned_weights_are_zero(tmp_path: Path, tiny_cache: Path) -> None:
    code, out, run_dir = _run(
        tmp_path, tiny_cache, "fairprune", *FAST_CURVATURE, "-p", "ratio=0.1",
        "-p", "finetune_epochs=1", "--save-weights")
    assert code == 0, out
    rows = (run_dir / "prune.csv").read_text().splitlines()
    assert len(rows) >= 2
    for name, w in _conv_linear_weights(_weights(run_dir)).items():
        zeros = int((w == 0).sum())
        assert zeros >= math.ceil(0.1 * w.numel()), name  # masks survive fine-tuning


@pytest.mark.parametrize("method,params,needle", [
    ("fairquantize", ["beta=-1"], "beta"),
    ("fairquantize", ["target_ratio=1.5"], "target_ratio"),
    ("fairquantize", ["target_ratio=0"], "target_ratio"),
    ("fairquantize", ["target_ratio=0.1", "step=0.2"], "step"),
    ("fairquantize", ["estimator=bogus"], "estimator"),
    ("fairprune", ["beta=-0.5"], "beta"),
    ("fairprune", ["ratio=1.5"], "ratio"),
    ("fairprune", ["mode=iterative", "step=0.6", "max_ratio=0.5"], "step"),
    ("fairprune", ["ratio_grid=0.1,2"], "ratio_grid"),
])
def test_bad_parameters_exit_2_with_one_line(tmp_path: Path, tiny_cache: Path, method: str,
                                             params: list[str], needle: str) -> None:
    extra = [x for p in params for x in ("-p", p)]
    code, out, runs = _run(tmp_path, tiny_cache, method, *extra)
    assert code == 2, out
    assert "Traceback" not in out and needle in out
    assert not (runs / "_vanilla").exists()  # failed before any training


def test_backbone_backpack_cannot_handle_exits_2(tmp_path: Path, tiny_cache: Path) -> None:
    # smallcnn has BatchNorm, which BackPACK's DiagHessian does not support
    code, out, _ = _run(tmp_path, tiny_cache, "fairquantize", "-p", "estimator=hessian_exact")
    assert code == 2, out
    assert "Traceback" not in out and "hessian" in out.lower()


# -- the BatchNorm control -------------------------------------------------------------------------
def test_bn_recalibrate_changes_only_running_statistics(tmp_path: Path, make_tiny_config) -> None:
    """The control ``bn_recalibrate`` is the vanilla model with its BatchNorm running mean and
    variance re-estimated: every parameter is bit-identical to the vanilla model's, the
    statistics differ and equal an exact average over the unaugmented training split."""
    from fairbench import check_method, run_experiment

    van = run_experiment(make_tiny_config("vanilla", tmp_path), keep_model=True)
    res = run_experiment(make_tiny_config("bn_recalibrate", tmp_path), keep_model=True)
    before = dict(van.model.named_parameters())
    after = dict(res.model.named_parameters())
    assert before.keys() == after.keys()
    for n, p in after.items():
        assert torch.equal(p, before[n]), n
    bns = [(n, m) for n, m in res.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    van_mods = dict(van.model.named_modules())
    assert any(not torch.equal(m.running_mean, van_mods[n].running_mean) for n, m in bns)
    # independent check of the first layer: the per-channel mean of its input over the split
    ctx = res.context
    _, first = bns[0]
    seen = []
    handle = first.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    res.model.eval()
    with torch.no_grad():
        for batch in ctx.loader("train", sampler="sequential", augment=False, drop_last=False):
            res.model(batch.x)
    handle.remove()
    x = torch.cat(seen)
    assert torch.allclose(first.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert res.context.notes["bn_recalibrate"]["layers"] == len(bns)
    check_method("bn_recalibrate", tmp_path / "check")
