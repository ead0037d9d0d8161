"""One run, end to end: dataset → table → split → tensor cache → context → method → predictions
→ metrics → run directory (see DESIGN.md, "The path of one run")."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fairbench.core.errors import FairbenchError, TrainingDiverged
from fairbench.core.files import (
    config_hash,
    contained_path,
    ensure_writable_dir,
    file_sha256,
    read_json,
    remove_stale_temporaries,
    write_json,
)
from fairbench.core.limits import check_image_size, check_seed
from fairbench.core.params import build_params, params_to_dict
from fairbench.core.timing import PhaseTimer
from fairbench.core.version import __version__
from fairbench.data.cache import default_cache_dir, load_or_build
from fairbench.data.dataset import (
    ATTR_PREFIX,
    TRUE_LABEL_COLUMN,
    DatasetAdapter,
    SampleTable,
    get_dataset_class,
)
from fairbench.data.loaders import DeviceData
from fairbench.data.splits import (
    PARTS,
    Split,
    check_split,
    load_split,
    make_split,
    save_split,
    split_file_path,
)
from fairbench.metrics import HIGHER_IS_BETTER, evaluate_classification, evaluate_segmentation
from fairbench.models.backbones import check_backbone_name, check_backbone_params
from fairbench.models.segmentors import is_segmentor_name
from fairbench.run.context import BackboneSpec, DataBundle, RunContext
from fairbench.run.method import Method, get_method_class
from fairbench.run.store import (
    DamagedRunError,
    RunClaimed,
    RunWriter,
    check_run,
    claim_run,
    is_finished,
    write_failed,
)
from fairbench.training.trainer import Predictions, SegmentationScores, TrainConfig

log = logging.getLogger("fairbench")


@dataclass
class RunConfig:
    """Everything that defines one run (the CLI, a TOML file or a sweep fills it in)."""

    method: str = "vanilla"
    method_params: dict[str, Any] = field(default_factory=dict)
    #: "classification", "segmentation" or None (the dataset's first task the method serves)
    task: str | None = None
    dataset: str = "synthderm"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    attribute: str | None = None
    privileged: str | None = None
    backbone: str | None = None
    backbone_params: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    #: start the backbone from its local ImageNet-pretrained weights (fairbench.models.pretrained),
    #: looked for in ``weights_dir`` (else $FAIRBENCH_WEIGHTS_DIR, else the Hugging Face cache)
    pretrained: bool = False
    weights_dir: str | None = None
    image_size: int | None = None
    seed: int = 0
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_file: str | None = None
    #: "seeded" (the hashed split of split_seed) or "published": the community's split files
    #: (fairbench.data.published), read from split_dir (else $FAIRBENCH_SPLITS_DIR, else
    #: <data_root>/published_split)
    split: str = "seeded"
    split_dir: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    runs_dir: str = "runs"
    cache_dir: str | None = None
    save_weights: bool = False
    force: bool = False
    progress: bool = True
    #: local plugin files loaded before the run (so a worker process finds plugin methods)
    plugins: tuple[str, ...] = ()
    #: experiment tracking of the finished run: None or "mlflow" (see fairbench.run.tracking)
    tracking: str | None = None
    tracking_uri: str | None = None
    #: a damaged run (files that do not match its manifest) is computed again instead of
    #: reported (a sweep sets it; a single run asks for --force)
    redo_damaged: bool = False
    #: when another process computes the same run: wait for it (True) or raise RunClaimed
    wait_for_claim: bool = True
    #: load a --weights file that covers less than MIN_WEIGHTS_COVERAGE of the backbone
    allow_partial_weights: bool = False
    #: told the phase the run enters (data, vanilla, train, curvature, evaluate, ...): a
    #: sweep's progress display; not part of the run's identity
    on_phase: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    #: a run whose method used the shared vanilla model also leaves the vanilla run folder of
    #: the same options (what `--method vanilla` writes), so its baseline row exists
    leave_vanilla_run: bool = True


@dataclass
class RunResult:
    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    reused: bool
    model: torch.nn.Module | None = None
    context: RunContext | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FairbenchError("--device cuda was asked for but no CUDA device is available; "
                             "use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise FairbenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def package_versions() -> dict[str, str]:
    import sklearn
    import timm
    import torchvision

    return {"fairbench": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__}


@dataclass
class Prepared:
    """A checked configuration: method, adapter and training settings built, nothing run."""

    config: RunConfig
    method: Method
    adapter: DatasetAdapter
    train: TrainConfig
    backbone: str
    image_size: int
    #: sha256 of the local weights file: a run's identity follows the weights' content, so a
    #: file replaced under the same path is a new run and a moved file is the same one
    weights_sha256: str | None = None
    task: str = "classification"
    #: the pretrained weights file (--pretrained) and its sha256
    pretrained_path: str | None = None
    pretrained_sha256: str | None = None


def prepare(config: RunConfig) -> Prepared:
    """Check every part of ``config`` before any work; raises one clear error on bad input."""
    method_cls = get_method_class(config.method)
    dataset_cls = get_dataset_class(config.dataset)
    task = resolve_task(config, method_cls, dataset_cls)
    method = method_cls(dict(config.method_params))
    adapter = dataset_cls(params=dict(config.dataset_params), data_root=config.data_root)
    adapter.cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else None
    raw_train = dict(config.train)
    if task == "segmentation":
        # checkpoints of segmentation runs are picked by validation Dice unless told otherwise
        raw_train.setdefault("select", "Dice")
    train = build_params(TrainConfig, raw_train, owner="training (--train)")
    check_select_for_task(train.select, task)
    if config.image_size is not None and (isinstance(config.image_size, bool) or
                                          not isinstance(config.image_size, int)):
        raise FairbenchError(f"image_size {config.image_size!r} must be an integer number of "
                             "pixels")
    image_size = config.image_size if config.image_size is not None \
        else dataset_cls.default_image_size
    if task == "segmentation":
        from fairbench.models.segmentors import check_segmentor_name, check_segmentor_size

        backbone = config.backbone or dataset_cls.default_segmentor
        if not is_segmentor_name(backbone):
            raise FairbenchError(
                f"backbone {backbone!r} is a classifier; a segmentation run needs a U-Net such "
                f"as --backbone {dataset_cls.default_segmentor}")
        check_segmentor_name(backbone)
        check_segmentor_size(image_size, int(config.backbone_params.get("encoder_depth", 4)))
    else:
        backbone = config.backbone or dataset_cls.default_backbone
        if is_segmentor_name(backbone):
            raise FairbenchError(
                f"backbone {backbone!r} is a segmentor; a classification run needs a classifier "
                f"such as --backbone {dataset_cls.default_backbone} (or --task segmentation)")
        check_backbone_name(backbone)  # raises with close matches (timm:/tv: names too)
    weights_sha256 = None
    if config.weights:
        weights_file = Path(config.weights).expanduser()
        if weights_file.is_dir():
            raise FairbenchError(f"weights file {config.weights!r} is a folder; give the .pt "
                                 "file")
        if not weights_file.is_file():
            raise FairbenchError(f"weights file {config.weights!r} does not exist")
        try:
            weights_sha256 = file_sha256(weights_file)
        except OSError as exc:
            raise FairbenchError(f"weights file {config.weights!r} could not be read "
                                 f"({exc.strerror or exc})") from None
    pretrained_path, pretrained_sha256 = _pretrained(config, backbone, task)
    check_image_size(image_size)
    if config.split not in ("seeded", "published"):
        raise FairbenchError(f"split {config.split!r} is not seeded or published")
    if config.split == "published" and config.split_file:
        raise FairbenchError("--split published and --split-file both given; use one")
    if config.split_dir and config.split != "published":
        raise FairbenchError("--split-dir names where published split files are; add "
                             "--split published (or drop --split-dir)")
    if config.split_file:
        split_file_path(config.split_file)  # before anything is written
    if not str(config.runs_dir).strip():
        raise FairbenchError("--runs-dir is empty; name the folder runs go to, e.g. runs")
    for what, seed in (("seed", config.seed), ("split_seed", config.split_seed)):
        check_seed(seed, what)
    # typed like method parameters, unknown keys refused; a partial --weights file refused
    build = None
    if task == "segmentation":
        from fairbench.models.segmentors import create_segmentor

        def build(**params: Any) -> torch.nn.Module:
            return create_segmentor(backbone, n_mask_classes=3, image_size=image_size, **params)
    backbone_params = check_backbone_params(
        backbone, dict(config.backbone_params), image_size=image_size, n_outputs=3,
        weights=config.weights, allow_partial=config.allow_partial_weights, build=build)
    config = dataclasses.replace(config, backbone_params=backbone_params)
    return Prepared(config, method, adapter, train, backbone, image_size, weights_sha256, task,
                    pretrained_path, pretrained_sha256)


def _pretrained(config: RunConfig, backbone: str, task: str) -> tuple[str | None, str | None]:
    """The pretrained weights file of ``--pretrained`` and its sha256 (both None without)."""
    if not config.pretrained:
        if config.weights_dir:
            raise FairbenchError("--weights-dir names where --pretrained weights are; add "
                                 "--pretrained (or drop --weights-dir)")
        return None, None
    if task == "segmentation":
        raise FairbenchError("--pretrained starts a classification backbone from ImageNet "
                             "weights; a segmentation run takes a --weights file")
    if config.weights:
        raise FairbenchError("--pretrained and --weights both given; start from one of them")
    from fairbench.models.pretrained import find_pretrained

    path = find_pretrained(backbone, config.weights_dir)
    return str(path), file_sha256(path)


TASKS = ("classification", "segmentation")


def check_select_for_task(select: str, task: str) -> None:
    """One clear error when the checkpoint metric belongs to the other task (``select=F1``
    on a segmentation run), before any training."""
    from fairbench.metrics import is_segmentation_metric

    if select == "last":
        return
    if is_segmentation_metric(select) != (task == "segmentation"):
        example = "Dice, IoU or worst.Dice" if task == "segmentation" else "F1, AUC or worst.F1"
        raise FairbenchError(f"--train select={select!r} is not a metric of a {task} run; "
                             f"use e.g. {example} (or last)")


def resolve_task(config: RunConfig, method_cls: type[Method],
                 dataset_cls: type[DatasetAdapter]) -> str:
    """The run's task: as configured, else the first of the dataset's tasks that the method
    serves; one clear error when the method or the dataset cannot serve it."""
    from fairbench.data.dataset import list_datasets
    from fairbench.run.method import list_methods

    method_name, dataset_name = config.method, config.dataset
    if config.task is not None and config.task not in TASKS:
        raise FairbenchError(f"unknown task {config.task!r}; use {' or '.join(TASKS)}")
    task = config.task or next(
        (t for t in dataset_cls.tasks if t in method_cls.tasks), dataset_cls.tasks[0])
    if task not in dataset_cls.tasks:
        able = [d for d in list_datasets() if task in get_dataset_class(d).tasks]
        raise FairbenchError(
            f"dataset {dataset_name!r} has no {task} task (it serves "
            f"{', '.join(dataset_cls.tasks)}); datasets for {task}: {', '.join(able)}")
    if task not in method_cls.tasks:
        able = [m for m in list_methods() if task in get_method_class(m).tasks]
        raise FairbenchError(
            f"method {method_name!r} does not support {task}; methods for {task}: "
            f"{', '.join(able)}")
    return task


def resolve_split(p: Prepared) -> tuple[SampleTable, str, Split]:
    """The sample table, the attribute in use and the checked split of ``p`` (no pixels);
    shared by :func:`load_data` and the sweep's planning."""
    config = p.config
    table = p.adapter.build_table()
    attribute = config.attribute or table.default_attribute
    if attribute is None:
        raise FairbenchError(f"dataset {config.dataset!r} has no sensitive attribute")
    table.check_attribute(attribute)
    if config.privileged is not None and config.privileged not in table.group_names(attribute):
        raise FairbenchError(
            f"privileged group {config.privileged!r} is not a group of attribute {attribute!r}; "
            f"choose one of {', '.join(table.group_names(attribute))}")
    if len(table.group_names(attribute)) < 2:
        raise FairbenchError(f"attribute {attribute!r} has a single group; fairness needs two")
    if config.split_file:
        split = load_split(config.split_file)
    elif config.split == "published":
        from fairbench.data.published import published_split, splits_dir

        split = published_split(config.dataset, table,
                                splits_dir(config.split_dir, config.data_root))
    else:
        split = make_split(table, seed=config.split_seed, fractions=config.split_fractions)
    check_split(split, table, attribute)
    return table, attribute, split


def load_data(p: Prepared, device: torch.device, runs_dir: Path) -> DataBundle:
    config = p.config
    table, attribute, split = resolve_split(p)
    split_file = save_split(split, contained_path(runs_dir, "splits", what="split")
                            / f"{config.dataset}-{split.sha256[:12]}.csv")
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    cached = load_or_build(p.adapter, table, p.image_size, cache_dir, progress=config.progress)
    attrs = {name: table.attr(name) for name in table.attributes}
    data = DeviceData(np.asarray(cached.images), table.labels, attrs, device,
                      masks=None if cached.masks is None else np.asarray(cached.masks))
    positions = {part: split.positions(table, part) for part in PARTS}
    if p.task == "segmentation" and cached.masks is None:
        raise FairbenchError(f"dataset {config.dataset!r} produced no segmentation masks")
    return DataBundle(p.adapter, table, split, split_file, data, attribute, p.image_size,
                      positions, task=p.task)


def run_identity(p: Prepared, bundle: DataBundle) -> dict[str, Any]:
    """What defines a run's result (the device, paths and progress settings do not)."""
    c = p.config
    return {
        "method": c.method,
        # classification identities keep their pre-segmentation form (and hashes)
        **({"task": "segmentation"} if p.task == "segmentation" else {}),
        "method_params": params_to_dict(p.method.params),
        "dataset": p.adapter.config(),
        "attribute": bundle.attribute,
        "privileged": c.privileged,
        "backbone": p.backbone,
        "backbone_params": c.backbone_params,
        "weights": p.weights_sha256,
        # only when set: the identities (and folders) of random-init runs are unchanged
        **({"pretrained": p.pretrained_sha256} if p.pretrained_sha256 else {}),
        "image_size": p.image_size,
        "seed": c.seed,
        "split": bundle.split.sha256,
        "train": p.train.identity(),
        # binary tasks: predictions use the validation-chosen threshold (multi-class: argmax)
        **({"decision": "val_macro_f1_threshold"}
           if bundle.table.n_classes == 2 and p.task == "classification" else {}),
    }


def run_dir_for(runs_dir: Path, identity: dict[str, Any]) -> Path:
    """``<runs>/<dataset>/<method>/<backbone>-s<seed>-<hash>``, checked to lie inside
    ``runs_dir`` (a name that would climb out of it is refused)."""
    digest = config_hash(identity)[:10]
    backbone = "".join(ch if ch.isalnum() or ch in "_.+-" else "_" for ch in identity["backbone"])
    name = f"{backbone}-s{identity['seed']}-{digest}"
    return contained_path(runs_dir, str(identity["dataset"]["name"]), str(identity["method"]),
                          name)


def final_metrics(ctx: RunContext, p: Prepared, model: torch.nn.Module
                  ) -> tuple[dict[str, Any], list[pd.DataFrame], float | None, Predictions | None]:
    """Validation and test metrics of the final model, their per-sample rows, the binary
    decision threshold (chosen on validation only; None otherwise) and the test predictions
    (classification; with the pooled embeddings of the same pass where the model has them,
    which the leakage probe reads instead of a second pass)."""
    bundle = ctx.bundle
    metrics: dict[str, Any] = {}
    frames = []
    threshold = None
    test_pred = None
    if p.task == "segmentation":
        for part in ("val", "test"):
            scores = ctx.trainer.predict_segmentation(model, ctx.loader(part), p.train)
            metrics[part], frame = _score_segmentation(bundle, scores, part)
            frames.append(frame)
    else:
        preds = {part: ctx.trainer.predict(model, ctx.loader(part), p.train,
                                           features=part == "test")
                 for part in ("val", "test")}
        test_pred = preds["test"]
        threshold = _val_threshold(bundle, preds["val"])
        for part in ("val", "test"):
            metrics[part], frame = _score(bundle, preds[part], part, threshold)
            frames.append(frame)
        true = true_labels(bundle.table)
        if true is not None:  # evaluation only: nothing above saw the true labels
            metrics[TRUE_PART] = _score_true(bundle, preds["test"], threshold, true)
    return metrics, frames, threshold, test_pred


#: the metrics.json part holding the test metrics against the true labels (synthetic data)
TRUE_PART = "test_true"


def true_labels(table: SampleTable) -> np.ndarray | None:
    """The true class of every row where the dataset knows it (generated data keeps it in a
    ``true_label`` column beside the observed ``label``), else None. For evaluation only:
    no choice of a run (checkpoints, thresholds, settings, the privileged group) reads it."""
    if TRUE_LABEL_COLUMN not in table.df.columns:
        return None
    return table.df[TRUE_LABEL_COLUMN].to_numpy(dtype=np.int64)


def _score_true(bundle: DataBundle, pred: Predictions, threshold: float | None,
                true: np.ndarray) -> dict[str, Any]:
    """The test metrics of ``pred`` against the true labels (same predictions, same
    validation-chosen decision rule)."""
    from fairbench.metrics.decision import apply_threshold

    rows = pred.index
    groups = bundle.table.attr(bundle.attribute)[rows]
    return evaluate_classification(true[rows], pred.probs, groups, bundle.group_names,
                                   y_pred=apply_threshold(pred.probs, threshold))


def run_experiment(config: RunConfig, *, keep_model: bool = False) -> RunResult:
    """Run ``config`` and store the result; a finished identical run is returned as it is
    (``reused=True``) unless ``config.force``."""
    started = time.perf_counter()
    if config.plugins:
        from fairbench.core.registry import load_plugin_file

        for plugin in config.plugins:
            load_plugin_file(plugin)  # once per process
    if config.tracking is not None:
        from fairbench.run.tracking import check_tracking

        check_tracking(config.tracking)  # before any work: a missing extra is one clear line
    p = prepare(config)
    runs_dir = ensure_writable_dir(Path(config.runs_dir))
    device = resolve_device(config.device)
    seed_everything(config.seed)
    timer = PhaseTimer(device, on_phase=config.on_phase)
    with timer.phase("data"):
        bundle = load_data(p, device, runs_dir)
    identity = run_identity(p, bundle)
    final_dir = run_dir_for(runs_dir, identity)
    with claim_run(final_dir, wait=config.wait_for_claim):
        if not config.force:
            if is_finished(final_dir):
                log.info("run already finished: %s", final_dir)
                return RunResult(final_dir, read_json(final_dir / "config.json"),
                                 read_json(final_dir / "metrics.json"), reused=True)
            state = check_run(final_dir)
            if state.state == "damaged":
                if not config.redo_damaged:
                    raise DamagedRunError(state.message())
                log.warning("run %s is damaged (%s); computing it again", final_dir,
                            state.problem)
        # no other process can be writing this run while we hold its claim
        remove_stale_temporaries(final_dir, any_host=True)
        run_dir, record, metrics, model, ctx = _compute(
            config, p, bundle, identity, final_dir, runs_dir, device, timer, started)
        if record is None:  # an identical run finished meanwhile (a process without claims)
            return RunResult(run_dir, read_json(run_dir / "config.json"),
                             read_json(run_dir / "metrics.json"), reused=True)
    if config.leave_vanilla_run and config.method != "vanilla" and ctx.used_vanilla:
        leave_vanilla_run(config)
    if config.tracking == "mlflow":
        from fairbench.run.tracking import log_run_mlflow

        try:
            log_run_mlflow(run_dir, record, metrics, tracking_uri=config.tracking_uri,
                           runs_dir=runs_dir)
        except Exception as exc:  # noqa: BLE001 - the run is saved; tracking is a copy
            log.warning("the run is saved in %s, but logging it to MLflow failed (%s: %s); "
                        "check --tracking-uri", run_dir, type(exc).__name__, exc)
    return RunResult(run_dir, record, metrics, reused=False,
                     model=model if keep_model else None, context=ctx if keep_model else None)


def leave_vanilla_run(config: RunConfig) -> Path | None:
    """Write the vanilla run folder of ``config``'s options (the run ``--method vanilla`` would
    write; its model is the cached one the method started from, so this costs a prediction
    pass) unless it is finished or another process is computing it. A failure here is logged,
    never raised: the method's run is saved already."""
    vanilla = replace(config, method="vanilla", method_params={}, force=False,
                      wait_for_claim=False, leave_vanilla_run=False, on_phase=None)
    try:
        return run_experiment(vanilla).run_dir
    except RunClaimed:
        return None  # another process is writing it
    except Exception as exc:  # noqa: BLE001 - the method's run is saved; this is a by-product
        log.warning("could not write the vanilla run folder beside the run (%s: %s)",
                    type(exc).__name__, exc)
        return None


def device_record(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on besides its identity: torch's thread counts, the device's
    name, the host and process that computed it (recorded in config.json)."""
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                           "torch_interop_threads": torch.get_num_interop_threads(),
                           "host": socket.gethostname(), "pid": os.getpid()}
    if device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(device)
    else:
        out["device_name"] = platform.processor() or platform.machine()
    return out


def _compute(config: RunConfig, p: Prepared, bundle: DataBundle, identity: dict[str, Any],
             final_dir: Path, runs_dir: Path, device: torch.device, timer: PhaseTimer,
             started: float) -> tuple[Path, dict[str, Any] | None, dict[str, Any], Any, Any]:
    """Compute the run (its claim held) and commit it; ``(run_dir, record, metrics, model,
    ctx)``, with ``record`` None when an identical run finished meanwhile."""
    writer = RunWriter(final_dir)
    try:
        ctx = RunContext(
            bundle=bundle,
            backbone=BackboneSpec(p.backbone, dict(p.config.backbone_params), config.weights,
                                  p.weights_sha256, config.allow_partial_weights,
                                  p.pretrained_path, p.pretrained_sha256),
            train_config=p.train, device=device, seed=config.seed, run_dir=writer.path,
            runs_dir=runs_dir, privileged=config.privileged, progress=config.progress,
            timer=timer)
        seed_everything(config.seed)
        t_method = time.perf_counter()
        with timer.phase("other"):
            model = p.method.run(ctx, p.method.params)
            privileged = ctx.privileged_name  # resolves the default rule if the method did not
        method_seconds = time.perf_counter() - t_method
        with timer.phase("evaluate"):
            metrics, frames, threshold, test_pred = final_metrics(ctx, p, model)
        if p.task == "classification":
            with timer.phase("leakage"):
                metrics["leakage"] = _leakage(ctx, model, test_pred)
            with timer.phase("counterfactual"):
                _counterfactual(ctx, model, metrics, frames, threshold)
        metrics["meta"] = _metrics_meta(p, bundle, privileged, threshold, metrics)
        record = _run_record(config, p, bundle, identity, ctx, privileged, threshold, device,
                             method_seconds, started, timer)
        pd.concat(frames).to_csv(writer.path / "predictions.csv", index=False)
        write_json(writer.path / "metrics.json", metrics)
        if config.save_weights:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                       writer.path / "weights.pt")
        write_json(writer.path / "config.json", record)
        if is_finished(final_dir) and not config.force:
            # an identical run finished meanwhile (another process): keep it, drop ours
            writer.abort()
            log.info("an identical run finished meanwhile: %s", final_dir)
            return final_dir, None, {}, None, None
        # a directory under the final name without the run files is no result (a copy cut
        # short, files deleted by hand): it is replaced, never needs --force
        run_dir = writer.commit(replace=True)
    except TrainingDiverged as exc:
        writer.abort()
        message = f"method {config.method!r} failed: {exc}"
        failed = write_failed(final_dir, {
            "state": "failed", "error": message, "method": config.method,
            "stage": exc.stage, "epoch": exc.epoch, "identity": identity,
            "config_hash": config_hash(identity), "command": " ".join(sys.argv)})
        raise TrainingDiverged(f"{message} (recorded in {str(failed)!r})", stage=exc.stage,
                               epoch=exc.epoch) from None
    except BaseException:
        writer.abort()
        raise
    return run_dir, record, metrics, model, ctx


def _metrics_meta(p: Prepared, bundle: DataBundle, privileged: str | None,
                  threshold: float | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` ``meta``: the task, groups, directions, signs and decision rule."""
    return {
        "task": p.task,
        **({"mask_classes": bundle.mask_classes} if p.task == "segmentation" else {}),
        "attribute": bundle.attribute,
        "groups": bundle.group_names,
        "privileged": privileged,
        "higher_is_better": HIGHER_IS_BETTER if p.task == "classification"
        else _directions(metrics["test"]),
        # one direction for every signed difference (Diff_signed and the *_signed twins)
        "signed_direction": f"{bundle.group_names[0]} minus {bundle.group_names[1]}"
        if len(bundle.group_names) == 2 else "max minus min",
        "diff_sign": f"{bundle.group_names[0]} minus {bundle.group_names[1]}"
        if len(bundle.group_names) == 2 else "max minus min",
        **({"paper_signed_sign": f"{bundle.group_names[0]} minus {bundle.group_names[1]}"}
           if p.task == "classification" and len(bundle.group_names) == 2 else {}),
        "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE if threshold is not None else
        ("logit > 0 (binary mask) or argmax per pixel" if p.task == "segmentation"
         else "argmax"),
    }


def _run_record(config: RunConfig, p: Prepared, bundle: DataBundle, identity: dict[str, Any],
                ctx: RunContext, privileged: str | None, threshold: float | None,
                device: torch.device, method_seconds: float, started: float,
                timer: PhaseTimer) -> dict[str, Any]:
    """``config.json``: the run's identity, what it ran on, its notes, engagement and times."""
    return {
        "identity": identity,
        "config_hash": config_hash(identity),
        "method": config.method,
        "method_params": identity["method_params"],
        "method_kind": p.method.kind,
        "task": p.task,
        "needs_attribute_at_inference": p.method.needs_attribute_at_inference,
        "dataset": config.dataset,
        "dataset_params": identity["dataset"]["params"],
        "data_root": config.data_root,
        "attribute": bundle.attribute,
        "groups": bundle.group_names,
        "privileged": privileged,
        "privileged_rule": "configured" if config.privileged else ctx.privileged_rule,
        "classes": bundle.table.classes,
        **({"mask_classes": bundle.mask_classes} if p.task == "segmentation" else {}),
        "threshold": threshold,
        "backbone": p.backbone,
        "backbone_params": p.config.backbone_params,
        "weights": config.weights,
        "weights_sha256": p.weights_sha256,
        **({"pretrained": p.pretrained_path, "pretrained_sha256": p.pretrained_sha256}
           if p.pretrained_sha256 else {}),
        "image_size": p.image_size,
        "seed": config.seed,
        "split_seed": config.split_seed,
        "split_sha256": bundle.split.sha256,
        "split_file": str(bundle.split_file),
        "split_sizes": bundle.split.sizes(),
        "train": identity["train"],
        "device": str(device),
        **device_record(device),
        "versions": package_versions(),
        "command": " ".join(sys.argv),
        "notes": ctx.notes,
        "engagement": _engagement(p.method, ctx.notes),
        # phases: exclusive wall time of data, vanilla, train, curvature, other and
        # evaluate (fairbench.core.timing); writing the files is not in them
        "seconds": {"method": round(method_seconds, 3),
                    "total": round(time.perf_counter() - started, 3),
                    "phases": timer.rounded()},
    }


THRESHOLD_RULE = "max validation macro-F1 (binary task)"


def _counterfactual(ctx: RunContext, model: torch.nn.Module, metrics: dict[str, Any],
                    frames: list[pd.DataFrame], threshold: float | None) -> None:
    """The test part's counterfactual twins (:mod:`fairbench.run.counterfactual`), where the
    dataset draws them: ``metrics["counterfactual"]``, the part-level ``flip_rate`` of
    ``test`` and ``test_true``, and the ``twin_pred`` column of the test rows."""
    from fairbench.run.counterfactual import counterfactual_metrics, twin_predictions

    bundle = ctx.bundle
    true = true_labels(bundle.table)
    positions = ctx.positions("test")
    twins = twin_predictions(ctx, model, positions, threshold)
    if twins is None or true is None:
        return
    twin_pred, twin_probs = twins
    test = frames[1]
    order = {sid: i for i, sid in enumerate(bundle.table.sample_ids[positions])}
    rows = np.array([order[sid] for sid in test["sample_id"]])
    pred = test["pred"].to_numpy(np.int64)
    probs = test[[c for c in test.columns if c.startswith("prob_")]].to_numpy(float)
    groups = bundle.table.attr(bundle.attribute)[positions][rows]
    record = counterfactual_metrics(pred, probs, twin_pred[rows], twin_probs[rows],
                                    true[positions][rows], groups, bundle.group_names)
    metrics["counterfactual"] = record
    for part in ("test", TRUE_PART):
        if part in metrics:
            metrics[part]["flip_rate"] = record["flip_rate"]
    test["twin_pred"] = twin_pred[rows]


def _engagement(method: Any, notes: dict[str, Any]) -> dict[str, Any] | None:
    """The method's engagement record (:mod:`fairbench.run.engagement`), None if it declares
    none."""
    record = method.engagement(notes)
    return None if record is None else record.to_dict()


def _leakage(ctx: RunContext, model: torch.nn.Module,
             test_pred: Predictions | None = None) -> dict[str, Any]:
    """The leakage probe of the returned model (:mod:`fairbench.run.leakage`), reading the
    test part's pooled embeddings from the evaluation pass where it kept them; a model it
    cannot read or data it cannot score (a single group in a part) is recorded as the reason
    instead of failing the run."""
    from fairbench.run.leakage import run_leakage

    score = None
    if test_pred is not None and test_pred.features is not None:
        score = (test_pred.features, test_pred.index)
    try:
        return run_leakage(ctx, model, score_features=score)
    except ValueError as exc:
        log.warning("leakage probe skipped: %s", exc)
        return {"skipped": str(exc)}


def _val_threshold(bundle: DataBundle, val: Predictions) -> float | None:
    """Binary tasks: the threshold on p(class 1) maximising validation macro-F1; else None."""
    from fairbench.metrics.decision import binary_threshold

    if val.probs.shape[1] != 2:
        return None
    return binary_threshold(bundle.table.labels[val.index], val.probs[:, 1])


def _score(bundle: DataBundle, pred: Predictions, part: str,
           threshold: float | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    from fairbench.metrics.decision import apply_threshold

    table = bundle.table
    rows = pred.index
    labels = table.labels[rows]
    groups = table.attr(bundle.attribute)[rows]
    y_pred = apply_threshold(pred.probs, threshold)
    metrics = evaluate_classification(labels, pred.probs, groups, bundle.group_names,
                                      y_pred=y_pred)
    frame = pd.DataFrame({
        "sample_id": table.sample_ids[rows],
        "part": part,
        "label": labels,
        "pred": y_pred,
    })
    true = true_labels(table)
    if true is not None:
        frame[TRUE_LABEL_COLUMN] = true[rows]
    if table.patient_ids is not None:  # lets bootstrap CIs resample patients
        frame["patient_id"] = table.patient_ids[rows]
    for name in table.attributes:
        frame[ATTR_PREFIX + name] = table.attr(name)[rows]
    probs = pd.DataFrame(pred.probs, columns=[f"prob_{c}" for c in range(pred.probs.shape[1])])
    return metrics, pd.concat([frame.reset_index(drop=True), probs], axis=1)


def _directions(part_metrics: dict[str, Any]) -> dict[str, bool | None]:
    """Direction of every base metric of a part (the keys that are not sub-dicts)."""
    from fairbench.metrics import higher_is_better

    out: dict[str, bool | None] = {}
    for key, value in part_metrics.items():
        if not isinstance(value, dict) and key not in ("n", "n_missing_group"):
            out[key] = higher_is_better(key)
    return out


def _score_segmentation(bundle: DataBundle, scores: SegmentationScores,
                        part: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics of one part and its per-image rows (Dice and IoU per foreground class)."""
    table = bundle.table
    rows = scores.index
    classes = bundle.mask_classes
    assert classes is not None
    metrics = evaluate_segmentation(scores.dice, scores.iou, table.attr(bundle.attribute)[rows],
                                    bundle.group_names, classes)
    frame = pd.DataFrame({"sample_id": table.sample_ids[rows], "part": part,
                          "Dice": scores.dice.mean(axis=1), "IoU": scores.iou.mean(axis=1)})
    if len(classes) > 2:
        for k, name in enumerate(classes[1:]):
            frame[f"Dice_{name}"] = scores.dice[:, k]
            frame[f"IoU_{name}"] = scores.iou[:, k]
    if table.patient_ids is not None:
        frame["patient_id"] = table.patient_ids[rows]
    for name in table.attributes:
        frame[ATTR_PREFIX + name] = table.attr(name)[rows]
    return metrics, frame


def replace(config: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(config, **changes)
