"""``fitzpatrick17k``: Fitzpatrick 17k clinical images (Groh et al., CVPR-W 2021), read as
distributed.

Layout under ``--data-root``::

    fitzpatrick17k.csv        the official annotation CSV (2022 or the older 2021 version)
    <md5hash>.jpg             the images, here or in one of images/, dataset_images/,
                              fitzpatrick17k_dataset_images/, images/all/ (or image_dir=...)

Choices (each a ``--data-param``):

* **Label** ``label_column``: ``label`` (114 conditions, the default, as FairQuantize and the
  ME code), ``nine_partition_label`` (9) or ``three_partition_label`` (3). Class codes are the
  names in alphabetical order (pandas category codes, FairQuantize's ``low``/``mid``/``high``).
* **Skin type** comes from ``fitzpatrick_scale`` (the Scale AI label; the 2021 file calls it
  ``fitzpatrick``; a leading unnamed index column is ignored), or from
  ``fitzpatrick_centaur`` with ``skin_type_source=centaur``. Two attributes are built:
  ``skin_tone`` (the default): light = types 1–3 (code 0), dark = 4–6 (code 1); and
  ``fitzpatrick``: the six types I..VI (codes 0..5).
* **Type -1** (unknown; 565 of the 16,577 rows) follows ``unknown_skin_type``:
  ``exclude`` (default, as MEDFAIR) drops those rows, leaving 16,012; ``keep`` keeps them with
  the attribute missing (code -1: trained on, left out of every per-group metric, as
  FairQuantize); ``as_dark`` keeps them as dark in ``skin_tone`` (the Fair Multi-Exit code's
  parity; they stay missing in ``fitzpatrick``).
* Rows whose image file is missing raise an error naming the file; ``missing_images=drop``
  leaves them out instead (users who downloaded the images from the URLs usually lack a few).
* No row is dropped for an empty ``url`` or ``qc`` (41 and 16,073 rows).
* There is no patient id in the file, so splits are stratified by label × skin tone but not
  grouped.

Defaults: VGG-11 (``vgg11``) at 112 px, the FairQuantize / FairPrune setting (resize 128,
crop 112).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError
from fairbench.core.params import param
from fairbench.data.dataset import register_dataset

from . import _common as C
from . import _image_folder as base

IMAGE_DIRS = (".", "images", "dataset_images", "fitzpatrick17k_dataset_images", "images/all",
              "fitzpatrick17k_images", "fitzpatrick17k/dataset_images", "fitzpatrick17k")
LABEL_COLUMNS = ("label", "nine_partition_label", "three_partition_label")
ROMAN = ["I", "II", "III", "IV", "V", "VI"]


@dataclass
class Fitzpatrick17kParams:
    """The ``--data-param`` options of ``fitzpatrick17k``."""

    label_column: Literal["label", "nine_partition_label", "three_partition_label"] = param(
        "label", help="label: 114 conditions; nine_/three_partition_label: 9 or 3 groups")
    unknown_skin_type: Literal["exclude", "keep", "as_dark"] = param(
        "exclude", help="rows of type -1: exclude (MEDFAIR), keep as missing (FairQuantize), "
        "as_dark (Fair Multi-Exit)")
    skin_type_source: Literal["scale", "centaur"] = param(
        "scale", help="fitzpatrick_scale (or the 2021 'fitzpatrick') or fitzpatrick_centaur")
    csv: str = param("fitzpatrick17k.csv", help="annotation CSV, relative to --data-root")
    image_dir: str = base.image_dir_param("<md5hash>.jpg", "., images, dataset_images, ...")
    missing_images: base.MissingImages = base.missing_images_param()


@register_dataset("fitzpatrick17k")
class Fitzpatrick17k(base.ImageFolderAdapter):
    """Fitzpatrick 17k clinical images; 114/9/3 classes; skin tone light (I-III) / dark (IV-VI)."""

    metadata_sources = (base.MetadataFile(
        "csv", "Fitzpatrick 17k annotation",
        fix="download fitzpatrick17k.csv from github.com/mattgroh/fitzpatrick17k into "
        "--data-root, or set --data-param csv=PATH"),)
    image_dirs = IMAGE_DIRS
    Params = Fitzpatrick17kParams
    default_image_size = 112
    default_backbone = "vgg11"

    def read_rows(self, notes: list[str]) -> base.MetadataRows:
        """One row per ``md5hash``: the class of ``label_column``, skin tone and type (rows of
        unknown type follow ``unknown_skin_type``)."""
        p = self.params
        (path,) = self.metadata_files()
        df = C.read_metadata(path, delimiter=",")
        C.pick_column(df, ["md5hash"], path, what="image id",
                      fix="is this the Fitzpatrick 17k CSV?")
        if p.skin_type_source == "centaur":
            skin_col = C.pick_column(
                df, ["fitzpatrick_centaur"], path, what="skin type",
                fix="the 2021 CSV has no Centaur labels; use skin_type_source=scale")
        else:
            skin_col = C.pick_column(df, ["fitzpatrick_scale", "fitzpatrick"], path,
                                     what="skin type")
        label_col = C.pick_column(
            df, [p.label_column], path, what="label",
            fix=f"choose label_column from {', '.join(LABEL_COLUMNS)}")

        ids = df["md5hash"]
        if (ids == "").any():
            raise DataError(f"{C.where(path, df, ids == '')}: md5hash is empty; every row needs "
                            "its image id")
        dup = ids.duplicated()
        if dup.any():
            raise DataError(f"{C.where(path, df, dup)}: md5hash {ids[dup].iloc[0]!r} occurs "
                            "twice; remove the duplicate row")
        labels = df[label_col]
        if (labels == "").any():
            raise DataError(f"{C.where(path, df, labels == '')}: {label_col} is empty; fill it "
                            "in or remove the row")

        skin = pd.to_numeric(df[skin_col], errors="coerce")
        bad = ~skin.isin([-1, 1, 2, 3, 4, 5, 6])
        if bad.any():
            raise DataError(
                f"{C.where(path, df, bad)}: {skin_col} {df[skin_col][bad].iloc[0]!r} is not a "
                "Fitzpatrick type (1..6, or -1 for unknown); correct the value in the file")
        skin = skin.to_numpy(dtype=np.int64)
        unknown = skin == -1
        if p.unknown_skin_type == "exclude" and unknown.any():
            notes.append(f"dropped {int(unknown.sum())} rows with Fitzpatrick type -1 "
                         "(unknown_skin_type=exclude)")
            df, skin, unknown = df.loc[~unknown], skin[~unknown], unknown[~unknown]
        elif unknown.any():
            notes.append(f"kept {int(unknown.sum())} rows with Fitzpatrick type -1 "
                         f"(unknown_skin_type={p.unknown_skin_type})")
        tone = np.where(skin >= 4, 1, 0)
        if p.unknown_skin_type == "as_dark":
            tone = np.where(unknown, 1, tone)
        else:
            tone = np.where(unknown, -1, tone)
        classes = sorted(set(df[label_col]))
        code = {c: i for i, c in enumerate(classes)}
        out = pd.DataFrame({
            "sample_id": df["md5hash"].to_numpy(),
            "label": df[label_col].map(code).to_numpy(dtype=np.int64),
            "attr_skin_tone": tone.astype(np.int64),
            "attr_fitzpatrick": np.where(unknown, -1, skin - 1).astype(np.int64),
            "_line": df["_line"].to_numpy(),
        })
        return base.MetadataRows(
            out, path, classes,
            attributes={"skin_tone": ["light", "dark"], "fitzpatrick": list(ROMAN)},
            default_attribute="skin_tone",
        )
