"""The paper presets in benchmarks/*.toml are valid `fairbench run --config` files: their keys,
method parameters, dataset options and train settings all pass fairbench's own checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: setup.cfg installs tomli there
    import tomli as tomllib  # type: ignore[no-redef]

from repo_paths import BENCHMARKS

from fairbench import TrainConfig, create_dataset, create_method
from fairbench.cli.main import _read_config
from fairbench.core.params import build_params

BENCH = BENCHMARKS
PRESETS = {
    "fairquantize_fitzpatrick17k_vgg11.toml": ("fitzpatrick17k", "vgg11", 0.2, 1.0),
    "fairquantize_isic2019_resnet18.toml": ("isic2019", "resnet18", 0.8, 0.778),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_a_valid_run_config(name: str, tmp_path: Path) -> None:
    dataset, backbone, ratio, beta = PRESETS[name]
    cfg = _read_config(str(BENCH / name))  # unknown keys or wrong types raise
    assert (cfg["method"], cfg["dataset"], cfg["backbone"]) == ("fairquantize", dataset, backbone)
    method = create_method(cfg["method"], **cfg["params"])
    assert method.params.target_ratio == pytest.approx(ratio)
    assert method.params.beta == pytest.approx(beta)
    build_params(TrainConfig, cfg["train"], owner="train")
    create_dataset(dataset, data_root=tmp_path, **cfg.get("dataset_params", {}))


def test_preset_values_match_the_paper_reference() -> None:
    """Ratio and β as the FairQuantize paper states."""
    for name, (_, _, ratio, beta) in PRESETS.items():
        raw = tomllib.loads((BENCH / name).read_text())
        assert raw["params"]["target_ratio"] == ratio and raw["params"]["beta"] == beta


def test_synthetic_fitzpatrick_size_preset_trains_as_the_paper_preset(tmp_path: Path) -> None:
    """The end-to-end timing config is the Fitzpatrick-17k preset on synthderm at its size:
    the same backbone, image size, training and method settings."""
    paper = _read_config(str(BENCH / "fairquantize_fitzpatrick17k_vgg11.toml"))
    synth = _read_config(str(BENCH / "fairquantize_synthfitz_vgg11.toml"))
    for key in ("method", "backbone", "image_size", "split_fractions", "train", "params"):
        assert synth[key] == paper[key], key
    assert synth["dataset"] == "synthderm"
    adapter = create_dataset("synthderm", **synth["dataset_params"])
    assert adapter.params.n_samples == 16577


def test_fitzpatrick_presets_keep_unknown_skin_type_rows_for_training() -> None:
    """As the released FairQuantize code: Fitzpatrick type -1 rows are trained on (they only
    lack a group, so every group metric leaves them out); no stale schedule comment."""
    preset = BENCH / "fairquantize_fitzpatrick17k_vgg11.toml"
    cfg = _read_config(str(preset))
    assert cfg["dataset_params"]["unknown_skin_type"] == "keep"
    assert "no schedule" not in preset.read_text()
    suite = tomllib.loads((BENCH / "suite_fitzpatrick17k_vgg11.toml").read_text())
    (fitz,) = suite["datasets"]
    assert fitz["params"]["unknown_skin_type"] == "keep"


def test_isic_suite_uses_the_papers_beta() -> None:
    suite = tomllib.loads((BENCH / "suite_isic2019_resnet18.toml").read_text())
    (fq,) = [m for m in suite["methods"] if m["name"] == "fairquantize"]
    assert fq["params"]["beta"] == 0.778


# -- the paper presets of the multi-exit and sensitive-channel-pruning papers ------------------
PAPER_SUITES = ("paper_fitzpatrick17k.toml", "paper_isic2019.toml")


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_paper_suite_asks_for_the_paper_setting(name: str) -> None:
    """Pretrained weights, the published split, 224 px, the Fair-Multi-Exit-Framework recipe
    (SGD Nesterov, lr 0.01, momentum 0.9, weight decay 1e-5, StepLR(100, 0.1), 199 epochs,
    batch 128, class-balanced batches) and CUDA where there is one."""
    from fairbench.bench.suite import load_suite

    suite = load_suite(BENCH / name, allow_missing_data=True)
    assert suite.device == "auto"
    for d in suite.datasets:
        assert d.pretrained and d.split == "published" and d.image_size == 224
    train = build_params(TrainConfig, suite.train, owner="train")
    assert (train.optimizer, train.lr, train.momentum, train.nesterov, train.weight_decay) == (
        "sgd", 0.01, 0.9, True, 1e-5)
    assert (train.schedule, train.step_size, train.gamma, train.epochs, train.batch_size,
            train.sampler) == ("step", 100, 0.1, 199, 128, "class")
    assert {m.name for m in suite.methods} >= {"vanilla", "me_fairprune", "snnl_prune"}


@pytest.mark.slow
def test_isic_paper_suite_runs_end_to_end_on_a_jpeg_folder(tmp_path: Path,
                                                           monkeypatch) -> None:
    """The ISIC 2019 paper preset, one epoch, one seed, on CPU: a real-layout folder (the
    fixture's metadata, 60 images, generated JPEGs), split files in the published layout
    (their checksums recorded as the published ones) and random weights saved in timm's
    format as the local pretrained file. Every method of the preset finishes, each run
    records the file's sha256, 224 px and the published split."""
    import dataclasses
    import hashlib

    import pandas as pd
    from dataset_helpers import FIXTURES, make_jpegs, save_timm_checkpoint

    from fairbench.bench.suite import load_suite
    from fairbench.bench.sweep import plan, run_suite
    from fairbench.data.published import PUBLISHED, PartFile, PublishedSplit

    root = tmp_path / "isic2019"
    root.mkdir()
    meta = pd.read_csv(FIXTURES / "isic2019" / "ISIC_2019_Training_Metadata.csv")
    meta = meta.dropna(subset=["sex"]).head(60)  # the rows the sex attribute keeps
    truth = pd.read_csv(FIXTURES / "isic2019" / "ISIC_2019_Training_GroundTruth.csv")
    meta.to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    truth[truth["image"].isin(meta["image"])].to_csv(
        root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    ids = meta["image"].astype(str).tolist()
    make_jpegs(root / "ISIC_2019_Training_Input", ids, size=(64, 48))
    spec = PUBLISHED["isic2019"]
    splits = tmp_path / "splits"
    files = {}
    taken = set(ids[0::5]) | set(ids[1::5])
    for part, rows in (("val", ids[0::5]), ("test", ids[1::5]),
                       ("train", [i for i in ids if i not in taken])):
        path = splits / getattr(spec, part).path
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({spec.id_column: rows, "label": 0}).to_csv(path)
        files[part] = PartFile(getattr(spec, part).path,
                               hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setitem(PUBLISHED, "isic2019", PublishedSplit(spec.id_column, **files))
    weights = tmp_path / "weights" / "resnet18.safetensors"
    save_timm_checkpoint("resnet18", weights)
    monkeypatch.setenv("FAIRBENCH_WEIGHTS_DIR", str(weights.parent))
    monkeypatch.setenv("FAIRBENCH_SPLITS_DIR", str(splits))
    suite = load_suite(BENCH / "paper_isic2019.toml", data_roots={"*": str(root)}, seeds=[0],
                       runs_dir=str(tmp_path / "runs"))
    suite = dataclasses.replace(suite, device="cpu",
                                train={**suite.train, "epochs": 1, "batch_size": 8})
    run_suite(suite, progress=False, echo=lambda _: None)
    runs = plan(suite)
    assert runs and all(r.finished for r in runs)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    for r in runs:
        cfg = json.loads((r.run_dir / "config.json").read_text())
        assert cfg["pretrained_sha256"] == sha and cfg["image_size"] == 224
        assert cfg["split_sizes"] == {"train": 36, "val": 12, "test": 12}
