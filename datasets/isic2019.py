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
from typing import Any, Literal

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError, ParamError
from fairbench.core.params import param
from fairbench.data.dataset import DatasetAdapter, SampleTable, register_dataset

from . import _common as C

CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
ALL_COLUMNS = CLASSES + ["UNK"]
IMAGE_DIRS = ("ISIC_2019_Training_Input", "ISIC_2019_Training_Input/ISIC_2019_Training_Input",
              ".", "images")


@dataclass
class ISIC2019Params:
    drop_missing: tuple[str, ...] = param(
        ("sex",), help="attributes whose missing rows are dropped (sex, age; none keeps all)")
    age_edges: tuple[float, ...] = param((60.0,), help="age bin edges, e.g. 60 or 20,40,60,80")
    ground_truth: str = param("ISIC_2019_Training_GroundTruth.csv",
                              help="one-hot ground-truth CSV, relative to --data-root")
    metadata: str = param("ISIC_2019_Training_Metadata.csv",
                          help="metadata CSV, relative to --data-root")
    image_dir: str = param("auto", help="folder of <image>.jpg inside --data-root "
                           "(auto: ISIC_2019_Training_Input, ., images)")
    missing_images: Literal["error", "drop"] = param(
        "error", help="rows whose image file is missing: error, or drop them")

    def validate(self) -> None:
        C.check_edges(self.age_edges, "age_edges")


@register_dataset("isic2019")
class ISIC2019(DatasetAdapter):
    """ISIC 2019 dermoscopy; 8 classes; sex (default) and age bins; grouped by lesion_id."""

    Params = ISIC2019Params
    default_image_size = 112
    default_backbone = "resnet18"

    def __init__(self, params: Any = None, data_root: str | Path | None = None) -> None:
        super().__init__(params, data_root)
        assert self.data_root is not None
        self.root = self.data_root.resolve()
        if self.params.image_dir != "auto":
            C.check_subdir(self.root, self.params.image_dir, "image_dir")
        for name in C.normalise_names(self.params.drop_missing):
            if name not in ("sex", "age"):
                raise ParamError(f"parameter drop_missing names {name!r}; isic2019 has the "
                                 "attributes sex and age (or none)")
        self.notes: list[str] = []

    def files(self) -> tuple[Path, Path]:
        fix = ("download the ISIC 2019 training ground truth and metadata (challenge.isic-"
               "archive.com/data) into --data-root")
        gt = C.metadata_path(self.root, self.params.ground_truth, what="ISIC 2019 ground-truth",
                             fix=fix + ", or set --data-param ground_truth=PATH")
        meta = C.metadata_path(self.root, self.params.metadata, what="ISIC 2019 metadata",
                               fix=fix + ", or set --data-param metadata=PATH")
        return gt, meta

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["metadata_sha256"] = C.file_digest(*self.files())
        return cfg

    def _labels(self, gt_path: Path) -> pd.DataFrame:
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

    def build_table(self, *, check_files: bool = True) -> SampleTable:
        """The sample table. ``check_files=False`` reads the metadata only (paths are the
        expected ``ISIC_2019_Training_Input/<image>.jpg``, unchecked)."""
        p = self.params
        notes = C.build_notes(self)
        gt_path, meta_path = self.files()
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
        lesion = df["lesion_id"] if "lesion_id" in df.columns else df["image"]
        out = pd.DataFrame({
            "sample_id": df["image"].to_numpy(),
            "label": df["label"].to_numpy(dtype=np.int64),
            "attr_sex": sex,
            "attr_age": C.bin_codes(age, p.age_edges),
            "patient_id": np.where(lesion == "", df["image"], lesion),
            "_line": df["_line"].to_numpy(),
        })
        attributes = {"sex": ["female", "male"], "age": C.bin_names(p.age_edges)}
        out = C.apply_drop_missing(out, p.drop_missing, attributes, notes, "isic2019")
        folders = C.image_dir_candidates(p.image_dir, IMAGE_DIRS)
        if check_files:
            rel = C.find_images(self.root, list(out["sample_id"]), folders)
            out = C.apply_image_paths(
                out, rel, missing=p.missing_images, meta=meta_path, root=self.root,
                looked_in=", ".join(f"{f}/" for f in folders), name_rule="{id}.jpg",
                notes=notes)
        else:
            out["path"] = folders[0].rstrip("/") + "/" + out["sample_id"] + ".jpg"
        if len(out) == 0:
            raise DataError(f"no rows of {str(meta_path)!r} are left after filtering")
        return SampleTable(out.drop(columns="_line"), classes=list(CLASSES),
                           attributes=attributes, default_attribute="sex")
