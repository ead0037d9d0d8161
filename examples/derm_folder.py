"""``derm_folder``: a complete plugin dataset adapter, for images sorted into one folder per
class plus a CSV that says who each image shows.

Layout under ``--data-root``::

    benign/img0001.png         one folder per class (the folder name is the class name)
    malignant/img0002.jpg
    subjects.csv               image,patient,sex,age
                               benign/img0001.png,p01,female,34

``image`` is the path relative to the data root, ``patient`` groups images of one person (a
split never puts one patient in two parts), ``sex`` is ``female`` or ``male`` and ``age`` a
number; an empty or other value is a missing group (left out of every group metric). The
sensitive attributes are ``sex`` (the default) and ``age`` (``<60`` / ``60+``; the threshold
is ``--data-param age_threshold=N``).

Use it::

    fairbench check examples/derm_folder.py --data-root ~/my_images   # the adapter's checks
    fairbench run --plugin examples/derm_folder.py --dataset derm_folder --data-root ~/my_images
    fairbench run --plugin examples/derm_folder.py --dataset derm_folder --data-root ~/my_images \\
        --attribute age --data-param age_threshold=50 --backbone smallcnn --image-size 64

An adapter only builds the sample table (one row per image); fairbench decodes and resizes the
images once into its cache (``fill_images``, inherited, reads the ``path`` column), makes the
hashed split and does everything else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Plugins import from the top level only: these names are fairbench's stable API.
from fairbench import DataError, DatasetAdapter, SampleTable, param, register_dataset

SEXES = ["female", "male"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class DermFolderParams:
    """``--data-param key=value`` options, checked against these types and ranges."""

    metadata: str = param("subjects.csv", help="CSV with image,patient,sex,age (in --data-root)")
    age_threshold: int = param(60, min=1, help="age at which the 'age' attribute's older group starts")


@register_dataset("derm_folder")  # the name for --dataset
class DermFolder(DatasetAdapter):
    """Images in one folder per class, with a subjects.csv (patient, sex, age)."""

    Params = DermFolderParams
    requires_data_root = True          # `--data-root` is required and must be a folder
    default_image_size = 64            # what a run uses unless --image-size says otherwise
    default_backbone = "smallcnn"      # ... and --backbone
    tasks = ("classification",)

    def config(self) -> dict[str, Any]:
        """What defines the table; part of every run's identity. The metadata file's hash is
        in it, so an edited CSV makes new runs instead of reusing old results."""
        cfg = super().config()
        cfg["metadata_sha256"] = hashlib.sha256(self._metadata_path().read_bytes()).hexdigest()
        return cfg

    def _metadata_path(self) -> Path:
        assert self.data_root is not None
        path = self.data_root / self.params.metadata
        if not path.is_file():
            # one line naming the problem and the fix: fairbench prints it and exits with 2
            raise DataError(f"derm_folder: {str(path)!r} does not exist; put a CSV with the "
                            "columns image,patient,sex,age there (or --data-param metadata=FILE)")
        return path

    def build_table(self) -> SampleTable:
        assert self.data_root is not None
        meta = pd.read_csv(self._metadata_path(), dtype=str, keep_default_na=False)
        missing = [c for c in ("image", "patient", "sex", "age") if c not in meta.columns]
        if missing:
            raise DataError(f"derm_folder: {self.params.metadata} lacks the column "
                            f"{missing[0]!r}; it needs image,patient,sex,age")
        # classes: the class folders that hold images, sorted (their order fixes the labels)
        classes = sorted(d.name for d in self.data_root.iterdir() if d.is_dir()
                         and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir()))
        folder = meta["image"].str.split("/").str[0]
        unknown = meta.loc[~folder.isin(classes), "image"]
        if len(unknown):
            raise DataError(f"derm_folder: image {unknown.iloc[0]!r} is not inside a class "
                            f"folder ({', '.join(classes)})")
        absent = [p for p in meta["image"] if not (self.data_root / p).is_file()]
        if absent:
            raise DataError(f"derm_folder: {len(absent)} image(s) of the CSV are missing, "
                            f"e.g. {absent[0]!r}")
        threshold = self.params.age_threshold
        age = pd.to_numeric(meta["age"], errors="coerce").to_numpy()
        sex = meta["sex"].str.strip().str.lower()
        df = pd.DataFrame({
            "sample_id": meta["image"],
            "path": meta["image"],                     # relative to --data-root
            "label": folder.map({c: i for i, c in enumerate(classes)}).astype(int),
            # attribute codes index the group names below; -1 = missing
            "attr_sex": sex.map({s: i for i, s in enumerate(SEXES)}).fillna(-1).astype(int),
            "attr_age": np.where(np.isnan(age), -1, (age >= threshold).astype(int)),
            "patient_id": meta["patient"],
        })
        # the table checks itself (unique ids, labels and codes in range) and raises DataError
        return SampleTable(df, classes=classes,
                           attributes={"sex": SEXES,
                                       "age": [f"<{threshold}", f"{threshold}+"]},
                           default_attribute="sex")
