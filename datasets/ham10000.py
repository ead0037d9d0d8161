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

import numpy as np

from fairbench.core.errors import DataError
from fairbench.core.params import param
from fairbench.data.dataset import register_dataset

from . import _common as C
from . import _image_folder as base

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata",
                  "HAM10000_metadata.txt")
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images",
              "ham10000_images_part_1", "ham10000_images_part_2", ".", "images")


@dataclass
class HAM10000Params(base.SexAgeParams):
    """The ``--data-param`` options of ``ham10000``."""

    metadata: str = param("auto", help="metadata file relative to --data-root (auto: "
                          "HAM10000_metadata.csv, .tab or no extension)")
    image_dir: str = base.image_dir_param(
        "<image_id>.jpg", "HAM10000_images_part_1 and _2, HAM10000_images, .")
    missing_images: base.MissingImages = base.missing_images_param()


@register_dataset("ham10000")
class HAM10000(base.SexAgeImageFolder):
    """HAM10000 dermoscopy; 7 classes; sex (default) and age bins; grouped by lesion_id."""

    metadata_sources = (base.MetadataFile(
        "metadata", "HAM10000 metadata", candidates=METADATA_NAMES,
        fix="download HAM10000_metadata from the Harvard Dataverse (doi:10.7910/DVN/DBW86T) "
        "into --data-root, or set --data-param metadata=PATH"),)
    image_dirs = IMAGE_DIRS
    Params = HAM10000Params
    default_image_size = 224
    default_backbone = "resnet18"

    def expected_folder(self) -> str:
        """Unchecked paths are ``HAM10000_images/<image_id>.jpg`` (the merged folder)."""
        return "HAM10000_images/"

    def read_rows(self, notes: list[str]) -> base.MetadataRows:
        """One row per ``image_id``: the ``dx`` class, sex, age and ``lesion_id``."""
        (path,) = self.metadata_files()
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
        return self.sex_age_rows(
            source=path, classes=list(CLASSES), ids=df["image_id"],
            labels=dx.map(code).to_numpy(dtype=np.int64),
            sex=C.encode_sex(df["sex"], df, path, "sex"), age=age, lesion=df["lesion_id"],
            lines=df["_line"].to_numpy(), notes=notes)
