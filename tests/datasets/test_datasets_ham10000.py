"""The ham10000 adapter against HAM10000_metadata in its 7- and 8-column layouts: the full
files (when the real data folder is there) and the excerpt in tests/fixtures (always), with
small generated images."""

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
    cli,
    code_counts,
    data_root,
    make_jpegs,
    requires_shared,
)

from fairbench import DataError, create_dataset
from fairbench.data.cache import load_or_build
from fairbench.data.splits import check_split, make_split

META = "HAM10000_metadata.csv"
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _root(tmp_path: Path, meta: Path, link: bool = False, name: str = "ham") -> Path:
    """``tmp_path/name`` holding the metadata file ``meta``."""
    return data_root(tmp_path / name, meta, link=link)


# -- the full files (metadata only) ----------------------------------------------------------
@requires_shared
def test_full_counts_both_layouts(tmp_path):
    tables = []
    for k, meta in enumerate([SHARED / "ham10000" / META,
                              SHARED / "ham10000" / "variants" / "with_dataset_column" / META]):
        root = _root(tmp_path, meta, link=True, name=f"ham{k}")
        everything = create_dataset("ham10000", root, drop_missing="none").build_table(
            check_files=False)
        assert len(everything) == 10015
        assert everything.classes == CLASSES
        assert dict(zip(CLASSES, np.bincount(everything.labels))) == {
            "nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142,
            "df": 115}
        assert code_counts(everything.attr("sex")) == {-1: 57, 0: 4552, 1: 5406}
        assert (everything.attr("age") == -1).sum() == 57
        assert len(set(everything.patient_ids)) == 7470
        ds = create_dataset("ham10000", root)
        t = ds.build_table(check_files=False)
        assert len(t) == 9958 and t.default_attribute == "sex"
        assert code_counts(t.attr("sex")) == {0: 4552, 1: 5406}
        assert code_counts(t.attr("age")) == {-1: 10, 0: 6349, 1: 3599}
        assert len(create_dataset("ham10000", root, drop_missing="sex,age").build_table(
            check_files=False)) == 9948
        tables.append(t)
    pd.testing.assert_frame_equal(tables[0].df, tables[1].df)


# -- the excerpt (always) --------------------------------------------------------------------
def test_excerpt_two_image_folders_grouped_split_cache(tmp_path):
    root = _root(tmp_path, FIXTURES / "ham10000" / META)
    meta = pd.read_csv(root / META, dtype=str, keep_default_na=False)
    half = len(meta) // 2
    make_jpegs(root / "HAM10000_images_part_1", meta.image_id[:half])
    make_jpegs(root / "HAM10000_images_part_2", meta.image_id[half:])
    ds = create_dataset("ham10000", root)
    t = ds.build_table()
    assert len(t) == 257 - 16
    assert np.bincount(t.labels).tolist() == [35, 33, 33, 32, 39, 36, 33]
    paths = t.df.set_index("sample_id")["path"]
    assert paths[meta.image_id[0]] == f"HAM10000_images_part_1/{meta.image_id[0]}.jpg"
    assert paths[meta.image_id.iloc[-1]] == f"HAM10000_images_part_2/{meta.image_id.iloc[-1]}.jpg"
    first = t.df.set_index("sample_id").loc[meta.image_id[0]]
    src = meta.iloc[0]
    assert t.classes[first.label] == src.dx
    assert first.attr_sex == {"female": 0, "male": 1}[src.sex]
    assert first.attr_age == (1 if float(src.age) >= 60 else 0)
    assert first.patient_id == src.lesion_id
    split = make_split(t, seed=3)
    check_split(split, t, "sex")
    assert_patients_in_one_part(split, t)
    cached = load_or_build(ds, t, 8, tmp_path / "cache", progress=False)
    assert cached.images.shape == (241, 8, 8, 3)


def test_excerpt_tab_float_ages_and_merged_folder(tmp_path):
    src = pd.read_csv(FIXTURES / "ham10000" / META, dtype=str, keep_default_na=False)
    base_root = _root(tmp_path, FIXTURES / "ham10000" / META, name="base")
    base = create_dataset("ham10000", base_root).build_table(check_files=False)
    # Dataverse's tab-separated .tab with pandas-style float ages
    root = tmp_path / "tab"
    root.mkdir()
    floats = src.copy()
    floats["age"] = [f"{float(a):.1f}" if a else "" for a in src.age]
    floats.to_csv(root / "HAM10000_metadata.tab", sep="\t", index=False)
    make_jpegs(root / "HAM10000_images", src.image_id)
    t = create_dataset("ham10000", root).build_table()
    assert t.df["path"].str.startswith("HAM10000_images/").all()
    pd.testing.assert_frame_equal(t.df.drop(columns="path"), base.df.drop(columns="path"))
    # 8-column excerpt
    v8 = _root(tmp_path, FIXTURES / "ham10000" / "variants" / "with_dataset_column" / META,
               name="v8")
    t8 = create_dataset("ham10000", v8).build_table(check_files=False)
    pd.testing.assert_frame_equal(t8.df, base.df)


def test_excerpt_cli_prepare_age_attribute(tmp_path):
    root = _root(tmp_path, FIXTURES / "ham10000" / META)
    meta = pd.read_csv(root / META, dtype=str, keep_default_na=False)
    make_jpegs(root, meta.image_id)
    res = cli("data", "prepare", "ham10000", "--data-root", str(root), "--image-size", "8",
              "--cache-dir", str(tmp_path / "c"), "--attribute", "age", "-q",
              "--data-param", "age_edges=20,40,60,80", "--data-param", "drop_missing=none")
    assert res.exit_code == 0, res.output
    assert "257 samples, 7 classes" in res.stdout
    assert "attribute sex (default): female 87, male 154, missing 16" in res.stdout
    assert "samples per class and age group:" in res.stdout
    assert "<20" in res.stdout and "80+" in res.stdout


# -- bad input -------------------------------------------------------------------------------
def test_bad_values(tmp_path):
    src = pd.read_csv(FIXTURES / "ham10000" / META, dtype=str, keep_default_na=False)
    root = tmp_path / "bad"
    root.mkdir()
    info = InfoCommand("ham10000", root)
    info.fails_on_cell(src, root / META, 3, "dx", "melanoma", "line 5", "akiec, bcc")
    info.fails_on_cell(src, root / META, 8, "sex", "x", "line 10")
    src.drop(columns="dx").to_csv(root / META, index=False)
    info.fails("no 'dx' column")
    (root / META).unlink()
    info.fails("HAM10000_metadata", "not found", "Dataverse")
    src.to_csv(root / META, index=False)
    make_jpegs(root / "HAM10000_images_part_1", src.image_id[:100])
    info.fails("151 of 241 images are missing", "line 102")
    with pytest.raises(DataError, match="occurs twice"):
        pd.concat([src, src.iloc[[0]]]).to_csv(root / META, index=False)
        create_dataset("ham10000", root).build_table()


def test_bad_params(tmp_path):
    check_sex_age_params("ham10000", _root(tmp_path, FIXTURES / "ham10000" / META))
