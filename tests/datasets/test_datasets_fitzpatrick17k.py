"""The fitzpatrick17k adapter against the real annotation CSV (full file from shared/data when
present, the excerpt in tests/fixtures always), with small generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_helpers import (
    FIXTURES,
    SHARED,
    assert_cli_error,
    cli,
    colour_of,
    copy_files,
    link_files,
    make_jpegs,
    requires_shared,
)

from fairbench import DataError, ParamError, UnknownNameError, create_dataset
from fairbench.data.cache import load_or_build
from fairbench.data.splits import check_split, make_split

FULL = SHARED / "fitzpatrick17k" / "fitzpatrick17k.csv"
EXCERPT = FIXTURES / "fitzpatrick17k" / "fitzpatrick17k.csv"


def _root_with(tmp_path: Path, csv: Path, link: bool = False) -> Path:
    root = tmp_path / "fitz"
    (link_files if link else copy_files)(root, csv)
    return root


def _counts(table, attribute):
    codes = table.attr(attribute)
    return {int(k): int(v) for k, v in zip(*np.unique(codes, return_counts=True))}


# -- the full CSV (metadata only) ----------------------------------------------------------
@requires_shared
def test_full_csv_counts_default_excludes_type_minus_one(tmp_path):
    root = _root_with(tmp_path, FULL, link=True)
    ds = create_dataset("fitzpatrick17k", root)
    t = ds.build_table(check_files=False)
    assert len(t) == 16577 - 565 == 16012
    assert t.n_classes == 114
    assert t.classes == sorted(t.classes)  # alphabetical, FairQuantize's category codes
    assert t.default_attribute == "skin_tone"
    assert t.group_names("skin_tone") == ["light", "dark"]
    assert _counts(t, "skin_tone") == {0: 11063, 1: 4949}
    assert _counts(t, "fitzpatrick") == {0: 2947, 1: 4808, 2: 3308, 3: 2781, 4: 1533, 5: 635}
    names = np.array(t.classes)[t.labels]
    vc = pd.Series(names).value_counts()
    assert vc["psoriasis"] == 622 and vc["squamous cell carcinoma"] == 536
    assert vc.min() == 49
    assert t.patient_ids is None
    assert any("565" in n for n in ds.notes)


@requires_shared
def test_full_csv_unknown_type_policies(tmp_path):
    root = _root_with(tmp_path, FULL, link=True)
    keep = create_dataset("fitzpatrick17k", root, unknown_skin_type="keep").build_table(
        check_files=False)
    assert len(keep) == 16577
    assert _counts(keep, "skin_tone") == {-1: 565, 0: 11063, 1: 4949}
    dark = create_dataset("fitzpatrick17k", root, unknown_skin_type="as_dark").build_table(
        check_files=False)
    assert _counts(dark, "skin_tone") == {0: 11063, 1: 4949 + 565}
    assert _counts(dark, "fitzpatrick")[-1] == 565  # unknown stays unknown in the six types


@requires_shared
def test_full_csv_label_columns_and_centaur(tmp_path):
    root = _root_with(tmp_path, FULL, link=True)
    t3 = create_dataset("fitzpatrick17k", root, label_column="three_partition_label"
                        ).build_table(check_files=False)
    assert t3.classes == ["benign", "malignant", "non-neoplastic"]
    assert np.bincount(t3.labels).tolist() == [2160, 2160, 11692]
    t9 = create_dataset("fitzpatrick17k", root, label_column="nine_partition_label"
                        ).build_table(check_files=False)
    assert t9.n_classes == 9
    assert dict(zip(t9.classes, np.bincount(t9.labels)))["inflammatory"] == 10527
    tc = create_dataset("fitzpatrick17k", root, skin_type_source="centaur"
                        ).build_table(check_files=False)
    assert len(tc) == 16577 - 1073


@requires_shared
def test_full_csv_old_2021_layout_gives_the_same_table(tmp_path):
    df = pd.read_csv(FULL, dtype=str, keep_default_na=False)
    old = df.drop(columns="fitzpatrick_centaur").rename(columns={"fitzpatrick_scale":
                                                                 "fitzpatrick"})
    old.index = np.arange(len(old)) % 1000  # the 2021 index column was not unique
    root = tmp_path / "old"
    root.mkdir()
    old.to_csv(root / "fitzpatrick17k.csv")  # writes the leading unnamed index column
    assert (root / "fitzpatrick17k.csv").read_text().startswith(",md5hash,fitzpatrick,")
    new_t = create_dataset("fitzpatrick17k", _root_with(tmp_path, FULL, link=True)
                           ).build_table(check_files=False)
    old_t = create_dataset("fitzpatrick17k", root).build_table(check_files=False)
    pd.testing.assert_frame_equal(new_t.df, old_t.df)
    with pytest.raises(DataError, match="no Centaur labels"):
        create_dataset("fitzpatrick17k", root, skin_type_source="centaur").build_table()


@requires_shared
def test_full_csv_subset_of_images_split_and_cache(tmp_path):
    root = _root_with(tmp_path, FULL, link=True)
    df = pd.read_csv(FULL, dtype=str, keep_default_na=False)
    rows = df[df.fitzpatrick_scale != "-1"].groupby("three_partition_label").head(12)
    make_jpegs(root / "dataset_images", rows.md5hash)  # FairQuantize's folder name
    with pytest.raises(DataError, match="images are missing.*missing_images=drop"):
        create_dataset("fitzpatrick17k", root).build_table()
    ds = create_dataset("fitzpatrick17k", root, missing_images="drop",
                        label_column="three_partition_label")
    t = ds.build_table()
    assert len(t) == 36 and set(t.sample_ids) == set(rows.md5hash)
    assert all(p.startswith("dataset_images/") for p in t.df["path"])
    assert any("16012" not in n and "missing" in n for n in ds.notes)
    split = make_split(t, seed=0)
    check_split(split, t, "skin_tone")
    assert sum(split.sizes().values()) == 36
    cached = load_or_build(ds, t, 16, tmp_path / "cache", progress=False)
    assert cached.images.shape == (36, 16, 16, 3)
    k = 5
    expected = colour_of(t.sample_ids[k])
    assert np.abs(cached.images[k].reshape(-1, 3).mean(0) - expected).max() < 6


# -- the excerpt (always) --------------------------------------------------------------------
def test_excerpt_with_images_in_root(tmp_path):
    root = _root_with(tmp_path, EXCERPT)
    df = pd.read_csv(EXCERPT, dtype=str, keep_default_na=False)
    make_jpegs(root, df.md5hash)
    ds = create_dataset("fitzpatrick17k", root)
    t = ds.build_table()
    assert len(t) == 236 - 12
    assert t.n_classes == 114
    assert _counts(t, "skin_tone") == {0: 50 + 74 + 40, 1: 33 + 15 + 12}
    row = t.df.set_index("sample_id").loc[df.md5hash.iloc[0]]
    src = df.iloc[0]
    assert row["path"] == f"{src.md5hash}.jpg"
    assert t.classes[row["label"]] == src.label
    assert row["attr_fitzpatrick"] == int(src.fitzpatrick_scale) - 1
    assert row["attr_skin_tone"] == (1 if int(src.fitzpatrick_scale) >= 4 else 0)
    keep = create_dataset("fitzpatrick17k", root, unknown_skin_type="keep").build_table()
    assert len(keep) == 236 and (keep.attr("skin_tone") == -1).sum() == 12


def test_excerpt_cli_prepare_and_info(tmp_path):
    root = _root_with(tmp_path, EXCERPT)
    df = pd.read_csv(EXCERPT, dtype=str, keep_default_na=False)
    make_jpegs(root / "images", df.md5hash)
    cache = str(tmp_path / "cache")
    args = ["fitzpatrick17k", "--data-root", str(root), "--image-size", "16", "--cache-dir",
            cache, "--data-param", "label_column=three_partition_label"]
    info = cli("data", "info", *args)
    assert info.exit_code == 0, info.output
    assert "not built" in info.stdout
    res = cli("data", "prepare", *args, "--quiet")
    assert res.exit_code == 0, res.output
    assert "cached 224 images at 16px" in res.stdout
    assert "dropped 12 rows with Fitzpatrick type -1" in res.stdout
    assert "skin_tone (default): light 164, dark 60" in res.stdout
    total = [ln for ln in res.stdout.splitlines() if ln.startswith("total")]
    assert total and total[-1].split() == ["total", "164", "60", "224"]
    info = cli("data", "info", *args)
    assert "cache at 16px: built (224 images" in info.stdout
    again = cli("data", "prepare", *args, "--quiet")
    assert "cache already built" in again.stdout


# -- bad input -------------------------------------------------------------------------------
def test_missing_csv_and_data_root(tmp_path):
    assert_cli_error(cli("data", "info", "fitzpatrick17k"), "needs --data-root")
    assert_cli_error(cli("data", "info", "fitzpatrick17k", "--data-root",
                         str(tmp_path / "nope")), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_cli_error(cli("data", "info", "fitzpatrick17k", "--data-root",
                         str(tmp_path / "empty")), "fitzpatrick17k.csv", "not found",
                     "github.com/mattgroh/fitzpatrick17k")


def test_missing_and_corrupt_images(tmp_path):
    root = _root_with(tmp_path, EXCERPT)
    df = pd.read_csv(EXCERPT, dtype=str, keep_default_na=False)
    paths = make_jpegs(root, df.md5hash)
    args = ["fitzpatrick17k", "--data-root", str(root), "--image-size", "16", "--cache-dir",
            str(tmp_path / "cache"), "-q"]
    paths[3].unlink()
    line = assert_cli_error(cli("data", "prepare", *args), "1 of 224 images are missing",
                            f"{df.md5hash[3]}.jpg", "line 5", "missing_images=drop")
    assert "fitzpatrick17k.csv" in line
    paths[7].write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    assert_cli_error(cli("data", "prepare", *args, "--data-param", "missing_images=drop"),
                     f"{df.md5hash[7]}.jpg", "unreadable or corrupt")
    # nothing left in the cache: no entry, no temporary directory
    assert not list((tmp_path / "cache" / "images").iterdir())


def test_none_of_the_images_found(tmp_path):
    root = _root_with(tmp_path, EXCERPT)
    with pytest.raises(DataError, match="none of the 224 images"):
        create_dataset("fitzpatrick17k", root, missing_images="drop").build_table()


def test_bad_values_and_params(tmp_path):
    df = pd.read_csv(EXCERPT, dtype=str, keep_default_na=False)
    bad = df.copy()
    bad.loc[4, "fitzpatrick_scale"] = "7"
    root = tmp_path / "bad"
    root.mkdir()
    bad.to_csv(root / "fitzpatrick17k.csv", index=False)
    assert_cli_error(cli("data", "info", "fitzpatrick17k", "--data-root", str(root)),
                     "line 6", "fitzpatrick_scale '7'", "not a Fitzpatrick type")
    nolabel = df.drop(columns="nine_partition_label")
    root2 = tmp_path / "nolabel"
    root2.mkdir()
    nolabel.to_csv(root2 / "fitzpatrick17k.csv", index=False)
    assert_cli_error(cli("data", "info", "fitzpatrick17k", "--data-root", str(root2),
                         "--data-param", "label_column=nine_partition_label"),
                     "no label column 'nine_partition_label'")
    with pytest.raises(ParamError, match="must be one of"):
        create_dataset("fitzpatrick17k", root, label_column="diagnosis")
    with pytest.raises(ParamError, match="leaves the data root"):
        create_dataset("fitzpatrick17k", root, image_dir="../elsewhere")
    with pytest.raises(UnknownNameError, match="did you mean"):
        create_dataset("fitzpatrick17k", root, unknown_skin_typ="keep")
    dup = pd.concat([df, df.iloc[[3]]])
    root3 = tmp_path / "dup"
    root3.mkdir()
    dup.to_csv(root3 / "fitzpatrick17k.csv", index=False)
    with pytest.raises(DataError, match="occurs twice"):
        create_dataset("fitzpatrick17k", root3).build_table(check_files=False)
