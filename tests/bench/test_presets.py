"""The paper presets in benchmarks/*.toml are valid `fairbench run --config` files: their keys,
method parameters, dataset options and train settings all pass fairbench's own checks."""

from __future__ import annotations

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
