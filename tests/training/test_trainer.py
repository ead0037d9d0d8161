"""The shared trainer: frozen masks, checkpoint selection, early stopping, epoch log,
determinism, auxiliary modules and hooks."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairbench import AuxModule, BatchLoader, TrainConfig, TrainHooks, create_backbone
from fairbench.core.params import build_params
from fairbench.data.loaders import Augment, DeviceData
from fairbench.training.trainer import EpochLog, Trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, size = 96, 16
    labels = rng.integers(0, 3, n)
    groups = (rng.random(n) < 0.4).astype(int)
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    images[..., 0] += (labels * 60).astype(np.uint8)[:, None, None]  # learnable signal
    return DeviceData(images, labels, {"g": groups}, CPU)


def loaders(data, seed=0, augment=True):
    train = BatchLoader(data, np.arange(64), batch_size=16, attribute="g", order="shuffle",
                        seed=seed, augment=Augment(1) if augment else None, drop_last=True)
    val = BatchLoader(data, np.arange(64, 96), batch_size=32, attribute="g")
    val.group_names = ["light", "dark"]  # type: ignore[attr-defined]
    return train, val


def model(seed=0):
    torch.manual_seed(seed)
    return create_backbone("smallcnn", num_classes=3, image_size=16, width=4)


def config(**kw):
    base = {"epochs": 2, "batch_size": 16, "lr": 0.01, "select": "last", "amp": False}
    return build_params(TrainConfig, {**base, **kw})


def state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_frozen_entries_stay_bit_identical(data, optimizer):
    m = model()
    names = ["body.0.weight", "classifier.weight", "classifier.bias"]
    gen = torch.Generator().manual_seed(1)
    params = dict(m.named_parameters())
    masks = {k: torch.rand(params[k].shape, generator=gen) < 0.5 for k in names}
    # frozen entries include zeros (pruned) and non-zero values (quantized)
    with torch.no_grad():
        params["body.0.weight"][masks["body.0.weight"] & (torch.rand_like(params["body.0.weight"]) < 0.5)] = 0.0
    before = state(m)
    train, val = loaders(data)
    Trainer(CPU, seed=0, progress=False).fit(
        m, train, val, config=config(optimizer=optimizer, weight_decay=0.5, lr=0.05, momentum=0.9),
        hooks=TrainHooks(frozen=masks))
    after = state(m)
    for k, mask in masks.items():
        assert torch.equal(after[k][mask], before[k][mask]), k  # bit-identical
        assert not torch.equal(after[k][~mask], before[k][~mask]), k  # the rest trained
    # without masks those entries do move (the test can fail)
    m2 = model()
    with torch.no_grad():
        dict(m2.named_parameters())["body.0.weight"].copy_(before["body.0.weight"])
    Trainer(CPU, seed=0, progress=False).fit(
        m2, *loaders(data), config=config(optimizer=optimizer, weight_decay=0.5, lr=0.05))
    k = "body.0.weight"
    assert not torch.equal(m2.state_dict()[k][masks[k]], before[k][masks[k]])


def test_frozen_mask_unknown_parameter(data):
    with pytest.raises(ValueError, match="unknown parameters"):
        Trainer(CPU, progress=False).fit(model(), *loaders(data), config=config(epochs=1),
                                         hooks=TrainHooks(frozen={"nope": torch.ones(1)}))


def test_best_validation_checkpoint_restored(data):
    m = model()
    snapshots = []
    scores = iter([0.1, 0.9, 0.3, 0.2])
    result = Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(epochs=4, select="F1"),
        hooks=TrainHooks(score=lambda metrics: next(scores),
                         on_epoch_end=lambda s: snapshots.append(state(s.model))))
    assert result.best_epoch == 2 and result.best_score == pytest.approx(0.9)
    assert len(snapshots) == 4 and len(result.history) == 4
    final = state(m)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)


def test_restore_best_false_keeps_the_last_epoch_and_reports_the_best(data):
    """A schedule that continues from the last epoch but chooses among epochs (FairQuantize's
    retraining): the model keeps the last epoch's weights, the best one's come back in
    ``best_state``."""
    m = model()
    snapshots = []
    scores = iter([0.1, 0.9, 0.3])
    result = Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(epochs=3, select="last"),
        hooks=TrainHooks(score=lambda metrics: next(scores), restore_best=False,
                         on_epoch_end=lambda s: snapshots.append(state(s.model))))
    assert result.best_epoch == 2 and result.best_score == pytest.approx(0.9)
    assert all(torch.equal(state(m)[k], snapshots[2][k]) for k in snapshots[2])
    assert result.best_state is not None
    assert all(torch.equal(result.best_state[k], snapshots[1][k]) for k in snapshots[1])


def test_better_is_the_selection_rule():
    from fairbench.training.trainer import better

    nan = float("nan")
    assert better(nan, None) and better(0.1, None)
    assert better(0.2, 0.1) and not better(0.1, 0.1) and not better(0.0, 0.1)
    assert better(0.1, nan) and not better(nan, 0.1) and not better(nan, nan)


def test_nan_score_does_not_block_selection(data):
    # a first epoch whose validation metric is undefined (NaN) must not stay "best"
    m = model()
    snapshots = []
    scores = iter([float("nan"), 0.4, 0.8, float("nan"), 0.5])
    result = Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(epochs=5, select="F1", patience=2),
        hooks=TrainHooks(score=lambda metrics: next(scores),
                         on_epoch_end=lambda s: snapshots.append(state(s.model))))
    assert result.best_epoch == 3 and result.best_score == pytest.approx(0.8)
    assert len(result.history) == 5
    assert all(torch.equal(state(m)[k], snapshots[2][k]) for k in snapshots[2])


def test_select_lower_is_better_metric(data):
    m = model()
    vals = iter([0.5, 0.2, 0.4])
    snapshots = []

    def evaluate(model_, loader):
        return {"EOdd": next(vals), "F1": 0.5}

    result = Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(epochs=3, select="EOdd"),
        hooks=TrainHooks(evaluate=evaluate, on_epoch_end=lambda s: snapshots.append(state(s.model))))
    assert result.best_epoch == 2
    assert all(torch.equal(state(m)[k], snapshots[1][k]) for k in snapshots[1])


def test_select_last_keeps_final_weights(data):
    m = model()
    snapshots = []
    result = Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(epochs=2, select="last"),
        hooks=TrainHooks(on_epoch_end=lambda s: snapshots.append(state(s.model))))
    assert result.best_epoch == 2 and result.best_score is None
    assert all(torch.equal(state(m)[k], snapshots[-1][k]) for k in snapshots[-1])


def test_early_stopping(data):
    scores = iter([0.5, 0.6, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    result = Trainer(CPU, seed=0, progress=False).fit(
        model(), *loaders(data), config=config(epochs=8, select="F1", patience=2),
        hooks=TrainHooks(score=lambda metrics: next(scores)))
    assert len(result.history) == 4  # best at 2, two epochs without improvement
    assert result.best_epoch == 2
    # a hook may stop training too
    def stop(s):
        s.stop = s.epoch >= 0
    r2 = Trainer(CPU, seed=0, progress=False).fit(
        model(), *loaders(data), config=config(epochs=5), hooks=TrainHooks(on_epoch_end=stop))
    assert len(r2.history) == 1


def test_epoch_log_written(data, tmp_path):
    path = tmp_path / "train_log.csv"
    Trainer(CPU, seed=0, log=EpochLog(path), progress=False).fit(
        model(), *loaders(data), config=config(epochs=3, select="F1"), stage="stage1")
    rows = list(csv.DictReader(path.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(r["stage"] == "stage1" for r in rows)
    for key in ("train_loss", "lr", "val_F1", "val_EOdd", "val_accuracy"):
        assert all(r[key] != "" for r in rows), key
    assert float(rows[-1]["train_loss"]) > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_lr_schedules(data):
    r = Trainer(CPU, seed=0, progress=False).fit(
        model(), *loaders(data), config=config(epochs=3, schedule="cosine"))
    lrs = [h["lr"] for h in r.history]
    assert lrs[0] > lrs[1] > lrs[2] and lrs[0] < 0.01
    r = Trainer(CPU, seed=0, progress=False).fit(
        model(), *loaders(data), config=config(epochs=3, schedule="step", step_size=1, gamma=0.5))
    assert [h["lr"] for h in r.history] == pytest.approx([0.01, 0.005, 0.0025])


def test_seeded_determinism(data):
    results = []
    for seed in (0, 0, 1):
        m = model()
        Trainer(CPU, seed=seed, progress=False).fit(
            m, *loaders(data, seed=seed), config=config(epochs=2, select="F1"))
        results.append(state(m))
    a, b, c = results
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_aux_module_with_own_optimizer_is_updated(data):
    m = model()
    adversary = nn.Linear(m.num_features, 2)
    adv_before = state(adversary)
    calls = {"aux": 0, "step_end": 0}

    def adv_loss(model_, batch, s):
        calls["aux"] += 1
        with torch.no_grad():
            z = model_.features(batch.x)
        return F.cross_entropy(adversary(z), batch.g)

    main_before = state(m)
    Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(epochs=1),
        hooks=TrainHooks(aux=[AuxModule(adversary, loss=adv_loss, lr=0.1, optimizer="sgd",
                                        every=2, steps=3)],
                         on_step_end=lambda s: calls.__setitem__("step_end", calls["step_end"] + 1)))
    assert calls["step_end"] == 4  # 64 rows / 16, drop_last
    assert calls["aux"] == 2 * 3  # steps 0 and 2, three updates each
    assert not torch.equal(adversary.weight, adv_before["weight"])
    assert not all(torch.equal(state(m)[k], main_before[k]) for k in main_before)


def test_joint_aux_module_trained_by_main_optimizer(data):
    m = model()
    extra = nn.Linear(m.num_features, 3)
    before = state(extra)

    def loss(model_, batch, s):
        z = model_.features(batch.x)
        return F.cross_entropy(model_.head(z), batch.y) + F.cross_entropy(extra(z), batch.y)

    Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(epochs=1),
        hooks=TrainHooks(loss=loss, aux=[AuxModule(extra)]))
    assert not torch.equal(extra.weight, before["weight"])
    # not listed as aux: its parameters get gradients but no optimizer step
    m2, lonely = model(), nn.Linear(m.num_features, 3)
    lonely_before = state(lonely)

    def loss2(model_, batch, s):
        z = model_.features(batch.x)
        return F.cross_entropy(model_.head(z), batch.y) + F.cross_entropy(lonely(z), batch.y)

    Trainer(CPU, seed=0, progress=False).fit(m2, *loaders(data), config=config(epochs=1),
                                             hooks=TrainHooks(loss=loss2))
    assert torch.equal(lonely.weight, lonely_before["weight"])


def test_custom_loss_hook_is_used(data):
    seen = []

    def loss(model_, batch, s):
        seen.append((s.epoch, s.step, len(batch)))
        return F.cross_entropy(model_(batch.x), batch.y) * 0.0 + model_(batch.x).pow(2).mean()

    m = model()
    r = Trainer(CPU, seed=0, progress=False).fit(m, *loaders(data), config=config(epochs=2),
                                                 hooks=TrainHooks(loss=loss))
    assert [s[:2] for s in seen] == [(0, 0), (0, 1), (0, 2), (0, 3),
                                     (1, 0), (1, 1), (1, 2), (1, 3)]
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"] or r.history[-1]["train_loss"] < 1e-2


def test_predict_and_evaluate(data):
    m = model()
    trainer = Trainer(CPU, seed=0, progress=False)
    trainer.fit(m, *loaders(data, augment=False), config=config(epochs=3, lr=0.02))
    _, val = loaders(data)
    m.train()
    pred = trainer.predict(m, val)
    assert m.training  # mode restored
    assert pred.probs.shape == (32, 3) and pred.index.tolist() == list(range(64, 96))
    assert np.allclose(pred.probs.sum(1), 1.0, atol=1e-5)
    again = trainer.predict(copy.deepcopy(m), val)
    assert np.array_equal(pred.probs, again.probs)  # eval mode: no batch-norm update
    metrics = trainer.evaluate(m, val)
    assert {"F1", "EOdd", "light", "dark"} <= set(metrics)
    assert metrics["n"] == 32


# -- torch.compile -------------------------------------------------------------------------------
@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile through dynamo with the eager backend: the compile path without a C++
    toolchain, in seconds."""
    import fairbench.training.trainer as T

    monkeypatch.setattr(T, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_trains_the_same_model_and_logs_its_time(data, eager_compile):
    plain = model()
    Trainer(CPU, seed=0, progress=False).fit(plain, *loaders(data), config=config())
    compiled = model()
    log = EpochLog(None)
    Trainer(CPU, seed=0, progress=False, log=log).fit(compiled, *loaders(data),
                                                     config=config(compile=True))
    assert type(compiled).__name__ != "OptimizedModule"  # the module itself is not replaced
    for k, v in plain.state_dict().items():
        assert torch.allclose(v.float(), compiled.state_dict()[k].float(), rtol=1e-3, atol=1e-5), k
    assert log.rows[0]["compile_seconds"] > 0 and "compile_seconds" not in log.rows[1]
    copy.deepcopy(compiled)  # what curvature passes and checkpoints do
    _, val = loaders(data)
    eager = Trainer(CPU, progress=False).predict(compiled, val, config())
    fast = Trainer(CPU, progress=False).predict(compiled, val, config(compile=True))
    assert np.allclose(eager.probs, fast.probs, atol=1e-5)
    assert np.array_equal(eager.index, fast.index)


def test_compile_keeps_frozen_entries_and_method_losses(data, eager_compile):
    m = model()
    w = dict(m.named_parameters())["body.0.weight"]
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    before = w.detach().clone()
    seen = []

    def loss(mdl, batch, st):  # a method's loss reaching a sub-module through the wrapper
        seen.append(type(mdl).__name__)
        return F.cross_entropy(mdl.classifier(mdl.features(batch.x)), batch.y)

    Trainer(CPU, seed=0, progress=False).fit(
        m, *loaders(data), config=config(compile=True),
        hooks=TrainHooks(loss=loss, frozen={"body.0.weight": mask}))
    assert seen[0] == "OptimizedModule"
    assert torch.equal(w.detach()[mask], before[mask])
    assert not torch.equal(w.detach()[~mask], before[~mask])


def test_compile_enters_identities_only_when_on():
    off = build_params(TrainConfig, {})
    on = build_params(TrainConfig, {"compile": True})
    assert "compile" not in off.identity()
    assert on.identity()["compile"] is True
    assert {k: v for k, v in on.identity().items() if k != "compile"} == off.identity()


# -- channels-last on CPU -------------------------------------------------------------------------
def _channels_last_fit(data, seed, **kw):
    m = model()
    train, val = loaders(data, seed=seed)
    train.channels_last = val.channels_last = kw.get("cpu_channels_last", False)
    Trainer(CPU, seed=seed, progress=False).fit(m, train, val, config=config(**kw))
    return m


def test_cpu_channels_last_is_seeded_and_close_to_the_default_format(data):
    """The same seed gives bit-identical weights in the channels-last format; one step's
    numbers agree with the default format's up to rounding (the run identities differ)."""
    a = _channels_last_fit(data, 0, cpu_channels_last=True)
    b = _channels_last_fit(data, 0, cpu_channels_last=True)
    assert a.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(x, y) for x, y in zip(state(a).values(), state(b).values()))
    one_step = {"epochs": 1, "lr": 1e-4}
    c = _channels_last_fit(data, 0, cpu_channels_last=True, **one_step)
    d = _channels_last_fit(data, 0, **one_step)
    assert not d.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.allclose(x.float(), y.float(), atol=1e-4)
               for x, y in zip(state(c).values(), state(d).values()))


def test_cpu_channels_last_enters_identities_only_when_on():
    off = build_params(TrainConfig, {})
    on = build_params(TrainConfig, {"cpu_channels_last": True})
    assert "cpu_channels_last" not in off.identity()
    assert on.identity()["cpu_channels_last"] is True
    assert not off.channels_last_on(CPU) and on.channels_last_on(CPU)
    assert off.channels_last_on(torch.device("cuda"))  # CUDA keeps its own switch


# -- the embeddings of the evaluation pass --------------------------------------------------------
def test_predict_keeps_the_features_of_the_same_pass(data):
    """``features=True`` gives exactly ``model.features(x)`` (what the leakage probe reads in
    a pass of its own) and the same probabilities as a plain pass; a model whose forward is
    not head(features(x)) gets none."""
    m = model()
    _, val = loaders(data)
    trainer = Trainer(CPU, progress=False)
    plain = trainer.predict(m, val)
    kept = trainer.predict(m, val, features=True)
    assert plain.features is None
    assert np.array_equal(plain.probs, kept.probs)
    m.eval()
    with torch.no_grad():
        want = torch.cat([m.features(b.x) for b in val]).numpy()
    assert np.array_equal(kept.features, want)

    class Shifted(type(m)):  # a method's module computing its output otherwise
        def forward(self, x):
            return super().forward(x) + 1.0

    shifted = model()
    shifted.__class__ = Shifted
    assert trainer.predict(shifted, val, features=True).features is None
    hooked = model()
    hooked.register_forward_hook(lambda mod, inp, out: out * 2)
    assert trainer.predict(hooked, val, features=True).features is None
