"""Conformance checks for methods, in the spirit of scikit-learn's ``check_estimator``.

Plugin authors call :func:`check_method` in their own tests::

    from fairbench.testing import check_method
    def test_my_method(tmp_path):
        check_method(MyMethod, tmp_path, params={"alpha": 0.5})

It runs the method on a tiny ``synthderm`` set (CPU, 16 px, one epoch) and checks that

1. it returns an ``nn.Module`` whose predictions have one probability row per sample and
   one column per class, summing to 1 (segmentation, ``task="segmentation"``: one logit map
   per image and per-image Dice and IoU in [0, 1]), and the run directory holds the
   documented files;
2. the same seed gives the same predictions (bit-identical on CPU);
3. its weights survive a round-trip through ``torch.save`` / ``torch.load(weights_only=True)``;
4. a method declared attribute-free gives the same predictions when every attribute value
   in the data is scrambled (it never reads the attribute at inference).

Each failure raises ``AssertionError`` naming the check.

:func:`check_dataset` does the same for a dataset adapter (on its own data, given a
``data_root``): the sample table satisfies the contract and is the same when built twice, the
adapter's config is JSON and stable, a seeded split of it is possible and holds every group in
validation and test, and its images decode to uint8 arrays of the asked size (masks too, for
datasets with masks). ``fairbench check FILE.py`` runs both on every method and dataset a
plugin file registers.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fairbench.metrics.catalog import PAPER_FAIRNESS
from fairbench.run.method import Method

TINY_DATA = {"n_samples": 160, "n_classes": 3, "images_per_patient": 1.0, "dark_fraction": 0.4}
TINY_TRAIN = {"epochs": 1, "batch_size": 16, "eval_batch_size": 64}
TINY_SEGMENTOR = "unet:tu-resnet10t"


def tiny_run_config(method: str, runs_dir: Path, *, params: dict[str, Any] | None = None,
                    seed: int = 0, train: dict[str, Any] | None = None,
                    cache_dir: Path | None = None, data: dict[str, Any] | None = None,
                    task: str = "classification") -> Any:
    from fairbench.run.runner import RunConfig

    segmentation = task == "segmentation"
    return RunConfig(
        method=method, method_params=dict(params or {}), dataset="synthderm", task=task,
        dataset_params={**TINY_DATA, **(data or {})},
        backbone=TINY_SEGMENTOR if segmentation else "smallcnn",
        backbone_params={"decoder_width": 16} if segmentation else {"width": 8},
        image_size=16, seed=seed,
        train={**TINY_TRAIN, **(train or {})}, device="cpu", runs_dir=str(runs_dir),
        cache_dir=str(cache_dir or Path(runs_dir) / "_cache"), progress=False)


def check_method(
    method_cls: type[Method] | str,
    workdir: str | Path | None = None,
    *,
    params: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    task: str = "classification",
) -> dict[str, Any]:
    """Run every conformance check on ``method_cls`` (a class or a registered name), for
    ``task`` (``"segmentation"``: a small U-Net on synthderm's lesion masks).

    Returns the metrics of the first run. ``workdir`` defaults to a temporary directory.
    """
    from fairbench.run.method import METHODS, get_method_class
    from fairbench.run.runner import run_experiment

    if isinstance(method_cls, str):
        method_cls = get_method_class(method_cls)
    name = method_cls.registered_name or method_cls.__name__.lower()
    if name not in METHODS or METHODS.get(name) is not method_cls:
        METHODS.register(name, override=True)(method_cls)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        cache = root / "_cache"
        first = run_experiment(tiny_run_config(name, root / "a", params=params, train=train,
                                               cache_dir=cache, task=task), keep_model=True)
        second = run_experiment(tiny_run_config(name, root / "b", params=params, train=train,
                                                cache_dir=cache, task=task), keep_model=True)
        _check_outputs(name, first)
        _check_determinism(name, first, second)
        _check_weights_roundtrip(name, first)
        if not method_cls.needs_attribute_at_inference:
            _check_attribute_free(name, first)
        return first.metrics


def _predict(result: Any, part: str = "test", model: torch.nn.Module | None = None
             ) -> np.ndarray:
    """Class probabilities (classification) or raw mask logits (segmentation) of ``part``."""
    ctx = result.context
    model = result.model if model is None else model
    if ctx.task != "segmentation":
        return ctx.trainer.predict(model, ctx.loader(part), ctx.train_config).probs
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(b.x).float().cpu() for b in ctx.loader(part)])
    model.train(was_training)
    return out.numpy()


def _check_outputs(name: str, result: Any) -> None:
    assert isinstance(result.model, torch.nn.Module), f"{name}: run() must return an nn.Module"
    for f in ("config.json", "metrics.json", "predictions.csv", "train_log.csv"):
        assert (result.run_dir / f).is_file(), f"{name}: run directory lacks {f}"
    ctx = result.context
    record = json.loads((result.run_dir / "config.json").read_text()).get("engagement")
    assert record is not None, (
        f"{name}: declare engagement(notes) -> Engagement, what shows that the mechanism acted "
        "(fairbench.run.engagement; NO_MECHANISM for a method without one)")
    assert record.get("engaged") in (True, False, None) and record.get("criterion"), (
        f"{name}: the engagement record needs engaged (true/false/null) and a criterion")
    preds = pd.read_csv(result.run_dir / "predictions.csv")
    sizes = {p: len(ctx.positions(p)) for p in ("val", "test")}
    assert len(preds) == sizes["val"] + sizes["test"], f"{name}: one prediction row per sample"
    if ctx.task == "segmentation":
        for col in ("Dice", "IoU"):
            assert col in preds.columns, f"{name}: predictions.csv lacks per-image {col}"
            assert preds[col].between(0, 1).all(), f"{name}: per-image {col} outside [0, 1]"
        out = _predict(result)
        size = ctx.bundle.image_size
        assert out.shape[0] == sizes["test"] and out.shape[2:] == (size, size), (
            f"{name}: a segmentation model must give one {size}x{size} logit map per image")
        for part in ("val", "test"):
            for key in ("Dice", "IoU", "gap", "ES_fairseg", "ES_fairmedfm"):
                assert key in result.metrics[part], f"{name}: metrics.json lacks {part}.{key}"
        return
    prob_cols = [c for c in preds.columns if c.startswith("prob_")]
    assert len(prob_cols) == ctx.n_classes, f"{name}: one probability column per class"
    sums = preds[prob_cols].to_numpy().sum(axis=1)
    assert np.allclose(sums, 1.0, atol=1e-4), f"{name}: probabilities must sum to 1"
    for part in ("val", "test"):
        for key in ("F1", *PAPER_FAIRNESS, "EOdd_signed"):
            assert key in result.metrics[part], f"{name}: metrics.json lacks {part}.{key}"


def _check_determinism(name: str, a: Any, b: Any) -> None:
    pa, pb = _predict(a), _predict(b)
    assert np.array_equal(pa, pb), f"{name}: the same seed must give the same predictions"


def _check_weights_roundtrip(name: str, result: Any) -> None:
    model = result.model
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    clone.load_state_dict(state)
    before = _predict(result)
    after = _predict(result, model=clone)
    assert np.array_equal(before, after), f"{name}: weights must round-trip through state_dict"


def _check_attribute_free(name: str, result: Any) -> None:
    ctx = result.context
    data = ctx.bundle.data
    before = _predict(result)
    saved = {k: v.clone() for k, v in data.attrs.items()}
    gen = torch.Generator().manual_seed(123)
    try:
        for k, v in data.attrs.items():
            n_groups = len(ctx.table.attributes[k])
            data.attrs[k] = torch.randint(0, n_groups, v.shape, generator=gen).to(v.device)
        after = _predict(result)
    finally:
        data.attrs.update(saved)
    assert np.array_equal(before, after), (
        f"{name}: declared attribute-free but its predictions change with the attribute")


def check_dataset(
    dataset_cls: type[Any] | str,
    data_root: str | Path | None = None,
    *,
    params: dict[str, Any] | None = None,
    image_size: int = 16,
    n_images: int = 16,
) -> dict[str, Any]:
    """Run the conformance checks on a dataset adapter (a class or a registered name), on the
    data under ``data_root`` with ``params`` (its ``--data-param`` options).

    Decodes at most ``n_images`` images (the first rows of the table) at ``image_size``.
    Returns a summary: ``{"n": rows, "classes": [...], "attributes": {name: {group: n}}}``.
    Each failure raises ``AssertionError`` naming the check; bad input (no data root where
    one is needed, a bad option) raises the adapter's own clear error.
    """
    import json

    from fairbench.data.dataset import DATASETS, DatasetAdapter, SampleTable, get_dataset_class
    from fairbench.data.dataset import ImageSpec as Spec
    from fairbench.data.splits import check_split, make_split

    if isinstance(dataset_cls, str):
        dataset_cls = get_dataset_class(dataset_cls)
    assert isinstance(dataset_cls, type) and issubclass(dataset_cls, DatasetAdapter), (
        f"{dataset_cls!r} must be a DatasetAdapter subclass")
    name = dataset_cls.registered_name or dataset_cls.__name__.lower()
    if name not in DATASETS or DATASETS.get(name) is not dataset_cls:
        DATASETS.register(name, override=True)(dataset_cls)
    adapter = dataset_cls(params=dict(params or {}), data_root=data_root)
    table = adapter.build_table()
    assert isinstance(table, SampleTable), f"{name}: build_table() must return a SampleTable"
    assert len(table) > 0, f"{name}: the sample table is empty"
    assert table.task in dataset_cls.tasks, (
        f"{name}: the table's task {table.task!r} is not one of the adapter's tasks")
    assert table.n_classes >= 2 or "segmentation" in dataset_cls.tasks, (
        f"{name}: a classification dataset needs at least two classes")
    assert table.attributes, f"{name}: the table has no sensitive attribute"
    assert table.default_attribute in table.attributes, (
        f"{name}: default_attribute {table.default_attribute!r} is not one of its attributes")
    for attr, groups in table.attributes.items():
        present = set(table.attr(attr)[table.attr(attr) >= 0].tolist())
        assert len(present) >= 2, (
            f"{name}: attribute {attr!r} has fewer than two groups present ({groups})")
    again = dataset_cls(params=dict(params or {}), data_root=data_root).build_table()
    pd.testing.assert_frame_equal(table.df, again.df, obj=f"{name}: the sample table built twice")
    config = adapter.config()
    text = json.dumps(config, sort_keys=True)  # part of every run's identity: JSON, stable
    assert json.dumps(adapter.config(), sort_keys=True) == text, f"{name}: config() changes"
    assert config.get("name") == name, f"{name}: config()['name'] must be the registered name"
    split = make_split(table, seed=0)
    try:
        check_split(split, table, table.default_attribute)
    except Exception as exc:  # noqa: BLE001 - reported as the failed check
        raise AssertionError(f"{name}: a seeded split of the table is not usable: {exc}") from None
    assert make_split(table, seed=0).sha256 == split.sha256, f"{name}: the split is not seeded"
    head = SampleTable(table.df.iloc[:n_images].copy(), classes=table.classes,
                       attributes=table.attributes, task=table.task,
                       default_attribute=table.default_attribute, has_masks=table.has_masks,
                       mask_classes=table.mask_classes)
    out = np.zeros((len(head), image_size, image_size, 3), dtype=np.uint8)
    masks = (np.full((len(head), image_size, image_size), 255, dtype=np.uint8)
             if table.has_masks else None)
    adapter.fill_images(head, Spec(size=image_size), out, masks)
    assert out.any(), f"{name}: fill_images left every pixel at 0"
    assert all(out[i].any() for i in range(len(head))), (
        f"{name}: fill_images left an image blank (all pixels 0)")
    if masks is not None:
        assert masks.max() < len(table.mask_classes), (
            f"{name}: mask codes must lie in [0, {len(table.mask_classes)})")
    return {"n": len(table), "classes": list(table.classes),
            "attributes": {attr: {g: int((table.attr(attr) == k).sum())
                                  for k, g in enumerate(groups)}
                           for attr, groups in table.attributes.items()}}
