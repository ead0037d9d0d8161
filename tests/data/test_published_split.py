"""``--split published``: the Fair Multi-Exit repository's split files, found in a folder,
checked by sha256 and matched to the real Fitzpatrick-17k and ISIC 2019 metadata.

The repository states no licence, so its files are not in this repository: the tests that
match them to the real metadata build part files of the same layout from the real metadata
(and record their checksums as the published ones); with ``FAIRBENCH_TEST_PUBLISHED_SPLITS``
naming a folder with the real files, the last test checks those too."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fairbench.datasets  # noqa: F401 - registers the adapters
import pandas as pd
import pytest
from click.testing import CliRunner
from dataset_helpers import SHARED, requires_shared

from fairbench import create_dataset
from fairbench.cli.main import main
from fairbench.core.errors import DataError
from fairbench.data import published
from fairbench.data.published import PUBLISHED, PartFile, PublishedSplit, published_split


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table(name: str, **params):
    folder = {"fitzpatrick17k": "fitzpatrick17k", "isic2019": "isic2019"}[name]
    return create_dataset(name, str(SHARED / folder), **params).build_table(check_files=False)


def _write_parts(folder: Path, spec: PublishedSplit, ids: list[str], *,
                 with_train: bool) -> dict[str, PartFile]:
    """Part files in the repository's layout: every 5th id to val, the next to test, the
    rest to train (when the spec has a train file)."""
    parts = {"val": ids[0::5], "test": ids[1::5]}
    if with_train:
        taken = set(parts["val"]) | set(parts["test"])
        parts["train"] = [i for i in ids if i not in taken]
    out = {}
    for part, rows in parts.items():
        rel = getattr(spec, part).path
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({spec.id_column: rows, "label": 0}).to_csv(path)
        out[part] = PartFile(rel, _sha(path))
    return out


@requires_shared
def test_isic2019_published_split_against_the_real_metadata(tmp_path, monkeypatch):
    table = _table("isic2019")
    ids = list(table.sample_ids.astype(str))[:3000]
    spec = PUBLISHED["isic2019"]
    files = _write_parts(tmp_path, spec, ids, with_train=True)
    monkeypatch.setitem(PUBLISHED, "isic2019", PublishedSplit(spec.id_column, **files))
    split = published_split("isic2019", table, tmp_path)
    assert split.sizes() == {"train": 1800, "val": 600, "test": 600}
    assert list(split.parts["val"]) == ids[0::5]
    # an edited file is refused, naming the file and the commit to download again
    path = tmp_path / spec.val.path
    path.write_text(path.read_text() + "\n")
    with pytest.raises(DataError, match=r"has sha256 .* not .*commit b2c3e45"):
        published_split("isic2019", table, tmp_path)


@requires_shared
def test_fitzpatrick_published_split_takes_the_rest_as_train(tmp_path, monkeypatch):
    """The repository's Fitzpatrick-17k train file is not retrievable: train is every sample
    in neither file; the files hold type -1 rows, so the default filters are told to keep
    them in one line."""
    table = _table("fitzpatrick17k", unknown_skin_type="keep")
    ids = list(table.sample_ids.astype(str))
    spec = PUBLISHED["fitzpatrick17k"]
    files = _write_parts(tmp_path / "flat", spec, ids, with_train=False)
    # found by name alone too (files downloaded without the repository's folders)
    for pf in files.values():
        (tmp_path / "flat" / pf.path).rename(tmp_path / "flat" / Path(pf.path).name)
    monkeypatch.setitem(PUBLISHED, "fitzpatrick17k", PublishedSplit(
        spec.id_column, val=files["val"], test=files["test"], needs=spec.needs))
    split = published_split("fitzpatrick17k", table, tmp_path / "flat")
    n = len(ids)
    assert split.sizes()["train"] == n - len(ids[0::5]) - len(ids[1::5])
    default = _table("fitzpatrick17k")  # type -1 rows excluded by default
    with pytest.raises(DataError, match="needs --data-param unknown_skin_type=keep"):
        published_split("fitzpatrick17k", default, tmp_path / "flat")


def test_missing_files_and_folders_are_one_line(tmp_path):
    with pytest.raises(DataError, match="does not exist; download"):
        published_split("isic2019", None, tmp_path / "nowhere")  # type: ignore[arg-type]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="'isic2019_train_pretraining.csv' is not in"):
        published_split("isic2019", None, tmp_path / "empty")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no published split for dataset 'synthderm'"):
        published_split("synthderm", None, tmp_path)  # type: ignore[arg-type]


def test_the_split_folder_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv(published.SPLITS_DIR_ENV, raising=False)
    assert published.splits_dir(None, str(tmp_path)) == tmp_path / "published_split"
    monkeypatch.setenv(published.SPLITS_DIR_ENV, str(tmp_path / "env"))
    assert published.splits_dir(None, str(tmp_path)) == tmp_path / "env"
    assert published.splits_dir(str(tmp_path / "given"), None) == tmp_path / "given"
    monkeypatch.delenv(published.SPLITS_DIR_ENV)
    with pytest.raises(DataError, match="needs the folder of the split files"):
        published.splits_dir(None, None)


@pytest.mark.parametrize("args,message", [
    (["--split", "published", "--split-dir", "{tmp}"], "no published split for dataset 'synthderm'"),
    (["--split-dir", "{tmp}"], "add --split published"),
    (["--split", "published", "--split-file", "{tmp}/s.csv"], "--split published and --split-file"),
])
def test_bad_split_options_are_one_line(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path / "runs"),
                                       "--data-param", "n_samples=200", *args])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output


@pytest.mark.skipif(not os.environ.get("FAIRBENCH_TEST_PUBLISHED_SPLITS"),
                    reason="the published files are not shipped (no licence); set "
                           "FAIRBENCH_TEST_PUBLISHED_SPLITS to a folder holding them")
@requires_shared
def test_the_real_published_files():
    """Measured here with the files of commit b2c3e45: Fitzpatrick-17k (type -1 kept)
    13,263 / 1,657 / 1,657; ISIC 2019 14,904 / 4,965 / 4,971 (107 of the 24,947 images of the
    metadata are in no file)."""
    folder = Path(os.environ["FAIRBENCH_TEST_PUBLISHED_SPLITS"])
    fitz = published_split("fitzpatrick17k", _table("fitzpatrick17k",
                                                    unknown_skin_type="keep"), folder)
    assert fitz.sizes() == {"train": 13263, "val": 1657, "test": 1657}
    isic = published_split("isic2019", _table("isic2019"), folder)
    assert isic.sizes() == {"train": 14904, "val": 4965, "test": 4971}
