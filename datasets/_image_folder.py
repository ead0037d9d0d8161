"""The base of the adapters that read a folder of images described by metadata files
(``csv``, ``fitzpatrick17k``, ``ham10000``, ``isic2019``), and the parameters they share.

:class:`ImageFolderAdapter` holds what every such adapter does the same way: the resolved data
root, the ``image_dir`` check, the metadata digest in :meth:`~ImageFolderAdapter.config`,
finding the image of every row (``missing_images``) and the last checks of the table. An
adapter says only which files it reads (:meth:`~ImageFolderAdapter.metadata_files`) and how it
turns them into rows (:meth:`~ImageFolderAdapter.read_rows`). :class:`SexAgeImageFolder` adds
the attributes sex and binned age with lesions as patients (``ham10000``, ``isic2019``), whose
parameters derive from :class:`SexAgeParams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError, ParamError
from fairbench.core.params import param
from fairbench.data.dataset import DatasetAdapter, SampleTable

from . import _common as C

#: what ``missing_images`` may say about rows whose image file is missing
MissingImages = Literal["error", "drop"]


def missing_images_param() -> Any:
    """The ``missing_images`` field: rows whose image file is missing raise, or are dropped."""
    return param("error", help="rows whose image file is missing: error, or drop them")


def image_dir_param(image: str, auto: str) -> Any:
    """The ``image_dir`` field of a dataset whose images are named ``image`` (e.g.
    ``<image_id>.jpg``) and looked for, with ``image_dir=auto``, in the folders ``auto`` lists."""
    return param("auto", help=f"folder of {image} inside --data-root (auto: {auto})")


@dataclass
class SexAgeParams:
    """The first parameters of a dataset with the attributes sex and age: the attributes whose
    missing rows are dropped, and the edges of the age bins."""

    drop_missing: tuple[str, ...] = param(
        ("sex",), help="attributes whose missing rows are dropped (sex, age; none keeps all)")
    age_edges: tuple[float, ...] = param((60.0,), help="age bin edges, e.g. 60 or 20,40,60,80")

    def validate(self) -> None:
        C.check_edges(self.age_edges, "age_edges")


@dataclass(frozen=True)
class MetadataFile:
    """One metadata file of a dataset: the parameter that names it (relative to the data root,
    or absolute), what messages call it, the fix they give when it is not found, and the names
    tried in order when the parameter is ``auto``."""

    param: str
    what: str
    fix: str
    candidates: tuple[str, ...] = ()


@dataclass
class MetadataRows:
    """What an adapter read from its metadata, before its images are looked for.

    ``df`` has one row per sample: ``sample_id``, ``label``, one ``attr_<name>`` column per
    attribute, optionally ``patient_id`` and ``path``, and the metadata file's line in
    ``_line``. ``source`` is the file that messages about the rows name; ``classes``,
    ``attributes`` and ``default_attribute`` are those of the :class:`SampleTable`.
    """

    df: pd.DataFrame
    source: Path
    classes: list[str]
    attributes: dict[str, list[str]]
    default_attribute: str


class ImageFolderAdapter(DatasetAdapter):
    """A folder of images under the data root, described by metadata files.

    ``Params`` has (at least) ``image_dir`` and ``missing_images``. By default the image of a
    row is ``<sample_id>.jpg`` in ``image_dir``, or with ``image_dir=auto`` in the first of
    ``image_dirs`` that has it; an adapter whose metadata gives the paths overrides
    :meth:`find_images`, :meth:`looked_in`, :meth:`expected_paths` and ``name_rule``.

    Class attributes:
        metadata_sources: the metadata files the table is read from, in the order they are
            looked for.
        image_dirs: the folders (relative to the data root) that ``image_dir=auto`` searches,
            in order; empty when ``image_dir`` is always one folder.
        name_rule: the expected image file in messages, from the row's ``{id}`` or ``{path}``.
    """

    metadata_sources: ClassVar[tuple[MetadataFile, ...]] = ()
    image_dirs: ClassVar[tuple[str, ...]] = ()
    name_rule: ClassVar[str] = "{id}.jpg"

    def __init__(self, params: Any = None, data_root: str | Path | None = None) -> None:
        super().__init__(params, data_root)
        assert self.data_root is not None
        #: the data root, resolved
        self.root: Path = self.data_root.resolve()
        #: the folder ``image_dir`` names inside the root; None while ``image_dir=auto``
        #: searches ``image_dirs``
        self.image_root: Path | None = None
        if not (self.image_dirs and self.params.image_dir == "auto"):
            self.image_root = C.check_subdir(self.root, self.params.image_dir, "image_dir")
        #: what the last :meth:`build_table` dropped or kept, one line each
        self.notes: list[str] = []

    def metadata_files(self) -> tuple[Path, ...]:
        """The paths of the :attr:`metadata_sources`; their bytes are part of the config."""
        return tuple(C.metadata_path(self.root, getattr(self.params, f.param), what=f.what,
                                     candidates=f.candidates, fix=f.fix)
                     for f in self.metadata_sources)

    # -- to implement ---------------------------------------------------------------------
    def read_rows(self, notes: list[str]) -> MetadataRows:
        """The rows of the metadata, checked, coded and filtered (a line in ``notes`` per
        filter that dropped or kept rows)."""
        raise NotImplementedError

    # -- images -----------------------------------------------------------------------------
    def image_folders(self) -> list[str]:
        """The folders looked in for the images, in order (relative to the data root)."""
        return C.image_dir_candidates(self.params.image_dir, self.image_dirs)

    def find_images(self, df: pd.DataFrame) -> list[str | None]:
        """The image of each row relative to the data root, or None where it is missing."""
        return C.find_images(self.root, list(df["sample_id"]), self.image_folders())

    def looked_in(self) -> str:
        """Where the images were looked for, as messages name it."""
        return ", ".join(f"{f}/" for f in self.image_folders())

    def expected_folder(self) -> str:
        """The folder (ending in ``/``, or empty for the root) of the unchecked paths that
        :meth:`expected_paths` gives."""
        return ""

    def expected_paths(self, df: pd.DataFrame) -> pd.Series:
        """The path of each row when the image files are not checked."""
        return self.expected_folder() + df["sample_id"] + ".jpg"

    # -- the table --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["metadata_sha256"] = C.file_digest(*self.metadata_files())
        return cfg

    def build_table(self, *, check_files: bool = True) -> SampleTable:
        """The sample table. ``check_files=False`` reads the metadata only: every row gets its
        expected path (:meth:`expected_paths`), unchecked, for counting rows without the
        images."""
        notes = C.build_notes(self)
        rows = self.read_rows(notes)
        df = rows.df
        if check_files:
            df = C.apply_image_paths(
                df, self.find_images(df), missing=self.params.missing_images,
                meta=rows.source, root=self.root, looked_in=self.looked_in(),
                name_rule=self.name_rule, notes=notes)
        else:
            df = df.assign(path=self.expected_paths(df))
        if len(df) == 0:
            raise DataError(f"no rows of {str(rows.source)!r} are left after filtering")
        return SampleTable(df.drop(columns="_line"), classes=rows.classes,
                           attributes=rows.attributes, default_attribute=rows.default_attribute)


class SexAgeImageFolder(ImageFolderAdapter):
    """An image folder whose attributes are sex (the default; female 0, male 1) and age binned
    at ``age_edges``, with the images of one lesion grouped as one patient. ``Params`` derives
    from :class:`SexAgeParams`."""

    def __init__(self, params: Any = None, data_root: str | Path | None = None) -> None:
        super().__init__(params, data_root)
        for name in C.normalise_names(self.params.drop_missing):
            if name not in ("sex", "age"):
                raise ParamError(f"parameter drop_missing names {name!r}; {self.name} has the "
                                 "attributes sex and age (or none)")

    def sex_age_rows(self, *, source: Path, classes: list[str], ids: pd.Series,
                     labels: np.ndarray, sex: np.ndarray, age: np.ndarray, lesion: pd.Series,
                     lines: np.ndarray, notes: list[str]) -> MetadataRows:
        """The rows of samples ``ids`` with their class codes ``labels``, sex codes, ages in
        years (NaN = missing), lesion ids (empty: the sample is its own patient) and metadata
        lines; the rows ``drop_missing`` names are dropped."""
        edges = self.params.age_edges
        df = pd.DataFrame({
            "sample_id": ids.to_numpy(),
            "label": labels,
            "attr_sex": sex,
            "attr_age": C.bin_codes(age, edges),
            "patient_id": np.where(lesion == "", ids, lesion),
            "_line": lines,
        })
        attributes = {"sex": ["female", "male"], "age": C.bin_names(edges)}
        df = C.apply_drop_missing(df, self.params.drop_missing, attributes, notes, self.name)
        return MetadataRows(df, source, classes, attributes, default_attribute="sex")
