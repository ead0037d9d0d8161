"""What a method gets: :class:`RunContext` (data, loaders, backbone factory, trainer, the
shared vanilla baseline, the privileged group, the device, the seed and the run directory)."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fairbench.core.errors import FairbenchError
from fairbench.core.files import (
    config_hash,
)
from fairbench.core.timing import PhaseTimer
from fairbench.data.dataset import DatasetAdapter, SampleTable
from fairbench.data.loaders import Augment, BatchLoader, DeviceData
from fairbench.data.splits import Split
from fairbench.models.backbones import create_backbone
from fairbench.run.store import cached_model
from fairbench.training.curvature import PassSize
from fairbench.training.trainer import (
    EpochLog,
    FitResult,
    Sampler,
    TrainConfig,
    Trainer,
    TrainHooks,
)

Part = Literal["train", "val", "test"]


@dataclass
class DataBundle:
    """The data of one run: adapter, table, split, tensors on the device, attribute in use."""

    adapter: DatasetAdapter
    table: SampleTable
    split: Split
    split_file: Path
    data: DeviceData
    attribute: str
    image_size: int
    positions: dict[str, np.ndarray]
    #: "classification" or "segmentation"
    task: str = "classification"

    @property
    def group_names(self) -> list[str]:
        return self.table.group_names(self.attribute)

    @property
    def mask_classes(self) -> list[str] | None:
        """Mask class names (background first) of a segmentation run; None otherwise."""
        return list(self.table.mask_classes) if self.task == "segmentation" else None


@dataclass
class BackboneSpec:
    name: str
    params: dict[str, Any]
    weights: str | None = None
    #: sha256 of the weights file (what identifies the initialisation; the path does not)
    weights_sha256: str | None = None
    #: load a weights file that covers only part of the backbone (--allow-partial-weights)
    allow_partial: bool = False
    #: the local ImageNet-pretrained weights file the backbone starts from (--pretrained), and
    #: its sha256 (part of the run's and the shared vanilla model's identity)
    pretrained: str | None = None
    pretrained_sha256: str | None = None


class RunContext:
    """Everything :meth:`Method.run` may use. All tensors live on ``ctx.device``."""

    def __init__(
        self,
        *,
        bundle: DataBundle,
        backbone: BackboneSpec,
        train_config: TrainConfig,
        device: torch.device,
        seed: int,
        run_dir: Path,
        runs_dir: Path,
        privileged: str | None = None,
        progress: bool = True,
        logger: logging.Logger | None = None,
        timer: PhaseTimer | None = None,
    ) -> None:
        self.bundle = bundle
        self.backbone = backbone
        self.train_config = train_config
        self.device = device
        self.seed = seed
        self.run_dir = run_dir
        self.runs_dir = runs_dir
        self.progress = progress
        self.logger = logger or logging.getLogger("fairbench")
        self.log = EpochLog(run_dir / "train_log.csv")
        self.trainer = Trainer(device, seed=seed, log=self.log, progress=progress,
                               mask_classes=bundle.mask_classes)
        self._privileged_name = privileged
        self._vanilla: torch.nn.Module | None = None
        self._vanilla_meta: dict[str, Any] | None = None
        self.notes: dict[str, Any] = {}
        self.timer = timer or PhaseTimer(device)
        #: samples per curvature backward pass that fit in memory (saliency.group_curvature)
        self.curvature_pass_size = PassSize()

    # -- data -------------------------------------------------------------------------------------
    @property
    def table(self) -> SampleTable:
        return self.bundle.table

    @property
    def attribute(self) -> str:
        return self.bundle.attribute

    @property
    def group_names(self) -> list[str]:
        return self.bundle.group_names

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    @property
    def n_classes(self) -> int:
        return self.table.n_classes

    @property
    def task(self) -> str:
        """``"classification"`` or ``"segmentation"``."""
        return self.bundle.task

    @property
    def mask_classes(self) -> list[str] | None:
        return self.bundle.mask_classes

    @property
    def utility_metric(self) -> str:
        """The task's main utility metric: macro-F1 (classification) or Dice (segmentation)."""
        return "Dice" if self.task == "segmentation" else "F1"

    def positions(self, part: Part, groups: Sequence[int] | None = None) -> np.ndarray:
        """Row positions of ``part`` (restricted to ``groups`` codes if given; rows whose
        group is missing are dropped whenever ``groups`` is given)."""
        pos = self.bundle.positions[part]
        if groups is not None:
            codes = self.table.attr(self.attribute)[pos]
            pos = pos[np.isin(codes, list(groups))]
        return pos

    def loader(
        self,
        part: Part = "train",
        *,
        groups: Sequence[int] | None = None,
        positions: np.ndarray | None = None,
        batch_size: int | None = None,
        sampler: Literal["sequential"] | Sampler | None = None,
        augment: bool | None = None,
        drop_last: bool | None = None,
        seed_offset: int = 0,
        epoch_size: int | None = None,
    ) -> BatchLoader:
        """A loader over ``part`` (or explicit ``positions``).

        Defaults: training parts follow the run's train config (its sampler, augmentation and
        batch size); val/test are sequential, unaugmented, with the evaluation batch size.
        ``sampler="group"`` gives equal-size group batches, ``"group_class"`` equal counts per
        group × class; both leave out rows whose group is unknown (recorded in the notes).
        """
        cfg = self.train_config
        is_train = part == "train" and positions is None
        pos = self.positions(part, groups) if positions is None else np.asarray(positions)
        if len(pos) == 0:
            raise FairbenchError(f"no samples in the {part} part for groups {groups}")
        sampler = sampler or (cfg.sampler if is_train else "sequential")
        augment = (cfg.augment if is_train else False) if augment is None else augment
        bs = batch_size or (cfg.batch_size if is_train else cfg.eval_batch_size)
        strata = None
        order: Literal["sequential", "shuffle", "balanced"]
        if sampler in ("sequential", "shuffle"):
            order = sampler
        else:
            order = "balanced"
            if sampler in ("group", "group_class"):
                # a row whose group is unknown (code -1) is not a group of its own: it cannot
                # be balanced against the groups, so group-balanced sampling leaves it out
                known = self.table.attr(self.attribute)[pos] >= 0
                if not known.all():
                    self.notes.setdefault("sampler_dropped_missing_group", int((~known).sum()))
                    pos = pos[known]
                if len(pos) == 0:
                    raise FairbenchError(
                        f"no {part} samples with a known {self.attribute!r} group to balance; "
                        "use --train sampler=shuffle or an attribute with known values")
            labels = self.table.labels[pos]
            codes = self.table.attr(self.attribute)[pos]
            strata = {"group": codes, "class": labels,
                      "group_class": codes * (self.n_classes + 1) + labels}[sampler]
        loader = BatchLoader(
            self.bundle.data, pos, batch_size=bs, attribute=self.attribute, order=order,
            strata=strata, drop_last=(is_train and len(pos) > bs) if drop_last is None else drop_last,
            augment=Augment(max_shift=max(1, self.bundle.image_size // 8)) if augment else None,
            seed=self.seed * 1000 + seed_offset,
            channels_last=cfg.channels_last_on(self.device),
            epoch_size=epoch_size,
        )
        loader.group_names = self.group_names  # type: ignore[attr-defined]
        return loader

    # -- models -----------------------------------------------------------------------------------
    def new_model(self, *, seed_offset: int = 0, num_classes: int | None = None) -> Any:
        """A freshly initialised model (seeded), on the device: the backbone
        (:class:`~fairbench.models.backbones.Classifier`) of a classification run, the segmentor
        (:class:`~fairbench.models.segmentors.Segmentor`) of a segmentation run."""
        torch.manual_seed(self.seed * 7919 + seed_offset)
        model = self._build_model(num_classes=num_classes, weights=self.backbone.weights)
        return self.trainer.prepare(model, self.train_config)

    def _build_model(self, *, num_classes: int | None = None,
                     weights: str | None = None) -> torch.nn.Module:
        if self.task == "segmentation":
            from fairbench.models.segmentors import create_segmentor

            assert self.mask_classes is not None
            return create_segmentor(self.backbone.name, n_mask_classes=len(self.mask_classes),
                                    image_size=self.bundle.image_size, weights=weights,
                                    allow_partial_weights=self.backbone.allow_partial,
                                    **self.backbone.params)
        return create_backbone(self.backbone.name, num_classes=num_classes or self.n_classes,
                               image_size=self.bundle.image_size, weights=weights,
                               allow_partial_weights=self.backbone.allow_partial,
                               pretrained=self.backbone.pretrained, **self.backbone.params)

    def task_loss(self, output: torch.Tensor, batch: Any, *,
                  reduction: str = "mean") -> torch.Tensor:
        """The task's supervised loss of ``output`` (logits) on ``batch``: cross-entropy
        against ``batch.y``, or soft Dice + (B)CE against ``batch.mask`` for segmentation
        (:func:`fairbench.training.segmentation.segmentation_loss`); ``reduction="none"`` gives one
        value per sample."""
        if self.task == "segmentation":
            from fairbench.training.segmentation import segmentation_loss

            return segmentation_loss(output, batch.mask, reduction=reduction)
        return torch.nn.functional.cross_entropy(output.float(), batch.y, reduction=reduction)

    def fit(
        self,
        model: torch.nn.Module,
        *,
        hooks: TrainHooks | None = None,
        config: TrainConfig | None = None,
        train: BatchLoader | None = None,
        val: BatchLoader | None = None,
        stage: str = "train",
    ) -> FitResult:
        """Train with the shared trainer: by default on the train part with the run's train
        config, selecting the checkpoint on the val part. Without explicit loaders, the train
        loader follows ``config`` (sampler, batch size, augmentation)."""
        config = config or self.train_config
        # the default loaders follow the config given (its sampler, batch size, augmentation)
        train = train or self.loader("train", sampler=config.sampler,
                                     batch_size=config.batch_size, augment=config.augment)
        with self.phase("train"):
            return self.trainer.fit(
                model, train, val or self.loader("val", batch_size=config.eval_batch_size),
                config=config, hooks=hooks, stage=stage)

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """``with ctx.phase("name"):`` charges the block's wall time to ``name`` in the run's
        ``seconds.phases`` (exclusive of phases nested in it; see :mod:`fairbench.core.timing`)."""
        return self.timer.phase(name)

    def evaluate(self, model: torch.nn.Module, part: Part = "val") -> dict[str, Any]:
        """Part metrics of ``model`` under the decision rule of the run's final metrics
        (never call this on ``test`` for a decision): for a binary task, class 1 is predicted
        when p(class 1) reaches the threshold that maximises ``model``'s validation macro-F1
        (:func:`fairbench.metrics.decision.binary_threshold`); otherwise the argmax. So a method that
        compares candidates on validation sees the numbers its final report will show."""
        from fairbench.metrics import evaluate_classification
        from fairbench.metrics.decision import apply_threshold, binary_threshold

        if self.task == "segmentation" or self.n_classes != 2:
            return self.trainer.evaluate(model, self.loader(part), self.train_config)
        labels, codes = self.table.labels, self.table.attr(self.attribute)
        val = self.trainer.predict(model, self.loader("val"), self.train_config)
        threshold = binary_threshold(labels[val.index], val.probs[:, 1])
        pred = val if part == "val" else self.trainer.predict(model, self.loader(part),
                                                               self.train_config)
        return evaluate_classification(labels[pred.index], pred.probs, codes[pred.index],
                                       self.group_names,
                                       y_pred=apply_threshold(pred.probs, threshold))

    # -- the shared vanilla baseline ------------------------------------------------------------
    def vanilla_identity(self) -> dict[str, Any]:
        b = self.bundle
        return {
            # classification identities keep their pre-segmentation form (and hashes)
            **({"task": "segmentation"} if b.task == "segmentation" else {}),
            "dataset": b.adapter.config(),
            "split": b.split.sha256,
            "attribute": b.attribute,
            "image_size": b.image_size,
            "backbone": {"name": self.backbone.name, "params": self.backbone.params,
                         "weights": self.backbone.weights_sha256,
                         # only when set: the identities of random-init runs are unchanged
                         **({"pretrained": self.backbone.pretrained_sha256}
                            if self.backbone.pretrained_sha256 else {})},
            "train": self.train_config.identity(),
            "seed": self.seed,
        }

    def vanilla_dir(self) -> Path:
        key = config_hash(self.vanilla_identity())[:16]
        return self.runs_dir / "_vanilla" / key

    def vanilla(self) -> Any:
        """A copy of the vanilla baseline (the backbone trained with cross-entropy, or the
        segmentor with Dice + cross-entropy, and the run's
        train config), trained once per (dataset config, split, attribute, backbone, train
        config, seed) and cached under ``<runs_dir>/_vanilla/``; concurrent runs wait for one
        another instead of training it twice."""
        if self._vanilla is None:
            with self.phase("vanilla"):
                self._vanilla, self._vanilla_meta = self._load_or_train_vanilla()
        return copy.deepcopy(self._vanilla)

    @property
    def used_vanilla(self) -> bool:
        """Whether the method asked for the shared vanilla model (:meth:`vanilla`)."""
        return self._vanilla is not None

    def vanilla_meta(self) -> dict[str, Any]:
        if self._vanilla_meta is None:
            self.vanilla()
        assert self._vanilla_meta is not None
        return self._vanilla_meta

    def _load_or_train_vanilla(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The cached baseline, checked, or trained once (:func:`~fairbench.run.store.
        cached_model`)."""
        final = self.vanilla_dir()
        model, meta = cached_model(final, self.vanilla_identity(), train=self._train_vanilla,
                                   load=self._load_vanilla, what="vanilla model",
                                   logger=self.logger)
        self.trainer.prepare(model, self.train_config)
        if not self.log.rows:  # the baseline's training log belongs to this run's record too
            self.append_log(final / "train_log.csv")
        return model, meta

    def _load_vanilla(self, final: Path) -> torch.nn.Module:
        model = self._build_model()
        model.load_state_dict(torch.load(final / "model.pt", map_location="cpu",
                                         weights_only=True))
        return model

    def _train_vanilla(self, tmp: Path) -> dict[str, Any]:
        model = self.new_model()
        trainer = Trainer(self.device, seed=self.seed, log=EpochLog(tmp / "train_log.csv"),
                          progress=self.progress, mask_classes=self.mask_classes)
        result = trainer.fit(model, self.loader("train"), self.loader("val"),
                             config=self.train_config, stage="vanilla")
        val = trainer.evaluate(model, self.loader("val"), self.train_config)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   tmp / "model.pt")
        return {"best_epoch": result.best_epoch, "seconds": round(result.seconds, 3),
                "val": val}

    def append_log(self, path: Path) -> None:
        """Copy the rows of a cached model's training log (``path``, if it exists) into this
        run's ``train_log.csv``."""
        if path.is_file():
            import csv

            with path.open() as fh:
                for row in csv.DictReader(fh):
                    self.log.write(row)

    # -- groups -------------------------------------------------------------------------------------
    @property
    def privileged(self) -> int:
        """Code of the privileged group: as configured, else the group on which the vanilla
        model has the higher validation macro-F1 (Dice for segmentation; ties: the lower
        code)."""
        names = self.group_names
        if self._privileged_name is not None:
            if self._privileged_name not in names:
                raise FairbenchError(
                    f"privileged group {self._privileged_name!r} is not a group of attribute "
                    f"{self.attribute!r}; choose one of {', '.join(names)}"
                )
            return names.index(self._privileged_name)
        val = self.vanilla_meta()["val"]
        scores = [val.get(n, {}).get(self.utility_metric) for n in names]
        scores = [s if s is not None else -1.0 for s in scores]
        code = int(np.argmax(scores))
        self._privileged_name = names[code]
        self.notes["privileged_rule"] = self.privileged_rule
        return code

    @property
    def privileged_rule(self) -> str:
        if self.task == "segmentation":
            return "higher vanilla validation Dice"
        return "higher vanilla validation macro-F1"

    @property
    def privileged_name(self) -> str:
        return self.group_names[self.privileged]

    @property
    def unprivileged(self) -> list[int]:
        p = self.privileged
        return [g for g in range(self.n_groups) if g != p]
