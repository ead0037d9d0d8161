"""ImageNet-pretrained backbones from local files (--pretrained): where the file is looked
for, that its weights are really loaded (a layer equals the file), the run's identity, and the
one-line errors. The "pretrained" files here are random weights saved in timm's format."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from dataset_helpers import save_timm_checkpoint

from fairbench import FairbenchError, run_experiment
from fairbench.cli.main import main
from fairbench.models.backbones import create_backbone
from fairbench.models.pretrained import WEIGHTS_DIR_ENV, find_pretrained


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """No Hugging Face cache and no weights folder from the environment, unless a test
    makes one."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)


def test_resnet18_body_is_the_file_and_the_head_is_new(tmp_path):
    state = save_timm_checkpoint("resnet18", tmp_path / "w" / "resnet18.pth")
    path = find_pretrained("resnet18", str(tmp_path / "w"))
    assert path == tmp_path / "w" / "resnet18.pth"
    model = create_backbone("resnet18", num_classes=3, image_size=32, pretrained=path)
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.classifier.out_features == 3  # sized to the dataset, not ImageNet's 1000
    random = create_backbone("resnet18", num_classes=3, image_size=32)
    assert not torch.equal(random.body.conv1.weight, state["conv1.weight"])


def test_hub_layout_in_the_folder_and_the_hub_cache(tmp_path, monkeypatch):
    hub = tmp_path / "w" / "timm" / "resnet18.a1_in1k" / "model.safetensors"
    state = save_timm_checkpoint("resnet18", hub, seed=1)
    assert find_pretrained("resnet18", str(tmp_path / "w")) == hub
    # the environment variable names the folder when --weights-dir is not given
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "w"))
    assert find_pretrained("resnet18", None) == hub
    monkeypatch.delenv(WEIGHTS_DIR_ENV)
    # the Hugging Face cache, as timm.create_model(pretrained=True) leaves it
    snap = tmp_path / "hf-cache" / "models--timm--resnet18.a1_in1k"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    cached = snap / "snapshots" / "abc123" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(hub.read_bytes())
    found = find_pretrained("resnet18", None)
    assert found.resolve() == cached.resolve()
    model = create_backbone("resnet18", num_classes=2, image_size=32, pretrained=found)
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])


def test_a_missing_file_says_where_it_looked_and_how_to_get_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FairbenchError) as err:
        find_pretrained("resnet18", str(tmp_path / "empty"))
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "empty") in text
    assert "Hugging Face hub cache" in text and "timm.create_model('resnet18', pretrained=True)" in text
    with pytest.raises(FairbenchError, match="weights folder .* does not exist"):
        find_pretrained("resnet18", str(tmp_path / "nowhere"))
    with pytest.raises(FairbenchError, match="has no pretrained weights in fairbench"):
        find_pretrained("smallcnn", str(tmp_path / "empty"))


def test_another_normalisation_is_refused(tmp_path):
    """fairbench feeds ImageNet-normalised images; a model pretrained on other inputs is
    refused rather than fed what it was not trained on."""
    path = tmp_path / "w" / "vit_tiny_patch16_224.pth"
    save_timm_checkpoint("vit_tiny_patch16_224", path)
    with pytest.raises(FairbenchError, match="normalised with mean"):
        create_backbone("timm:vit_tiny_patch16_224", num_classes=2, image_size=224,
                        pretrained=path)


def test_a_file_of_another_model_is_one_line(tmp_path):
    path = tmp_path / "w" / "resnet18.pth"
    save_timm_checkpoint("resnet10t", path)
    with pytest.raises(FairbenchError, match="do not load into timm's 'resnet18'"):
        create_backbone("resnet18", num_classes=2, image_size=32, pretrained=path)


def test_a_pretrained_run_records_its_weights_and_is_its_own_run(tmp_path, make_tiny_config):
    folder = tmp_path / "w"
    state = save_timm_checkpoint("resnet18", folder / "resnet18.pth")
    base = dataclasses.replace(make_tiny_config("vanilla", tmp_path / "runs",
                                                train={"epochs": 1}), backbone="resnet18",
                               backbone_params={})
    pre = run_experiment(dataclasses.replace(base, pretrained=True, weights_dir=str(folder)),
                         keep_model=True)
    config = json.loads((pre.run_dir / "config.json").read_text())
    assert config["pretrained_sha256"] and config["pretrained"].endswith("resnet18.pth")
    plain = run_experiment(base, keep_model=True)
    assert plain.run_dir != pre.run_dir  # the weights are part of the identity
    assert "pretrained_sha256" not in json.loads((plain.run_dir / "config.json").read_text())
    # training started from the file: after one epoch the stem is still near it, far nearer
    # than a random start
    trained = pre.model.body.conv1.weight.detach().cpu()
    other = plain.model.body.conv1.weight.detach().cpu()
    assert (trained - state["conv1.weight"]).norm() < 0.5 * (other - state["conv1.weight"]).norm()


@pytest.mark.parametrize("args,message", [
    (["--backbone", "smallcnn", "--pretrained"], "has no pretrained weights in fairbench"),
    (["--backbone", "resnet18", "--pretrained", "--weights-dir", "{empty}"],
     "no pretrained weights of 'resnet18' found"),
    (["--backbone", "resnet18", "--weights-dir", "{empty}"], "add --pretrained"),
    (["--task", "segmentation", "--pretrained"], "a segmentation run takes a --weights file"),
])
def test_bad_pretrained_input_is_one_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    result = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output
    assert not (tmp_path / "runs").exists()


def test_a_suite_entry_can_ask_for_pretrained_weights(tmp_path):
    from fairbench import load_suite

    save_timm_checkpoint("resnet18", tmp_path / "w" / "resnet18.pth")
    path = tmp_path / "s.toml"
    path.write_text(f"""
name = "p"
seeds = 1
runs_dir = "{tmp_path / 'runs'}"
[[datasets]]
name = "synthderm"
backbones = ["resnet18"]
pretrained = true
weights_dir = "{tmp_path / 'w'}"
params = {{ n_samples = 200 }}
[[methods]]
name = "vanilla"
""")
    (planned,) = load_suite(path).expand()
    assert planned.config.pretrained and planned.config.weights_dir == str(tmp_path / "w")
    bad = path.read_text().replace("pretrained = true", 'pretrained = "yes"')
    path.write_text(bad)
    with pytest.raises(FairbenchError, match="pretrained = 'yes' must be true or false"):
        load_suite(path)
