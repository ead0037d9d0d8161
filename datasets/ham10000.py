"""``ham10000``: HAM10000 dermoscopy (Tschandl et al., Sci. Data 2018), read as distributed.

Layout under ``--data-root``::

    HAM10000_metadata.csv            (or .tab, tab-separated, or no extension; 7 columns
                                      lesion_id,image_id,dx,dx_type,age,sex,localization, or
                                      8 with the newer 'dataset' column)
    HAM10000_images_part_1/<image_id>.jpg   the two folders of the official zips
    HAM10000_images_part_2/<image_id>.jpg   (or one merged HAM10000_images/, or the root)

Choices (each a ``--data-param``):

* **Label**: ``dx``, 7 classes in alphabetical order akiec, bcc, bkl, df, mel, nv, vasc
  (codes 0..6, the DermaMNIST order). Any other ``dx`` value is an error naming the line.
* **Sex** (the default attribute): female = 0, male = 1; ``unknown`` (57 rows) or empty =
  missing. ``drop_missing`` (default ``sex``) drops rows with missing sex (10,015 → 9,958);
  ``drop_missing=sex,age`` also drops the 10 further rows without age (9,948, MEDFAIR's
  filter, except that MEDFAIR kept ``unknown`` sex and counted it as female);
  ``drop_missing=none`` keeps all rows with missing values coded -1.
* **Age**: ``age`` parsed as a number (``80`` and ``80.0`` alike; empty = missing), binned
  at ``age_edges`` (default ``60``: ``<60`` = 0, ``60+`` = 1; ``20,40,60,80`` gives MEDFAIR's
  ``Age_multi``; note MEDFAIR's ``Age_binary`` puts 60 itself in the younger group).
* **Patients**: ``lesion_id`` (7,470 lesions); the images of one lesion never straddle split
  parts.
* The delimiter (comma or tab) is detected from the header. Rows whose image is missing raise
  an error, or are dropped with ``missing_images=drop``.

Defaults: ResNet-18 (``resnet18``) at 224 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError, ParamError
from fairbench.core.params import param
from fairbench.data.dataset import DatasetAdapter, SampleTable, register_dataset

from . import _common as C

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata",
                  "HAM10000_metadata.txt")
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images",
              "ham10000_images_part_1", "ham10000_images_part_2", ".", "images")


@dataclass
class HAM10000Params:
    drop_missing: tuple[str, ...] = param(
        ("sex",), help="attributes whose missing rows are dropped (sex, age; none keeps all)")
    age_edges: tuple[float, ...] = param((60.0,), help="age bin edges, e.g. 60 or 20,40,60,80")
    metadata: str = param("auto", help="metadata file relative to --data-root (auto: "
                          "HAM10000_metadata.csv, .tab or no extension)")
    image_dir: str = param("auto", help="folder of <image_id>.jpg inside --data-root (auto: "
                           "HAM10000_images_part_1 and _2, HAM10000_images, .)")
    missing_images: Literal["error", "drop"] = param(
        "error", help="rows whose image file is missing: error, or drop them")

    def validate(self) -> None:
        C.check_edges(self.age_edges, "age_edges")


@register_dataset("ham10000")
class HAM10000(DatasetAdapter):
    """HAM10000 dermoscopy; 7 classes; sex (default) and age bins; grouped by lesion_id."""

    Params = HAM10000Params
    default_image_size = 224
    default_backbone = "resnet18"

    def __init__(self, params: Any = None, data_root: str | Path | None = None) -> None:
        super().__init__(params, data_root)
        assert self.data_root is not None
        self.root = self.data_root.resolve()
        if self.params.image_dir != "auto":
            C.check_subdir(self.root, self.params.image_dir, "image_dir")
        for name in C.normalise_names(self.params.drop_missing):
            if name not in ("sex", "age"):
                raise ParamError(f"parameter drop_missing names {name!r}; ham10000 has the "
                                 "attributes sex and age (or none)")
        self.notes: list[str] = []

    def metadata_path(self) -> Path:
        return C.metadata_path(
            self.root, self.params.metadata, what="HAM10000 metadata",
            candidates=METADATA_NAMES,
            fix="download HAM10000_metadata from the Harvard Dataverse (doi:10.7910/DVN/DBW86T) "
            "into --data-root, or set --data-param metadata=PATH")

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["metadata_sha256"] = C.file_digest(self.metadata_path())
        return cfg

    def build_table(self, *, check_files: bool = True) -> SampleTable:
        """The sample table. ``check_files=False`` reads the metadata only (paths are the
        expected ``HAM10000_images/<image_id>.jpg``, unchecked)."""
        p = self.params
        notes = C.build_notes(self)
        path = self.metadata_path()
        df = C.read_metadata(path)
        for col in ("lesion_id", "image_id", "dx", "age", "sex"):
            C.pick_column(df, [col], path, what=f"{col!r}",
                          fix="is this HAM10000_metadata (lesion_id,image_id,dx,dx_type,age,"
                          "sex,localization)?")
        dup = df["image_id"].duplicated()
        if dup.any():
            raise DataError(f"{C.where(path, df, dup)}: image_id {df['image_id'][dup].iloc[0]!r} "
                            "occurs twice; remove the duplicate row")
        dx = df["dx"].str.lower()
        bad = ~dx.isin(CLASSES)
        if bad.any():
            raise DataError(
                f"{C.where(path, df, bad)}: dx {df['dx'][bad].iloc[0]!r} is not one of the "
                f"HAM10000 classes {', '.join(CLASSES)}; correct the value in the file")
        code = {c: i for i, c in enumerate(CLASSES)}
        age = C.parse_numbers(df["age"], df, path, "age")
        lesion = df["lesion_id"]
        out = pd.DataFrame({
            "sample_id": df["image_id"].to_numpy(),
            "label": dx.map(code).to_numpy(dtype=np.int64),
            "attr_sex": C.encode_sex(df["sex"], df, path, "sex"),
            "attr_age": C.bin_codes(age, p.age_edges),
            "patient_id": np.where(lesion == "", df["image_id"], lesion),
            "_line": df["_line"].to_numpy(),
        })
        attributes = {"sex": ["female", "male"], "age": C.bin_names(p.age_edges)}
        out = C.apply_drop_missing(out, p.drop_missing, attributes, notes, "ham10000")
        folders = C.image_dir_candidates(p.image_dir, IMAGE_DIRS)
        if check_files:
            rel = C.find_images(self.root, list(out["sample_id"]), folders)
            out = C.apply_image_paths(
                out, rel, missing=p.missing_images, meta=path, root=self.root,
                looked_in=", ".join(f"{f}/" for f in folders), name_rule="{id}.jpg",
                notes=notes)
        else:
            out["path"] = "HAM10000_images/" + out["sample_id"] + ".jpg"
        if len(out) == 0:
            raise DataError(f"no rows of {str(path)!r} are left after filtering")
        return SampleTable(out.drop(columns="_line"), classes=list(CLASSES),
                           attributes=attributes, default_attribute="sex")
