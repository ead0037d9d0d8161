"""``fairbench.metrics.decision``: a binary task's threshold maximises the validation macro-F1
(against scikit-learn), prefers 0.5 on ties, and a binary run stores and applies it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from fairbench.metrics.decision import apply_threshold, binary_threshold


# -- thresholds ---------------------------------------------------------------------------------
def test_binary_threshold_maximises_val_macro_f1():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(int)
    p1 = np.clip(0.25 * y + rng.random(300) * 0.6, 0, 1)
    t = binary_threshold(y, p1)
    best = f1_score(y, (p1 >= t).astype(int), average="macro")
    grid = np.unique(p1)
    brute = max(f1_score(y, (p1 >= g).astype(int), average="macro") for g in grid)
    assert best == pytest.approx(brute)
    assert best >= f1_score(y, (p1 >= 0.5).astype(int), average="macro")
    probs = np.stack([1 - p1, p1], axis=1)
    assert np.array_equal(apply_threshold(probs, t), (p1 >= t).astype(int))
    assert np.array_equal(apply_threshold(probs, None), probs.argmax(1))


def test_binary_threshold_prefers_half_on_ties():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.2, 0.8, 0.9])
    assert binary_threshold(y, p1) == 0.5


def test_binary_run_stores_val_threshold(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRBENCH_NO_PROGRESS", "1")
    from fairbench import RunConfig, run_experiment

    res = run_experiment(RunConfig(
        method="vanilla", dataset_params={"n_samples": 200, "n_classes": 2}, image_size=16,
        train={"epochs": 1, "batch_size": 32}, runs_dir=str(tmp_path), progress=False))
    t = res.metrics["meta"]["threshold"]
    assert isinstance(t, float) and res.config["threshold"] == t
    assert res.config["identity"]["decision"] == "val_macro_f1_threshold"
    df = pd.read_csv(res.run_dir / "predictions.csv")
    assert np.array_equal(df["pred"].to_numpy(), (df["prob_1"] >= t).astype(int).to_numpy())
    val = df[df.part == "val"]
    # chosen on validation labels only: the stored threshold reaches the best validation
    # macro-F1 of every cut (brute force with scikit-learn, not binary_threshold)
    y_val, p_val = val["label"].to_numpy(), val["prob_1"].to_numpy()
    best = max(f1_score(y_val, (p_val >= c).astype(int), average="macro")
               for c in [0.5, *np.unique(p_val)])
    assert f1_score(y_val, (p_val >= t).astype(int), average="macro") == pytest.approx(best)
    assert "patient_id" in df.columns
