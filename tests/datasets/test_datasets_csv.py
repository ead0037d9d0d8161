"""The ``csv`` adapter: any image folder with a CSV whose columns the user names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_helpers import assert_cli_error, assert_patients_in_one_part, cli, make_jpegs

from fairbench import DataError, ParamError, create_dataset
from fairbench.data.cache import load_or_build
from fairbench.data.splits import check_split, make_split

N = 48


def _dataset(tmp_path: Path, **overrides) -> Path:
    """48 images in imgs/ and a CSV: file, diagnosis, sex (with gaps), age, patient."""
    root = tmp_path / "mine"
    rng = np.random.default_rng(0)
    names = [f"case{i:03d}" for i in range(N)]
    make_jpegs(root / "imgs", names, size=(36, 28), ext=".png" if overrides.get("png") else ".jpg")
    ext = ".png" if overrides.get("png") else ".jpg"
    df = pd.DataFrame({
        "file": [f"{n}{ext}" for n in names],
        "diagnosis": rng.choice(["benign", "malignant", "other"], N),
        "sex": np.where(np.arange(N) % 2 == 0, "F", "M"),
        "age": rng.integers(20, 90, N).astype(str),
        "patient": [f"p{i // 3}" for i in range(N)],
        "site": rng.choice(["a", "b"], N),
    })
    df.loc[5, "sex"] = "unknown"
    df.loc[6, "age"] = ""
    df.to_csv(root / "labels.csv", index=False)
    return root


BASE = dict(csv="labels.csv", path_col="file", label_col="diagnosis", image_dir="imgs",
            attr_col="sex,age", attr_bins="age:60", patient_col="patient")


def test_table_encodings_split_and_cache(tmp_path):
    root = _dataset(tmp_path)
    ds = create_dataset("csv", root, **BASE)
    t = ds.build_table()
    src = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    assert len(t) == N
    assert t.classes == ["benign", "malignant", "other"]
    assert t.attributes == {"sex": ["F", "M"], "age": ["<60", "60+"]}
    assert t.default_attribute == "sex"
    assert t.df["path"].tolist() == ["imgs/" + f for f in src.file]
    assert t.df["sample_id"].tolist() == t.df["path"].tolist()  # id defaults to the path
    assert t.attr("sex")[5] == -1 and t.attr("age")[6] == -1
    ages = src.age.replace("", "nan").astype(float).to_numpy()
    ok = ~np.isnan(ages)
    assert (t.attr("age")[ok] == (ages[ok] >= 60)).all()
    assert t.labels.tolist() == [t.classes.index(d) for d in src.diagnosis]
    split = make_split(t, seed=0)
    check_split(split, t, "sex")
    assert_patients_in_one_part(split, t)
    cached = load_or_build(ds, t, 16, tmp_path / "cache", progress=False)
    assert cached.images.shape == (N, 16, 16, 3)


def test_options_ids_suffix_classes_drop_tab(tmp_path):
    root = _dataset(tmp_path, png=True)
    src = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    src["file"] = src.file.str.replace(".png", "", regex=False)
    src["id"] = [f"ID{i}" for i in range(N)]
    src.to_csv(root / "labels.tsv", sep="\t", index=False)
    ds = create_dataset("csv", root, csv="labels.tsv", path_col="file", suffix=".png",
                        label_col="diagnosis", image_dir="imgs", attr_col="site,sex",
                        id_col="id", classes="other,malignant,benign", drop_missing="sex",
                        default_attribute="sex")
    t = ds.build_table()
    assert len(t) == N - 1 and "dropped 1 rows with missing sex" in ds.notes[0]
    assert t.classes == ["other", "malignant", "benign"]
    assert t.sample_ids[0] == "ID0" and t.df["path"].iloc[0] == "imgs/case000.png"
    assert t.default_attribute == "sex" and list(t.attributes) == ["site", "sex"]


def test_symlinked_image_folder_inside_root_is_followed(tmp_path):
    root = _dataset(tmp_path)
    elsewhere = tmp_path / "big_disk"
    (root / "imgs").rename(elsewhere)
    (root / "imgs").symlink_to(elsewhere)
    ds = create_dataset("csv", root, **BASE)
    t = ds.build_table()
    cached = load_or_build(ds, t, 8, tmp_path / "cache", progress=False)
    assert cached.images.shape == (N, 8, 8, 3)


def test_cli_prepare(tmp_path):
    root = _dataset(tmp_path)
    params = [x for k, v in BASE.items() for x in ("--data-param", f"{k}={v}")]
    res = cli("data", "prepare", "csv", "--data-root", str(root), *params, "--image-size", "8",
              "--cache-dir", str(tmp_path / "c"), "-q")
    assert res.exit_code == 0, res.output
    assert "48 samples, 3 classes, 16 patients/lesions" in res.stdout
    assert "attribute sex (default): F 24, M 23, missing 1" in res.stdout


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_path", ["../outside.jpg", "/etc/passwd", "imgs/../../x.jpg"])
def test_paths_escaping_the_data_root(tmp_path, bad_path):
    root = _dataset(tmp_path)
    src = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    src["file"] = src["file"].astype(object)
    src.loc[4, "file"] = bad_path
    src.to_csv(root / "labels.csv", index=False)
    params = ["--data-param", "csv=labels.csv", "--data-param", "path_col=file",
              "--data-param", "label_col=diagnosis", "--data-param", "attr_col=sex"]
    assert_cli_error(cli("data", "prepare", "csv", "--data-root", str(root), *params),
                     "line 6", "escapes the data root")


def test_core_refuses_escaping_paths_at_decode_time(tmp_path):
    """The base class's own guard, for adapters that do not check paths themselves."""
    root = _dataset(tmp_path)
    ds = create_dataset("csv", root, **BASE)
    t = ds.build_table()
    t.df.loc[3, "path"] = "../../etc/passwd"
    with pytest.raises(DataError, match="escapes the data root"):
        ds._resolved_paths(t)


def test_missing_columns_and_values(tmp_path):
    root = _dataset(tmp_path)
    common = ["data", "info", "csv", "--data-root", str(root), "--data-param", "csv=labels.csv",
              "--data-param", "path_col=file", "--data-param", "image_dir=imgs"]
    assert_cli_error(cli(*common, "--data-param", "label_col=dx", "--data-param",
                         "attr_col=sex"), "no label_col column 'dx'", "diagnosis")
    assert_cli_error(cli(*common, "--data-param", "label_col=diagnosis"),
                     "needs the sensitive attribute column")
    assert_cli_error(cli(*common, "--data-param", "label_col=diagnosis", "--data-param",
                         "attr_col=race"), "no attr_col column 'race'")
    assert_cli_error(cli(*common, "--data-param", "label_col=diagnosis", "--data-param",
                         "attr_col=sex", "--data-param", "classes=benign,malignant"),
                     "'other' is not in classes")
    assert_cli_error(cli(*common, "--data-param", "label_col=diagnosis", "--data-param",
                         "attr_col=sex,site", "--data-param", "attr_bins=site:1"),
                     "site 'a' is not a number")
    assert_cli_error(cli(*common, "--data-param", "csv=nothere.csv", "--data-param",
                         "attr_col=sex"), "'nothere.csv' not found")
    with pytest.raises(ParamError, match="COLUMN:EDGE"):
        create_dataset("csv", root, **{**BASE, "attr_bins": "age"})


def test_missing_and_corrupt_images(tmp_path):
    root = _dataset(tmp_path)
    os.remove(root / "imgs" / "case007.jpg")
    with pytest.raises(DataError, match=r"1 of 48 images are missing; the first is "
                                        r"'imgs/case007.jpg'.*line 9"):
        create_dataset("csv", root, **BASE).build_table()
    ds = create_dataset("csv", root, **BASE, missing_images="drop")
    assert len(ds.build_table()) == N - 1
    (root / "imgs" / "case010.jpg").write_bytes(b"GIF89a garbage")
    params = [x for k, v in {**BASE, "missing_images": "drop"}.items()
              for x in ("--data-param", f"{k}={v}")]
    assert_cli_error(cli("data", "prepare", "csv", "--data-root", str(root), *params,
                         "--cache-dir", str(tmp_path / "c"), "--image-size", "8", "-q"),
                     "case010.jpg", "unreadable or corrupt")


def test_an_image_symlinked_outside_the_root_is_refused(tmp_path):
    """Symlinks are resolved before the data-root check: one image linked to a file outside
    the root (and outside the image folder) is refused, naming its line."""
    root = _dataset(tmp_path)
    secret = tmp_path / "secret.jpg"
    (root / "imgs" / "case003.jpg").rename(secret)
    (root / "imgs" / "case003.jpg").symlink_to(secret)
    with pytest.raises(DataError, match="escapes the data root"):
        create_dataset("csv", root, **BASE).build_table()
