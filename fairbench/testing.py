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
"""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

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
        for key in ("F1", "EOpp0", "EOpp1", "EOdd", "EOdd_signed"):
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
