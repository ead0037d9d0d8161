"""Run: python benchmarks/bench_twins_noise.py SEED (one vanilla run on control, then the flips).

Flip rate of vanilla on control: skin twins vs label-preserving pixel noise (sd 3 levels,
the size of synthderm's own pore noise), at the mechanism suite's settings."""
import sys, numpy as np, torch
from pathlib import Path
import fairbench.datasets  # noqa
from fairbench import RunConfig, run_experiment
from fairbench.data.loaders import BatchLoader, DeviceData
from fairbench.metrics.decision import apply_threshold
from fairbench.run.counterfactual import twin_predictions

seed = int(sys.argv[1])
cfg = RunConfig(method="vanilla", dataset="synthderm", attribute="skin_tone", image_size=32,
                backbone="smallcnn", seed=seed, dataset_params={"n_samples": 1200, "n_test": 960,
                "scenario": "control"}, train={"epochs": 6, "batch_size": 64},
                runs_dir="runs/twins_noise", progress=False, force=True)
res = run_experiment(cfg, keep_model=True)
ctx, model = res.context, res.model
b = ctx.bundle
pos = ctx.positions("test")
thr = res.metrics["meta"]["threshold"]
def predict(images):
    data = DeviceData(images, b.table.labels[pos], {b.attribute: b.table.attr(b.attribute)[pos]}, ctx.device)
    loader = BatchLoader(data, np.arange(len(pos)), batch_size=256, attribute=b.attribute)
    p = ctx.trainer.predict(model, loader, ctx.train_config)
    probs = p.probs[np.argsort(p.index)]
    return apply_threshold(probs, thr)
orig = np.asarray(b.data.images.cpu())[pos] if hasattr(b.data.images, "cpu") else np.asarray(b.data.images)[pos]
base = predict(orig)
rng = np.random.default_rng(seed)
noisy = np.clip(orig.astype(np.float32) + rng.normal(0, 3, orig.shape), 0, 255).astype(np.uint8)
noise_flip = float((predict(noisy) != base).mean())
noisy8 = np.clip(orig.astype(np.float32) + rng.normal(0, 8, orig.shape), 0, 255).astype(np.uint8)
noise8_flip = float((predict(noisy8) != base).mean())
twin_pred, _ = twin_predictions(ctx, model, pos, thr)
skin_flip = float((twin_pred != base).mean())
print(f"seed {seed}: n {len(pos)} skin-twin flip {skin_flip:.4f} noise(sd3) flip {noise_flip:.4f} noise(sd8) flip {noise8_flip:.4f} stored {res.metrics['counterfactual']['flip_rate']:.4f}")
