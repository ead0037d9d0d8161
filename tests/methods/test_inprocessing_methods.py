"""In-training baselines: mfd, adv_conf, adv_rev, resampling, groupdro.

Each method passes the conformance check; each loss is checked on hand-made tensors against an
independent direct computation; bad input (out-of-range parameters, a single-group attribute)
ends as one ``error:`` line with exit code 2 through the CLI.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from dataset_helpers import assert_cli_error, cli, make_jpegs
from fairbench.methods.adversarial import ClassAdversaries
from fairbench.methods.groupdro import dro_update, group_mean_losses

from fairbench import check_method, create_backbone
from fairbench.models.features import FeatureTap
from fairbench.run.inprocessing import (
    confusion_loss,
    grad_reverse,
    known_group_ce,
    mfd_mmd_terms,
)

METHODS = ["mfd", "adv_conf", "adv_rev", "resampling", "groupdro"]


# -- conformance -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_check_method(name: str, tmp_path: Path) -> None:
    metrics = check_method(name, tmp_path)
    assert 0.0 <= metrics["test"]["F1"] <= 1.0


@pytest.mark.parametrize("name,params", [
    ("mfd", {"features": "pooled", "sampler": "shuffle"}),
    ("adv_conf", {"adv_layers": 2, "adv_steps": 2, "adv_lr": 1e-3, "warmup_epochs": 1}),
    ("adv_rev", {"per_class": False, "input": "logits"}),
    ("resampling", {"by": "group"}),
    ("groupdro", {"groups": "group_class", "adjustment": 1.0, "sampler": "group"}),
])
def test_check_method_variants(name: str, params: dict, tmp_path: Path) -> None:
    check_method(name, tmp_path, params=params)


def test_methods_differ_from_vanilla(tmp_path: Path, make_tiny_config) -> None:
    """Each method changes training (not a silent vanilla): different validation predictions."""
    from fairbench import run_experiment

    probs = {}
    for name in ["vanilla", *METHODS]:
        res = run_experiment(make_tiny_config(name, tmp_path, train={"epochs": 2}),
                             keep_model=True)
        ctx = res.context
        probs[name] = ctx.trainer.predict(res.model, ctx.loader("val"), ctx.train_config).probs
        if name != "vanilla":
            assert not np.allclose(probs[name], probs["vanilla"]), name


# -- behaviour inside real runs --------------------------------------------------------------------
def spy_fit(stage: str):
    """A Trainer.fit wrapper that hands the call for ``stage`` to ``inspect(model, train,
    hooks)`` before training, and the trained model to ``after`` (set on the returned dict)."""
    from fairbench.training.trainer import Trainer

    real = Trainer.fit
    box: dict = {}

    def fit(self, model, train, val=None, **kw):
        if kw.get("stage") == stage and "inspect" in box:
            box["inspect"](model, train, kw.get("hooks"))
        return real(self, model, train, val, **kw)

    return fit, box


@pytest.mark.parametrize("by", ["group", "group_class"])
def test_resampling_batches_are_balanced_as_configured(by: str, tmp_path: Path,
                                                       make_tiny_config, monkeypatch) -> None:
    from fairbench import run_experiment
    from fairbench.training.trainer import Trainer

    fit, box = spy_fit("resampling")
    seen: list = []

    def inspect(model, train, hooks):
        for b in train:
            seen.append((b.g.numpy().copy(), b.y.numpy().copy()))

    box["inspect"] = inspect
    monkeypatch.setattr(Trainer, "fit", fit)
    cfg = make_tiny_config("resampling", tmp_path, params={"by": by},
                           train={"batch_size": 12})
    res = run_experiment(cfg, keep_model=True)
    n_train = len(res.context.positions("train"))
    assert len(seen) == n_train // 12
    for g, y in seen:
        assert len(g) == 12  # the configured batch size
        keys = g if by == "group" else g * 10 + y
        counts = np.unique(keys, return_counts=True)[1]
        n_strata = 2 if by == "group" else len(np.unique(
            res.context.table.attr(res.context.attribute)[res.context.positions("train")] * 10
            + res.context.table.labels[res.context.positions("train")]))
        assert len(counts) == min(n_strata, 12)
        assert counts.max() - counts.min() <= 1
    assert res.context.notes["resampling"]["by"] == by


def test_groupdro_weights_reach_the_loss(tmp_path: Path, make_tiny_config,
                                         monkeypatch) -> None:
    """With the weights forced onto one group, the training loss is that group's mean
    cross-entropy in the batch (computed independently), the other group's rows weigh 0."""
    import fairbench.methods.groupdro as gd

    from fairbench import run_experiment
    from fairbench.training.trainer import StepState, Trainer

    monkeypatch.setattr(gd, "dro_update", lambda q, losses, eta, adjust=None:
                        torch.tensor([0.0, 1.0]))
    fit, box = spy_fit("groupdro")
    checked = []

    def inspect(model, train, hooks):
        model.eval()
        for b in list(train)[:3]:
            with torch.no_grad():
                got = hooks.loss(model, b, StepState(model=model))
                ce = F.cross_entropy(model(b.x), b.y, reduction="none")
            want = ce[b.g == 1].mean() if bool((b.g == 1).any()) else torch.tensor(0.0)
            checked.append((float(got), float(want)))
        model.train()

    box["inspect"] = inspect
    monkeypatch.setattr(Trainer, "fit", fit)
    run_experiment(make_tiny_config("groupdro", tmp_path, params={"groups": "group"}))
    assert len(checked) == 3
    for got, want in checked:
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_mfd_teacher_stays_frozen(tmp_path: Path, make_tiny_config, monkeypatch) -> None:
    """The teacher (the vanilla model) is in eval mode without gradients at every step, and
    its weights and BatchNorm statistics are bit-identical to the vanilla model's after
    training, while the student moved."""
    from fairbench import RunContext, run_experiment

    real_vanilla = RunContext.vanilla
    teachers: list = []

    def vanilla(self):
        model = real_vanilla(self)
        teachers.append(model)
        return model

    monkeypatch.setattr(RunContext, "vanilla", vanilla)
    from fairbench.training.trainer import Trainer

    fit, box = spy_fit("mfd")
    modes: list = []

    def inspect(model, train, hooks):
        real_loss = hooks.loss

        def loss(m, batch, state):
            (t,) = teachers
            modes.append((t.training, any(p.requires_grad for p in t.parameters())))
            return real_loss(m, batch, state)

        hooks.loss = loss

    box["inspect"] = inspect
    monkeypatch.setattr(Trainer, "fit", fit)
    # (the vanilla run folder a run leaves would ask for the vanilla model once more)
    res = run_experiment(dataclasses.replace(make_tiny_config("mfd", tmp_path,
                                                              train={"epochs": 2}),
                                             leave_vanilla_run=False), keep_model=True)
    (teacher,) = teachers
    assert modes and all(m == (False, False) for m in modes)
    cached = torch.load(next((tmp_path / "_vanilla").rglob("model.pt")), weights_only=True)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v.cpu(), cached[k]), k
    assert any(not torch.equal(v.cpu(), cached[k])
               for k, v in res.model.state_dict().items() if v.is_floating_point())


def test_adv_conf_alternates_per_step(tmp_path: Path, make_tiny_config, monkeypatch) -> None:
    """As documented: every step the model takes its step, then the adversary takes
    ``adv_steps`` steps (every ``adv_every`` steps); the model's step never moves the
    adversary and the adversary's steps never move the model."""
    from fairbench import run_experiment
    from fairbench.training.trainer import Trainer

    fit, box = spy_fit("adv_conf")
    log: list = []

    def inspect(model, train, hooks):
        (aux,) = hooks.aux
        adversary = aux.module

        def snap(m):
            return torch.cat([p.detach().flatten().clone() for p in m.parameters()])

        real_loss, real_aux = hooks.loss, aux.loss

        def loss(m, batch, state):
            log.append(("model", state.global_step, snap(model), snap(adversary)))
            return real_loss(m, batch, state)

        def aux_loss(m, batch, state):
            log.append(("adversary", state.global_step, snap(model), snap(adversary)))
            return real_aux(m, batch, state)

        hooks.loss, aux.loss = loss, aux_loss

    box["inspect"] = inspect
    monkeypatch.setattr(Trainer, "fit", fit)
    run_experiment(make_tiny_config("adv_conf", tmp_path,
                                    params={"adv_steps": 2, "adv_every": 2}))
    kinds = [(k, s) for k, s, _, _ in log]
    steps = sorted({s for _, s in kinds})
    want = []
    for s in steps:
        want.append(("model", s))
        if s % 2 == 0:
            want += [("adversary", s), ("adversary", s)]
    assert kinds == want
    for (k1, _, m1, a1), (_, _, m2, a2) in itertools.pairwise(log):
        if k1 == "model":  # the model's step happened between these two calls
            assert torch.equal(a1, a2)
        else:  # an adversary step happened between these two calls
            assert torch.equal(m1, m2)


# -- MMD of MFD ------------------------------------------------------------------------------------
def direct_mmd_sum(t: np.ndarray, s: np.ndarray, y: np.ndarray, g: np.ndarray,
                   sigma: float) -> float:
    """Σ_c Σ_g MMD²(T_c, S_cg) by plain loops in float64 (independent of the implementation)."""
    def k(u: np.ndarray, v: np.ndarray, scale: float) -> float:
        return math.exp(-float(((u - v) ** 2).sum()) / scale)

    dbar = np.mean([((a - b) ** 2).sum() for a in t for b in s])
    scale = 2 * sigma * dbar
    total = 0.0
    for c in sorted(set(y.tolist())):
        tc = [t[i] for i in range(len(y)) if y[i] == c]
        for grp in sorted(set(g[g >= 0].tolist())):
            sc = [s[i] for i in range(len(y)) if y[i] == c and g[i] == grp]
            if not sc:
                continue
            xx = np.mean([k(a, b, scale) for a in tc for b in tc])
            yy = np.mean([k(a, b, scale) for a in sc for b in sc])
            xy = np.mean([k(a, b, scale) for a in tc for b in sc])
            total += xx + yy - 2 * xy
    return total


def test_mmd_zero_for_identical_feature_sets() -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(6, 5, generator=gen)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    # one group: S_c0 is T_c itself
    mmd, n = mfd_mmd_terms(f, f.clone(), y, torch.zeros(6, dtype=torch.long), 1.0, 2, 2)
    assert int(n) == 2 and abs(float(mmd)) < 1e-6
    # two groups holding the same features: each group's empirical distribution equals T_c's
    f2 = torch.cat([f, f])
    y2, g2 = torch.cat([y, y]), torch.cat([torch.zeros(6), torch.ones(6)]).long()
    mmd, n = mfd_mmd_terms(f2, f2.clone(), y2, g2, 0.5, 2, 2)
    assert int(n) == 4 and abs(float(mmd)) < 1e-6


def test_mmd_positive_and_matches_direct_computation() -> None:
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(10, 4, generator=gen)
    s = torch.randn(10, 4, generator=gen) + 0.5
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 0, 1])
    g = torch.tensor([0, 1, 0, 1, 0, -1, 1, 1, 1, 0])  # one unknown group; cell (2, 0) empty
    for sigma in (1.0, 0.3):
        mmd, n = mfd_mmd_terms(t, s, y, g, sigma, 3, 2)
        expected = direct_mmd_sum(t.double().numpy(), s.double().numpy(), y.numpy(), g.numpy(),
                                  sigma)
        assert int(n) == 5
        assert float(mmd) > 0
        assert float(mmd) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_mmd_gradient_reaches_student_only_when_it_differs() -> None:
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(8, 3, generator=gen)
    s = (t + 0.3 * torch.randn(8, 3, generator=gen)).requires_grad_(True)
    y, g = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    mmd, _ = mfd_mmd_terms(t, s, y, g, 1.0, 2, 2)
    mmd.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_feature_tap_captures_the_map_before_pooling() -> None:
    model = create_backbone("smallcnn", num_classes=3, image_size=32, width=4).eval()
    tap = FeatureTap(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        fmap = tap.take()
        z = model.features(x)
    tap.remove()
    tap.value = None
    assert fmap.shape == (2, 32 * 2 * 2)  # 8w channels on a 2×2 map
    # global average pooling of the captured map is the pooled embedding
    assert torch.allclose(fmap.view(2, 32, 4).mean(2), z, atol=1e-6)
    assert torch.allclose(model.head(z), logits, atol=1e-6)
    with torch.no_grad():
        model(x)
    assert tap.value is None  # removed: nothing captured any more


@pytest.mark.parametrize("name", ["timm_vgg11", pytest.param("vgg11", marks=pytest.mark.slow),
                                  "resnet18"])
def test_feature_tap_takes_a_real_feature_map(name: str) -> None:
    """``features=map`` is a spatial map of the last convolutional stage on every paper
    backbone: VGG's 512×s×s features (not the 4096-d pre-logits vector, which timm's VGG
    computes with convolutions), ResNet's 512×h×w map before its global pooling."""
    model = create_backbone(name, num_classes=3, image_size=64).eval()
    tap = FeatureTap(model)
    assert tap.found
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
    fmap = tap.take()
    tap.remove()
    assert fmap.shape == (2, 512 * 2 * 2)  # 512 channels on a 2×2 map at 64 px
    with torch.no_grad():
        z = model.features(x)
    assert z.shape[1] != fmap.shape[1]  # the map is not the embedding the classifier reads


# -- adversaries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [1.0, 0.25, 2.0])
def test_gradient_reversal_flips_and_scales(lam: float) -> None:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    out = grad_reverse(x, lam)
    assert torch.equal(out, x)  # identity forward
    (out * w).sum().backward()
    assert torch.allclose(x.grad, -lam * w)


def test_confusion_loss_is_minimal_at_uniform_output() -> None:
    n_groups = 3
    uniform = torch.zeros(5, n_groups, requires_grad=True)
    loss = confusion_loss(uniform)
    assert loss.item() == pytest.approx(math.log(n_groups), abs=1e-6)
    loss.backward()
    assert float(uniform.grad.abs().max()) < 1e-7  # stationary at the uniform output
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        logits = torch.randn(5, n_groups, generator=gen) * 3
        direct = -np.mean([np.mean(np.log(F.softmax(row, 0).numpy())) for row in logits])
        assert float(confusion_loss(logits)) == pytest.approx(direct, rel=1e-5)
        assert float(confusion_loss(logits)) > math.log(n_groups)
    # a constant shift of every logit is still uniform
    assert float(confusion_loss(torch.full((2, n_groups), 7.0))) == pytest.approx(
        math.log(n_groups), abs=1e-6)


def test_group_ce_ignores_unknown_groups() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], requires_grad=True)
    g = torch.tensor([0, 1, -1])
    expected = F.cross_entropy(logits[:2], g[:2])
    assert known_group_ce(logits, g).item() == pytest.approx(expected.item())
    none = known_group_ce(logits, torch.tensor([-1, -1, -1]))
    assert none.item() == 0.0 and none.requires_grad


def test_per_class_adversaries_use_their_class_rows() -> None:
    torch.manual_seed(0)
    adv = ClassAdversaries(d_in=3, n_groups=2, n_classes=3, per_class=True, hidden=4, layers=2)
    u = torch.randn(7, 3)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    g = torch.tensor([0, 1, 1, 0, -1, 1, 0])
    expected = 0.0
    for c in range(3):
        rows = [i for i in range(7) if y[i] == c and g[i] >= 0]
        expected += F.cross_entropy(adv.nets[c](u[rows]), g[rows]).item()
    assert adv.loss(u, y, g).item() == pytest.approx(expected, rel=1e-5)
    # through the reversal layer the network side gets the negated adversary gradient
    v = u.clone().requires_grad_(True)
    adv.loss(grad_reverse(v, 2.0), y, g).backward()
    w = u.clone().requires_grad_(True)
    adv.loss(w, y, g).backward()
    assert torch.allclose(v.grad, -2.0 * w.grad, atol=1e-6)


# -- GroupDRO --------------------------------------------------------------------------------------
def test_group_mean_losses_by_hand() -> None:
    losses = torch.tensor([1.0, 3.0, 2.0, 10.0, 4.0])
    k = torch.tensor([0, 0, 1, -1, 1])
    means, present = group_mean_losses(losses, k, 3)
    assert means.tolist() == [2.0, 3.0, 0.0]
    assert present.tolist() == [True, True, False]


def test_dro_weights_move_toward_the_worse_group() -> None:
    q = torch.full((2,), 0.5)
    losses = torch.tensor([0.2, 1.5])  # group 1 is worse
    q1 = dro_update(q, losses, eta=0.1)
    expected = np.array([0.5 * math.exp(0.02), 0.5 * math.exp(0.15)])
    assert np.allclose(q1.numpy(), expected / expected.sum())
    assert float(q1[1]) > 0.5 and float(q1.sum()) == pytest.approx(1.0)
    q = q1
    for _ in range(200):
        q = dro_update(q, losses, eta=0.1)
    assert float(q[1]) > 0.99  # concentrates on the worst group
    # the adjustment C/sqrt(N) favours the smaller group at equal losses
    qa = dro_update(torch.full((2,), 0.5), torch.tensor([1.0, 1.0]), eta=0.5,
                    adjust=torch.tensor([1.0 / math.sqrt(100), 1.0 / math.sqrt(4)]))
    assert float(qa[1]) > float(qa[0])


# -- bad input through the CLI ---------------------------------------------------------------------
TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--train", "batch_size=16", "--device", "cpu", "-q"]
SYNTH = ["--data-param", "n_samples=120", "--data-param", "n_classes=2",
         "--data-param", "images_per_patient=1.0"]


@pytest.mark.parametrize("method,params,needle", [
    ("mfd", ["lam=-1"], "lam"),
    ("mfd", ["sigma=0"], "sigma"),
    ("mfd", ["features=bogus"], "features"),
    ("adv_conf", ["alpha=-0.5"], "alpha"),
    ("adv_conf", ["adv_steps=0"], "adv_steps"),
    ("adv_rev", ["lam=-2"], "lam"),
    ("adv_rev", ["input=pixels"], "input"),
    ("resampling", ["by=class"], "by"),
    ("groupdro", ["eta=-0.1"], "eta"),
    ("groupdro", ["groups=patient"], "groups"),
])
def test_bad_parameters_exit_2_with_one_line(tmp_path: Path, tiny_cache: Path, method: str,
                                             params: list[str], needle: str) -> None:
    extra = [x for p in params for x in ("-p", p)]
    runs = tmp_path / "runs"
    result = cli("run", "--method", method, *TINY, *SYNTH, *extra, "--runs-dir", str(runs),
                 "--cache-dir", str(tiny_cache))
    assert_cli_error(result, needle)
    assert not (runs / "_vanilla").exists()  # failed before any training


@pytest.fixture(scope="module")
def single_group_root(tmp_path_factory) -> Path:
    """A csv dataset of 40 images whose attribute ``site`` takes one value only."""
    root = tmp_path_factory.mktemp("onegroup")
    names = [f"img{i:02d}" for i in range(40)]
    make_jpegs(root, names, size=(20, 20))
    pd.DataFrame({"path": [f"{n}.jpg" for n in names],
                  "label": ["a", "b"] * 20,
                  "site": ["clinic"] * 40}).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.mark.parametrize("method", METHODS)
def test_single_group_attribute_exit_2_with_one_line(tmp_path: Path, single_group_root: Path,
                                                     method: str) -> None:
    """Through the CLI the core's data check stops a single-group attribute first."""
    runs = tmp_path / "runs"
    result = cli("run", "--method", method, *TINY, "--dataset", "csv", "--data-root",
                 str(single_group_root), "--data-param", "attr_col=site",
                 "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache"))
    assert_cli_error(result, "single group", "site")
    assert not (runs / "_vanilla").exists()


class _OneGroupContext:
    """Stands in for a RunContext whose attribute has one group (e.g. built through the API,
    past the CLI's check); any use beyond the group check fails the test."""

    attribute = "site"
    group_names = ("clinic",)
    n_groups = 1
    n_classes = 2

    def __getattr__(self, name: str):
        raise AssertionError(f"the method used ctx.{name} before checking the groups")


@pytest.mark.parametrize("method", METHODS)
def test_single_group_context_raises_one_clear_error(method: str) -> None:
    from fairbench import FairbenchError, create_method

    m = create_method(method)
    with pytest.raises(FairbenchError) as info:
        m.run(_OneGroupContext(), m.params)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg and method in msg and "at least 2 groups" in msg
    assert "--attribute" in msg
