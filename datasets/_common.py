"""Helpers shared by the file-based adapters: reading metadata tables, finding images inside the
data root, encoding attributes, and error messages that name the file, the line and the fix.

Line numbers in messages are those of the metadata file (the header is line 1), kept in a
``_line`` column from the moment the file is read.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError, ParamError
from fairbench.data.dataset import DatasetAdapter

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MISSING_STRINGS = frozenset({"", "unknown", "nan", "na", "n/a", "none", "null", "?"})


# -- files ----------------------------------------------------------------------------------
def inside_root(root: Path, rel: str, base: Path | None = None) -> Path | None:
    """``(base or root) / rel`` normalised, or None when it leaves ``root``: an absolute path
    elsewhere, ``..``, or a file symlinked to a target outside both the root and ``base``
    (symlinks are resolved before the check; the image folder a user names, ``base``, may
    itself be a link to another disk)."""
    p = Path(os.path.normpath((base or root) / rel))
    if not (p == root or root in p.parents):
        return None
    real = p.resolve()
    allowed = {root.resolve(), *(() if base is None else (base.resolve(),))}
    return p if any(real == a or a in real.parents for a in allowed) else None


def check_subdir(root: Path, value: str, param_name: str) -> Path:
    """A folder parameter (``image_dir=...``) inside the data root (a lexical check: the
    folder a user names may be a link to another disk; the files in it are checked with their
    links resolved, :func:`inside_root`)."""
    p = Path(os.path.normpath(root / (value or ".")))
    if not (p == root or root in p.parents):
        raise ParamError(
            f"parameter {param_name}={value!r} leaves the data root {str(root)!r}; give a folder "
            "inside --data-root (or point --data-root higher up)"
        )
    return p


def metadata_path(root: Path, value: str, *, what: str, candidates: Sequence[str] = (),
                  fix: str = "") -> Path:
    """The metadata file ``value`` (relative to the data root, or absolute); with
    ``value == "auto"`` the first of ``candidates`` that exists."""
    names = list(candidates) if value == "auto" else [value]
    for name in names:
        p = Path(name).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_file():
            return p
    shown = " or ".join(repr(n) for n in names)
    raise DataError(
        f"{what} file {shown} not found in the data root {str(root)!r}; "
        + (fix or "check --data-root")
    )


def read_metadata(path: Path, *, delimiter: str = "auto") -> pd.DataFrame:
    """Read a CSV/TSV as strings (empty cells stay ``""``), header and cells stripped, with a
    leading unnamed pandas index column dropped and the file line kept in ``_line``."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            head = fh.readline()
    except UnicodeDecodeError:
        raise DataError(f"metadata file {str(path)!r} is not UTF-8 text; save it as UTF-8 CSV"
                        ) from None
    except OSError as exc:
        raise DataError(f"cannot read metadata file {str(path)!r} ({exc.strerror})") from None
    if not head.strip():
        raise DataError(f"metadata file {str(path)!r} is empty; it needs a header row")
    if delimiter == "auto":
        try:
            delimiter = csv.Sniffer().sniff(head, delimiters=",\t;").delimiter
        except csv.Error:
            delimiter = ","
    elif delimiter in ("tab", "\\t"):
        delimiter = "\t"
    try:
        df = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False,
                         encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[-1]
        raise DataError(f"metadata file {str(path)!r} is not a readable table ({msg}); "
                        "check that it is the dataset's original CSV") from None
    df.columns = [str(c).strip() for c in df.columns]
    unnamed = [c for c in df.columns if c == "" or c.startswith("Unnamed:")]
    df = df.drop(columns=unnamed)
    df = df.apply(lambda s: s.str.strip())
    df["_line"] = np.arange(len(df)) + 2
    return df


def file_digest(*paths: Path) -> str:
    """sha256 (16 hex) of the bytes of ``paths``: part of the adapter's config, so that an
    edited metadata file gives a new table identity."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def pick_column(df: pd.DataFrame, names: Sequence[str], path: Path, *, what: str,
                fix: str = "") -> str:
    """The first of ``names`` that ``df`` has; otherwise a :class:`DataError` listing the
    columns that are there."""
    for name in names:
        if name in df.columns:
            return name
    cols = [c for c in df.columns if c != "_line"]
    want = " or ".join(repr(n) for n in names)
    raise DataError(
        f"{str(path)!r} has no {what} column {want}; its columns are {cols}"
        + (f". {fix}" if fix else "")
    )


def where(path: Path, df: pd.DataFrame, mask: np.ndarray | pd.Series) -> str:
    """``'file' line N`` of the first row where ``mask`` holds."""
    pos = int(np.flatnonzero(np.asarray(mask))[0])
    return f"{str(path)!r} line {int(df['_line'].iloc[pos])}"


# -- images ---------------------------------------------------------------------------------
def _listing(folder: Path) -> dict[str, str]:
    """Image files of ``folder`` by key: the name without an image extension (lower-case
    extension match) and the full name. ``.jpg`` wins over other extensions."""
    out: dict[str, str] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        name = e.name
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTS:
            if stem not in out or ext.lower() == ".jpg":
                out[stem] = name
        out.setdefault(name, name)
    return out


def find_images(root: Path, ids: Sequence[str], folders: Sequence[str]) -> list[str | None]:
    """For each id, ``<folder>/<id>.<ext>`` relative to ``root`` in the first of ``folders``
    (relative to ``root``; ``"."`` is the root itself) that has it, or None."""
    found: list[str | None] = [None] * len(ids)
    todo = list(range(len(ids)))
    for folder in folders:
        if not todo:
            break
        d = inside_root(root, folder)
        if d is None or not d.is_dir():
            continue
        files = _listing(d)
        rest = []
        prefix = "" if folder in ("", ".") else folder.rstrip("/") + "/"
        for i in todo:
            name = files.get(ids[i])
            if name is None:
                rest.append(i)
            else:
                found[i] = prefix + name
        todo = rest
    return found


def apply_image_paths(df: pd.DataFrame, rel: Sequence[str | None], *, missing: str,
                      meta: Path, root: Path, looked_in: str, name_rule: str,
                      notes: list[str]) -> pd.DataFrame:
    """Put ``rel`` into ``df['path']``; rows without an image raise (``missing="error"``) or
    are dropped with a note (``"drop"``)."""
    has = np.array([r is not None for r in rel], dtype=bool)
    first = df.loc[~has].iloc[0] if not has.all() else None
    df = df.assign(path=[r or "" for r in rel])
    if first is None:
        return df
    n_missing = int((~has).sum())
    shown = name_rule.format(id=first["sample_id"], path=first.get("path", ""))
    if not has.any():
        raise DataError(
            f"none of the {len(df)} images of {str(meta)!r} was found (the first should be "
            f"{shown!r}) in {looked_in} under {str(root)!r}; point --data-root at the dataset "
            "folder or set --data-param image_dir=FOLDER"
        )
    if missing == "error":
        raise DataError(
            f"{n_missing} of {len(df)} images are missing; the first is {shown!r} for "
            f"{str(meta)!r} line {int(first['_line'])}, looked for in {looked_in}. Put the "
            "images there, set --data-param image_dir=FOLDER, or pass --data-param "
            "missing_images=drop to leave those rows out"
        )
    notes.append(f"dropped {n_missing} rows whose image file is missing "
                 f"(missing_images=drop; first: {first['sample_id']})")
    return df.loc[has]


# -- encodings ------------------------------------------------------------------------------
def encode_sex(values: pd.Series, df: pd.DataFrame, path: Path, column: str) -> np.ndarray:
    """female → 0, male → 1 (the FairQuantize / ME encoding); empty or ``unknown`` → -1.
    Anything else raises naming the line."""
    v = values.str.lower()
    codes = np.full(len(v), -2, dtype=np.int64)
    codes[v.isin(["female", "f"]).to_numpy()] = 0
    codes[v.isin(["male", "m"]).to_numpy()] = 1
    codes[v.isin(list(MISSING_STRINGS)).to_numpy()] = -1
    bad = codes == -2
    if bad.any():
        raise DataError(
            f"{where(path, df, bad)}: {column} {values.iloc[int(np.flatnonzero(bad)[0])]!r} is "
            "not male, female or empty (missing); correct the value in the file"
        )
    return codes


def parse_numbers(values: pd.Series, df: pd.DataFrame, path: Path, column: str) -> np.ndarray:
    """Floats (``80`` and ``80.0`` alike); empty/``unknown`` → NaN; anything else raises."""
    missing = values.str.lower().isin(list(MISSING_STRINGS)).to_numpy()
    num = pd.to_numeric(values.where(~missing, None), errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(num) & ~missing
    if bad.any():
        raise DataError(
            f"{where(path, df, bad)}: {column} {values.iloc[int(np.flatnonzero(bad)[0])]!r} is "
            "not a number (or empty for missing); correct the value in the file"
        )
    return num


def check_edges(edges: Sequence[float], name: str) -> None:
    if len(edges) == 0:
        raise ParamError(f"parameter {name} needs at least one edge, e.g. {name}=60")
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ParamError(f"parameter {name}={','.join(f'{e:g}' for e in edges)} must be "
                         "strictly increasing")


def bin_names(edges: Sequence[float]) -> list[str]:
    """``(60,)`` → ``['<60', '60+']``; ``(20, 40)`` → ``['<20', '20-39', '40+']`` (integer
    edges; otherwise ``'20-<40'``)."""
    ints = all(float(e).is_integer() for e in edges)
    fmt = [f"{int(e)}" if ints else f"{e:g}" for e in edges]
    names = [f"<{fmt[0]}"]
    for k in range(1, len(edges)):
        hi = f"{int(edges[k]) - 1}" if ints else f"<{fmt[k]}"
        names.append(f"{fmt[k - 1]}-{hi}")
    names.append(f"{fmt[-1]}+")
    return names


def bin_codes(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each value (``value >= edge`` goes up); NaN → -1."""
    codes = np.searchsorted(np.asarray(edges, dtype=float), values, side="right")
    return np.where(np.isnan(values), -1, codes).astype(np.int64)


def apply_drop_missing(df: pd.DataFrame, drop: Iterable[str], attributes: dict[str, list[str]],
                       notes: list[str], owner: str) -> pd.DataFrame:
    """Drop rows whose code is -1 for each attribute named in ``drop``."""
    for name in normalise_names(drop):
        if name not in attributes:
            raise ParamError(
                f"parameter drop_missing names {name!r}, which {owner} does not have; its "
                f"attributes are {', '.join(attributes)} (or none)"
            )
        miss = df["attr_" + name].to_numpy() < 0
        if miss.any():
            notes.append(f"dropped {int(miss.sum())} rows with missing {name} "
                         f"(drop_missing={name})")
            df = df.loc[~miss]
    return df


def normalise_names(items: Iterable[str]) -> list[str]:
    return [s for s in (str(x).strip() for x in items) if s and s.lower() != "none"]


def image_dir_candidates(value: str, defaults: Sequence[str]) -> list[str]:
    return list(defaults) if value == "auto" else [value or "."]


def build_notes(adapter: DatasetAdapter) -> list[str]:
    notes = getattr(adapter, "notes", None)
    if notes is None:
        notes = []
        adapter.notes = notes  # type: ignore[attr-defined]
    notes.clear()
    return notes
