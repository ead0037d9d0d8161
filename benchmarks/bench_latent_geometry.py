"""Run: python benchmarks/bench_latent_geometry.py SCENARIO SEED [SCENARIO SEED ...]

How far the vanilla model's latent (the pooled features the classifier head reads, where
APPLE perturbs and the adversarial methods' adversaries look) must move to hide skin tone, at
the mechanism suite's settings (1,200 images, 32 px, smallcnn, 6 epochs, batch 64). On the
validation part, per sample i with latent f_i:

* ``half_gap`` = ‖μ_dark − μ_light‖ / (2·mean‖f‖): the relative shift that moves both group
  means to their midpoint (the least any perturbation must do, on average, to remove the
  mean difference);
* ``d_i / ‖f_i‖`` with d_i = |w·f_i + b| / ‖w‖ the distance to the boundary of a logistic
  probe of skin tone fitted on the same latents: a perturbation of relative norm r can carry
  sample i across that probe's boundary only if r ≥ d_i/‖f_i‖; printed as the median and the
  share of samples within r = 0.1 (APPLE's default bound) and r = 0.5.

Each printed line is one (scenario, seed)."""

from __future__ import annotations

import sys

import fairbench.datasets  # noqa: F401  (registers synthderm)
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from fairbench import RunConfig, run_experiment


def latents(ctx, model, part: str) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    feats, groups = [], []
    with torch.no_grad():
        for batch in ctx.loader(part, sampler="sequential", augment=False, drop_last=False):
            feats.append(model.features(batch.x).float().cpu().numpy())
            groups.append(batch.g.cpu().numpy())
    f, g = np.concatenate(feats), np.concatenate(groups)
    known = g >= 0
    return f[known], g[known]


def geometry(scenario: str, seed: int) -> str:
    cfg = RunConfig(method="vanilla", dataset="synthderm", attribute="skin_tone", image_size=32,
                    backbone="smallcnn", seed=seed,
                    dataset_params={"n_samples": 1200, "n_test": 960, "scenario": scenario},
                    train={"epochs": 6, "batch_size": 64}, runs_dir="runs/latent_geometry",
                    progress=False)
    res = run_experiment(cfg, keep_model=True)
    f_tr, g_tr = latents(res.context, res.model, "train")
    f, g = latents(res.context, res.model, "val")
    norms = np.linalg.norm(f, axis=1)
    mu = [f[g == k].mean(0) for k in (0, 1)]
    half_gap = np.linalg.norm(mu[0] - mu[1]) / (2 * norms.mean())
    probe = LogisticRegression(max_iter=2000, class_weight="balanced").fit(f_tr, g_tr)
    bal = balanced_accuracy_score(g, probe.predict(f))
    w, b = probe.coef_[0], probe.intercept_[0]
    rel = np.abs(f @ w + b) / np.linalg.norm(w) / norms
    return (f"{scenario:14s} seed {seed}: val n {len(g)} probe bal.acc {bal:.3f} "
            f"half_gap {half_gap:.3f} median d/|f| {np.median(rel):.3f} "
            f"within 0.1: {np.mean(rel <= 0.1):.2f} within 0.5: {np.mean(rel <= 0.5):.2f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit("usage: bench_latent_geometry.py SCENARIO SEED [SCENARIO SEED ...]")
    for scenario, seed in zip(args[::2], args[1::2]):
        print(geometry(scenario, int(seed)), flush=True)
