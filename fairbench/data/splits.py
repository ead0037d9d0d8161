"""Train/val/test splits: stratified by label × group, grouped by patient, saved and hashed.

A split file is a CSV with the columns ``sample_id`` and ``part`` (``train``, ``val`` or
``test``). Its identity is the sha256 of its canonical form (rows sorted by part, then by sample
id, ``\\n`` line ends), so two files with the same assignment in a different row order have the
same hash. Every run records the hash; a leaderboard never mixes runs of different hashes.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError
from fairbench.data.dataset import SampleTable

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Sample ids per part; ``sha256`` identifies the assignment."""

    parts: dict[str, np.ndarray]
    sha256: str

    def positions(self, table: SampleTable, part: str) -> np.ndarray:
        """Row positions in ``table`` of the samples in ``part`` (in split-file order)."""
        index = pd.Index(table.sample_ids)
        pos = index.get_indexer(self.parts[part])
        if (pos < 0).any():
            missing = self.parts[part][pos < 0][0]
            raise DataError(
                f"split names sample {missing!r}, which the dataset does not have; "
                "was the split made for another dataset or filter?"
            )
        return pos

    def sizes(self) -> dict[str, int]:
        return {p: len(ids) for p, ids in self.parts.items()}


def canonical_csv(parts: dict[str, np.ndarray]) -> bytes:
    buf = io.StringIO()
    buf.write("sample_id,part\n")
    for part in PARTS:
        for sid in sorted(str(s) for s in parts.get(part, [])):
            buf.write(f"{sid},{part}\n")
    return buf.getvalue().encode()


def from_parts(parts: dict[str, np.ndarray]) -> Split:
    parts = {p: np.asarray(sorted(str(s) for s in parts[p]), dtype=object) for p in PARTS}
    return Split(parts=parts, sha256=hashlib.sha256(canonical_csv(parts)).hexdigest())


def _largest_remainder(n: int, fractions: np.ndarray) -> np.ndarray:
    raw = n * fractions
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def make_split(
    table: SampleTable,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    stratify_attribute: str | None = None,
) -> Split:
    """A seeded split stratified by label × group of ``stratify_attribute``.

    Rows sharing a ``patient_id`` go to one part together: patients are assigned whole, each
    to the part whose running share of its stratum it falls in, which keeps the strata close
    to ``fractions``. Without patient ids each stratum is cut by largest-remainder rounding.

    Rows whose ``fixed_part`` column (when the table has one) names a part go to that part
    whatever the seed (held-out images an adapter generated or ships apart, e.g. synthderm's
    ``n_test``); the other rows are split exactly as they would be without them.
    """
    fixed = table.df["fixed_part"].astype(str).to_numpy() if "fixed_part" in table.df else None
    if fixed is not None and (fixed != "").any():
        unknown = sorted(set(fixed) - {"", *PARTS})
        if unknown:
            raise DataError(f"fixed_part {unknown[0]!r} is not a part; use train, val or test")
        free = fixed == ""
        rest = SampleTable(table.df[free].reset_index(drop=True), classes=table.classes,
                           attributes=table.attributes, task=table.task,
                           default_attribute=table.default_attribute,
                           has_masks=table.has_masks, mask_classes=table.mask_classes)
        base = make_split(rest, seed=seed, fractions=fractions,
                          stratify_attribute=stratify_attribute)
        ids = table.sample_ids.astype(str)
        return from_parts({part: np.concatenate([np.asarray(base.parts[part], dtype=object),
                                                 ids[fixed == part].astype(object)])
                           for part in PARTS})
    frac = np.asarray(fractions, dtype=float)
    if frac.shape != (3,) or (frac < 0).any() or not np.isclose(frac.sum(), 1.0):
        raise DataError(f"split fractions {fractions} must be three non-negative numbers summing to 1")
    rng = np.random.default_rng(seed)
    attribute = stratify_attribute or table.default_attribute
    labels = table.labels
    groups = table.attr(attribute) if attribute else np.zeros(len(table), dtype=np.int64)
    strata = labels * (max(groups.max(initial=0), 0) + 2) + (groups + 1)
    sample_ids = table.sample_ids.astype(str)
    patients = table.patient_ids
    assigned: dict[str, list[str]] = {p: [] for p in PARTS}

    if patients is None:
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            members = members[rng.permutation(len(members))]
            counts = _largest_remainder(len(members), frac)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            for k, part in enumerate(PARTS):
                assigned[part].extend(sample_ids[members[bounds[k]:bounds[k + 1]]])
    else:
        frame = pd.DataFrame({"patient": patients, "stratum": strata, "sid": sample_ids})
        # a patient's stratum is its most frequent one (ties: the smallest code)
        per_patient = frame.groupby("patient", sort=True)
        stratum_of = per_patient["stratum"].agg(lambda s: s.value_counts().sort_index().idxmax())
        size_of = per_patient.size()
        members_of = per_patient["sid"].agg(list)
        cum_bounds = np.cumsum(frac)
        for s in np.unique(stratum_of.to_numpy()):
            pats = stratum_of.index[stratum_of.to_numpy() == s].to_numpy()
            pats = pats[rng.permutation(len(pats))]
            sizes = size_of.loc[pats].to_numpy()
            total = sizes.sum()
            before = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            mid = (before + sizes / 2) / total
            part_idx = np.searchsorted(cum_bounds, mid, side="right").clip(0, 2)
            for pat, k in zip(pats, part_idx):
                assigned[PARTS[k]].extend(members_of.loc[pat])
    return from_parts({p: np.asarray(v, dtype=object) for p, v in assigned.items()})


def save_split(split: Split, path: Path) -> Path:
    """Write the canonical CSV atomically; the file's sha256 equals ``split.sha256``.

    A file already holding exactly these bytes is left as it is (no rewrite per run: its
    modification time stays that of the first run, and a read-only copy is fine)."""
    data = canonical_csv(split.parts)
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    except OSError:
        pass  # unreadable: written again below
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def split_file_path(path: str | Path) -> Path:
    """``path`` if it names a file; a folder or a missing file is one line."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"split file {str(path)!r} is a folder; give the CSV file")
    if not path.is_file():
        raise DataError(f"split file {str(path)!r} does not exist")
    return path


def load_split(path: str | Path) -> Split:
    """Read a split CSV (``sample_id``, ``part``; ``image``/``image_id``/``md5hash`` also
    accepted as the id column). Parts may be named train/val/test (or valid/validation)."""
    path = split_file_path(path)
    try:
        df = pd.read_csv(path, dtype=str)
    except Exception as exc:
        raise DataError(f"split file {str(path)!r} is not a readable CSV ({exc})") from None
    id_col = next((c for c in ("sample_id", "image", "image_id", "md5hash") if c in df.columns), None)
    if id_col is None or "part" not in df.columns:
        raise DataError(
            f"split file {str(path)!r} needs the columns sample_id and part; it has "
            f"{list(df.columns)[:8]} (for one file per part, as the published splits are, "
            "combine them with `fairbench data import-split`)"
        )
    aliases = {"valid": "val", "validation": "val", "training": "train", "testing": "test"}
    part = df["part"].str.strip().str.lower().replace(aliases)
    unknown = sorted(set(part) - set(PARTS))
    if unknown:
        raise DataError(f"split file {str(path)!r} has unknown part(s) {unknown}; use train, val, test")
    ids = df[id_col].str.strip()
    if ids.duplicated().any():
        raise DataError(
            f"split file {str(path)!r} lists sample {ids[ids.duplicated()].iloc[0]!r} twice"
        )
    return from_parts({p: ids[part == p].to_numpy() for p in PARTS})


ID_COLUMNS = ("sample_id", "image", "image_id", "md5hash", "hasher", "id")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_id_file(path: str | Path, id_column: str | None = None) -> np.ndarray:
    """The sample ids of one part file: a CSV with an id column (``id_column``, else the first
    of sample_id, image, image_id, md5hash, hasher, id) or a ``.txt`` with one id per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"split part file {str(path)!r} does not exist")
    if path.suffix.lower() == ".txt" and id_column is None:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return np.asarray(ids, dtype=object)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"split part file {str(path)!r} is not a readable CSV ({exc})") from None
    cols = [id_column] if id_column else list(ID_COLUMNS)
    col = next((c for c in cols if c in df.columns), None)
    if col is None:
        raise DataError(
            f"split part file {str(path)!r} has no id column {' or '.join(cols)}; its columns "
            f"are {list(df.columns)[:12]} (name the id column with --id-column)"
        )
    return df[col].str.strip().to_numpy(dtype=object)


def split_from_part_files(
    *,
    train: str | Path | None = None,
    val: str | Path,
    test: str | Path,
    id_column: str | None = None,
    table: SampleTable | None = None,
) -> Split:
    """A :class:`Split` from one file of ids per part, the format of published splits (the
    Fair Multi-Exit repository's ``fitzpatrick17k_{train,vali,test}.csv``, id column
    ``md5hash``; ``isic2019_{train,val,test}_pretraining.csv``, id column ``image``).

    Without ``train`` (the ME repository lacks its Fitzpatrick train file) the train part is
    every sample of ``table`` that is in neither val nor test. With ``table`` given, ids are
    matched to its sample ids (an image suffix such as ``.jpg`` is dropped when that makes them
    match) and an id the table lacks raises :class:`DataError`. Write the result with
    :func:`save_split` and pass it as ``--split-file``.
    """
    files = {"train": train, "val": val, "test": test}
    parts: dict[str, np.ndarray] = {}
    known = None if table is None else set(table.sample_ids.astype(str))
    for part, f in files.items():
        if f is None:
            continue
        ids = read_id_file(f, id_column)
        if known is not None:
            fixed = []
            for sid in ids:
                if sid not in known:
                    stem, ext = os.path.splitext(sid)
                    if ext.lower() in IMAGE_SUFFIXES and stem in known:
                        sid = stem
                fixed.append(sid)
            ids = np.asarray(fixed, dtype=object)
            unknown = [s for s in ids if s not in known]
            if unknown:
                raise DataError(
                    f"split part file {str(f)!r} names {len(unknown)} sample(s) the dataset does "
                    f"not have (first: {unknown[0]!r}); was it made with other filters (e.g. "
                    "unknown_skin_type=as_dark or drop_missing=none)?"
                )
        dup = pd.Series(ids).duplicated()
        if dup.any():
            raise DataError(f"split part file {str(f)!r} lists {ids[dup.to_numpy()][0]!r} twice")
        parts[part] = ids
    both = set(parts["val"]) & set(parts["test"]) | (
        set(parts.get("train", [])) & (set(parts["val"]) | set(parts["test"])))
    if both:
        raise DataError(f"sample {sorted(both)[0]!r} is in two part files")
    if "train" not in parts:
        if table is None:
            raise DataError("without a train file the dataset is needed to take the rest as train")
        taken = set(parts["val"]) | set(parts["test"])
        parts["train"] = np.asarray([s for s in table.sample_ids.astype(str) if s not in taken],
                                    dtype=object)
    return from_parts(parts)


def check_split(split: Split, table: SampleTable, attribute: str) -> None:
    """Every id known, no id in two parts, val and test holding every group, and (for a
    classification table) every part holding at least two classes: with one class every
    metric is trivially perfect."""
    seen: set[str] = set()
    for part in PARTS:
        ids = set(split.parts[part])
        both = seen & ids
        if both:
            raise DataError(f"sample {sorted(both)[0]!r} is in two parts of the split")
        seen |= ids
        split.positions(table, part)  # raises on unknown ids
    if len(split.parts["train"]) == 0:
        raise DataError("the split's train part is empty")
    if table.task == "classification":
        labels = table.labels
        for part in PARTS:
            classes = np.unique(labels[split.positions(table, part)])
            if len(classes) < 2:
                only = table.classes[int(classes[0])] if len(classes) else "none"
                raise DataError(
                    f"the split's {part} part holds one class only ({only}); a classifier "
                    "needs samples of at least two classes in every part: use more data or "
                    "a dataset with two or more classes")
    names = table.group_names(attribute)
    codes = table.attr(attribute)
    for part in ("val", "test"):
        present = set(codes[split.positions(table, part)].tolist())
        missing = [names[g] for g in range(len(names)) if g not in present]
        if missing:
            raise DataError(
                f"the split's {part} part has no sample of group(s) {', '.join(missing)} of "
                f"attribute {attribute!r}; use more data, other fractions or another split file"
            )
