"""``csv``: any image folder described by a CSV, with the columns named by the user.

Layout under ``--data-root``: a metadata file (``csv=metadata.csv``) with one row per image,
and the images at the paths of its ``path_col`` (relative to ``image_dir``, default the data
root). Example::

    fairbench run --dataset csv --data-root ~/mydata \\
        --data-param path_col=file --data-param label_col=diagnosis \\
        --data-param attr_col=sex,age --data-param attr_bins=age:60

Choices (each a ``--data-param``):

* ``path_col`` (default ``path``): image path relative to ``image_dir``; ``suffix`` (e.g.
  ``.jpg``) is appended when the values are bare ids. A path that is absolute or climbs out of
  the data root with ``..`` is an error naming the line.
* ``label_col`` (default ``label``): the class. Classes are the distinct values, sorted
  (numerically when every value is an integer), unless ``classes=a,b,c`` fixes the order (rows
  with another value are then an error). An empty label is an error.
* ``attr_col`` (required, one or more, comma-separated): sensitive attributes. Groups are the
  distinct values, sorted (numerically when all are numbers); empty cells and the strings in
  ``missing_values`` (default ``unknown,na,nan,none``) are missing (code -1).
  ``attr_bins=age:40:60`` bins a numeric attribute instead (``<40``, ``40-59``, ``60+``).
  ``default_attribute`` picks the default (the first ``attr_col`` otherwise).
* ``drop_missing`` (default none): attributes whose missing rows are dropped.
* ``id_col`` (default: the path): unique sample id; ``patient_col`` (optional): rows sharing
  it never straddle split parts.
* Rows whose image file is missing raise an error naming it, or are dropped with
  ``missing_images=drop``. The delimiter (comma, tab, semicolon) is detected.

Defaults: ResNet-18 (``resnet18``) at 224 px (change with ``--image-size``/``--backbone``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError, ParamError
from fairbench.core.params import param
from fairbench.data.dataset import register_dataset

from . import _common as C
from . import _image_folder as base


@dataclass
class CSVFolderParams:
    """The ``--data-param`` options of ``csv``."""

    csv: str = param("metadata.csv", help="metadata CSV, relative to --data-root")
    path_col: str = param("path", help="column with the image path (relative to image_dir)")
    label_col: str = param("label", help="column with the class")
    attr_col: tuple[str, ...] = param((), help="sensitive attribute column(s), comma-separated")
    id_col: str = param("", help="column with a unique sample id (default: the path)")
    patient_col: str = param("", help="column grouping rows of one patient (optional)")
    image_dir: str = param(".", help="folder the paths are relative to, inside --data-root")
    suffix: str = param("", help="appended to every path, e.g. .jpg")
    classes: tuple[str, ...] = param((), help="class order (default: sorted values)")
    attr_bins: tuple[str, ...] = param((), help="numeric attributes to bin, as COL:EDGE:EDGE")
    missing_values: tuple[str, ...] = param(("unknown", "na", "nan", "none"),
                                            help="attribute values meaning missing (and empty)")
    drop_missing: tuple[str, ...] = param((), help="attributes whose missing rows are dropped")
    default_attribute: str = param("", help="default sensitive attribute (first attr_col)")
    delimiter: str = param("auto", help="auto, ',', 'tab' or ';'")
    missing_images: base.MissingImages = base.missing_images_param()

    def validate(self) -> None:
        if not C.normalise_names(self.attr_col):
            raise ParamError("dataset csv needs the sensitive attribute column(s): "
                             "--data-param attr_col=COLUMN[,COLUMN...]")
        for spec in self.attr_bins:
            col, _, rest = spec.partition(":")
            try:
                edges = [float(x) for x in rest.split(":") if x.strip()]
            except ValueError:
                edges = []
            if not col or not edges:
                raise ParamError(f"parameter attr_bins item {spec!r} must be COLUMN:EDGE[:EDGE...]"
                                 ", e.g. age:60")
            C.check_edges(edges, f"attr_bins ({col})")


def _sorted_values(values: list[str]) -> list[str]:
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


@register_dataset("csv")
class CSVFolder(base.ImageFolderAdapter):
    """Any image folder with a CSV of path, label and sensitive-attribute columns you name."""

    metadata_sources = (base.MetadataFile(
        "csv", "metadata", fix="set --data-param csv=FILE (relative to --data-root)"),)
    name_rule = "{path}"
    Params = CSVFolderParams
    default_image_size = 224
    default_backbone = "resnet18"

    def find_images(self, df: pd.DataFrame) -> list[str | None]:
        """The CSV's path of each row (relative to the data root) where that file exists."""
        return [r if os.path.isfile(self.root / r) else None for r in df["path"]]

    def looked_in(self) -> str:
        """The folder the CSV's paths are relative to."""
        return f"{self.params.image_dir}/"

    def expected_paths(self, df: pd.DataFrame) -> pd.Series:
        """The CSV's paths, relative to the data root."""
        return df["path"]

    def read_rows(self, notes: list[str]) -> base.MetadataRows:
        """One row per CSV row: its path, class and attributes, as the parameters name them."""
        p = self.params
        (path,) = self.metadata_files()
        df = C.read_metadata(path, delimiter=p.delimiter)
        attrs = C.normalise_names(p.attr_col)
        for role, col in (("path_col", p.path_col), ("label_col", p.label_col),
                          *(("attr_col", a) for a in attrs),
                          *((("id_col", p.id_col),) if p.id_col else ()),
                          *((("patient_col", p.patient_col),) if p.patient_col else ())):
            C.pick_column(df, [col], path, what=f"{role}",
                          fix=f"set --data-param {role}=COLUMN to one of them")
        if len(df) == 0:
            raise DataError(f"{str(path)!r} has a header but no rows")

        # paths: relative to image_dir, never outside the data root
        rel = []
        for i, value in enumerate(df[p.path_col]):
            if value == "":
                raise DataError(f"{str(path)!r} line {df['_line'].iloc[i]}: {p.path_col} is "
                                "empty; every row needs its image path")
            full = C.inside_root(self.root, value + p.suffix, base=self.image_root)
            if full is None:
                raise DataError(
                    f"{str(path)!r} line {df['_line'].iloc[i]}: image path {value!r} escapes "
                    f"the data root {str(self.root)!r}; paths must be relative and stay inside "
                    "--data-root")
            rel.append(os.path.relpath(full, self.root))

        ids = df[p.id_col] if p.id_col else pd.Series(rel, index=df.index)
        dup = ids.duplicated()
        if dup.any():
            raise DataError(f"{C.where(path, df, dup)}: sample id {ids[dup].iloc[0]!r} occurs "
                            f"twice; ids ({p.id_col or p.path_col}) must be unique")

        labels = df[p.label_col]
        if (labels == "").any():
            raise DataError(f"{C.where(path, df, labels == '')}: {p.label_col} is empty; fill "
                            "it in or remove the row")
        classes = list(p.classes) if p.classes else _sorted_values(sorted(set(labels)))
        code = {c: i for i, c in enumerate(classes)}
        unknown = ~labels.isin(classes)
        if unknown.any():
            raise DataError(f"{C.where(path, df, unknown)}: {p.label_col} "
                            f"{labels[unknown].iloc[0]!r} is not in classes={','.join(classes)}; "
                            "add it to classes or correct the row")

        bins = {}
        for spec in p.attr_bins:
            col, _, rest = spec.partition(":")
            bins[col] = [float(x) for x in rest.split(":") if x.strip()]
        unknown_bins = [c for c in bins if c not in attrs]
        if unknown_bins:
            raise ParamError(f"attr_bins names {unknown_bins[0]!r}, which is not in attr_col "
                             f"({', '.join(attrs)})")
        missing = {m.strip().lower() for m in p.missing_values} | {""}
        attributes: dict[str, list[str]] = {}
        out = pd.DataFrame({
            "sample_id": ids.to_numpy(dtype=str),
            "path": rel,
            "label": labels.map(code).to_numpy(dtype=np.int64),
            "_line": df["_line"].to_numpy(),
        })
        for a in attrs:
            values = df[a]
            is_missing = values.str.lower().isin(missing).to_numpy()
            if a in bins:
                num = pd.to_numeric(values.where(~is_missing, None), errors="coerce").to_numpy(
                    dtype=float)
                bad = np.isnan(num) & ~is_missing
                if bad.any():
                    raise DataError(f"{C.where(path, df, bad)}: {a} {values[bad].iloc[0]!r} is "
                                    "not a number, but attr_bins bins it; correct the value or "
                                    "add it to missing_values")
                attributes[a] = C.bin_names(bins[a])
                out["attr_" + a] = C.bin_codes(num, bins[a])
            else:
                groups = _sorted_values(sorted(set(values[~is_missing])))
                if not groups:
                    raise DataError(f"{str(path)!r}: attribute column {a!r} has no values")
                gcode = {g: i for i, g in enumerate(groups)}
                out["attr_" + a] = np.where(is_missing, -1,
                                            values.map(gcode).fillna(-1).to_numpy()
                                            ).astype(np.int64)
                attributes[a] = groups
        if p.patient_col:
            pat = df[p.patient_col]
            out["patient_id"] = np.where(pat == "", out["sample_id"], pat)
        default = p.default_attribute or attrs[0]
        if default not in attributes:
            raise ParamError(f"parameter default_attribute={default!r} is not one of attr_col "
                             f"({', '.join(attrs)})")
        out = C.apply_drop_missing(out, p.drop_missing, attributes, notes, "this csv dataset")
        return base.MetadataRows(out, path, [str(c) for c in classes], attributes, default)
