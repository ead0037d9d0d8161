"""The tensor cache (keyed, atomic) and the batch loaders (per group, balanced, seeded,
augmentation on the batch)."""

from __future__ import annotations

import functools
import json
import operator
import subprocess
import sys

import numpy as np
import pytest
import torch

from fairbench import BatchLoader, ImageSpec, create_dataset
from fairbench.core import files
from fairbench.data.cache import cache_key, load_or_build
from fairbench.data.loaders import Augment, DeviceData, balanced_order

SMALL = {"n_samples": 120, "n_classes": 3, "images_per_patient": 1.0}


def _adapter(**over):
    return create_dataset("synthderm", **{**SMALL, **over})


# -- cache ----------------------------------------------------------------------------------
def test_cache_key_depends_on_size_and_params():
    a = _adapter()
    t = a.build_table()
    k16 = cache_key(a, t, 16)
    assert k16 == cache_key(_adapter(), _adapter().build_table(), 16)  # stable
    assert cache_key(a, t, 24) != k16
    b = _adapter(dark_fraction=0.5)
    assert cache_key(b, b.build_table(), 16) != k16
    c = _adapter(seed=1)
    assert cache_key(c, c.build_table(), 16) != k16


def test_build_then_reuse(tmp_path):
    a = _adapter()
    t = a.build_table()
    first = load_or_build(a, t, 16, tmp_path, progress=False)
    assert first.images.shape == (len(t), 16, 16, 3) and first.images.dtype == np.uint8
    assert isinstance(first.images, np.memmap)
    assert first.masks is not None and first.masks.shape == (len(t), 16, 16)
    assert list(first.sample_ids) == list(t.sample_ids)
    # the cached pixels are what the adapter draws
    direct = np.zeros((len(t), 16, 16, 3), np.uint8)
    a.fill_images(t, ImageSpec(16), direct)
    assert np.array_equal(np.asarray(first.images), direct)
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["size"] == 16 and meta["dataset"]["name"] == "synthderm"
    # a second call opens the entry without drawing again
    calls = []
    orig = type(a).fill_images
    try:
        type(a).fill_images = lambda *args, **kw: calls.append(1)  # type: ignore[method-assign]
        again = load_or_build(a, t, 16, tmp_path, progress=False)
    finally:
        type(a).fill_images = orig  # type: ignore[method-assign]
    assert calls == [] and again.path == first.path
    # another size is another entry
    other = load_or_build(a, t, 12, tmp_path, progress=False)
    assert other.path != first.path and other.images.shape[1] == 12


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_killed_build_is_not_read_as_valid(tmp_path):
    a = _adapter()
    t = a.build_table()
    key = cache_key(a, t, 16)
    entry = tmp_path / "images" / f"synthderm-16px-{key}"
    entry.parent.mkdir(parents=True)
    # a build killed half-way: a temporary directory with garbage and even a meta.json
    stale = entry.with_name(f".{entry.name}.tmp-{files.HOST}-{_dead_pid()}")
    stale.mkdir()
    np.save(stale / "images.npy", np.full((len(t), 16, 16, 3), 7, np.uint8))
    (stale / "meta.json").write_text(json.dumps({"sample_ids": list(t.sample_ids)}))
    # a live build elsewhere (another host) must be left alone
    foreign = entry.with_name(f".{entry.name}.tmp-otherhost-1")
    foreign.mkdir()
    got = load_or_build(a, t, 16, tmp_path, progress=False)
    assert got.path == entry
    assert not (np.asarray(got.images) == 7).all()
    direct = np.zeros((len(t), 16, 16, 3), np.uint8)
    a.fill_images(t, ImageSpec(16), direct)
    assert np.array_equal(np.asarray(got.images), direct)
    assert not stale.exists() and foreign.exists()


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    a = _adapter()
    t = a.build_table()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(a), "fill_images", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        load_or_build(a, t, 16, tmp_path, progress=False)
    assert list((tmp_path / "images").iterdir()) == []
    monkeypatch.undo()
    got = load_or_build(a, t, 16, tmp_path, progress=False)
    assert (got.path / "meta.json").is_file()


# -- loaders ---------------------------------------------------------------------------------------
def _data(n: int = 90, size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    groups = (rng.random(n) < 0.25).astype(int)
    masks = rng.integers(0, 2, (n, size, size), dtype=np.uint8)
    return DeviceData(images, labels, {"g": groups, "other": 1 - groups},
                      torch.device("cpu"), masks=masks), images, labels, groups


def _indices(loader) -> list[list[int]]:
    return [b.index.tolist() for b in loader]


def test_sequential_loader_covers_rows_and_normalises():
    data, images, labels, groups = _data()
    pos = np.arange(10, 80)
    loader = BatchLoader(data, pos, batch_size=16, attribute="g")
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    assert np.concatenate([b.index.numpy() for b in batches]).tolist() == pos.tolist()
    b = batches[0]
    assert b.x.shape == (16, 3, 8, 8) and b.x.dtype == torch.float32
    assert torch.equal(b.y, torch.as_tensor(labels[pos[:16]]))
    assert torch.equal(b.g, torch.as_tensor(groups[pos[:16]]))
    assert torch.equal(b.attrs["other"], torch.as_tensor(1 - groups[pos[:16]]))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    back = b.x * std + mean
    want = torch.as_tensor(images[pos[:16]]).permute(0, 3, 1, 2).float()
    assert torch.allclose(back, want, atol=1e-3)
    # drop_last
    assert len(list(BatchLoader(data, pos, batch_size=16, attribute="g", drop_last=True))) == 4


def test_shuffle_seeded_and_new_order_each_epoch():
    data, *_ = _data()
    pos = np.arange(90)

    def make(seed):
        return BatchLoader(data, pos, batch_size=10, attribute="g", order="shuffle", seed=seed)

    a, b, c = make(1), make(1), make(2)
    ea1, ea2 = _indices(a), _indices(a)
    assert ea1 == _indices(b) and ea2 == _indices(b)  # same seed, same batches, every epoch
    assert ea1 != ea2  # a new permutation per epoch
    assert ea1 != _indices(c)
    assert sorted(functools.reduce(operator.iadd, ea1, [])) == pos.tolist()


def test_balanced_loader_equal_group_counts():
    data, _, _, groups = _data(n=90)
    pos = np.arange(90)
    loader = BatchLoader(data, pos, batch_size=16, attribute="g", order="balanced",
                         strata=groups[pos], seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) >= 5
    for b in batches:
        counts = np.bincount(b.g.numpy(), minlength=2)
        assert counts[0] == counts[1] == 8
    # the minority group is walked through before any sample repeats: its first
    # ceil(n_dark / 8) batches hold every dark sample, the whole part at least once
    n_dark = int(groups.sum())
    first = batches[: -(-n_dark // 8)]
    assert {i for b in first for i in b.index.tolist() if groups[i] == 1} == set(
        np.flatnonzero(groups == 1))
    assert {i for b in batches for i in b.index.tolist() if groups[i] == 0} <= set(pos)
    with pytest.raises(ValueError):
        BatchLoader(data, pos, batch_size=16, attribute="g", order="balanced")


def test_balanced_order_function():
    rng = np.random.default_rng(0)
    strata = np.array([0] * 50 + [1] * 7 + [2] * 20)
    order = balanced_order(strata, 9, 6, rng).reshape(6, 9)
    for row in order:
        assert np.bincount(strata[row], minlength=3).tolist() == [3, 3, 3]


@pytest.mark.parametrize("batch_size", [7, 10, 16])
def test_balanced_order_batch_size_kept_with_any_number_of_strata(batch_size):
    """With more strata than rows in a batch (Fitzpatrick-17k: 114 classes × 2 groups against
    batch 64) or a batch size that is no multiple of the number of strata, every batch keeps
    exactly the configured size, strata differ by at most one row within a batch, and over
    the epoch every stratum gets the same number of rows up to one (the expected composition
    of weighted sampling with weights 1 / stratum size)."""
    rng = np.random.default_rng(3)
    sizes = np.random.default_rng(0).integers(1, 30, size=23)  # 23 strata, sizes 1..29
    strata = np.repeat(np.arange(23) * 5, sizes)  # keys need not be 0..K-1
    n_batches = len(strata) // batch_size
    order = balanced_order(strata, batch_size, n_batches, rng)
    assert order.shape == (n_batches * batch_size,)
    keys = np.unique(strata)
    per_batch = np.stack([np.array([(strata[row] == k).sum() for k in keys])
                          for row in order.reshape(n_batches, batch_size)])
    assert (per_batch.sum(1) == batch_size).all()
    assert (per_batch.max(1) - per_batch.min(1) <= 1).all()
    total = per_batch.sum(0)
    assert total.max() - total.min() <= 1
    # each stratum is walked without repetition before any of its rows comes twice
    for k in keys:
        seen = order[strata[order] == k]
        members = np.flatnonzero(strata == k)
        first = seen[:len(members)]
        assert len(set(first.tolist())) == len(first)


def test_balanced_loader_epoch_has_the_split_size_with_many_strata():
    """The loader over more strata than its batch size: batches of the configured size and an
    epoch of the split's size (rounded down to whole batches), never enlarged."""
    data, _, _, groups = _data(n=90)
    pos = np.arange(90)
    strata = groups[pos] * 100 + np.arange(90) % 30  # 60 strata, batch 16
    loader = BatchLoader(data, pos, batch_size=16, attribute="g", order="balanced",
                         strata=strata, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 90 // 16
    assert all(len(b) == 16 for b in batches)
    assert sum(len(b) for b in batches) == 16 * (90 // 16)


def test_augmentation_keeps_shapes_and_moves_masks_with_images():
    n, size = 40, 12
    # every pixel encodes its own position, so a crop/flip is visible and checkable
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    code = (yy * size + xx).astype(np.uint8)
    images = np.repeat(np.stack([code, code, code], -1)[None], n, 0)
    masks = np.repeat(code[None], n, 0)
    data = DeviceData(images, np.zeros(n, int), {"g": np.zeros(n, int)}, torch.device("cpu"),
                      masks=masks)
    plain = BatchLoader(data, np.arange(n), batch_size=n, attribute="g")
    aug = BatchLoader(data, np.arange(n), batch_size=n, attribute="g", augment=Augment(3),
                      seed=5)
    pb, ab = next(iter(plain)), next(iter(aug))
    assert ab.x.shape == pb.x.shape and ab.x.dtype == pb.x.dtype == torch.float32
    assert ab.mask is not None and ab.mask.shape == (n, size, size) and ab.mask.dtype == torch.uint8
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    pix = torch.round(ab.x * std + mean)
    # images and masks go through the same crop and flip
    assert torch.equal(pix[:, 0], ab.mask.float())
    assert torch.equal(pix[:, 0], pix[:, 2])
    # something moved, but only pixels of the original image appear
    assert not torch.equal(ab.x, pb.x)
    assert set(torch.unique(ab.mask).tolist()) <= set(code.ravel().tolist())
    # seeded: the same seed gives the same augmented batch
    again = next(iter(BatchLoader(data, np.arange(n), batch_size=n, attribute="g",
                                  augment=Augment(3), seed=5)))
    assert torch.equal(again.x, ab.x)



@pytest.mark.parametrize("order, augment", [("sequential", None), ("shuffle", Augment(2)),
                                            ("balanced", Augment(1))])
def test_host_resident_data_gives_the_same_batches(order, augment):
    """Images kept in host memory (gathered per batch, one batch ahead; on CUDA into pinned
    buffers copied on a side stream) give exactly the batches of on-device images."""
    rng = np.random.default_rng(3)
    n, size = 70, 8
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (n, size, size), dtype=np.uint8)
    labels, groups = rng.integers(0, 3, n), (rng.random(n) < 0.3).astype(int)
    cpu = torch.device("cpu")
    kept = {False: DeviceData(images, labels, {"g": groups}, cpu, masks=masks),
            True: DeviceData(images, labels, {"g": groups}, cpu, masks=masks, keep_on_host=True)}
    assert kept[False].on_device and not kept[True].on_device and not kept[True].pinned
    pos = np.arange(5, 68)
    strata = groups[pos] if order == "balanced" else None
    epochs = {}
    for host, data in kept.items():
        loader = BatchLoader(data, pos, batch_size=16, attribute="g", order=order,
                             strata=strata, augment=augment, seed=4)
        epochs[host] = [list(loader) for _ in range(2)]
    for epoch_dev, epoch_host in zip(epochs[False], epochs[True]):
        assert len(epoch_dev) == len(epoch_host) > 1
        for a, b in zip(epoch_dev, epoch_host):
            assert torch.equal(a.index, b.index) and torch.equal(a.x, b.x)
            assert torch.equal(a.mask, b.mask) and torch.equal(a.y, b.y)
            assert torch.equal(a.g, b.g)


def test_host_resident_staging_gathers_the_rows_asked_for():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    data = DeviceData(images, np.zeros(12, int), {"g": np.zeros(12, int)},
                      torch.device("cpu"), keep_on_host=True)
    u8, mask = data.stage(np.array([7, 2, 2, 11])).ready()
    assert mask is None and torch.equal(u8, torch.from_numpy(images[[7, 2, 2, 11]]))
    empty = BatchLoader(data, np.array([], dtype=np.int64), batch_size=4, attribute="g")
    assert list(empty) == []

# -- loaders of a run context -----------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx(tmp_path_factory, make_tiny_config):
    from fairbench import RunContext
    from fairbench.run.context import BackboneSpec
    from fairbench.run.runner import load_data, prepare

    runs = tmp_path_factory.mktemp("ctx_runs")
    p = prepare(make_tiny_config("vanilla", runs))
    bundle = load_data(p, torch.device("cpu"), runs)
    return RunContext(bundle=bundle, backbone=BackboneSpec("smallcnn", {"width": 4}),
                      train_config=p.train, device=torch.device("cpu"), seed=0,
                      run_dir=runs / "r", runs_dir=runs, privileged="light", progress=False)


def test_context_group_loader_only_that_group(ctx):
    codes = ctx.table.attr(ctx.attribute)
    for part in ("train", "val", "test"):
        for g in (0, 1):
            idx = np.concatenate([b.index.numpy() for b in ctx.loader(part, groups=[g])])
            assert len(idx) > 0 and (codes[idx] == g).all()
            want = set(ctx.positions(part, [g]))
            assert want == set(np.flatnonzero(codes == g)) & set(ctx.positions(part))
            if part == "train":  # shuffled with drop_last
                assert set(idx) <= want and len(idx) > len(want) - ctx.train_config.batch_size
            else:
                assert set(idx) == want


def test_context_group_sampler_balanced(ctx):
    loader = ctx.loader("train", sampler="group", batch_size=8)
    for b in loader:
        assert np.bincount(b.g.numpy(), minlength=2).tolist() == [4, 4]
    gc = ctx.loader("train", sampler="group_class", batch_size=12)
    for b in gc:
        key = b.g.numpy() * 10 + b.y.numpy()
        assert len(set(np.bincount(key)[np.bincount(key) > 0].tolist())) == 1


def test_context_group_samplers_leave_out_unknown_group(ctx, monkeypatch):
    """Rows whose group is unknown (code -1) are not a third group: the group-balanced
    samplers leave them out (and say so in the notes); shuffling keeps them."""
    codes = ctx.table.attr(ctx.attribute).copy()
    train = ctx.positions("train")
    unknown = train[::5]
    codes[unknown] = -1
    original = ctx.table.attr
    monkeypatch.setattr(ctx.table, "attr",
                        lambda name: codes if name == ctx.attribute else original(name))
    for sampler in ("group", "group_class"):
        seen = np.concatenate([b.index.numpy() for b in
                               ctx.loader("train", sampler=sampler, batch_size=8)])
        assert not set(seen) & set(unknown)
        assert (codes[seen] >= 0).all()
    assert ctx.notes["sampler_dropped_missing_group"] == len(unknown)
    shuffled = np.concatenate([b.index.numpy() for b in ctx.loader("train", drop_last=False)])
    assert set(unknown) <= set(shuffled)
    ctx.notes.pop("sampler_dropped_missing_group")


def test_context_eval_loaders_plain_and_train_augmented(ctx):
    val = ctx.loader("val")
    assert val.order == "sequential" and val.augment is None
    assert sorted(np.concatenate([b.index.numpy() for b in val])) == sorted(ctx.positions("val"))
    train = ctx.loader("train")
    assert train.augment is not None and train.order == "shuffle"
    assert _indices(ctx.loader("train")) == _indices(ctx.loader("train"))  # seeded per run
    assert _indices(ctx.loader("train")) != _indices(ctx.loader("train", seed_offset=1))


def test_context_fit_default_loader_follows_the_given_config(ctx, monkeypatch):
    """``ctx.fit(config=...)`` without loaders trains on a loader built from that config
    (a method that changes the sampler need not build the loader itself)."""
    import dataclasses

    seen = {}

    def capture(model, train, val, *, config, hooks=None, stage="train"):
        seen.update(train=train, val=val)

    monkeypatch.setattr(ctx.trainer, "fit", capture)
    config = dataclasses.replace(ctx.train_config, sampler="group", batch_size=8, augment=False,
                                 eval_batch_size=32)
    ctx.fit(None, config=config)
    assert seen["train"].order == "balanced" and seen["train"].batch_size == 8
    assert seen["train"].augment is None and seen["val"].batch_size == 32
    ctx.fit(None)
    assert seen["train"].order == "shuffle"
    assert seen["train"].batch_size == ctx.train_config.batch_size
