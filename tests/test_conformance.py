"""One conformance test over everything in the registries, as timm runs one test over all its
models: every registered method goes through :func:`fairbench.check_method` and every
registered dataset adapter through :func:`fairbench.check_dataset`, with the same checks.

A newly registered method is checked with its defaults (give it faster parameters in
:data:`METHOD_PARAMS` if it needs them); a newly registered dataset needs a data-root builder
in :data:`DATASET_ROOTS`, and the test says so until it has one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import fairbench.datasets
import fairbench.methods  # noqa: F401 - registers the built-in methods
import numpy as np
import pandas as pd
import pytest
from dataset_helpers import FIXTURES, copy_files, datasets_test_module, make_jpegs

from fairbench import check_dataset, check_method, list_datasets, list_methods

#: parameters that keep a method's two conformance runs within seconds on 2 CPU cores
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "fairprune": {"estimator": "fisher", "score_samples": 8, "score_batch_size": 8,
                  "ratio": 0.05, "beta_grid": (), "beta": 0.5},
    "fairquantize": {"estimator": "fisher", "score_samples": 8, "score_batch_size": 8,
                     "target_ratio": 0.1, "step": 0.1, "retrain_epochs": 1},
    "fairquantize_retrain": {"target_ratio": 0.1, "step": 0.1, "retrain_epochs": 1},
    "me_vanilla": {"tau_grid": (0.5, 0.9)},
    "me_fairprune": {"estimator": "fisher", "score_samples": 8, "score_batch_size": 8,
                     "ratio": 0.05, "beta_grid": (), "beta": 0.5, "tau_grid": (0.5, 0.9)},
    "snnl_prune": {"finetune_epochs": 1, "score_batch_size": 32},
    "fairdi": {"teacher_epochs": 1, "student_epochs": 1},
}
#: methods whose check takes longer than the default suite allows (run under -m slow)
SLOW_METHODS = {"me_fairprune"}


def _method_cases() -> list[Any]:
    return [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_METHODS else [])
            for name in list_methods()]


@pytest.mark.parametrize("name", _method_cases())
def test_every_registered_method_conforms(name: str, tmp_path: Path) -> None:
    metrics = check_method(name, tmp_path, params=METHOD_PARAMS.get(name))
    assert {"val", "test", "meta"} <= set(metrics)
    assert 0.0 <= metrics["test"]["F1"] <= 1.0


def test_fast_parameters_name_registered_methods_only() -> None:
    assert set(METHOD_PARAMS) | SLOW_METHODS <= set(list_methods())


# -- datasets -----------------------------------------------------------------------------------
def _fitzpatrick(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    root = tmp_path / "fitz"
    copy_files(root, FIXTURES / "fitzpatrick17k" / "fitzpatrick17k.csv")
    df = pd.read_csv(root / "fitzpatrick17k.csv", dtype=str, keep_default_na=False)
    make_jpegs(root, df.md5hash)
    return root, {"label_column": "three_partition_label"}


def _ham(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    root = tmp_path / "ham"
    copy_files(root, FIXTURES / "ham10000" / "HAM10000_metadata.csv")
    meta = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    make_jpegs(root / "HAM10000_images_part_1", meta.image_id)
    return root, {}


def _isic(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    root = tmp_path / "isic"
    src = FIXTURES / "isic2019"
    copy_files(root, src / "ISIC_2019_Training_GroundTruth.csv",
               src / "ISIC_2019_Training_Metadata.csv")
    meta = pd.read_csv(root / "ISIC_2019_Training_Metadata.csv", dtype=str,
                       keep_default_na=False)
    make_jpegs(root / "ISIC_2019_Training_Input", meta.image)
    return root, {}


def _csv(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    root, n = tmp_path / "mine", 24
    names = [f"case{i:03d}" for i in range(n)]
    make_jpegs(root / "imgs", names, size=(36, 28))
    rng = np.random.default_rng(0)
    pd.DataFrame({"file": [f"{x}.jpg" for x in names],
                  "diagnosis": rng.choice(["benign", "malignant"], n),
                  "sex": np.where(np.arange(n) % 2 == 0, "F", "M")}
                 ).to_csv(root / "labels.csv", index=False)
    return root, {"csv": "labels.csv", "path_col": "file", "label_col": "diagnosis",
                  "image_dir": "imgs", "attr_col": "sex"}


def _fairseg(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    # the fairseg tests' builder, from its package folder (tests/datasets is on the path
    # only once pytest has collected it)
    make_root = datasets_test_module("test_datasets_fairseg").make_root

    return make_root(tmp_path, n=40), {}


def _synthderm(tmp_path: Path) -> tuple[Path | None, dict[str, Any]]:
    return None, {"n_samples": 64}


#: registered name -> a builder of a small data root in the adapter's real layout, and its
#: parameters
DATASET_ROOTS: dict[str, Callable[[Path], tuple[Path | None, dict[str, Any]]]] = {
    "synthderm": _synthderm, "fitzpatrick17k": _fitzpatrick, "ham10000": _ham,
    "isic2019": _isic, "csv": _csv, "fairseg": _fairseg,
}


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_dataset_conforms(name: str, tmp_path: Path, monkeypatch) -> None:
    assert name in DATASET_ROOTS, (
        f"dataset {name!r} is registered but has no data-root builder in DATASET_ROOTS")
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    root, params = DATASET_ROOTS[name](tmp_path)
    summary = check_dataset(name, root, params=params)
    assert summary["n"] > 0  # check_dataset asserts two classes where the task needs them
    assert summary["attributes"], f"{name}: no sensitive attribute"

