"""Ground truth on synthetic data: test metrics against observed and true labels side by side,
and no choice of a run ever reading the true labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fairbench import run_experiment
from fairbench.core.files import read_json


def _noisy(make_tiny_config, runs, method="vanilla", **kw):
    config = make_tiny_config(method, runs, **kw)
    return dataclasses.replace(config, dataset_params={
        **config.dataset_params, "label_noise_dark": 0.4, "label_noise_light": 0.0})


def _eq_odds_gap(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> float:
    """Equalized-odds gap by hand: per class c (one-vs-rest), max(|ΔTPR_c|, |ΔFPR_c|) between
    the two groups, averaged over the classes (every group here has every class)."""
    gaps = []
    for c in np.unique(y):
        rates = []
        for g in (0, 1):
            yy, pp = y[groups == g] == c, pred[groups == g] == c
            rates.append((pp[yy].mean(), pp[~yy].mean()))
        gaps.append(max(abs(rates[0][0] - rates[1][0]), abs(rates[0][1] - rates[1][1])))
    return float(np.mean(gaps))


def test_metrics_against_observed_and_true_labels(tmp_path, make_tiny_config):
    """The run's ``test`` and ``test_true`` numbers, recomputed here from predictions.csv
    with scikit-learn's macro F1, fairlearn's equalized-odds difference per class and a
    by-hand gap (not with fairbench's own metrics), against the observed and the true
    labels."""
    from fairlearn.metrics import equalized_odds_difference
    from sklearn.metrics import f1_score

    res = run_experiment(_noisy(make_tiny_config, tmp_path))
    metrics = read_json(res.run_dir / "metrics.json")
    assert {"val", "test", "test_true", "meta", "leakage"} <= set(metrics)
    preds = pd.read_csv(res.run_dir / "predictions.csv")
    test = preds[preds["part"] == "test"]
    assert (test["label"] != test["true_label"]).any()  # the noise reached the test part
    groups = test["attr_skin_tone"].to_numpy()
    pred = test["pred"].to_numpy()
    dark = groups == 1
    for part, column in (("test", "label"), ("test_true", "true_label")):
        y = test[column].to_numpy()
        assert metrics[part]["F1"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert metrics[part]["dark"]["F1"] == pytest.approx(
            f1_score(y[dark], pred[dark], average="macro"))
        gap = _eq_odds_gap(y, pred, groups)
        assert metrics[part]["EqOddsGap"] == pytest.approx(gap)
        # fairlearn's equalized-odds difference of each class's one-vs-rest task, averaged
        assert gap == pytest.approx(np.mean([equalized_odds_difference(
            y == c, pred == c, sensitive_features=groups) for c in np.unique(y)]))
    # the light group has no noise: its numbers agree on both label sets
    assert metrics["test"]["light"]["F1"] == pytest.approx(metrics["test_true"]["light"]["F1"])


def test_no_true_part_without_ground_truth(tmp_path, fresh_registries):
    from fairbench import create_dataset
    from fairbench.run.runner import true_labels

    table = create_dataset("synthderm", n_samples=100).build_table()
    assert np.array_equal(true_labels(table), table.df["true_label"].to_numpy())
    table.df = table.df.drop(columns="true_label")
    assert true_labels(table) is None


def _register_scrambled():
    """synthderm whose table carries *wrong* true labels (a fixed derangement) but whose
    images are drawn from the right ones: everything a run may choose from is unchanged."""
    from fairbench.datasets.synthderm import SynthDerm, build_metadata, render_into

    from fairbench import register_dataset

    @register_dataset("synthderm_scrambled")
    class Scrambled(SynthDerm):
        def build_table(self):
            table = super().build_table()
            k = table.n_classes
            table.df["true_label"] = (table.df["true_label"] + 1) % k
            return table

        def fill_images(self, table, spec, out, masks_out=None, progress=None):
            render_into(build_metadata(self.params), self.params, spec.size, out, masks_out,
                        progress=progress)

        def counterfactual_images(self, table, spec, positions):
            # the twins of the unscrambled table's pixels, as the images above
            return super().counterfactual_images(SynthDerm.build_table(self), spec, positions)

    return Scrambled


@pytest.mark.parametrize("method,params", [("vanilla", {}), ("apple", {"epochs": 2})])
def test_true_labels_reach_no_choice(tmp_path, make_tiny_config, fresh_registries, method,
                                     params):
    """Two runs that differ only in the true labels the table carries: every choice (the
    checkpoint, the binary threshold, the privileged group, APPLE's epoch) and every number
    on observed labels are identical; only the true-label metrics differ. A choice that read
    the true labels would tell the runs apart."""
    _register_scrambled()
    results = {}
    for name in ("synthderm", "synthderm_scrambled"):
        config = _noisy(make_tiny_config, tmp_path / name, method=method, params=params,
                        train={"epochs": 3})
        config = dataclasses.replace(config, dataset=name, dataset_params={
            **config.dataset_params, "n_classes": 2})
        results[name] = run_experiment(config)
    a, b = results["synthderm"], results["synthderm_scrambled"]
    assert a.metrics["val"] == b.metrics["val"] and a.metrics["test"] == b.metrics["test"]
    assert a.metrics["meta"]["threshold"] == b.metrics["meta"]["threshold"]
    assert a.config["privileged"] == b.config["privileged"]
    assert a.config["notes"] == b.config["notes"]
    pa = pd.read_csv(a.run_dir / "predictions.csv")
    pb = pd.read_csv(b.run_dir / "predictions.csv")
    probs = [c for c in pa.columns if c.startswith("prob_")]
    assert np.array_equal(pa[probs].to_numpy(), pb[probs].to_numpy())
    assert a.metrics["test_true"]["F1"] != b.metrics["test_true"]["F1"]
