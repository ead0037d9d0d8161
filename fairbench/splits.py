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

from .data import SampleTable
from .errors import DataError

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
    """
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
    """Write the canonical CSV atomically; the file's sha256 equals ``split.sha256``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = canonical_csv(split.parts)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def load_split(path: str | Path) -> Split:
    """Read a split CSV (``sample_id``, ``part``; ``image``/``image_id``/``md5hash`` also
    accepted as the id column). Parts may be named train/val/test (or valid/validation)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"split file {str(path)!r} does not exist")
    try:
        df = pd.read_csv(path, dtype=str)
    except Exception as exc:
        raise DataError(f"split file {str(path)!r} is not a readable CSV ({exc})") from None
    id_col = next((c for c in ("sample_id", "image", "image_id", "md5hash") if c in df.columns), None)
    if id_col is None or "part" not in df.columns:
        raise DataError(
            f"split file {str(path)!r} needs the columns sample_id and part; it has {list(df.columns)}"
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


def check_split(split: Split, table: SampleTable, attribute: str) -> None:
    """Every id known, no id in two parts, and val and test holding every group."""
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
