"""The mechanisms act: for MFD, GroupDRO, AdvRev, FairDi and ME-FairPrune, a tiny run on a
case built so that the mechanism must act, and a measurement, made here independently of the
method's own report where possible, that it changed what it claims to change; and the run's
engagement record (``config.json`` ``engagement.engaged``) reads true there and false where
the mechanism cannot act, where the method's criterion allows that.

Every comparison is between two runs of the same seed that differ only in the mechanism's
weight (λ, η) or in what its teachers are; no threshold is copied from one output: where a
number is asserted, the comment says why it holds. One claim fails on these cases and is
kept as a strict expected failure (``xfail(strict=True)``), with what was measured: AdvRev's
gradient reversal does not hide the group from a fresh linear probe (the probe does better, not
worse, with λ > 0). Its record read engaged at λ = 0 where the adversary is weak, until the
record compared a fresh probe with vanilla's. (MFD's criterion read engaged with the MMD
weight at 0, found here; it now needs λ > 0.)
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from fairbench import run_experiment


def spy_fit(stage: str, inspect):
    """A ``Trainer.fit`` that hands the call of ``stage`` to ``inspect(model, train, hooks)``
    before training (so a test can wrap the hooks); every other call is the real one."""
    from fairbench.training.trainer import Trainer

    real = Trainer.fit

    def fit(self, model, train, val=None, **kw):
        if kw.get("stage") == stage:
            inspect(model, train, kw.get("hooks"))
        return real(self, model, train, val, **kw)

    return fit


def record(result) -> dict[str, Any]:
    """The run's config.json as written (notes and engagement record)."""
    return json.loads((result.run_dir / "config.json").read_text())


@torch.no_grad()
def outputs(model: nn.Module, ctx, part: str, fn=None) -> tuple[np.ndarray, ...]:
    """``fn(model, x)`` (default: the logits) of every sample of ``part`` in eval mode, with
    the labels and groups, in the loader's order."""
    was = model.training
    model.eval()
    out, ys, gs = [], [], []
    for b in ctx.loader(part):
        out.append((fn(model, b.x) if fn else model(b.x)).double().cpu().numpy())
        ys.append(b.y.cpu().numpy())
        gs.append(b.g.cpu().numpy())
    model.train(was)
    return np.concatenate(out), np.concatenate(ys), np.concatenate(gs)


# -- MFD ---------------------------------------------------------------------------------------
def gaussian_mmd2(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    """Biased MMD² of two samples with the kernel exp(−‖u − v‖² / scale), plain numpy."""
    def k(u, v):
        return np.exp(-((u[:, None, :] - v[None, :, :]) ** 2).sum(-1) / scale)
    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def between_group_mmd(f: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """Σ over classes of MMD²(features of group 0, features of group 1) within the class; the
    kernel's bandwidth is the median pairwise squared distance of the features, so a model
    whose features merely shrink is not counted as aligning the groups."""
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    scale = float(np.median(d[d > 0]))
    total = 0.0
    for c in np.unique(y):
        a, b = f[(y == c) & (g == 0)], f[(y == c) & (g == 1)]
        if len(a) and len(b):
            total += gaussian_mmd2(a, b, scale)
    return total


@pytest.fixture(scope="module")
def mfd_runs(tmp_path_factory, make_tiny_config):
    """MFD with λ = 3 (its default) and λ = 0, seed 0, 2 epochs, on the pooled features (at
    16 px smallcnn's final map is 1×1, the same vector)."""
    root = tmp_path_factory.mktemp("mfd")
    return {lam: run_experiment(make_tiny_config(
        "mfd", root, params={"lam": lam, "features": "pooled"}, train={"epochs": 2}),
        keep_model=True) for lam in (3.0, 0.0)}


def test_mfd_brings_the_groups_features_together(mfd_runs) -> None:
    """The MMD between the two groups' features (class by class), computed here from the
    returned students, is lower with the MMD term than without it, on the training images
    it was trained on and on the test images. (Measured, seeds 0-2: train 1.84/2.63/1.96 →
    1.10/1.25/1.58, test 2.81/3.50/2.79 → 1.53/1.84/2.14; only "lower" is asserted.)"""
    for part in ("train", "test"):
        mmd = {lam: between_group_mmd(*outputs(r.model, r.context, part,
                                               lambda m, x: m.features(x)))
               for lam, r in mfd_runs.items()}
        assert mmd[3.0] < mmd[0.0], (part, mmd)
    on = record(mfd_runs[3.0])["engagement"]
    assert on["engaged"] is True
    assert on["figures"]["mmd_last_epoch"] < on["figures"]["mmd_first_epoch"]


def test_mfd_does_not_engage_without_its_term(mfd_runs) -> None:
    """With λ = 0 the term has no weight: not engaged, although plain cross-entropy lowers
    the first batch's MMD too (measured, seed 0: 3.67 -> 3.25; seeds 1, 2 likewise), which
    the MMD rule alone counted as engaged."""
    off = record(mfd_runs[0.0])["engagement"]
    assert off["engaged"] is False and off["figures"]["lam"] == 0.0


# -- GroupDRO ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def groupdro_runs(tmp_path_factory, make_tiny_config):
    """GroupDRO with η = 0.2 and η = 0 on synthderm with 60 % label noise on dark skin (so
    that group's loss stays higher whatever the model learns), seed 0, 2 epochs; every
    training step's logits are taken (a forward hook inside the loss) with its batch, and the
    per-group mean cross-entropy of the step computed here."""
    from fairbench.training.trainer import Trainer

    root = tmp_path_factory.mktemp("groupdro")
    out = {}
    mp = pytest.MonkeyPatch()
    try:
        for eta in (0.2, 0.0):
            steps: list[np.ndarray] = []

            def inspect(model, train, hooks, steps=steps):
                real = hooks.loss

                def loss(m, batch, state):
                    seen: dict = {}

                    def take(_m, _i, o):  # returns None: the output is left as it is
                        seen.setdefault("logits", o.detach())

                    handle = m.register_forward_hook(take)
                    try:
                        value = real(m, batch, state)
                    finally:
                        handle.remove()
                    ce = F.cross_entropy(seen["logits"].double(), batch.y, reduction="none")
                    steps.append(np.array([float(ce[batch.g == k].mean())
                                           if bool((batch.g == k).any()) else 0.0
                                           for k in (0, 1)]))
                    return value

                hooks.loss = loss

            mp.setattr(Trainer, "fit", spy_fit("groupdro", inspect))
            res = run_experiment(make_tiny_config(
                "groupdro", root, params={"eta": eta, "groups": "group"},
                data={"label_noise_dark": 0.6}, train={"epochs": 2}), keep_model=True)
            out[eta] = (res, np.array(steps))
    finally:
        mp.undo()
    return out


def test_groupdro_weights_the_group_whose_loss_is_higher(groupdro_runs) -> None:
    res, steps = groupdro_runs[0.2]
    names = res.context.group_names
    cumulative = steps.sum(0)  # Σ_t L_k,t over the training steps, computed here
    hard = int(np.argmax(cumulative))
    assert names[hard] == "dark"  # the noisy group's loss is the higher one, as built
    q = record(res)["notes"]["groupdro"]["final_q"]
    # q starts uniform and each step multiplies it by exp(η L_k), so the final weights are
    # softmax(η Σ_t L_k,t): the reported weights are those of the losses measured here
    want = np.exp(0.2 * (cumulative - cumulative.max()))
    want /= want.sum()
    np.testing.assert_allclose([q[n] for n in names], want, atol=1e-5)
    assert q["dark"] > 0.5 > q["light"]
    assert record(res)["engagement"]["engaged"] is True


def test_groupdro_with_zero_step_keeps_uniform_weights(groupdro_runs) -> None:
    res, steps = groupdro_runs[0.0]
    assert len(steps) > 0 and steps[:, 1].mean() > steps[:, 0].mean()  # losses still differ
    assert record(res)["notes"]["groupdro"]["final_q"] == {"light": 0.5, "dark": 0.5}
    eng = record(res)["engagement"]
    assert eng["engaged"] is False and eng["figures"]["tv_from_uniform"] == 0.0


# -- AdvRev ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tint_data(tmp_path_factory) -> Path:
    """320 PNG images (a csv dataset) whose group is a noisy red tint (+40, sd 20: a linear
    probe can tell the groups apart about 85 % of the time) and whose label is the green of a
    central square; label and group are drawn independently, so the network can drop the tint
    at no cost to the task."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tint")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(320):
        y, g = int(rng.integers(0, 2)), int(rng.integers(0, 2))
        img = rng.normal(110, 25, (16, 16, 3))
        img[5:11, 5:11, 1] += 60 * y
        img[..., 0] += 40 * g + rng.normal(0, 20)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"i{i:03d}.png")
        rows.append({"path": f"i{i:03d}.png", "label": f"c{y}", "site": f"s{g}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def adv_runs(tmp_path_factory, tint_data, tiny_cache):
    """AdvRev with λ = 3 and λ = 0 (one linear adversary on the pooled features), seed 0, 10
    epochs, on the tint images; the adversary module is taken from the training call."""
    from fairbench.testing import tiny_run_config
    from fairbench.training.trainer import Trainer

    root = tmp_path_factory.mktemp("adv_rev")
    out = {}
    mp = pytest.MonkeyPatch()
    try:
        for lam in (3.0, 0.0):
            box: dict = {}
            mp.setattr(Trainer, "fit", spy_fit(
                "adv_rev", lambda model, train, hooks, box=box: box.update(
                    adversary=hooks.aux[0].module)))
            cfg = dataclasses.replace(
                tiny_run_config("adv_rev", root, cache_dir=tiny_cache, train={"epochs": 10},
                                params={"lam": lam, "per_class": False, "adv_layers": 1}),
                dataset="csv", dataset_params={"attr_col": "site"}, data_root=str(tint_data))
            out[lam] = (run_experiment(cfg, keep_model=True), box["adversary"])
    finally:
        mp.undo()
    return out


def adversary_accuracy(res, adversary, part: str = "test") -> tuple[float, float]:
    """The final adversary's group accuracy on ``part`` (from the returned model's features),
    and the majority group's share there."""
    z, y, g = outputs(res.model, res.context, part, lambda m, x: m.features(x))
    adversary.eval()
    with torch.no_grad():
        pred = adversary(torch.as_tensor(z, dtype=torch.float32),
                         torch.as_tensor(y)).argmax(1).numpy()
    return float((pred == g).mean()), float(np.bincount(g).max() / len(g))


def test_adv_rev_turns_the_representation_against_its_adversary(adv_runs) -> None:
    """The reversed gradient acts on the network: measured here on the test images, the
    adversary trained with it does worse than the one trained beside a network that ignores
    it (λ = 0), and no better than always guessing the majority group, where the λ = 0 one
    learned the tint. (Measured, seeds 0-2, validation: λ = 0 0.56/0.58/0.55, λ = 3 0.22/0.23/0.25 against
    a majority share of 0.55; seed 0 is used.) The record reads not engaged at λ = 3: an
    adversary reliably below chance reads the group inverted."""
    acc = {lam: adversary_accuracy(*adv_runs[lam]) for lam in (3.0, 0.0)}
    assert acc[3.0][0] < acc[0.0][0], acc
    assert acc[3.0][0] <= acc[3.0][1], acc
    # the reversal pushes the adversary past chance to the wrong group: it still reads the
    # group, inverted, so the (two-sided) record reads not engaged
    on = record(adv_runs[3.0][0])["engagement"]["figures"]
    assert record(adv_runs[3.0][0])["engagement"]["engaged"] is False
    assert on["adversary_val_balanced_accuracy"] < on["chance"] - on["chance_floor"], on


def test_adv_rev_does_not_engage_without_its_term(adv_runs) -> None:
    """With λ = 0 the adversary is weak (balanced accuracy 0.52 on the tint images, within
    the floor of chance), but a fresh probe reads the group from the model as well as from
    vanilla's: the record reads false (it read true before the probe was part of it)."""
    rec = record(adv_runs[0.0][0])["engagement"]
    assert rec["engaged"] is False, rec
    figures = rec["figures"]
    assert (figures["vanilla_probe_val_balanced_accuracy"]
            - figures["fresh_probe_val_balanced_accuracy"]) <= figures["probe_drop_floor"]


def probe_balanced_accuracy(res) -> float:
    """A fresh logistic-regression probe of the group on the adversary's input (the pooled
    features), fitted on the training images, scored on the test images."""
    def feats(m, x):
        return m.features(x)

    ztr, _, gtr = outputs(res.model, res.context, "train", feats)
    zte, _, gte = outputs(res.model, res.context, "test", feats)
    scaler = StandardScaler().fit(ztr)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(ztr), gtr)
    return float(balanced_accuracy_score(gte, probe.predict(scaler.transform(zte))))


@pytest.mark.xfail(strict=True, reason=(
    "AdvRev does not remove the group from its representation: on the tint images a fresh "
    "logistic probe of the group on the adversary's input does better with lam=3 than with "
    "lam=0 (balanced accuracy, seeds 0-2: 0.857/0.818/0.854 -> 0.896/0.882/0.882; likewise "
    "with lam 0.1-1, 2-layer adversaries, 30 epochs, and on the logits with a label-group "
    "correlation, where it rose from 0.72 to 0.97): ascending the adversary's cross-entropy "
    "through the reversal flips the group signal instead of removing it"))
def test_adv_rev_hides_the_group_from_a_fresh_probe(adv_runs) -> None:
    assert probe_balanced_accuracy(adv_runs[3.0][0]) < probe_balanced_accuracy(adv_runs[0.0][0])


# -- FairDi -----------------------------------------------------------------------------------------
FAIRDI = {"teacher_epochs": 6, "teacher_lr": 5e-3, "student_epochs": 2, "student_lr": 5e-3}


def spy_teachers(monkeypatch, replace=None) -> list[nn.Module]:
    """The teachers FairDi trains (in group order); with ``replace``, each is swapped for
    ``replace(teacher)`` after its training (the notes still describe the trained one)."""
    import fairbench.methods.fairdi as fd

    real = fd.train_teacher
    got: list[nn.Module] = []

    def train_teacher(ctx, base, group, params):
        teacher, info = real(ctx, base, group, params)
        if replace is not None:
            teacher = replace(teacher)
        got.append(teacher)
        return teacher, info

    monkeypatch.setattr(fd, "train_teacher", train_teacher)
    return got


def test_fairdi_teachers_differ_from_the_base(tmp_path, make_tiny_config, monkeypatch) -> None:
    """With a one-epoch vanilla base and teachers fine-tuned 6 epochs at a 10× larger lr,
    with the base as a candidate of each teacher's choice (``teacher_keeps_base``): a teacher
    that the notes do not mark as the base has other weights than the base and a higher
    macro-F1 on its own group's validation images than the base (computed here with
    scikit-learn), one marked as the base has the base's weights; the record is engaged.
    With only the head trained at lr 1e-12 the head cannot move (its body and BatchNorm
    statistics are frozen, a step of ~1e-12 is below float32's resolution of the weights):
    under either rule every teacher is the base, bit for bit, and the record is not
    engaged."""
    teachers = spy_teachers(monkeypatch)
    res = run_experiment(make_tiny_config("fairdi", tmp_path, params={
        **FAIRDI, "teacher_keeps_base": True}), keep_model=True)
    ctx = res.context
    base = ctx.vanilla()
    infos = record(res)["notes"]["fairdi"]["teachers"]
    assert len(teachers) == len(infos) == ctx.n_groups == 2
    trained = 0
    for a, (teacher, info) in enumerate(zip(teachers, infos)):
        same = all(torch.equal(v, base.state_dict()[k]) for k, v in teacher.state_dict().items())
        if info["kept_base"]:
            assert same, info
            continue
        trained += 1
        assert not same
        f1 = {}
        for name, model in (("teacher", teacher), ("base", base)):
            logits, y, g = outputs(model, ctx, "val")
            own = g == a
            f1[name] = f1_score(y[own], logits[own].argmax(1), average="macro")
        assert f1["teacher"] > f1["base"], (a, f1)
    assert trained > 0  # seed 0: the light group's teacher beat the base
    eng = record(res)["engagement"]
    assert eng["engaged"] is True and eng["figures"]["teachers_trained"] == trained

    for keeps_base in (True, False):
        teachers.clear()
        frozen = run_experiment(make_tiny_config("fairdi", tmp_path, params={
            **FAIRDI, "teacher_scope": "head", "teacher_lr": 1e-12,
            "teacher_keeps_base": keeps_base}))
        assert all(t["kept_base"] for t in record(frozen)["notes"]["fairdi"]["teachers"])
        for teacher in teachers:
            assert all(torch.equal(v, base.state_dict()[k])
                       for k, v in teacher.state_dict().items())
        assert record(frozen)["engagement"]["engaged"] is False


def test_fairdi_teachers_are_fine_tuned_by_default(tmp_path, make_tiny_config,
                                                   monkeypatch) -> None:
    """The paper's step 1 (the default): every teacher is a fine-tuned epoch, whatever its
    score against the base; the notes' ``kept_base`` is measured on the weights (false for
    both here) and the record is engaged, with both teachers counted."""
    teachers = spy_teachers(monkeypatch)
    res = run_experiment(make_tiny_config("fairdi", tmp_path, params=FAIRDI), keep_model=True)
    base = res.context.vanilla().state_dict()
    infos = record(res)["notes"]["fairdi"]["teachers"]
    for teacher, info in zip(teachers, infos, strict=True):
        assert info["kept_base"] is False and info["best_epoch"] >= 1
        assert not all(torch.equal(v, base[k]) for k, v in teacher.state_dict().items())
    eng = record(res)["engagement"]
    assert eng["engaged"] is True and eng["figures"]["teachers_trained"] == 2


class FixedTeacher(nn.Module):
    """A teacher that gives every image the same logits (2, 0, −2): a target far from both
    the labels and the base model, which only the distillation term can pull toward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[2.0, 0.0, -2.0]]).expand(x.shape[0], 3)


def kl_to_teacher(model, ctx, tau: float) -> float:
    """Mean over the training images of KL(softmax(t/τ) ‖ softmax(s/τ)), t the fixed
    teacher's logits, s the model's."""
    logits, _, _ = outputs(model, ctx, "train")
    s = torch.as_tensor(logits) / tau
    t = torch.tensor([[2.0, 0.0, -2.0]], dtype=torch.float64).expand_as(s) / tau
    return float(F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True,
                          reduction="batchmean"))


def test_fairdi_student_moves_toward_its_teachers(tmp_path, make_tiny_config,
                                                  monkeypatch) -> None:
    """With the teachers replaced by a fixed teacher, the student distilled with λ = 0.9 ends
    closer to the teacher's outputs than the base it started from and than the student of
    λ = 0 (cross-entropy only), on the training images it was distilled on."""
    spy_teachers(monkeypatch, replace=lambda _t: FixedTeacher())
    kl = {}
    for lam in (0.9, 0.0):
        res = run_experiment(make_tiny_config("fairdi", tmp_path,
                                              params={**FAIRDI, "lam": lam}), keep_model=True)
        kl[lam] = kl_to_teacher(res.model, res.context, 1.5)
    kl["base"] = kl_to_teacher(res.context.vanilla(), res.context, 1.5)
    assert kl[0.9] < kl[0.0] and kl[0.9] < kl["base"], kl


# -- ME-FairPrune -------------------------------------------------------------------------------------
ME_PRUNE = {"estimator": "ggn_exact", "score_samples": 8, "score_batch_size": 8,
            "ratio_grid": (0.05,), "beta_grid": (0.5, 1.0), "mode": "oneshot",
            "finetune_epochs": 0, "tau_grid": (0.5, 0.9), "policy": "A"}


@pytest.fixture(scope="module")
def me_runs(tmp_path_factory, make_tiny_config):
    """ME-FairPrune at ratio 0.05 (seed 0, where a pruned candidate also beats the unpruned
    model on validation: measured at seeds 0 and 1; at seed 2 the unpruned model predicts one
    class, EqOddsGap 0, which no candidate can beat), and at ratio 0.9, which leaves no
    candidate within the F1 tolerance (the mechanism cannot act), with the pruned candidates
    only (the default) and with the unpruned model as a candidate too ("0.9+unpruned"); all
    from the one cached multi-exit model, with their weights saved."""
    root = tmp_path_factory.mktemp("me")
    out = {}
    for key, ratio, extra in ((0.05, 0.05, {}), (0.9, 0.9, {}),
                              ("0.9+unpruned", 0.9, {"unpruned_candidate": True})):
        params = {**ME_PRUNE, "ratio_grid": (ratio,), **extra}
        if ratio == 0.9:
            params["beta_grid"] = (1.0,)
        cfg = dataclasses.replace(make_tiny_config("me_fairprune", root, params=params),
                                  save_weights=True)
        out[key] = run_experiment(cfg, keep_model=True)
    (cached,) = list((root / "_me_vanilla").glob("*/model.pt"))
    return out, torch.load(cached, weights_only=True)


def test_me_fairprune_zeroes_exactly_the_reported_weights(me_runs) -> None:
    """In the delivered weights (weights.pt) each pruned conv/linear tensor holds exactly the
    reported number of zeros, those entries were not zero in the unpruned model, and every
    other entry of the state (unpruned weights, biases, BatchNorm) is the unpruned model's."""
    runs, unpruned = me_runs
    res = runs[0.05]
    me = record(res)["notes"]["me_fairprune"]
    assert me["kept_unpruned"] is False and me["chosen_ratio"] == 0.05
    state = torch.load(res.run_dir / "weights.pt", weights_only=True)
    per_tensor = me["realized_ratio_per_tensor"]
    assert any(n.startswith("heads.") for n in per_tensor)  # the exits' heads are pruned too
    zeros = 0
    for name, ratio in per_tensor.items():
        pruned = (state[name] == 0) & (unpruned[name] != 0)
        n = int(pruned.sum())
        assert n == round(ratio * state[name].numel()), name  # 6 decimals: exact at this size
        assert torch.equal(state[name][~pruned], unpruned[name][~pruned]), name
        assert int((state[name] == 0).sum()) == n, name  # no other zero appeared
        zeros += n
    total = sum(state[n].numel() for n in per_tensor)
    assert zeros == round(me["realized_ratio"] * total)
    for name, value in unpruned.items():
        if name not in per_tensor and name != "tau":
            assert torch.equal(state[name], value), name
    assert float(state["tau"]) == pytest.approx(me["chosen_tau"])
    assert record(res)["engagement"]["engaged"] is True


def test_me_fairprune_changes_every_exit_and_the_predictions(me_runs) -> None:
    """Every exit's logits differ from the unpruned model's, and under the exit policy at the
    chosen τ the delivered model's validation predictions differ from the unpruned model's
    (5 % of every conv/linear weight zeroed)."""
    runs, unpruned_state = me_runs
    res = runs[0.05]
    model = res.model
    unpruned = copy.deepcopy(model)
    unpruned.load_state_dict(unpruned_state)
    unpruned.tau.fill_(float(model.tau))

    def exits(m, x):
        return torch.stack(m.exits(x), 1)  # B × exits × classes

    pruned_exits, _, _ = outputs(model, res.context, "val", exits)
    base_exits, _, _ = outputs(unpruned, res.context, "val", exits)
    for k in range(pruned_exits.shape[1]):
        assert not np.allclose(pruned_exits[:, k], base_exits[:, k]), k
    pruned_pred = outputs(model, res.context, "val")[0].argmax(1)
    base_pred = outputs(unpruned, res.context, "val")[0].argmax(1)
    assert (pruned_pred != base_pred).any()


def test_me_fairprune_does_not_engage_when_no_candidate_is_within_tolerance(me_runs) -> None:
    """With pruned candidates only (the default), the choice falls back to the best F1, which
    prunes 90 % of the weights and is out of the tolerance: pruned, but not engaged."""
    runs, _ = me_runs
    res = runs[0.9]
    me = record(res)["notes"]["me_fairprune"]
    assert me["kept_unpruned"] is False and me["chosen_ratio"] == 0.9
    assert me["realized_ratio"] > 0.85 and me["within_f1_tolerance"] is False
    assert me["pruned_within_tolerance"] == 0 and "unpruned_score" not in me
    with (res.run_dir / "prune.csv").open() as fh:
        assert all(float(r["ratio"]) > 0 for r in csv.DictReader(fh))  # no unpruned row
    eng = record(res)["engagement"]
    assert eng["engaged"] is False and eng["figures"]["within_f1_tolerance"] is False


def test_me_fairprune_with_the_unpruned_candidate_returns_it_unchanged(me_runs) -> None:
    runs, unpruned = me_runs
    res = runs["0.9+unpruned"]
    me = record(res)["notes"]["me_fairprune"]
    assert me["kept_unpruned"] is True and me["chosen_ratio"] == 0.0
    state = torch.load(res.run_dir / "weights.pt", weights_only=True)
    for name, value in unpruned.items():
        if name != "tau":
            assert torch.equal(state[name], value), name
    assert record(res)["engagement"]["engaged"] is False
