"""``apple``: the perturbation bound, the signs of the generator's objectives, the per-epoch
log and the choice it supports, and the mechanism itself: on a tiny setting where the group is
linearly visible in a small part of the latent, APPLE's bounded perturbation hides it from a
fresh linear probe (balanced accuracy falls clearly below the base model's), while the former
unbounded FAAP game swamps the latent for no better result."""

from __future__ import annotations

import csv
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairbench.methods.apple import (
    Apple,
    AppleParams,
    adversarial_term,
    adversary_terms,
    bound_offset,
)
from torch import nn

from fairbench import run_experiment
from fairbench.core.params import build_params
from fairbench.testing import tiny_run_config
from fairbench.training.trainer import EpochLog


# -- pieces ----------------------------------------------------------------------------------------
def test_bound_offset_caps_each_sample_relative_to_its_latent() -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(6, 4, 3, 3, generator=gen) * torch.arange(1, 7).view(6, 1, 1, 1)
    delta = torch.randn(6, 4, 3, 3, generator=gen)
    delta[0] *= 1e-4  # already within the bound: unchanged
    out = bound_offset(delta, f, 0.1)
    n_out = out.flatten(1).norm(dim=1)
    n_f = f.flatten(1).norm(dim=1)
    assert bool((n_out <= 0.1 * n_f + 1e-6).all())
    assert torch.equal(out[0], delta[0])
    big = delta.flatten(1).norm(dim=1) > 0.1 * n_f
    assert torch.allclose(n_out[big], 0.1 * n_f[big], rtol=1e-5)
    # the direction is kept
    cos = F.cosine_similarity(out.flatten(1), delta.flatten(1), dim=1)
    assert torch.allclose(cos, torch.ones(6), atol=1e-5)
    assert torch.equal(bound_offset(delta, f, 0.0), delta)  # 0 = no bound
    # a zero perturbation (G's start) has a finite gradient
    z = torch.zeros(2, 5, requires_grad=True)
    bound_offset(z * 2.0, torch.ones(2, 5), 0.1).sum().backward()
    assert bool(torch.isfinite(z.grad).all())


def test_generator_objectives_have_the_documented_signs() -> None:
    """``faap``: −α·CE(D, a) − β·H(D), so G gains when D is wrong, even confidently wrong
    (the flip); ``confusion``: α·CE(D, uniform) ≥ α·log|A|, smallest exactly at a uniform D,
    and larger for a confidently wrong D than for an uncertain one."""
    g = torch.tensor([0, 1, 1, 0])
    right = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [-4.0, 4.0], [4.0, -4.0]])
    flipped = -right
    uniform = torch.zeros(4, 2)
    faap = build_params(AppleParams, {"objective": "faap", "alpha": 0.4, "beta": 0.1})
    conf = build_params(AppleParams, {"objective": "confusion", "alpha": 0.4})
    for logits in (right, flipped, uniform):
        ce = F.cross_entropy(logits, g)
        p = logits.softmax(1)
        entropy = -(p * p.log()).sum(1).mean()
        assert float(adversarial_term(logits, g, faap)) == pytest.approx(
            float(-0.4 * ce - 0.1 * entropy), rel=1e-5, abs=1e-7)
        assert float(adversarial_term(logits, g, conf)) == pytest.approx(
            float(-0.4 * logits.log_softmax(1).mean(1).mean()), rel=1e-6)
    # the FAAP term rewards the flip more than the uncertain output: the collapse it allows
    assert float(adversarial_term(flipped, g, faap)) < float(adversarial_term(uniform, g, faap))
    # the confusion term does not: the uniform output is its minimum
    assert float(adversarial_term(uniform, g, conf)) == pytest.approx(0.4 * math.log(2))
    assert float(adversarial_term(flipped, g, conf)) > float(adversarial_term(uniform, g, conf))
    # rows of unknown group never enter the discriminator's cross-entropy
    ce, _ = adversary_terms(right, torch.tensor([0, 1, -1, -1]))
    assert float(ce) == pytest.approx(float(F.cross_entropy(right[:2], g[:2])))


# -- the mechanism on a tiny controlled latent ----------------------------------------------------------
class MarkerBase(nn.Module):
    """A fixed 'trained' model whose latent is 32 features of the image's noise (a frozen
    random projection, scaled up) plus one feature carrying the group: the marker pixel, a
    noisy group signal that a linear probe reads well, and about 5 % of the latent's norm."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(48, 32)
        self.classifier = nn.Linear(33, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        marker = x[:, 0, 0, 0:1]
        rest = x.clone()
        rest[:, :, 0, 0] = 0.0
        noise = self.proj(F.adaptive_avg_pool2d(rest, 4).flatten(1)) * 10.0
        return torch.cat([noise, 0.3 * marker], dim=1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def marker_ctx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("apple_ctx")
    result = run_experiment(tiny_run_config("vanilla", root, cache_dir=root / "_cache",
                                            data={"n_samples": 600}), keep_model=True)
    ctx = result.context
    ctx.trainer.log = EpochLog(None)
    ctx.run_dir = root / "after"
    ctx.run_dir.mkdir()
    data = ctx.bundle.data
    saved = data.images.clone()
    codes = data.attrs[ctx.attribute]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, data.images.shape, generator=gen, dtype=torch.int64)
    # the marker: group 0 draws from 0..127, group 1 from 100..227 (overlapping)
    marker = torch.randint(0, 128, (len(codes),), generator=gen) + 100 * (codes == 1).long()
    images[:, 0, 0, 0] = marker
    data.images.copy_(images.to(torch.uint8))
    base = MarkerBase(ctx.n_classes)
    old = ctx._vanilla, ctx._vanilla_meta
    ctx._vanilla, ctx._vanilla_meta = base, {"val": {}}
    yield ctx
    ctx._vanilla, ctx._vanilla_meta = old
    data.images.copy_(saved)


def run_apple(ctx: Any, params: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """APPLE on the marker latent, keeping the last epoch's perturber; the labels are noise
    here, so the task term is weighted down (its gradient would only fit noise)."""
    p = build_params(AppleParams, {"epochs": 20, "lr": 0.01, "select_metric": "last",
                                   "task_weight": 0.01, "alpha": 1.0, "disc_steps": 5,
                                   **params})
    ctx.notes.clear()
    model = Apple(p).run(ctx, p)
    return model, dict(ctx.notes)


@torch.no_grad()
def sklearn_probe(ctx: Any, represent: Any) -> float:
    """Balanced accuracy of a scikit-learn logistic probe of the group on ``represent(x)``,
    fitted on the training images and scored on the test images (not APPLE's own probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    def rows(part: str) -> tuple[np.ndarray, np.ndarray]:
        zs, gs = [], []
        for b in ctx.loader(part, sampler="sequential", augment=False):
            zs.append(represent(b.x).float().cpu().numpy())
            gs.append(b.g.cpu().numpy())
        return np.concatenate(zs), np.concatenate(gs)

    (z_fit, g_fit), (z_test, g_test) = rows("train"), rows("test")
    scaler = StandardScaler().fit(z_fit)
    probe = LogisticRegression(max_iter=2000, class_weight="balanced").fit(
        scaler.transform(z_fit), g_fit)
    return float(balanced_accuracy_score(g_test, probe.predict(scaler.transform(z_test))))


def test_apple_hides_a_linearly_visible_attribute(marker_ctx: Any) -> None:
    """The marker's two ranges (0..127 and 100..227) overlap on 28 of 128 values, so the best
    any reader of it can do is (100 + 28/2)/128 = 0.89 balanced accuracy: the base latent's
    probe must come near that (> 0.85) and APPLE's latent must read clearly lower (by 0.1,
    a margin the test sets: the measured drop was 0.885 -> 0.747). Checked on APPLE's own
    record and on an independent scikit-learn probe of the returned model's latent."""
    model, notes = run_apple(marker_ctx, {"objective": "confusion", "max_rel_norm": 0.1})
    probe = notes["apple"]["probe_test"]
    base, hidden = probe["base"]["balanced_accuracy"], probe["perturbed"]["balanced_accuracy"]
    assert base > 0.85  # visible to a fresh linear probe in the base model's latent
    assert hidden < base - 0.1  # clearly less visible after APPLE
    model.eval()
    base_sk = sklearn_probe(marker_ctx, MarkerBase(marker_ctx.n_classes).features)
    hidden_sk = sklearn_probe(marker_ctx, model.representation)
    assert base_sk > 0.85 and hidden_sk < base_sk - 0.1, (base_sk, hidden_sk)
    # the perturbation respected its bound at every epoch
    with (marker_ctx.run_dir / "apple.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 21 and rows[0]["epoch"] == "0"
    assert all(float(r["perturb_rel_norm"]) <= 0.1 + 1e-4 for r in rows)
    assert all(r["disc_balanced_accuracy"] != "" for r in rows[1:])


@pytest.mark.slow
def test_without_the_bound_the_former_game_swamps_the_latent(marker_ctx: Any) -> None:
    """The former setting (FAAP's signs, no bound, a slow discriminator): the perturbation
    grows past the latent itself (measured 2.7× its norm here, 80× on synthderm), for no
    better hiding than the bounded default reaches within 10 % of the norm."""
    _, notes = run_apple(marker_ctx, {"objective": "faap", "max_rel_norm": 0.0,
                                      "disc_lr_ratio": 0.2, "disc_steps": 1})
    with (marker_ctx.run_dir / "apple.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["perturb_rel_norm"]) > 1.0
    probe = notes["apple"]["probe_test"]
    assert probe["perturbed"]["balanced_accuracy"] > 0.74  # the bounded default: 0.747


# -- the choice is the best logged epoch ------------------------------------------------------------
def test_chosen_epoch_is_the_best_of_the_epoch_log(tmp_path) -> None:
    """The delivered perturber is the epoch (0 = the base model) with the best logged score,
    and every logged score is the documented rule on the logged validation values."""
    result = run_experiment(tiny_run_config(
        "apple", tmp_path / "runs", cache_dir=tmp_path / "c", train={"epochs": 3},
        params={"tolerance": 0.05}), keep_model=True)
    notes = result.config["notes"]
    (run_dir,) = [p for p in (tmp_path / "runs" / "synthderm" / "apple").iterdir()
                  if p.is_dir()]
    with (run_dir / "apple.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    f1_start = float(rows[0]["val_F1"])
    for r in rows:
        f1 = float(r["val_F1"])
        want = -float(r["val_EqOddsGap"]) if f1 >= f1_start - 0.05 - 1e-12 else -1e3 + f1
        assert float(r["score"]) == pytest.approx(want, abs=1e-9)
    scores = [float(r["score"]) for r in rows]
    best = int(rows[scores.index(max(scores))]["epoch"])
    assert notes["chosen"] == {"epoch": best}
    assert notes["apple"]["kept_base_model"] == (best == 0)
    assert set(notes["apple"]["probe_test"]) == {"base", "perturbed"}
