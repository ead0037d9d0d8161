"""The community's published splits, by name: ``--split published``.

The ME-FairPrune and SNNL-pruning papers train and test on the split files of the Fair
Multi-Exit Framework repository (Chiu et al., MICCAI 2023;
https://github.com/chiuhaohao/Fair-Multi-Exit-Framework, commit ``b2c3e45``): for
Fitzpatrick-17k ``fitzpatrick17k/fitzpatrick17k_{vali,test}.csv`` (id column ``md5hash``),
for ISIC 2019 ``isic2019_split/isic2019_{train,val,test}_pretraining.csv`` (id column
``image``). The repository states no licence, so fairbench does not ship the files: the user
downloads them once (``git clone`` the repository, or its raw files) and names the folder with
``--split-dir`` (else ``$FAIRBENCH_SPLITS_DIR``, else ``<data root>/published_split``). Each
file is found by its path in the repository or by its name alone, and must have the sha256
recorded here (the files of that commit); a file that differs is refused in one line.

The repository's Fitzpatrick-17k train file is listed in its tree but was not retrievable
when this was written (its blob is absent from the public mirror read here), so the train
part is every sample in neither the validation nor the test file, as
:func:`fairbench.data.splits.split_from_part_files` does; a ``fitzpatrick17k_train.csv`` in
the folder is used instead when present (its checksum cannot be checked).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fairbench.core.errors import DataError
from fairbench.data.splits import Split, split_from_part_files
from fairbench.data.dataset import SampleTable

#: the environment variable naming the folder of published split files
SPLITS_DIR_ENV = "FAIRBENCH_SPLITS_DIR"
SOURCE = "https://github.com/chiuhaohao/Fair-Multi-Exit-Framework"
COMMIT = "b2c3e45fe53f2c9c09666f65d33dc803fba1303b"


@dataclass(frozen=True)
class PartFile:
    """One part's file: its path in the repository and the sha256 of its bytes (None: not
    checked)."""

    path: str
    sha256: str | None


@dataclass(frozen=True)
class PublishedSplit:
    """A dataset's published split: its part files (``train`` None: the complement)."""

    id_column: str
    val: PartFile
    test: PartFile
    train: PartFile | None = None
    #: a train file used when present although it has no recorded checksum
    optional_train: str | None = None
    #: the dataset options the published files were made with (said when ids do not match)
    needs: str = ""


PUBLISHED: dict[str, PublishedSplit] = {
    "fitzpatrick17k": PublishedSplit(
        id_column="md5hash",
        val=PartFile("fitzpatrick17k/fitzpatrick17k_vali.csv",
                     "6226757cee088e219107e9ac8ed16f920bcce72b015c9384568c42e46bae14c5"),
        test=PartFile("fitzpatrick17k/fitzpatrick17k_test.csv",
                      "bdde481ac6347e6c8972fef7d5d3dc9507ace479c377aa7ea4fa3424747a0afe"),
        optional_train="fitzpatrick17k/fitzpatrick17k_train.csv",
        needs="--data-param unknown_skin_type=keep (the files include the type -1 rows)"),
    "isic2019": PublishedSplit(
        id_column="image",
        train=PartFile("isic2019_split/isic2019_train_pretraining.csv",
                       "072e131dc4c76e3213ccc22de30d4b780677e163445841c16f8b4614a9ea90b1"),
        val=PartFile("isic2019_split/isic2019_val_pretraining.csv",
                     "530f51b900fbb94b70d55fcc0839726e6b8d34df1830573522df86cf0811d7ae"),
        test=PartFile("isic2019_split/isic2019_test_pretraining.csv",
                      "a1991399401d32818cee66b3f50af7e84fc0e46ba2580a0572ef7b7c47961a66")),
}


def splits_dir(given: str | None, data_root: str | None) -> Path:
    """The folder of the split files: ``given``, else ``$FAIRBENCH_SPLITS_DIR``, else
    ``<data_root>/published_split``."""
    value = given or os.environ.get(SPLITS_DIR_ENV)
    if value:
        return Path(value).expanduser()
    if data_root:
        return Path(data_root).expanduser() / "published_split"
    raise DataError(f"--split published needs the folder of the split files: --split-dir DIR "
                    f"or ${SPLITS_DIR_ENV} (get them from {SOURCE})")


def _find(folder: Path, rel: str) -> Path | None:
    for candidate in (folder / rel, folder / Path(rel).name):
        if candidate.is_file():
            return candidate
    return None


def _checked(folder: Path, part: PartFile, dataset: str) -> Path:
    found = _find(folder, part.path)
    if found is None:
        raise DataError(f"published split of {dataset}: '{Path(part.path).name}' is not in "
                        f"'{folder}' (nor as {part.path}); download it from {SOURCE} "
                        f"(commit {COMMIT[:7]}) into that folder")
    if part.sha256 is not None:
        digest = hashlib.sha256(found.read_bytes()).hexdigest()
        if digest != part.sha256:
            raise DataError(f"published split file '{found}' has sha256 {digest[:12]}…, not "
                            f"{part.sha256[:12]}… (the file of {SOURCE} at commit "
                            f"{COMMIT[:7]}); download that version again")
    return found


def published_split(dataset: str, table: SampleTable, folder: Path) -> Split:
    """The published split of ``dataset`` (module docstring) over ``table``'s samples, its
    files checked; every id must be a sample of the table."""
    spec = PUBLISHED.get(dataset)
    if spec is None:
        raise DataError(f"no published split for dataset {dataset!r}; there is one for "
                        f"{', '.join(sorted(PUBLISHED))} (else give --split-file)")
    if not folder.is_dir():
        raise DataError(f"split folder '{folder}' does not exist; download the split files "
                        f"from {SOURCE} into it")
    train = _checked(folder, spec.train, dataset) if spec.train else (
        _find(folder, spec.optional_train) if spec.optional_train else None)
    val, test = _checked(folder, spec.val, dataset), _checked(folder, spec.test, dataset)
    try:
        return split_from_part_files(train=train, val=val, test=test,
                                     id_column=spec.id_column, table=table)
    except DataError as exc:
        if spec.needs and "does not have" in str(exc):
            raise DataError(f"{str(exc).split('; was it')[0]}; the published split of "
                            f"{dataset} needs {spec.needs}") from None
        raise
