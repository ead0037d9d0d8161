"""The data contract: :class:`SampleTable` and the :class:`DatasetAdapter` base class.

An adapter reads a dataset in its official layout and builds a sample table; it never trains.
The table is a pandas DataFrame with one row per image:

``sample_id`` (str, unique), ``path`` (relative to the data root; or empty for generated
data), ``label`` (int in ``[0, n_classes)``), one ``attr_<name>`` column per sensitive
attribute (int codes in ``[0, n_groups)``; ``-1`` marks a missing value) and an optional
``patient_id`` (rows sharing it are never put in two split parts).

Pixels come from :meth:`DatasetAdapter.fill_images`, which the tensor cache calls once per
(dataset, image size, source fingerprint) to fill a uint8 ``(N, H, W, 3)`` array.

Datasets with segmentation masks set ``has_masks=True`` and name the mask classes in
``mask_classes`` (code 0 is the background: ``["background", "lesion"]`` for a binary mask,
``["background", "rim", "cup"]`` for Harvard-FairSeg); ``fill_images`` then also fills a
uint8 ``(N, H, W)`` array of mask codes in ``[0, len(mask_classes))``, aligned pixel for
pixel with the image. A segmentation-only dataset still has a ``label`` column (one class
for all rows is fine): splits stratify by it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError
from fairbench.core.params import NoParams, build_params, params_to_dict
from fairbench.core.registry import Registry

ATTR_PREFIX = "attr_"
#: the sample table's optional column of true labels beside the observed ``label`` (synthetic
#: data: the label before annotation noise), also written to ``predictions.csv``
TRUE_LABEL_COLUMN = "true_label"


@dataclass
class SampleTable:
    """One row per image, plus the code→name mappings of the label and every attribute."""

    df: pd.DataFrame
    classes: list[str]
    attributes: dict[str, list[str]]
    task: str = "classification"
    default_attribute: str | None = None
    has_masks: bool = False
    #: names of the mask codes (code 0 = background); used only when ``has_masks``
    mask_classes: list[str] = field(default_factory=lambda: ["background", "foreground"])

    def __post_init__(self) -> None:
        self.df = self.df.reset_index(drop=True)
        if self.default_attribute is None and self.attributes:
            self.default_attribute = next(iter(self.attributes))
        self.validate()

    def __len__(self) -> int:
        return len(self.df)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def sample_ids(self) -> np.ndarray:
        return self.df["sample_id"].to_numpy()

    @property
    def labels(self) -> np.ndarray:
        return self.df["label"].to_numpy(dtype=np.int64)

    @property
    def patient_ids(self) -> np.ndarray | None:
        if "patient_id" not in self.df.columns:
            return None
        return self.df["patient_id"].astype(str).to_numpy()

    def attr(self, name: str) -> np.ndarray:
        """Integer group codes of attribute ``name`` (``-1`` = missing)."""
        self.check_attribute(name)
        return self.df[ATTR_PREFIX + name].to_numpy(dtype=np.int64)

    def group_names(self, name: str) -> list[str]:
        self.check_attribute(name)
        return list(self.attributes[name])

    def check_attribute(self, name: str) -> None:
        if name not in self.attributes:
            valid = ", ".join(self.attributes) or "none"
            raise DataError(f"unknown sensitive attribute {name!r}; this dataset has: {valid}")

    def validate(self) -> None:
        """Check the contract; raise :class:`DataError` naming the first problem."""
        df = self.df
        for col in ("sample_id", "label"):
            if col not in df.columns:
                raise DataError(f"sample table lacks the required column {col!r}")
        if df["sample_id"].duplicated().any():
            dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
            raise DataError(f"sample id {dup!r} occurs twice; sample ids must be unique")
        if self.has_masks and (len(self.mask_classes) < 2 or len(set(self.mask_classes))
                               != len(self.mask_classes)):
            raise DataError(
                f"mask_classes must name the background and at least one structure, each once; "
                f"got {self.mask_classes}")
        labels = df["label"].to_numpy()
        if len(df) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(
                f"labels must lie in [0, {len(self.classes)}); found {labels.min()}..{labels.max()}"
            )
        for name, groups in self.attributes.items():
            col = ATTR_PREFIX + name
            if col not in df.columns:
                raise DataError(f"sample table lacks the attribute column {col!r}")
            codes = df[col].to_numpy()
            bad = (codes < -1) | (codes >= len(groups))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"attribute {name!r} has code {codes[row]} at sample "
                    f"{df['sample_id'].iloc[row]!r}; valid codes are 0..{len(groups) - 1} "
                    "(or -1 for missing)"
                )

    def counts(self, attribute: str | None = None) -> pd.DataFrame:
        """Samples per class (rows) and group (columns) of ``attribute``."""
        attribute = attribute or self.default_attribute
        assert attribute is not None
        names = self.group_names(attribute)
        codes = self.attr(attribute)
        group = np.array([names[c] if c >= 0 else "missing" for c in codes])
        cls = np.array(self.classes)[self.labels]
        table = pd.crosstab(pd.Series(cls, name="class"), pd.Series(group, name=attribute))
        return table


# -------------------------------------------------------------------------------------------
@dataclass
class ImageSpec:
    """What the tensor cache needs to know about the pixels of one table."""

    size: int
    channels: int = 3


class DatasetAdapter:
    """Base class of dataset adapters. Subclasses set the class attributes and implement
    :meth:`build_table`; file-based adapters get :meth:`fill_images` for free.

    Class attributes:
        Params: dataclass of the adapter's options (``--data-param key=value``).
        requires_data_root: whether ``--data-root`` is needed (False for generated data).
        default_image_size, default_backbone, default_segmentor: what a run uses when not
            told otherwise (the segmentor for segmentation runs).
        tasks: the task types the dataset serves (``"segmentation"`` needs masks).
    """

    Params: ClassVar[type] = NoParams
    requires_data_root: ClassVar[bool] = True
    default_image_size: ClassVar[int] = 224
    default_backbone: ClassVar[str] = "resnet18"
    default_segmentor: ClassVar[str] = "unet:tu-resnet10t"
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    registered_name: ClassVar[str] = ""

    def __init__(self, params: Any = None, data_root: str | Path | None = None) -> None:
        if params is None or isinstance(params, dict):
            params = build_params(self.Params, params or {}, owner=f"dataset {self.name}")
        self.params = params
        self.data_root = Path(data_root).expanduser() if data_root else None
        #: the cache folder of this run or command (None: the default, $FAIRBENCH_CACHE or
        #: ~/.cache/fairbench); an adapter may keep what it derives from its files there
        self.cache_dir: Path | None = None
        if self.requires_data_root:
            if self.data_root is None:
                raise DataError(
                    f"dataset {self.name!r} needs --data-root pointing at its files"
                )
            if not self.data_root.is_dir():
                raise DataError(
                    f"data root {str(self.data_root)!r} does not exist or is not a directory; "
                    "pass the folder that holds the dataset with --data-root"
                )

    @property
    def name(self) -> str:
        return self.registered_name or type(self).__name__.lower()

    def config(self) -> dict[str, Any]:
        """The options that define the table (part of every cache and run key)."""
        return {"name": self.name, "params": params_to_dict(self.params)}

    # -- to implement ---------------------------------------------------------------------
    def build_table(self) -> SampleTable:
        raise NotImplementedError

    # -- pixels -------------------------------------------------------------------------
    def source_fingerprint(self, table: SampleTable) -> str:
        """A hash of the source files (name, size, mtime); changing an image changes it."""
        h = hashlib.sha256()
        root = self.data_root
        for rel in table.df["path"].astype(str):
            p = (root / rel) if root else Path(rel)
            try:
                st = p.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{rel}\0missing\n".encode())
        return h.hexdigest()

    def fill_images(
        self,
        table: SampleTable,
        spec: ImageSpec,
        out: np.ndarray,
        masks_out: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Decode and resize every image of ``table`` into ``out`` (uint8, N×H×W×3), and its
        segmentation mask into ``masks_out`` (uint8, N×H×W) for datasets with masks."""
        from fairbench.data.images import decode_files_into

        if masks_out is not None:
            raise DataError(f"dataset {self.name!r} has no segmentation masks")
        decode_files_into(self._resolved_paths(table), spec.size, out, progress=progress)

    def counterfactual_images(self, table: SampleTable, spec: ImageSpec,
                              positions: np.ndarray) -> np.ndarray | None:
        """Counterfactual twins of the rows ``positions`` (the same image with only the
        sensitive attribute's appearance switched), or ``None`` where the data cannot make
        them: real images have no twins (the default)."""
        return None

    def _resolved_paths(self, table: SampleTable) -> list[Path]:
        assert self.data_root is not None
        root = self.data_root.resolve()
        paths = []
        for sid, rel in zip(table.df["sample_id"], table.df["path"].astype(str)):
            # lexical check: '..' and absolute paths elsewhere are refused, while a symlink
            # that the user put inside the data root (e.g. images -> /big/disk) is followed
            p = Path(os.path.normpath(root / rel))
            if root not in p.parents and p != root:
                raise DataError(
                    f"path {rel!r} of sample {sid!r} escapes the data root {str(root)!r}; "
                    "paths in the metadata must stay inside --data-root"
                )
            paths.append(p)
        return paths


DATASETS: Registry[type[DatasetAdapter]] = Registry("dataset", "fairbench.datasets", builtins="fairbench.datasets")


def register_dataset(name: str) -> Callable[[type[DatasetAdapter]], type[DatasetAdapter]]:
    """Class decorator registering a :class:`DatasetAdapter` under ``name``."""
    return DATASETS.register(name)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def get_dataset_class(name: str) -> type[DatasetAdapter]:
    return DATASETS.get(name)


def create_dataset(
    name: str, data_root: str | Path | None = None, **params: Any
) -> DatasetAdapter:
    """``create_dataset("synthderm", n_samples=500)`` → a configured adapter."""
    cls = get_dataset_class(name)
    return cls(params=params, data_root=data_root)



__all__ = [
    "ATTR_PREFIX",
    "DATASETS",
    "DatasetAdapter",
    "ImageSpec",
    "SampleTable",
    "create_dataset",
    "get_dataset_class",
    "list_datasets",
    "register_dataset",
]
