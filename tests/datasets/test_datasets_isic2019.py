"""The isic2019 adapter against the ground truth and metadata CSVs of the ISIC 2019 training
set: the full files (when the real data folder is there) and the excerpt in tests/fixtures
(always), with small generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_helpers import (
    FIXTURES,
    SHARED,
    InfoCommand,
    assert_patients_in_one_part,
    check_sex_age_params,
    code_counts,
    data_root,
    make_jpegs,
    requires_shared,
)

from fairbench import DataError, create_dataset
from fairbench.data.cache import load_or_build
from fairbench.data.splits import check_split, make_split

GT = "ISIC_2019_Training_GroundTruth.csv"
META = "ISIC_2019_Training_Metadata.csv"
CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]


def _root(tmp_path: Path, source: Path, link: bool = False) -> Path:
    """``tmp_path/isic`` holding the ground truth and metadata CSVs of ``source``."""
    return data_root(tmp_path / "isic", source / GT, source / META, link=link)


# -- the full CSVs (metadata only) -----------------------------------------------------------
@requires_shared
def test_fullcode_counts(tmp_path):
    root = _root(tmp_path, SHARED / "isic2019", link=True)
    everything = create_dataset("isic2019", root, drop_missing="none").build_table(
        check_files=False)
    assert len(everything) == 25331
    assert (everything.attr("sex") == -1).sum() == 384
    assert (everything.attr("age") == -1).sum() == 437
    assert np.bincount(everything.labels).tolist() == [4522, 12875, 3323, 867, 2624, 239, 253,
                                                       628]
    assert everything.df["sample_id"].str.endswith("_downsampled").sum() == 2074

    ds = create_dataset("isic2019", root)
    t = ds.build_table(check_files=False)
    assert len(t) == 25331 - 384 == 24947  # FairQuantize's n
    assert t.classes == CLASSES and t.default_attribute == "sex"
    assert t.group_names("sex") == ["female", "male"]
    assert code_counts(t.attr("sex")) == {0: 11661, 1: 13286}
    assert code_counts(t.attr("age")) == {-1: 53, 0: 14089, 1: 10805}
    assert t.group_names("age") == ["<60", "60+"]
    assert np.bincount(t.labels).tolist() == [4441, 12604, 3317, 864, 2601, 239, 253, 628]
    assert t.df["sample_id"].str.endswith("_downsampled").sum() == 1894
    # lesion_id groups images; rows without one are their own group
    pids = pd.Series(t.patient_ids)
    assert pids.str.startswith(("BCN_", "HAM_", "MSK4")).sum() == 24947 - 1821
    assert pids.nunique() == 11774 + 1821
    assert ds.notes == ["dropped 384 rows with missing sex (drop_missing=sex)"]

    both = create_dataset("isic2019", root, drop_missing="sex,age").build_table(
        check_files=False)
    assert len(both) == 24894
    multi = create_dataset("isic2019", root, age_edges="20,40,60,80").build_table(
        check_files=False)
    assert multi.group_names("age") == ["<20", "20-39", "40-59", "60-79", "80+"]
    assert code_counts(multi.attr("age")) == {-1: 53, 0: 684, 1: 3915, 2: 9490, 3: 8027, 4: 2778}


@requires_shared
def test_full_gender_header_variant(tmp_path):
    root = tmp_path / "gender"
    root.mkdir()
    (root / GT).symlink_to(SHARED / "isic2019" / GT)
    raw = (SHARED / "isic2019" / META).read_bytes()
    (root / META).write_bytes(raw.replace(b",sex\r\n", b",gender\r\n", 1))
    t_gender = create_dataset("isic2019", root).build_table(check_files=False)
    t_sex = create_dataset("isic2019", _root(tmp_path, SHARED / "isic2019", link=True)
                           ).build_table(check_files=False)
    pd.testing.assert_frame_equal(t_gender.df, t_sex.df)


@requires_shared
def test_full_subset_of_images_grouped_split(tmp_path):
    root = _root(tmp_path, SHARED / "isic2019", link=True)
    meta = pd.read_csv(root / META, dtype=str, keep_default_na=False)
    many = meta[meta.lesion_id != ""].groupby("lesion_id").filter(lambda g: len(g) >= 3)
    lesions = many.lesion_id.drop_duplicates().iloc[:12]
    chosen = pd.concat([meta[meta.lesion_id.isin(lesions)],
                        meta[meta.image.str.endswith("_downsampled") & (meta.sex != "")].head(4),
                        meta[meta.sex == ""].head(3)]).drop_duplicates("image")
    make_jpegs(root / "ISIC_2019_Training_Input", chosen.image)
    ds = create_dataset("isic2019", root, missing_images="drop")
    t = ds.build_table()
    assert len(t) == len(chosen) - 3  # the 3 without sex are dropped first
    assert t.df["path"].str.startswith("ISIC_2019_Training_Input/").all()
    n_down = chosen[chosen.sex != ""].image.str.endswith("_downsampled").sum()
    assert t.df["sample_id"].str.endswith("_downsampled").sum() == n_down >= 4
    split = make_split(t, seed=1)
    assert_patients_in_one_part(split, t)


# -- the excerpt (always) --------------------------------------------------------------------
def test_excerpt_table_images_cache(tmp_path):
    root = _root(tmp_path, FIXTURES / "isic2019")
    meta = pd.read_csv(root / META, dtype=str, keep_default_na=False)
    make_jpegs(root / "ISIC_2019_Training_Input", meta.image)
    ds = create_dataset("isic2019", root)
    t = ds.build_table()
    assert len(t) == 287 - 18
    assert np.bincount(t.labels, minlength=8).tolist() == [86, 36, 22, 35, 24, 22, 22, 22]
    assert code_counts(t.attr("sex")) == {0: 133, 1: 136}
    row = t.df.set_index("sample_id").loc["ISIC_0000000"]  # 55, female, NV
    assert (row.label, row.attr_sex, row.attr_age) == (1, 0, 0)
    assert row.patient_id == "ISIC_0000000"  # no lesion_id: its own group
    ds_img = t.df[t.df.sample_id.str.endswith("_downsampled")]
    assert len(ds_img) and (ds_img.path == "ISIC_2019_Training_Input/" + ds_img.sample_id
                            + ".jpg").all()
    split = make_split(t, seed=0)
    check_split(split, t, "sex")
    cached = load_or_build(ds, t, 12, tmp_path / "cache", progress=False)
    assert cached.images.shape == (269, 12, 12, 3)
    assert list(cached.sample_ids) == list(t.sample_ids)


def test_excerpt_onehot_variants(tmp_path):
    root = _root(tmp_path, FIXTURES / "isic2019")
    base = create_dataset("isic2019", root).build_table(check_files=False)
    gt = pd.read_csv(root / GT)
    ints = gt.copy()
    ints[gt.columns[1:]] = gt[gt.columns[1:]].astype(int)
    ints.columns = ["image"] + [str(k) for k in range(9)]  # a re-upload's integer layout
    ints.to_csv(root / GT, index=False)
    t = create_dataset("isic2019", root).build_table(check_files=False)
    pd.testing.assert_frame_equal(t.df, base.df)
    # a row labelled UNK (never in the training set) is dropped with a note
    gt.loc[0, "NV"], gt.loc[0, "UNK"] = 0.0, 1.0
    gt.to_csv(root / GT, index=False)
    ds = create_dataset("isic2019", root)
    t = ds.build_table(check_files=False)
    assert len(t) == len(base) - 1 and "dropped 1 rows labelled UNK" in ds.notes


# -- bad input -------------------------------------------------------------------------------
def test_bad_ground_truth_and_metadata(tmp_path):
    root = _root(tmp_path, FIXTURES / "isic2019")
    info = InfoCommand("isic2019", root)
    gt = pd.read_csv(root / GT)
    two = gt.copy()
    two.loc[2, ["MEL", "NV"]] = 1.0
    two.to_csv(root / GT, index=False)
    info.fails("line 4", gt.image[2], "2 positive classes")
    gt.drop(columns="SCC").to_csv(root / GT, index=False)
    info.fails("lacks the class column(s) ['SCC']")
    gt.iloc[:-1].to_csv(root / GT, index=False)
    info.fails("is in one ISIC 2019 CSV but not in", GT)
    gt.to_csv(root / GT, index=False)
    meta = pd.read_csv(root / META, dtype=str, keep_default_na=False)
    info.fails_on_cell(meta, root / META, 5, "sex", "other", "line 7", "not male, female")
    info.fails_on_cell(meta, root / META, 9, "age_approx", "fifty", "line 11",
                       "age_approx 'fifty' is not a number")
    meta.drop(columns="sex").to_csv(root / META, index=False)
    info.fails("no sex column 'sex' or 'gender'")
    (root / META).unlink()
    info.fails(META, "not found", "challenge.isic-archive.com")


def test_bad_params(tmp_path):
    root = _root(tmp_path, FIXTURES / "isic2019")
    check_sex_age_params("isic2019", root)
    with pytest.raises(DataError, match="none of the 269 images"):
        create_dataset("isic2019", root).build_table()
    meta = pd.read_csv(root / META, dtype=str, keep_default_na=False)
    make_jpegs(root / "ISIC_2019_Training_Input", meta.image)
    InfoCommand("isic2019", root).fails("unknown sensitive attribute 'race'",
                                        extra=("--attribute", "race"))
