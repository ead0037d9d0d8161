"""The segmentation task in the core: segmentors, losses and counts, runs end to end, APPLE
and the bad-input paths."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from dataset_helpers import assert_cli_error

from fairbench import FairbenchError, UnknownNameError, check_method, run_experiment
from fairbench.cli.main import main
from fairbench.metrics import overlap_counts
from fairbench.models.segmentors import Segmentor, create_segmentor
from fairbench.testing import tiny_run_config
from fairbench.training.segmentation import (
    class_log_probs,
    hard_masks,
    overlap_counts_torch,
    segmentation_loss,
    soft_dice_loss,
)

TINY_SEG = ["--dataset", "synthderm", "--task", "segmentation", "--image-size", "16",
            "--data-param", "n_samples=160", "--data-param", "n_classes=3",
            "--backbone-param", "decoder_width=16", "--train", "epochs=1",
            "--train", "batch_size=16", "-q"]


# -- segmentors -----------------------------------------------------------------------------
@pytest.mark.parametrize("n_mask_classes, channels", [(2, 1), (3, 3)])
def test_segmentor_encode_decode_is_forward(n_mask_classes, channels):
    torch.manual_seed(0)
    model = create_segmentor("unet:tu-resnet10t", n_mask_classes=n_mask_classes,
                             image_size=32, decoder_width=16).eval()
    assert isinstance(model, Segmentor) and model.out_channels == channels
    x = torch.randn(2, 3, 32, 32)
    feats = model.encode(x)
    assert feats[-1].shape[-1] == 32 // 16  # encoder depth 4: the bottleneck is 1/16
    out = model.decode(feats)
    assert out.shape == (2, channels, 32, 32)
    assert torch.equal(out, model(x))


def test_segmentor_bad_names_and_sizes():
    with pytest.raises(UnknownNameError, match="unknown timm encoder"):
        create_segmentor("unet:tu-notamodel", n_mask_classes=2, image_size=32)
    with pytest.raises(UnknownNameError, match="resnet"):
        create_segmentor("unet:resnet1", n_mask_classes=2, image_size=32)
    with pytest.raises(FairbenchError, match="multiple of 16"):
        create_segmentor("unet:tu-resnet10t", n_mask_classes=2, image_size=24)


def test_segmentor_weights_whole_and_encoder_only(tmp_path):
    import timm

    torch.manual_seed(0)
    a = create_segmentor("unet:tu-resnet10t", n_mask_classes=2, image_size=32, decoder_width=16)
    torch.save(a.state_dict(), tmp_path / "whole.pt")
    b = create_segmentor("unet:tu-resnet10t", n_mask_classes=2, image_size=32,
                         decoder_width=16, weights=tmp_path / "whole.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # a plain timm checkpoint of the encoder's architecture (what a user has on disk)
    torch.manual_seed(1)
    timm_model = timm.create_model("resnet10t", pretrained=False)
    torch.save(timm_model.state_dict(), tmp_path / "timm.pt")
    c = create_segmentor("unet:tu-resnet10t", n_mask_classes=2, image_size=32,
                         decoder_width=16, weights=tmp_path / "timm.pt")
    assert torch.equal(c.encoder.model.conv1[0].weight, timm_model.conv1[0].weight)


def test_partial_segmentor_weights_are_refused_reported_or_loaded_when_allowed(tmp_path,
                                                                               caplog):
    """A whole-segmentor checkpoint missing the decoder covers less than 90 % of the U-Net:
    refused with one line (through the command line too, before any work), loaded with a
    warning naming the missing part under --allow-partial-weights."""
    import logging

    from fairbench.models.segmentors import load_segmentor_weights

    torch.manual_seed(0)
    a = create_segmentor("unet:tu-resnet10t", n_mask_classes=3, image_size=16,
                         decoder_width=16)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in a.state_dict().items() if not k.startswith("encoder.")},
               partial)
    fresh = create_segmentor("unet:tu-resnet10t", n_mask_classes=3, image_size=16,
                             decoder_width=16)
    with pytest.raises(FairbenchError, match="covers only .* of segmentor"):
        load_segmentor_weights(fresh, partial)
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        match = load_segmentor_weights(fresh, partial, allow_partial=True)
    assert 0 < match.coverage < 0.9
    assert any("not loaded: encoder (" in m for m in caplog.messages), caplog.messages
    assert torch.equal(fresh.decoder.state_dict()[next(iter(fresh.decoder.state_dict()))],
                       a.decoder.state_dict()[next(iter(a.decoder.state_dict()))])
    # the whole file loads fully (the head, sized by the mask classes, is not counted)
    whole = tmp_path / "whole.pt"
    torch.save(a.state_dict(), whole)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        assert load_segmentor_weights(fresh, whole).coverage == 1.0
    assert not caplog.messages
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", *TINY_SEG, "--runs-dir", str(runs),
                                       "--weights", str(partial)])
    assert_cli_error(result, "covers only", "not loaded: encoder (", "--allow-partial-weights")
    assert not runs.exists() or not any(runs.rglob("metrics.json"))


# -- losses and counts ----------------------------------------------------------------------
def test_counts_on_the_device_match_the_numpy_reference():
    rng = np.random.default_rng(0)
    for k in (2, 3):
        pred = rng.integers(0, k, (5, 8, 8))
        true = rng.integers(0, k, (5, 8, 8))
        true[0] = 0  # an image without any structure
        ref = overlap_counts(pred, true, k)
        got = overlap_counts_torch(torch.from_numpy(pred), torch.from_numpy(true), k).numpy()
        np.testing.assert_array_equal(got, ref)


def test_hard_masks_and_class_log_probs():
    one = torch.tensor([[[[-1.0, 2.0]]]])  # B=1, 1 channel, 1x2
    assert hard_masks(one).tolist() == [[[0, 1]]]
    lp = class_log_probs(one)
    assert torch.allclose(lp.exp().sum(dim=1), torch.ones(1, 1, 2))
    assert torch.allclose(lp.exp()[:, 1], torch.sigmoid(one[:, 0]))
    multi = torch.tensor([[[[0.0]], [[3.0]], [[1.0]]]])  # 3 classes, 1x1
    assert hard_masks(multi).tolist() == [[[1]]]


def test_segmentation_loss_is_small_for_a_perfect_prediction_and_large_otherwise():
    mask = torch.zeros(2, 8, 8, dtype=torch.uint8)
    mask[:, 2:6, 2:6] = 1
    good = (mask.float() * 2 - 1).unsqueeze(1) * 20.0
    bad = -good
    assert segmentation_loss(good, mask) < 0.01
    assert segmentation_loss(bad, mask) > 1.0
    # soft Dice by hand for a uniform p = 0.5 prediction: 1 - (2*0.5*16 + 1) / (0.5*64 + 16 + 1)
    half = torch.zeros(2, 1, 8, 8)
    expected = 1 - (2 * 0.5 * 16 + 1) / (0.5 * 64 + 16 + 1)
    assert soft_dice_loss(half, mask).item() == pytest.approx(expected, rel=1e-6)
    per_image = segmentation_loss(half, mask, reduction="none")
    assert per_image.shape == (2,)


# -- runs end to end ------------------------------------------------------------------------
def test_vanilla_segmentation_run_records_per_group_dice(tmp_path):
    result = run_experiment(tiny_run_config("vanilla", tmp_path / "runs", task="segmentation",
                                            cache_dir=tmp_path / "cache"))
    config = json.loads((result.run_dir / "config.json").read_text())
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert config["task"] == "segmentation" and config["identity"]["task"] == "segmentation"
    assert config["mask_classes"] == ["background", "lesion"]
    assert config["train"]["select"] == "Dice"
    test = metrics["test"]
    for key in ("Dice", "IoU"):
        assert 0.0 <= test[key] <= 1.0
        for group in ("light", "dark"):
            assert key in test[group]
        assert test["gap"][key] == pytest.approx(abs(test["light"][key] - test["dark"][key]))
    preds = pd.read_csv(result.run_dir / "predictions.csv")
    rows = preds[preds.part == "test"]
    assert rows["Dice"].mean() == pytest.approx(test["Dice"])
    dark = rows[rows.attr_skin_tone == 1]
    assert dark["IoU"].mean() == pytest.approx(test["dark"]["IoU"])
    assert metrics["meta"]["task"] == "segmentation"
    # the show command prints the segmentation table
    out = CliRunner().invoke(main, ["show", str(result.run_dir)])
    assert out.exit_code == 0, out.output
    assert "Dice" in out.output and "ES_fairseg.Dice" in out.output and "F1" not in out.output


def test_classification_identity_has_no_task_key(tmp_path):
    from fairbench.run.runner import prepare

    p = prepare(tiny_run_config("vanilla", tmp_path, cache_dir=tmp_path / "c"))
    assert p.task == "classification" and p.train.select == "F1"
    result = run_experiment(tiny_run_config("vanilla", tmp_path / "runs",
                                            cache_dir=tmp_path / "c"))
    assert "task" not in result.config["identity"]  # older run hashes stay valid


def test_default_task_follows_the_dataset_and_the_method(tmp_path):
    from fairbench import RunConfig
    from fairbench.run.runner import prepare

    assert prepare(RunConfig(method="vanilla")).task == "classification"
    p = prepare(RunConfig(method="vanilla", task="segmentation"))
    assert p.task == "segmentation" and p.backbone == "unet:tu-resnet10t"


# -- APPLE ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_apple_conformance(tmp_path, task):
    check_method("apple", tmp_path, task=task)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_apple_starts_at_the_base_model_and_leaves_it_untouched(tmp_path, task):
    from fairbench.methods.apple import AppleParams, build_perturbed

    result = run_experiment(tiny_run_config("apple", tmp_path / "runs", task=task,
                                            params={"perturb_skips": task == "segmentation"},
                                            cache_dir=tmp_path / "c"), keep_model=True)
    ctx, model = result.context, result.model
    base = ctx.vanilla()
    # the base inside the fitted model is bit-identical to the cached vanilla model
    for k, v in base.state_dict().items():
        assert torch.equal(v, model.base.state_dict()[k]), k
    # a fresh perturbed model equals the base model exactly (G starts at zero)
    fresh = build_perturbed(ctx, ctx.vanilla(), AppleParams(
        perturb_skips=task == "segmentation")).eval()
    x = next(iter(ctx.loader("test"))).x
    with torch.no_grad():
        assert torch.equal(fresh(x), base.eval()(x))
        assert all(float(d.abs().max()) == 0.0 for d in fresh.last_offsets)
    if task == "segmentation":
        assert len(fresh.perturbers) == len(base.encode(x)) - 1  # every skip and the bottleneck
    assert "apple" in result.config["notes"]


# -- bad input ------------------------------------------------------------------------------
def _cli_error(tmp_path, args):
    out = CliRunner().invoke(main, ["run", *args, "--runs-dir", str(tmp_path / "runs"),
                                    "--cache-dir", str(tmp_path / "cache")])
    return assert_cli_error(out)


def test_segmentation_bad_input_is_one_line(tmp_path, monkeypatch):
    msg = _cli_error(tmp_path, ["--method", "fairquantize", *TINY_SEG])
    assert "does not support segmentation" in msg and "apple" in msg and "vanilla" in msg
    msg = _cli_error(tmp_path, ["--method", "vanilla", "--backbone", "smallcnn", *TINY_SEG])
    assert "is a classifier" in msg and "unet:" in msg
    msg = _cli_error(tmp_path, ["--method", "vanilla", "--backbone", "unet:tu-resnet10t",
                                "--image-size", "16", "-q"])
    assert "is a segmentor" in msg
    msg = _cli_error(tmp_path, ["--method", "vanilla", *TINY_SEG[:4], "--image-size", "24",
                                *TINY_SEG[6:]])
    assert "multiple of 16" in msg
    msg = _cli_error(tmp_path, ["--method", "vanilla", "--dataset", "ham10000",
                                "--task", "segmentation", "--data-root", str(tmp_path)])
    assert "has no segmentation task" in msg and "synthderm" in msg
    msg = _cli_error(tmp_path, ["--method", "vanilla", *TINY_SEG, "--train", "select=F1"])
    assert "select='F1'" in msg and "Dice" in msg
    msg = _cli_error(tmp_path, ["--method", "apple", *TINY_SEG, "-p", "select_metric=EOdd"])
    assert "select_metric='EOdd'" in msg and "gap.Dice" in msg
    assert not any((tmp_path / "runs").glob("synthderm/*/*/config.json"))


# -- FairDi for segmentation ----------------------------------------------------------------
def test_fairdi_segmentation_conformance(tmp_path):
    metrics = check_method("fairdi", tmp_path, task="segmentation",
                           params={"teacher_epochs": 1, "student_epochs": 1})
    assert "Dice" in metrics["test"]


def test_pixelwise_distillation_of_a_binary_map_is_the_bernoulli_kl():
    from fairbench.training.distill import distillation_kl
    from fairbench.training.segmentation import as_class_logits

    torch.manual_seed(0)
    s, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    tau = 1.5
    got = distillation_kl(as_class_logits(s), as_class_logits(t), tau)
    ps, pt = torch.sigmoid(s / tau), torch.sigmoid(t / tau)
    kl = pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()
    expected = tau ** 2 * kl.flatten(1).mean(1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(distillation_kl(as_class_logits(t), as_class_logits(t), tau),
                          torch.zeros(2), atol=1e-7)


# -- leaderboard ----------------------------------------------------------------------------
def test_leaderboard_keeps_segmentation_in_its_own_table(tmp_path):
    from fairbench import leaderboard

    runs, cache = tmp_path / "runs", tmp_path / "c"
    for method in ("vanilla", "apple"):
        run_experiment(tiny_run_config(method, runs, task="segmentation", cache_dir=cache))
    run_experiment(tiny_run_config("vanilla", runs, cache_dir=cache))
    board = leaderboard(runs)
    tasks = sorted(t.task for t in board.tables)
    assert tasks == ["classification", "segmentation"]
    seg = next(t for t in board.tables if t.task == "segmentation")
    assert [r.label for r in seg.rows] == ["vanilla", "apple"]
    assert "gap.Dice" in seg.rule or "Dice" in seg.rule
    md = board.render("md", "paper")
    assert "ES-Dice (FairSeg)" in md and "ES-Dice (FairMedFM)" in md and "segmentation" in md
    compact = board.to_frame("compact")
    seg_rows = compact[compact.backbone.str.startswith("unet:")]
    assert {"Dice", "worst.Dice", "gap.Dice"} <= set(seg_rows.columns)
    assert seg_rows["Dice"].notna().all()
    out = CliRunner().invoke(main, ["leaderboard", str(runs), "--view", "compact"])
    assert out.exit_code == 0, out.output
    assert "Worst-group Dice" in out.output
    seg_run = seg.rows[0].runs[0].path
    out = CliRunner().invoke(main, ["plot", "groups", str(seg_run), "--out",
                                    str(tmp_path / "groups")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "groups.png").is_file()
    out = CliRunner().invoke(main, ["plot", "tradeoff", str(runs), "--out",
                                    str(tmp_path / "trade")])
    assert out.exit_code == 0, out.output
    assert len(list(tmp_path.glob("trade-*.png"))) == 2


def test_bootstrap_intervals_of_a_segmentation_table(tmp_path):
    from fairbench import leaderboard
    from fairbench.bench.stats import SegmentationPredictions

    runs, cache = tmp_path / "runs", tmp_path / "c"
    results = [run_experiment(tiny_run_config("vanilla", runs, task="segmentation", seed=s,
                                              cache_dir=cache)) for s in (0, 1)]
    # the resampled statistic on all samples is the stored metric (independent reading)
    preds = SegmentationPredictions.read(results[0].run_dir)
    assert preds.metric("Dice") == pytest.approx(results[0].metrics["test"]["Dice"])
    assert preds.metric("dark.IoU") == pytest.approx(results[0].metrics["test"]["dark"]["IoU"])
    board = leaderboard(runs, ci=True, n_resamples=200)
    row = board.tables[0].rows[0]
    for key in ("Dice", "gap.Dice", "worst.Dice"):
        lo, hi = row.ci[key]
        mean = row.stats[key][0]
        assert lo <= mean + 1e-9 and mean - 1e-9 <= hi and hi - lo > 0, key
    assert "[" in board.render("md", "paper")
