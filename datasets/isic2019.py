"""``isic2019``: the ISIC 2019 challenge training set (BCN_20000, HAM10000, MSK), read as
distributed.

Layout under ``--data-root``::

    ISIC_2019_Training_GroundTruth.csv   image + one-hot MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK
    ISIC_2019_Training_Metadata.csv      image,age_approx,anatom_site_general,lesion_id,sex
    ISIC_2019_Training_Input/<image>.jpg the images (also found in the root or images/)

Choices (each a ``--data-param``):

* **Label**: the one-hot ground truth's argmax, 8 classes in the file's column order MEL, NV,
  BCC, AK, BKL, DF, VASC, SCC (codes 0..7, FairQuantize's ``class_id``). UNK is never
  positive in the training set; a row where it is would be dropped (with a note). Values are
  parsed as floats (``0.0``/``1.0`` or ``0``/``1``); columns named ``0..8`` (some re-uploads)
  are read by position. A row that is not one-hot raises an error naming its line.
* **Sex** (the default attribute): column ``sex`` or ``gender``; female = 0, male = 1 (the
  FairQuantize / ME encoding); empty = missing. ``drop_missing`` (default ``sex``) drops the
  384 rows without sex, as FairQuantize did (24,947 rows remain); ``drop_missing=sex,age``
  also drops the 53 further rows without age (24,894, close to the ME code's 24,840);
  ``drop_missing=none`` keeps every row, missing values coded -1 (trained on, left out of the
  per-group metrics).
* **Age**: ``age_approx`` (empty = missing) binned at ``age_edges`` (default ``60``:
  ``<60`` = 0, ``60+`` = 1; ``20,40,60,80`` gives MEDFAIR's five bins). Note the ME code's
  ``age_binary`` is the reverse (1 for < 60).
* **Patients**: ``lesion_id`` groups the images of one lesion (never split across parts);
  the 2,084 images with an empty ``lesion_id`` are each their own group.
* Images are ``<image>.jpg`` with the id verbatim, ``_downsampled`` suffix included
  (2,074 images). Rows whose image is missing raise an error, or are dropped with
  ``missing_images=drop``.
* The two CSVs must list the same images; an id in only one of them is an error.

Defaults: ResNet-18 (``resnet18``) at 112 px, the FairQuantize setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError
from fairbench.core.params import param
from fairbench.data.dataset import register_dataset

from . import _common as C
from . import _image_folder as base

CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
ALL_COLUMNS = CLASSES + ["UNK"]
IMAGE_DIRS = ("ISIC_2019_Training_Input", "ISIC_2019_Training_Input/ISIC_2019_Training_Input",
              ".", "images")
#: the start of the fix when one of the two CSVs is not found
DOWNLOAD = ("download the ISIC 2019 training ground truth and metadata (challenge.isic-"
            "archive.com/data) into --data-root")


@dataclass
class ISIC2019Params(base.SexAgeParams):
    """The ``--data-param`` options of ``isic2019``."""

    ground_truth: str = param("ISIC_2019_Training_GroundTruth.csv",
                              help="one-hot ground-truth CSV, relative to --data-root")
    metadata: str = param("ISIC_2019_Training_Metadata.csv",
                          help="metadata CSV, relative to --data-root")
    image_dir: str = base.image_dir_param("<image>.jpg", "ISIC_2019_Training_Input, ., images")
    missing_images: base.MissingImages = base.missing_images_param()


@register_dataset("isic2019")
class ISIC2019(base.SexAgeImageFolder):
    """ISIC 2019 dermoscopy; 8 classes; sex (default) and age bins; grouped by lesion_id."""

    metadata_sources = (
        base.MetadataFile("ground_truth", "ISIC 2019 ground-truth",
                     fix=DOWNLOAD + ", or set --data-param ground_truth=PATH"),
        base.MetadataFile("metadata", "ISIC 2019 metadata",
                     fix=DOWNLOAD + ", or set --data-param metadata=PATH"),
    )
    image_dirs = IMAGE_DIRS
    Params = ISIC2019Params
    default_image_size = 112
    default_backbone = "resnet18"

    def expected_folder(self) -> str:
        """Unchecked paths are in the first folder looked in (``ISIC_2019_Training_Input``
        with ``image_dir=auto``)."""
        return self.image_folders()[0].rstrip("/") + "/"

    def _labels(self, gt_path: Path) -> pd.DataFrame:
        """The ground truth's ``image`` and ``label`` (the positive column's code; UNK is
        ``len(CLASSES)``)."""
        gt = C.read_metadata(gt_path, delimiter=",")
        C.pick_column(gt, ["image"], gt_path, what="image id")
        cols = [c for c in gt.columns if c not in ("image", "_line")]
        if cols[:9] == [str(k) for k in range(9)] or cols[:8] == [str(k) for k in range(8)]:
            gt = gt.rename(columns=dict(zip(cols, ALL_COLUMNS)))
            cols = [c for c in gt.columns if c not in ("image", "_line")]
        missing = [c for c in CLASSES if c not in cols]
        if missing:
            raise DataError(
                f"{str(gt_path)!r} lacks the class column(s) {missing}; the ISIC 2019 ground "
                f"truth has image,{','.join(ALL_COLUMNS)}")
        use = CLASSES + (["UNK"] if "UNK" in cols else [])
        vals = gt[use].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        bad_num = np.isnan(vals).any(axis=1)
        if bad_num.any():
            raise DataError(f"{C.where(gt_path, gt, bad_num)}: the class columns must hold "
                            "numbers (0.0/1.0); correct the row")
        positive = vals > 0.5
        not_onehot = positive.sum(axis=1) != 1
        if not_onehot.any():
            raise DataError(
                f"{C.where(gt_path, gt, not_onehot)}: image "
                f"{gt['image'].iloc[int(np.flatnonzero(not_onehot)[0])]!r} has "
                f"{int(positive[np.flatnonzero(not_onehot)[0]].sum())} positive classes; each "
                "row needs exactly one 1.0")
        return pd.DataFrame({"image": gt["image"].to_numpy(),
                             "label": positive.argmax(axis=1).astype(np.int64)})

    def read_rows(self, notes: list[str]) -> base.MetadataRows:
        """One row per ``image`` of both CSVs: the one-hot class, sex, age and ``lesion_id``
        (rows labelled UNK are dropped)."""
        gt_path, meta_path = self.metadata_files()
        labels = self._labels(gt_path)
        meta = C.read_metadata(meta_path, delimiter=",")
        C.pick_column(meta, ["image"], meta_path, what="image id")
        sex_col = C.pick_column(meta, ["sex", "gender"], meta_path, what="sex")
        age_col = C.pick_column(meta, ["age_approx", "age"], meta_path, what="age")
        for path, frame in ((gt_path, labels), (meta_path, meta)):
            dup = frame["image"].duplicated()
            if dup.any():
                raise DataError(f"{str(path)!r}: image {frame['image'][dup].iloc[0]!r} occurs "
                                "twice; remove the duplicate row")
        only_gt = ~labels["image"].isin(meta["image"])
        only_meta = ~meta["image"].isin(labels["image"])
        if only_gt.any() or only_meta.any():
            which, other = ((labels, meta_path) if only_gt.any() else (meta, gt_path))
            mask = only_gt if only_gt.any() else only_meta
            raise DataError(
                f"image {which['image'][mask].iloc[0]!r} is in one ISIC 2019 CSV but not in "
                f"{str(other)!r} ({int(mask.sum())} such); use the ground truth and metadata "
                "of the same release")
        df = meta.merge(labels, on="image", how="left", validate="one_to_one")
        unk = df["label"].to_numpy() == len(CLASSES)
        if unk.any():
            notes.append(f"dropped {int(unk.sum())} rows labelled UNK")
            df = df.loc[~unk]
        sex = C.encode_sex(df[sex_col], df, meta_path, sex_col)
        age = C.parse_numbers(df[age_col], df, meta_path, age_col)
        return self.sex_age_rows(
            source=meta_path, classes=list(CLASSES), ids=df["image"],
            labels=df["label"].to_numpy(dtype=np.int64), sex=sex, age=age,
            lesion=df["lesion_id"] if "lesion_id" in df.columns else df["image"],
            lines=df["_line"].to_numpy(), notes=notes)
