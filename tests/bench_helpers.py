"""Hand-made run directories for the leaderboard, selection, statistics and plot tests: the
same files a real run writes (config.json, metrics.json, predictions.csv), with metrics
computed from the predictions by the real metrics module, but no training."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench import evaluate_classification
from fairbench.core.files import config_hash, write_json, write_manifest
from fairbench.metrics import HIGHER_IS_BETTER
from fairbench.run.runner import run_dir_for

GROUPS = ["light", "dark"]


def make_run(runs_dir: Path, *, method: str = "vanilla", seed: int = 0,
             params: dict[str, Any] | None = None, acc: float = 0.7, acc_dark: float | None = None,
             split: str = "a" * 64, dataset: str = "synthderm", backbone: str = "smallcnn",
             n: int = 240, n_classes: int = 3, patients: bool = True,
             data_seed: int = 0) -> Path:
    """A finished run whose predictions are right with probability ``acc`` (``acc_dark`` on
    the dark group). Val and test rows are the same samples for every run of one split."""
    params = dict(params or {})
    rng_data = np.random.default_rng(data_seed)
    labels = rng_data.integers(0, n_classes, n)
    groups = (rng_data.random(n) < 0.35).astype(int)
    part = np.where(np.arange(n) < n // 2, "val", "test")
    sample_id = np.array([f"s{i:04d}" for i in range(n)])
    patient = np.array([f"p{i // 2:04d}" for i in range(n)])
    rng = np.random.default_rng([seed, zlib.crc32(json.dumps(params, sort_keys=True).encode()),
                                 int(acc * 1000)])
    p_ok = np.where(groups == 1, acc if acc_dark is None else acc_dark, acc)
    right = rng.random(n) < p_ok
    pred = np.where(right, labels, (labels + rng.integers(1, n_classes, n)) % n_classes)
    probs = rng.dirichlet(np.ones(n_classes), n) * 0.4
    probs[np.arange(n), pred] += 0.6
    identity = {"method": method, "method_params": params,
                "dataset": {"name": dataset, "params": {"n_samples": n}},
                "attribute": "skin_tone", "privileged": None, "backbone": backbone,
                "backbone_params": {}, "weights": None, "image_size": 16, "seed": seed,
                "split": split, "train": {"epochs": 1}}
    run_dir = run_dir_for(Path(runs_dir), identity)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    for p in ("val", "test"):
        sel = part == p
        metrics[p] = evaluate_classification(labels[sel], probs[sel], groups[sel], GROUPS,
                                             y_pred=pred[sel])
    metrics["meta"] = {"attribute": "skin_tone", "groups": GROUPS, "privileged": "light",
                       "higher_is_better": HIGHER_IS_BETTER, "diff_sign": "dark minus light",
                       "threshold": None}
    frame = pd.DataFrame({"sample_id": sample_id, "part": part, "label": labels, "pred": pred})
    if patients:
        frame["patient_id"] = patient
    frame["attr_skin_tone"] = groups
    for c in range(n_classes):
        frame[f"prob_{c}"] = probs[:, c]
    frame.to_csv(run_dir / "predictions.csv", index=False)
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "config.json", {
        "identity": identity, "config_hash": config_hash(identity), "method": method,
        "method_params": params, "dataset": dataset, "dataset_params": {"n_samples": n},
        "attribute": "skin_tone", "groups": GROUPS, "privileged": "light",
        "classes": [str(c) for c in range(n_classes)], "threshold": None,
        "backbone": backbone, "seed": seed, "split_sha256": split})
    write_manifest(run_dir)  # a finished run is verified by its manifest
    return run_dir


def make_board(runs_dir: Path, *, seeds: tuple[int, ...] = (0, 1, 2), split: str = "a" * 64,
               dataset: str = "synthderm") -> None:
    """vanilla, a 2-setting 'fairquantize' grid and a 'worse' method, on one split."""
    for s in seeds:
        make_run(runs_dir, method="vanilla", seed=s, acc=0.70, acc_dark=0.50, split=split,
                 dataset=dataset)
        make_run(runs_dir, method="fairquantize", seed=s, params={"beta": 0.5}, acc=0.69,
                 acc_dark=0.60, split=split, dataset=dataset)
        make_run(runs_dir, method="fairquantize", seed=s, params={"beta": 1.0}, acc=0.55,
                 acc_dark=0.55, split=split, dataset=dataset)
        make_run(runs_dir, method="fairprune", seed=s, params={"ratio": 0.1}, acc=0.45,
                 acc_dark=0.30, split=split, dataset=dataset)


def make_run_with_metrics(runs_dir: Path, *, method: str, seed: int,
                          test: dict[str, Any], val: dict[str, Any] | None = None,
                          split: str = "b" * 64, dataset: str = "synthderm",
                          backbone: str = "smallcnn") -> Path:
    """A finished run whose ``metrics.json`` holds exactly the given (nested) part metrics,
    for tests that check every rendered leaderboard cell against numbers they know."""
    identity = {"method": method, "method_params": {}, "seed": seed, "split": split,
                "dataset": {"name": dataset, "params": {}}, "backbone": backbone,
                "attribute": "skin_tone", "train": {"epochs": 1}}
    run_dir = run_dir_for(Path(runs_dir), identity)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"attribute": "skin_tone", "groups": GROUPS, "privileged": "light",
            "higher_is_better": HIGHER_IS_BETTER, "diff_sign": "dark minus light",
            "threshold": None}
    write_json(run_dir / "metrics.json", {"val": val or test, "test": test, "meta": meta})
    pd.DataFrame({"sample_id": ["s0"], "part": ["test"], "label": [0], "pred": [0],
                  "attr_skin_tone": [0], "prob_0": [1.0]}).to_csv(
        run_dir / "predictions.csv", index=False)
    write_json(run_dir / "config.json", {
        "identity": identity, "config_hash": config_hash(identity), "method": method,
        "method_params": {}, "dataset": dataset, "dataset_params": {},
        "attribute": "skin_tone", "groups": GROUPS, "privileged": "light", "classes": ["0"],
        "threshold": None, "backbone": backbone, "seed": seed, "split_sha256": split})
    write_manifest(run_dir)  # a finished run is verified by its manifest
    return run_dir
