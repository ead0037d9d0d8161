"""``snnl_prune`` and ``fairdi``: the batched SNNL against a direct double loop, a
channel that carries the attribute perfectly scoring lowest and being pruned first, the layer
resolution and masking on VGG-11/ResNet-18/smallcnn, pruned channels staying zero through
fine-tuning, teachers that see only their group, the distillation loss's properties, the FIS
pieces, bad input (one line, exit 2), and ``check_method`` conformance for both methods.

Default values of the methods' parameters are never asserted; every run sets what it uses."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import fairbench.methods.fairdi as fd
import fairbench.methods.snnl_prune as sp
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from dataset_helpers import assert_cli_error
from torch import nn

from fairbench import Classifier, check_method, create_backbone, run_experiment
from fairbench.cli.main import main
from fairbench.core.params import build_params
from fairbench.testing import tiny_run_config
from fairbench.training.distill import distillation_kl, distillation_objective
from fairbench.training.snnl import snnl_per_channel
from fairbench.training.trainer import EpochLog, Trainer

TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "-q"]


def invoke(method: str, runs: Path, cache: Path, params: dict[str, str], *extra: str) -> Any:
    args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
    return CliRunner().invoke(main, ["run", "--method", method, *TINY, "--runs-dir", str(runs),
                                     "--cache-dir", str(cache), *args, *extra])




# -- SNNL -----------------------------------------------------------------------------------------
def snnl_double_loop(z: np.ndarray, a: np.ndarray, t: float, distance: str,
                     include_self: bool) -> float:
    """The formula of Frosst et al. (2019), one pair at a time, in float64."""
    b = len(z)

    def dist(i: int, j: int) -> float:
        if distance == "cosine":
            return 1.0 - float(z[i] @ z[j]) / (np.linalg.norm(z[i]) * np.linalg.norm(z[j]))
        return float(((z[i] - z[j]) ** 2).sum())

    terms = []
    for i in range(b):
        num = sum(math.exp(-dist(i, j) / t) for j in range(b)
                  if a[j] == a[i] and (j != i or include_self))
        den = sum(math.exp(-dist(i, j) / t) for j in range(b) if j != i)
        if num > 0:
            terms.append(-math.log(num / den))
    return float(np.mean(terms))


@pytest.mark.parametrize("distance", ["cosine", "sqeuclidean"])
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("t", [1.0, 0.3])
def test_snnl_matches_double_loop(distance: str, include_self: bool, t: float) -> None:
    rng = np.random.default_rng(0)
    c, b, d = 5, 11, 6
    z = rng.normal(size=(c, b, d))
    if distance == "sqeuclidean":
        z *= 0.4
    a = np.array([0, 1, 0, 0, 1, 1, 0, 2, 1, 0, 2])  # group 2 has two members
    got = snnl_per_channel(torch.from_numpy(z), torch.from_numpy(a), temperature=t,
                           distance=distance, include_self=include_self)  # type: ignore[arg-type]
    want = [snnl_double_loop(z[k], a, t, distance, include_self) for k in range(c)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_snnl_singleton_group_left_out_and_self_term() -> None:
    z = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # sample 6 is alone in group 2
    got = snnl_per_channel(z, a)
    want = snnl_per_channel(z[:, :6], a[:6])  # its term is undefined, not its distances
    assert not torch.allclose(got, want)  # it still counts in the others' denominators
    for k in range(3):
        assert got[k].item() == pytest.approx(
            snnl_double_loop(z[k].numpy(), a.numpy(), 1.0, "cosine", False), rel=1e-9)
    # the self term makes every ratio larger: the loss never grows
    assert bool((snnl_per_channel(z, a, include_self=True) <= got + 1e-12).all())


def test_snnl_hand_made_embedding() -> None:
    # two groups on two orthogonal directions: same-group distance 0, cross-group 1 (cosine)
    z = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    a = torch.tensor([0, 0, 1, 1])
    # each sample: numerator exp(0) = 1; denominator 1 + 2·exp(−1)
    want = math.log(1 + 2 * math.exp(-1))
    assert snnl_per_channel(z, a).item() == pytest.approx(want, rel=1e-6)
    assert snnl_per_channel(z, torch.tensor([0, 1, 0, 1])).item() > want


# -- layer resolution and masking ----------------------------------------------------------------
@pytest.mark.parametrize("name,size,layer", [
    ("smallcnn", 16, "body.12"), ("vgg11", 32, "body.0.18"), ("timm_vgg11", 32, "body.0.18"),
    ("resnet18", 32, "body.layer4"), ("tv_resnet18", 32, "body.layer4")])
def test_default_layer_and_masks_zero_the_channel(name: str, size: int, layer: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=3, image_size=size).eval()
    plan = sp.plan_layer(model, None, image_size=size, device=torch.device("cpu"))
    assert plan.name == layer
    pruned = torch.zeros(plan.channels, dtype=torch.bool)
    pruned[[1, 4]] = True
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in plan.masks(model, pruned).items():
            named[n].masked_fill_(m, 0.0)
    # the channel is zero where it leaves the layer (after the BatchNorm that follows a conv)
    writers = [w.rsplit(".", 1)[0] for w in plan.writers]
    out_module = dict(model.named_modules())[layer if "layer4" in layer else writers[-1]]
    seen: dict[str, torch.Tensor] = {}
    hook = out_module.register_forward_hook(lambda m, i, o: seen.__setitem__("o", o.clone()))
    with torch.no_grad():
        model(torch.randn(3, 3, size, size))
    hook.remove()
    assert float(seen["o"][:, [1, 4]].abs().max()) == 0.0
    assert float(seen["o"][:, [0, 2]].abs().max()) > 0.0


def test_mask_bias_false_masks_the_weights_only_as_released() -> None:
    """``mask_bias=false`` is the released weight-only mask: the conv bias and the following
    BatchNorm's scale and shift stay, so the pruned channel leaves the layer as a constant
    (the same value for every input), not as zero."""
    torch.manual_seed(0)
    model = create_backbone("smallcnn", num_classes=3, image_size=16, width=4).eval()
    cpu = torch.device("cpu")
    full = sp.plan_layer(model, "body.12", image_size=16, device=cpu)
    assert full.writers == ["body.12.weight", "body.13.weight", "body.13.bias"]
    plan = sp.plan_layer(model, "body.12", image_size=16, device=cpu, mask_bias=False)
    assert plan.writers == ["body.12.weight"]
    with torch.no_grad():
        model.body[13].bias.add_(0.5)  # a visible shift (a fresh BatchNorm's is zero)
    pruned = torch.zeros(plan.channels, dtype=torch.bool)
    pruned[2] = True
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in plan.masks(model, pruned).items():
            named[n].masked_fill_(m, 0.0)
    seen: dict[str, torch.Tensor] = {}
    hook = model.body[13].register_forward_hook(lambda m, i, o: seen.__setitem__("o", o))
    with torch.no_grad():
        model(torch.randn(3, 3, 16, 16))
    hook.remove()
    channel = seen["o"][:, 2]
    assert float((channel - channel.flatten()[0]).abs().max()) == 0.0  # a constant ...
    assert float(channel.abs().max()) > 0.0  # ... that is not zero
    vgg = create_backbone("vgg11", num_classes=3, image_size=32)
    released = sp.plan_layer(vgg, None, image_size=32, device=cpu, mask_bias=False)
    assert released.writers == ["body.0.18.weight"]


def test_layer_errors_list_valid_names() -> None:
    model = create_backbone("resnet18", num_classes=3, image_size=32)
    cpu = torch.device("cpu")
    with pytest.raises(sp.FairbenchError, match="valid layers: body.conv1, body.layer1"):
        sp.plan_layer(model, "body.nope", image_size=32, device=cpu)
    with pytest.raises(sp.FairbenchError, match="is a BatchNorm2d"):
        sp.plan_layer(model, "body.bn1", image_size=32, device=cpu)
    with pytest.raises(sp.FairbenchError, match="identity shortcut"):
        sp.plan_layer(model, "body.layer1", image_size=32, device=cpu)
    plan = sp.plan_layer(model, "body.layer4.1.conv2", image_size=32, device=cpu)
    assert plan.writers == ["body.layer4.1.conv2.weight", "body.layer4.1.bn2.weight",
                            "body.layer4.1.bn2.bias"]


# -- a channel that carries the attribute perfectly ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A finished tiny vanilla run's context (16-px synthderm, smallcnn width 8, CPU)."""
    root = tmp_path_factory.mktemp("h7ctx")
    result = run_experiment(tiny_run_config("vanilla", root, cache_dir=root / "_cache"),
                            keep_model=True)
    ctx = result.context
    # the run directory was committed (renamed): later training logs and files go elsewhere
    ctx.trainer.log = EpochLog(None)
    ctx.run_dir = root / "after"
    ctx.run_dir.mkdir()
    return ctx


def test_perfect_channel_scores_lowest_and_is_pruned_first(tiny_ctx: Any) -> None:
    ctx = tiny_ctx
    data = ctx.bundle.data
    codes = data.attrs[ctx.attribute]
    saved = data.images.clone()
    # the red plane of every image becomes a group pattern: left half bright for group 0,
    # right half bright for group 1 (unknown groups: all dark)
    half = data.images.shape[2] // 2
    red = torch.zeros_like(data.images[..., 0])
    red[codes == 0, :, :half] = 255
    red[codes == 1, :, half:] = 255
    data.images[..., 0] = red
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 1, bias=False)
    with torch.no_grad():
        conv.weight[:, 0] = 0.0  # channels 1-5 read green and blue only
        conv.weight[3, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # channel 3 reads red only
    body = nn.Sequential(conv, nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())
    model = Classifier(body, 6, ctx.n_classes)
    params = build_params(sp.SNNLPruneParams, {"n_per_round": 1, "max_channels": 2,
                                               "finetune_epochs": 0, "patience": 5,
                                               "score_batch_size": 32})
    old = ctx._vanilla, ctx._vanilla_meta, ctx.new_model
    try:
        plan = sp.plan_layer(model, None, image_size=16, device=ctx.device)
        assert plan.name == "body.0" and plan.channels == 6
        scores = sp.channel_scores(ctx, model, plan, params)
        assert int(torch.argmin(scores)) == 3
        assert float(scores[3]) < float(scores[[0, 1, 2, 4, 5]].min())
        ctx._vanilla, ctx._vanilla_meta = model, {"val": {}}
        ctx.new_model = lambda **kw: copy.deepcopy(model)
        ctx.notes.clear()
        out = sp.SNNLPrune(params).run(ctx, params)
    finally:
        data.images.copy_(saved)
        ctx._vanilla, ctx._vanilla_meta, ctx.new_model = old
    notes = ctx.notes["snnl_prune"]
    assert notes["rounds"][0]["pruned"] == [3]
    assert [r["round"] for r in notes["rounds"]] == [1, 2]
    assert notes["rounds"][1]["pruned"] != [3]  # already-pruned channels are not re-selected
    with torch.no_grad():
        assert float(out.body[0].weight[3].abs().sum()) == 0.0
        assert float(out.body[1].weight[3]) == 0.0 and float(out.body[1].bias[3]) == 0.0


# -- end-to-end: masks survive fine-tuning ----------------------------------------------------------
def test_pruned_channels_stay_zero_through_finetuning(tmp_path: Path, tiny_cache: Path) -> None:
    fits: list[dict[str, torch.Tensor]] = []
    real_fit = Trainer.fit

    def spy(self: Trainer, model: nn.Module, *args: Any, **kw: Any) -> Any:
        if kw.get("stage", "").startswith("snnl_prune"):
            fits.append({k: m.clone() for k, m in kw["hooks"].frozen.items()})
        return real_fit(self, model, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", spy)
        r = invoke("snnl_prune", tmp_path, tiny_cache,
                   {"n_per_round": "4", "max_channels": "8", "finetune_epochs": "1",
                    "patience": "3", "score_batch_size": "32", "f1_tolerance": "0.02"},
                   "--save-weights")
    assert r.exit_code == 0, r.output
    (run_dir,) = [p for p in (tmp_path / "synthderm" / "snnl_prune").iterdir() if p.is_dir()]
    notes = json.loads((run_dir / "config.json").read_text())["notes"]["snnl_prune"]
    assert notes["layer"] == "body.12" and notes["layer_channels"] == 256  # width 32
    assert [len(r["pruned"]) for r in notes["rounds"]] == [4, 4]
    assert len(fits) == 2 and int(fits[1]["body.12.weight"].any(dim=(1, 2, 3)).sum()) == 8
    chosen = notes["pruned_channels"]
    w = torch.load(run_dir / "weights.pt", weights_only=True)
    zero = w["body.12.weight"].abs().sum(dim=(1, 2, 3)) == 0
    assert sorted(zero.nonzero().squeeze(1).tolist()) == chosen
    assert bool((w["body.13.weight"][chosen] == 0).all() and (w["body.13.bias"][chosen] == 0).all())
    (vanilla_dir,) = [p for p in (tmp_path / "_vanilla").iterdir() if p.is_dir()]
    v = torch.load(vanilla_dir / "model.pt", weights_only=True)
    kept = [c for c in range(256) if c not in chosen]
    assert not torch.equal(w["body.12.weight"][kept], v["body.12.weight"][kept])  # fine-tuned
    assert (run_dir / "snnl_prune.csv").is_file() and (run_dir / "snnl_scores.csv").is_file()
    # the kept round is the best pruned round of snnl_prune.csv by the documented rule
    import csv

    with (run_dir / "snnl_prune.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["round"]) > 0]
    f1_ref = notes["vanilla_val_F1"]
    for row in rows:
        f1 = float(row["val_F1"])
        want = -float(row["val_EqOddsGap"]) if f1 >= f1_ref - 0.02 - 1e-12 else -1e3 + f1
        assert float(row["score"]) == pytest.approx(want, abs=1e-9)
    scores = [float(row["score"]) for row in rows]
    best = int(rows[scores.index(max(scores))]["round"])
    assert notes["chosen_round"] == best
    assert json.loads((run_dir / "config.json").read_text())["notes"]["chosen"] == {
        "round": best}


# -- FairDi ------------------------------------------------------------------------------------------
def test_teachers_see_only_their_group(tmp_path: Path, tiny_cache: Path) -> None:
    seen: dict[str, dict[str, set[int]]] = {}
    real_fit = Trainer.fit

    def spy(self: Trainer, model: nn.Module, train: Any, val: Any = None, **kw: Any) -> Any:
        stage = kw.get("stage", "")
        if stage.startswith("fairdi"):
            groups = {"train": {int(c) for b in train for c in b.g.tolist()}}
            if val is not None:
                groups["val"] = {int(c) for b in val for c in b.g.tolist()}
            seen[stage] = groups
        return real_fit(self, model, train, val, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", spy)
        r = invoke("fairdi", tmp_path, tiny_cache,
                   {"teacher_epochs": "1", "student_epochs": "1"})
    assert r.exit_code == 0, r.output
    assert seen["fairdi teacher light"] == {"train": {0}, "val": {0}}
    assert seen["fairdi teacher dark"] == {"train": {1}, "val": {1}}
    assert seen["fairdi student"]["train"] >= {0, 1}


def test_head_only_teacher_keeps_the_body(tiny_ctx: Any) -> None:
    ctx = tiny_ctx
    params = build_params(fd.FairDiParams, {"teacher_scope": "head", "teacher_epochs": 1})
    base = ctx.vanilla()
    teacher, info = fd.train_teacher(ctx, base, 1, params)
    assert info["group"] == ctx.group_names[1]
    b, t = base.state_dict(), teacher.state_dict()
    for k in b:
        if k.startswith("body."):
            assert torch.equal(b[k], t[k]), k  # weights and BatchNorm statistics
    # the head moved, unless fine-tuning did not beat the base on the group's validation F1
    assert info["kept_base"] == torch.equal(b["classifier.weight"], t["classifier.weight"])


def test_teacher_is_never_worse_than_its_base_on_its_group(tiny_ctx: Any) -> None:
    """With ``teacher_keeps_base`` the base model is a candidate checkpoint of every teacher:
    its validation F1 on its own group is at least the base's, and a fine-tuning that only
    hurts (a learning rate that wrecks the weights) returns the base model itself; without
    it (the default, the paper's step 1) the wrecked fine-tuned epoch is the teacher."""
    ctx = tiny_ctx
    base = ctx.vanilla()
    paper = build_params(fd.FairDiParams, {"teacher_epochs": 1, "teacher_lr": 50.0})
    teacher, info = fd.train_teacher(ctx, base, 1, paper)
    assert not info["kept_base"] and info["best_epoch"] == 1
    assert not all(torch.equal(teacher.state_dict()[k], v) for k, v in base.state_dict().items())
    wreck = build_params(fd.FairDiParams, {"teacher_epochs": 1, "teacher_lr": 50.0,
                                           "teacher_keeps_base": True})
    teacher, info = fd.train_teacher(ctx, base, 1, wreck)
    assert info["kept_base"] and info["best_epoch"] == 0
    for k, v in base.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v), k
    # the recorded validation F1 is the base's, recomputed independently on the group
    from fairbench.metrics.classification import macro_prf

    pred = ctx.trainer.predict(base, ctx.loader("val", groups=[1]), ctx.train_config)
    f1 = macro_prf(ctx.table.labels[pred.index], pred.probs.argmax(1))[2]
    assert info["val_F1"] == pytest.approx(f1) == pytest.approx(info["base_val_F1"])
    gentle = build_params(fd.FairDiParams, {"teacher_epochs": 2, "teacher_lr": 1e-3,
                                            "teacher_keeps_base": True})
    _, info = fd.train_teacher(ctx, base, 0, gentle)
    assert info["val_F1"] >= info["base_val_F1"]


def test_teacher_routing() -> None:
    class Const(nn.Module):
        def __init__(self, v: float) -> None:
            super().__init__()
            self.v, self.rows = v, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.rows += x.shape[0]
            return torch.full((x.shape[0], 3), self.v)

    teachers = [Const(1.0), Const(2.0)]
    g = torch.tensor([1, 0, -1, 1, 1])
    out = fd.teacher_logits(teachers, torch.zeros(5, 3, 4, 4), g, (3,))  # type: ignore[arg-type]
    assert out[:, 0].tolist() == [2.0, 1.0, 0.0, 2.0, 2.0]
    assert teachers[0].rows == 1 and teachers[1].rows == 3


def test_distillation_loss_properties() -> None:
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(6, 4, generator=gen, requires_grad=True)
    t = torch.randn(6, 4, generator=gen, requires_grad=True)
    for tau in (0.5, 1.0, 3.0):
        kd = distillation_kl(s, t, tau)
        assert kd.shape == (6,) and bool((kd >= 0).all())
        ref = torch.nn.functional.kl_div(torch.log_softmax(s / tau, 1), torch.softmax(t / tau, 1),
                                         reduction="none").sum(1) * tau ** 2
        torch.testing.assert_close(kd, ref)
        assert float(distillation_kl(t, t, tau).detach().abs().max()) < 1e-6
    distillation_kl(s, t, 2.0).sum().backward()
    assert t.grad is None and s.grad is not None  # the teacher is a fixed target
    # segmentation logits: the per-sample loss is the mean of the per-pixel losses
    s4, t4 = torch.randn(2, 3, 5, 4, generator=gen), torch.randn(2, 3, 5, 4, generator=gen)
    per_pixel = distillation_kl(s4.permute(0, 2, 3, 1).reshape(-1, 3),
                                t4.permute(0, 2, 3, 1).reshape(-1, 3), 2.0).view(2, -1).mean(1)
    torch.testing.assert_close(distillation_kl(s4, t4, 2.0), per_pixel)
    with pytest.raises(ValueError, match="> 0"):
        distillation_kl(s, t, 0.0)
    # the objective: CE alone where there is no teacher
    ce, kd = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    has = torch.tensor([True, False, True])
    got = distillation_objective(ce, kd, has, 0.25)
    assert got.item() == pytest.approx((0.75 * 1 + 0.25 * 10 + 2.0 + 0.75 * 3 + 0.25 * 30) / 3)
    assert distillation_objective(ce, kd, has, 0.0).item() == pytest.approx(2.0)


def test_fis_pieces() -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, generator=gen), torch.randn(8, generator=gen) + 1.0
    want = float(((torch.sort(u)[0] - torch.sort(v)[0]) ** 2).mean())
    assert float(fd.wasserstein2_1d(u, v)) == pytest.approx(want, rel=1e-6)
    # unequal sizes: u = {0, 1}, v = {0, 0.5, 1}: quantile pieces of width 1/3, 1/6, 1/6, 1/3
    w = fd.wasserstein2_1d(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5, 1.0]))
    assert float(w) == pytest.approx(1 / 6 * 0.25 + 1 / 6 * 0.25)
    losses = torch.rand(10, generator=gen)
    weights = fd.fis_weights(losses, torch.rand(10, generator=gen), c=0.5, temperature=1.0, r=2.0)
    assert float(weights.mean()) == pytest.approx(2.0)
    assert int(torch.argmax(fd.fis_weights(losses, torch.zeros(10), c=0.0, temperature=1.0,
                                           r=1.0))) == int(torch.argmax(losses))


def test_fairdi_fis_base_runs(tmp_path: Path, tiny_cache: Path) -> None:
    r = invoke("fairdi", tmp_path, tiny_cache, {"base": "fis", "teacher_epochs": "1",
                                                "student_epochs": "1", "fis_group_batch": "8"})
    assert r.exit_code == 0, r.output
    (run_dir,) = [p for p in (tmp_path / "synthderm" / "fairdi").iterdir() if p.is_dir()]
    notes = json.loads((run_dir / "config.json").read_text())["notes"]["fairdi"]
    assert notes["base"] == "fis"


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,params,fragments", [
    ("snnl_prune", {"temperature": "0"}, ["temperature", "out of range (0,"]),
    ("snnl_prune", {"layer": "body.99"}, ["layer 'body.99'", "valid layers: body.0, body.4"]),
    ("snnl_prune", {"n_per_round": "256"}, ["n_per_round=256", "which has 256"]),
    ("snnl_prune", {"max_channels": "300"}, ["max_channels=300", "which has 256"]),
    ("fairdi", {"temperature": "-1"}, ["temperature", "out of range (0,"]),
    ("fairdi", {"min_teacher_samples": "1000"}, ["group 'light'", "min_teacher_samples=1000"]),
])
def test_bad_input_one_line_exit_2(method: str, params: dict[str, str], fragments: list[str],
                                   tmp_path: Path, tiny_cache: Path) -> None:
    assert_cli_error(invoke(method, tmp_path, tiny_cache, params), *fragments)
    assert not (tmp_path / "_vanilla").exists()  # failed before the baseline was trained


# -- conformance --------------------------------------------------------------------------------------
def test_check_method_snnl_prune(tmp_path: Path) -> None:
    check_method("snnl_prune", tmp_path, params={"finetune_epochs": 1, "score_batch_size": 32})


def test_check_method_fairdi(tmp_path: Path) -> None:
    check_method("fairdi", tmp_path, params={"teacher_epochs": 1, "student_epochs": 1})
