"""``fairseg``: Harvard-FairSeg (Tian et al., ICLR 2024), optic disc and cup segmentation on
SLO fundus images, read as distributed.

Layout under ``--data-root``: the ``data_*.npz`` files (``data_00001.npz`` ...
``data_10000.npz``, one per patient), found recursively, e.g. in the release's ``Training/``
and ``Test/`` folders. Each file holds

* ``slo_fundus``: the image, a 2-D grayscale array (200×200 in the release; ``H×W×1`` and
  ``H×W×3`` are accepted too);
* ``disc_cup_mask``: the mask, same height and width, values 0 = background, -1 = rim (disc
  minus cup), -2 = cup (already-mapped 1 and 2 are accepted);
* the six attributes as 0-d arrays: ``age``, ``gender``, ``race``, ``ethnicity``,
  ``language``, ``maritalstatus``.

Choices (each a ``--data-param``):

* **Task**: segmentation only. The table has one class (``fundus``; splits stratify by class ×
  group, so by group) and masks with the classes background = 0, rim = 1, cup = 2 (FairSeg's
  ``{0: 0, -1: 1, -2: 2}``; "disc" is rim ∪ cup).
* **Attributes** (the release's codes; -1 = unknown becomes missing): ``race`` (the default)
  Asian, Black, White; ``gender`` Female, Male; ``ethnicity`` Non-Hispanic, Hispanic;
  ``language`` English, Spanish, Others; ``maritalstatus`` Married or Partnered, Single,
  Divorced, Widowed, Legally Separated; ``age`` <60 / >=60 years (``age_threshold``). The unit
  of ``age`` is not documented: values above 150 are read as days (divided by 365.25, as the
  official training code does), smaller ones as years; negative or NaN = missing.
* **Patients**: one image per patient, so ``patient_id`` is the sample id (the file stem).
* ``max_files``: read only the first N files by name (0 = all), for quick trials.
* There is no ``missing_images`` option: the files found *are* the table, so no image can be
  missing; a file that cannot be read is an error naming it.

Building the table reads only the attribute scalars and the array headers of each file (the
members of an ``.npz`` are read one by one): about 1.8 ms per file, 18 s for the release's
10,000. What it read is kept in the cache folder (``tables/``) with each file's size and
modification time (:class:`HeaderCache`), so later runs open only new or changed files.

The pixels are read by :meth:`FairSeg.fill_images` when the tensor cache is built: the shorter
side is resized to the target size and the centre square cropped (bilinear, antialiased, for
the image; nearest neighbour with the same crop box for the mask), grayscale replicated to
three channels. Masks that are all background (reported by users of some downloads on the
FairSeg repository's tracker) are kept and counted in one warning.

Defaults: ``unet:tu-resnet10t`` at 64 px.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.core.errors import DataError
from fairbench.core.params import param
from fairbench.data.dataset import DatasetAdapter, ImageSpec, SampleTable, register_dataset
from fairbench.data.images import usable_cpus

from . import _common as C

log = logging.getLogger("fairbench")

IMAGE_KEY = "slo_fundus"
MASK_KEY = "disc_cup_mask"
#: categorical attributes: npz key → group names in code order
GROUPS: dict[str, list[str]] = {
    "race": ["Asian", "Black", "White"],
    "gender": ["Female", "Male"],
    "ethnicity": ["Non-Hispanic", "Hispanic"],
    "language": ["English", "Spanish", "Others"],
    "maritalstatus": ["Married or Partnered", "Single", "Divorced", "Widowed",
                      "Legally Separated"],
}
SCALAR_KEYS = ("race", "gender", "ethnicity", "language", "maritalstatus", "age")
REQUIRED_KEYS = (IMAGE_KEY, MASK_KEY) + SCALAR_KEYS
MASK_CLASSES = ["background", "rim", "cup"]
#: ages above this are days, not years
AGE_DAYS_ABOVE = 150.0
DAYS_PER_YEAR = 365.25
FILE_PATTERN = "data_*.npz"
#: files per task of the pixel-reading thread pool (progress is reported per chunk)
CHUNK = 16
#: format of the header cache (bump when file_values changes)
HEADER_CACHE_VERSION = 1


@dataclass
class FairSegParams:
    age_threshold: float = param(60.0, help="age in years splitting <T / >=T", min=0.0,
                                 min_exclusive=True, max=150.0)
    max_files: int = param(0, help="read only the first N data_*.npz files by name (0 = all)",
                           min=0)


@register_dataset("fairseg")
class FairSeg(DatasetAdapter):
    """Harvard-FairSeg SLO fundus disc/cup segmentation; race (default), gender, age, ..."""

    Params = FairSegParams
    requires_data_root = True
    default_image_size = 64
    default_backbone = "unet:tu-resnet10t"
    tasks = ("segmentation",)

    def __init__(self, params: Any = None, data_root: str | Path | None = None) -> None:
        super().__init__(params, data_root)
        assert self.data_root is not None
        self.root = self.data_root.resolve()
        self.notes: list[str] = []
        #: files whose mask was all background in the last fill_images (reported for some downloads)
        self.empty_masks: list[str] = []

    # -- table ----------------------------------------------------------------------------
    def find_files(self) -> list[str]:
        """``data_*.npz`` under the root (recursively, symlinked folders followed), as paths
        relative to the root, sorted by file name (then folder)."""
        found: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith("data_") and name.endswith(".npz"):
                    rel = name if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{name}"
                    found.append((name, rel))
        if not found:
            raise DataError(
                f"no {FILE_PATTERN} files found under the data root {str(self.root)!r}; point "
                "--data-root at the Harvard-FairSeg folder (the one holding Training/ and "
                "Test/ or the data_00001.npz ... files)")
        found.sort()
        for (a, ra), (b, rb) in itertools.pairwise(found):
            if a == b:
                raise DataError(
                    f"file name {a!r} occurs twice under the data root ({ra!r} and {rb!r}); "
                    "sample ids must be unique: remove the duplicate copy")
        if self.params.max_files:
            found = found[: self.params.max_files]
        return [rel for _, rel in found]

    def build_table(self) -> SampleTable:
        notes = C.build_notes(self)
        rels = self.find_files()
        n = len(rels)
        codes = {key: np.empty(n, np.int64) for key in GROUPS}
        ages = np.empty(n, np.float64)
        cache = HeaderCache(self.root, self.cache_dir)
        for i, rel in enumerate(rels):
            values = cache.get(rel)
            for key, value in zip((*GROUPS, "age"), values):
                if key == "age":
                    ages[i] = value
                else:
                    codes[key][i] = value
        cache.save()
        days = ages > AGE_DAYS_ABOVE
        if days.any():
            notes.append(f"age read as days in {int(days.sum())} of {n} files (values above "
                         f"{AGE_DAYS_ABOVE:g}, divided by {DAYS_PER_YEAR})")
        years = np.where(days, ages / DAYS_PER_YEAR, ages)
        t = self.params.age_threshold
        age_code = np.where(np.isnan(years), -1, (years >= t).astype(np.int64))
        ids = [Path(rel).stem for rel in rels]
        df = pd.DataFrame({
            "sample_id": ids,
            "path": rels,
            "label": np.zeros(n, np.int64),
            **{f"attr_{key}": codes[key] for key in GROUPS},
            "attr_age": age_code.astype(np.int64),
            "patient_id": ids,
        })
        attributes = dict(GROUPS)
        attributes["age"] = [f"<{t:g}", f">={t:g}"]
        return SampleTable(df, classes=["fundus"], attributes=attributes, task="segmentation",
                           default_attribute="race", has_masks=True,
                           mask_classes=list(MASK_CLASSES))

    # -- pixels -----------------------------------------------------------------------------
    def fill_images(
        self,
        table: SampleTable,
        spec: ImageSpec,
        out: np.ndarray,
        masks_out: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Read ``slo_fundus`` and ``disc_cup_mask`` of every file into ``out`` (N×S×S×3) and
        ``masks_out`` (N×S×S, codes 0 background, 1 rim, 2 cup), in threads."""
        size = spec.size
        n = len(table)
        if out.shape != (n, size, size, 3):
            raise ValueError(f"output shape {out.shape} does not fit {n} images of {size}px")
        if masks_out is not None and masks_out.shape != (n, size, size):
            raise ValueError(f"mask output shape {masks_out.shape} does not fit {n} masks of "
                             f"{size}px")
        paths = [str(p) for p in self._resolved_paths(table)]
        empty: list[list[str]] = []
        starts = list(range(0, n, CHUNK))
        workers = min(usable_cpus(), max(1, len(starts)))

        def work(s: int) -> list[str]:
            e = min(n, s + CHUNK)
            return _fill_chunk(paths[s:e], size, out, masks_out, s)

        if workers == 1:
            for s in starts:
                empty.append(work(s))
                if progress is not None:
                    progress(min(n, s + CHUNK) - s)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures: dict[Future, int] = {pool.submit(work, s): s for s in starts}
                pending = set(futures)
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for fut in done:
                            empty.append(fut.result())  # re-raises a worker's DataError
                            if progress is not None:
                                s = futures[fut]
                                progress(min(n, s + CHUNK) - s)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        self.empty_masks = sorted(r for chunk in empty for r in chunk)
        if self.empty_masks:
            log.warning(
                "fairseg: %d of %d masks are all background (no disc or cup; known for some "
                "downloads), first %s; they are kept, re-download those "
                "files if this is unexpected", len(self.empty_masks), n, self.empty_masks[0])


# -- reading one file ---------------------------------------------------------------------
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError,
                pickle.UnpicklingError, KeyError, IndexError, TypeError, RuntimeError,
                AttributeError)


def file_values(path: str) -> list[float]:
    """The group codes (in ``GROUPS`` order) and the age as stored (NaN when missing) of one
    file; ``path`` is named in error messages."""
    scalars = read_header(path, path)
    return [*(attribute_code(scalars[key], key, path) for key in GROUPS),
            age_value(scalars["age"], path)]


class HeaderCache:
    """What :func:`file_values` read from each file, kept between runs in the cache folder
    (``<cache>/tables/``, one JSON file per data root; the run's ``--cache-dir``, else
    ``$FAIRBENCH_CACHE`` or ``~/.cache/fairbench``) with each file's size and
    modification time, as the tensor cache keys its entries: an unchanged file is not opened
    again, a changed or new one is. Only valid files are kept. An unreadable or unwritable
    cache is ignored (the files are read)."""

    def __init__(self, root: Path, cache_dir: Path | None = None) -> None:
        from fairbench.data.cache import default_cache_dir

        digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        self.root = root
        self.path = (cache_dir or default_cache_dir()) / "tables" / f"fairseg-{digest}.json"
        self.known: dict[str, list[Any]] = {}
        self.seen: dict[str, list[Any]] = {}
        self.read = 0  # files opened by this build
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == HEADER_CACHE_VERSION and data.get("root") == str(root):
                self.known = data["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.known = {}

    def get(self, rel: str) -> list[float]:
        path = os.path.join(str(self.root), rel)  # messages name the full path
        try:
            st = os.stat(path)
        except OSError:
            raise DataError(f"{path!r} disappeared while the table was read; check "
                            "--data-root") from None
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self.known.get(rel)
        if (isinstance(hit, list) and len(hit) == 2 and hit[0] == stamp
                and isinstance(hit[1], list) and len(hit[1]) == len(GROUPS) + 1
                and all(v is None or type(v) in (int, float) for v in hit[1])):
            values = [math.nan if v is None else v for v in hit[1]]
        else:
            values = file_values(path)
            self.read += 1
        self.seen[rel] = [stamp, [None if isinstance(v, float) and math.isnan(v) else v
                                  for v in values]]
        return values

    def save(self) -> None:
        if self.read == 0 and set(self.seen) <= set(self.known):
            return
        files = {**self.known, **self.seen}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": HEADER_CACHE_VERSION, "root": str(self.root),
                                       "files": files}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("fairseg: header cache not written (%s)", exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def _corrupt(rel: str, exc: BaseException) -> DataError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"{rel!r} is not a readable .npz file ({detail}); it is corrupt or "
                     "truncated: download it again")


def _members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """npz key → zip member (``np.savez`` writes ``<key>.npy``)."""
    return {info.filename.removesuffix(".npy"): info for info in zf.infolist()}


def _missing_keys(rel: str, members: dict[str, Any], wanted: Sequence[str]) -> None:
    missing = [k for k in wanted if k not in members]
    if not missing:
        return
    have = sorted(members)
    hint = ""
    if {"fundus", "fundus_slo", "disc_cup", "disc_cup_borders"} & set(have):
        hint = (" (these are the keys of the internal or FairMedFM re-export, not of the "
                "official release)")
    raise DataError(
        f"{rel!r} lacks the key{'s' if len(missing) > 1 else ''} "
        f"{', '.join(repr(k) for k in missing)}; it has {have}{hint}. A Harvard-FairSeg file "
        f"holds {', '.join(REQUIRED_KEYS)}: use the files of the official release")


#: the only names a pickled member may refer to: numpy's array, dtype and scalar constructors
#: (what ``np.save`` writes for an object array of numbers and strings), under numpy 1 and 2
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    **{(mod, "_reconstruct"): np.zeros(0).__reduce__()[0]
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "scalar"): np.float64(0).__reduce__()[0]
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
#: what an object member's values may be
_PLAIN = (int, float, str, bytes, bool, type(None), np.number, np.bool_, np.str_, np.bytes_)


class _Refused(Exception):
    """A member that is not a plain array of numbers or strings."""


class _PlainUnpickler(pickle.Unpickler):
    """Decodes the pickle of a numpy object array without resolving any name other than
    numpy's array constructors: a pickle that refers to anything else (``os.system``, a
    class of its own...) is refused before it can run."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"its pickle refers to {module}.{name}") from None


class _NpzMembers:
    """Members of one open ``.npz`` (a zip file), read through :mod:`zipfile` streams (which
    check each member's CRC when read to its end) and numpy's ``.npy`` format readers; one
    zip directory read per file instead of ``np.load``'s per-key overhead.

    No data file runs code: plain members are read with ``allow_pickle=False``; an object
    member (numpy stores it as a pickle; the release may hold its scalars as 0-d object
    arrays) is decoded by :class:`_PlainUnpickler` and kept only if it holds numbers and
    strings. Anything else is one :class:`DataError` naming the member and the file."""

    def __init__(self, fh: Any, rel: str = "") -> None:
        self.zf = zipfile.ZipFile(fh)
        self.members = _members(self.zf)
        self.rel = rel

    def _header(self, stream: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
        fmt = np.lib.format
        version = fmt.read_magic(stream)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(stream)
        return tuple(shape), fortran, np.dtype(dtype)

    def array(self, key: str) -> np.ndarray:
        """Member ``key`` as an array of numbers or strings (see the class docstring)."""
        with self.zf.open(self.members[key]) as stream:
            _, _, dtype = self._header(stream)
            if not dtype.hasobject:
                stream.seek(0)
                return np.lib.format.read_array(stream, allow_pickle=False)
            try:
                value = _PlainUnpickler(stream).load()
                if not isinstance(value, np.ndarray):
                    raise _Refused(f"its pickle builds a {type(value).__name__}, not an array")
                bad = next((v for v in value.reshape(-1) if not isinstance(v, _PLAIN)), None)
                if bad is not None:
                    raise _Refused(f"it holds a {type(bad).__name__}, not a number or string")
            except _Refused as exc:
                raise DataError(
                    f"{self.rel!r}: member {key!r} is refused: {exc}; fairbench reads only "
                    "plain arrays, numbers and strings from data files (never pickled "
                    "objects). Use the files of the official release") from None
            return value

    def shape(self, key: str) -> tuple[int, ...]:
        """The array shape of member ``key``, from its ``.npy`` header alone."""
        with self.zf.open(self.members[key]) as stream:
            return self._header(stream)[0]


def read_header(path: str | Path, rel: str) -> dict[str, Any]:
    """The six attribute scalars of one file (Python values), after checking that the image
    and mask are there and have matching shapes (from the array headers only)."""
    try:
        with open(path, "rb") as fh:
            npz = _NpzMembers(fh, rel)
            _missing_keys(rel, npz.members, REQUIRED_KEYS)
            out = {key: _scalar(npz.array(key), key, rel) for key in SCALAR_KEYS}
            image_shape, mask_shape = npz.shape(IMAGE_KEY), npz.shape(MASK_KEY)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{rel!r} disappeared while the table was read; check --data-root"
                        ) from None
    except _READ_ERRORS as exc:
        raise _corrupt(rel, exc) from None
    check_shapes(rel, image_shape, mask_shape)
    return out


def _scalar(arr: np.ndarray, key: str, rel: str) -> Any:
    if arr.size != 1:
        raise DataError(f"{rel!r}: {key} should be one value (a 0-d array) but has shape "
                        f"{arr.shape}; use the files of the official release")
    value = arr.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


def _number(value: Any, key: str, rel: str, valid: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value.strip().lower() in C.MISSING_STRINGS:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{rel!r}: {key} = {value!r} is not a number; valid codes are "
                        f"{valid}") from None


_VALID = {key: ", ".join(f"{k} ({g})" for k, g in enumerate(names)) + ", -1 (unknown)"
          for key, names in GROUPS.items()}


def attribute_code(value: Any, key: str, rel: str) -> int:
    """The group code of ``value`` for attribute ``key`` (-1 or NaN → -1, missing)."""
    valid = _VALID[key]
    x = _number(value, key, rel, valid)
    if math.isnan(x):
        return -1
    if not x.is_integer() or not -1 <= x < len(GROUPS[key]):
        raise DataError(f"{rel!r}: {key} = {value!r} is out of range; valid codes are {valid}. "
                        "Use the files of the official release")
    return int(x)


def age_value(value: Any, rel: str) -> float:
    """The age as stored (years or days; NaN when missing or negative)."""
    x = _number(value, "age", rel, "an age in years or days (-1 = unknown)")
    return math.nan if (math.isnan(x) or x < 0) else x


def check_shapes(rel: str, image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> None:
    ok_image = len(image_shape) == 2 or (len(image_shape) == 3 and image_shape[2] in (1, 3))
    if not ok_image or min(image_shape[:2]) < 1:
        raise DataError(f"{rel!r}: {IMAGE_KEY} has shape {image_shape}; expected a grayscale "
                        "image (H, W), (H, W, 1) or RGB (H, W, 3)")
    m = mask_shape[:2] if (len(mask_shape) == 3 and mask_shape[2] == 1) else mask_shape
    if tuple(m) != tuple(image_shape[:2]):
        raise DataError(f"{rel!r}: {MASK_KEY} has shape {mask_shape} but {IMAGE_KEY} has "
                        f"shape {image_shape}; the mask must cover the image pixel for pixel")


def image_to_uint8(img: np.ndarray, rel: str) -> np.ndarray:
    """uint8 as is; other integers clipped to 0..255 (scaled down when the maximum is above
    255, e.g. 16-bit); floats in [0, 1] scaled by 255, others clipped."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if img.dtype.kind in "iu":
        hi = int(img.max()) if img.size else 0
        if hi > 255:
            return (img.astype(np.float64) * (255.0 / hi)).clip(0, 255).round().astype(np.uint8)
        return img.clip(0, 255).astype(np.uint8)
    if img.dtype.kind == "f":
        x = np.nan_to_num(img.astype(np.float32))
        if x.size and x.max() <= 1.0:
            x = x * 255.0
        return x.clip(0, 255).round().astype(np.uint8)
    raise DataError(f"{rel!r}: {IMAGE_KEY} has dtype {img.dtype}; expected numbers (uint8)")


def mask_to_codes(mask: np.ndarray, rel: str) -> np.ndarray:
    """{0, -1, -2} (or {0, 1, 2}) → uint8 {0, 1, 2}; anything else raises naming the file."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.dtype == bool:
        raise DataError(f"{rel!r}: {MASK_KEY} is boolean; expected the codes 0 (background), "
                        "-1 (rim) and -2 (cup)")
    if mask.dtype.kind == "f":
        bad = ~np.isin(mask, (0.0, -1.0, -2.0, 1.0, 2.0))
    elif mask.dtype.kind in "iu":
        bad = (mask < -2) | (mask > 2) if mask.dtype.kind == "i" else mask > 2
    else:
        raise DataError(f"{rel!r}: {MASK_KEY} has dtype {mask.dtype}; expected integers")
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(f"{v:g}" for v in values[:5].tolist())
        raise DataError(f"{rel!r}: {MASK_KEY} has values outside {{0, -1, -2}} (0 background, "
                        f"-1 rim, -2 cup; 1 and 2 also accepted): {shown}"
                        f"{' ...' if len(values) > 5 else ''}; use the files of the "
                        "official release")
    if mask.dtype.kind == "f":
        return np.abs(mask).astype(np.uint8)
    return np.abs(mask.astype(np.int16)).astype(np.uint8)


def read_pixels(path: str, rel: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image (H, W) or (H, W, 3), uint8 mask codes (H, W)) of one file."""
    try:
        with open(path, "rb") as fh:
            npz = _NpzMembers(fh, rel)
            _missing_keys(rel, npz.members, (IMAGE_KEY, MASK_KEY))
            img, mask = npz.array(IMAGE_KEY), npz.array(MASK_KEY)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{rel!r} is missing; it was there when the table was read: check "
                        "--data-root") from None
    except _READ_ERRORS as exc:
        raise _corrupt(rel, exc) from None
    check_shapes(rel, img.shape, mask.shape)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return image_to_uint8(img, rel), mask_to_codes(mask, rel)


def square_resize(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shorter side to ``size``, centre square cropped (the crop box is resized directly, as
    :func:`fairbench.data.images.load_square_rgb` does): bilinear for the image, nearest for the
    mask, with the same box."""
    from PIL import Image

    h, w = img.shape[:2]
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    im = Image.fromarray(np.ascontiguousarray(img))
    im = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    mk = Image.fromarray(np.ascontiguousarray(mask))
    mk = mk.resize((size, size), Image.Resampling.NEAREST, box=box)
    return np.asarray(im, dtype=np.uint8), np.asarray(mk, dtype=np.uint8)


def _fill_chunk(paths: Sequence[str], size: int, out: np.ndarray,
                masks_out: np.ndarray | None, start: int) -> list[str]:
    """Rows ``start..`` of ``out``/``masks_out``; returns the files whose mask is empty."""
    empty = []
    for k, path in enumerate(paths):
        img, mask = read_pixels(path, path)
        if not mask.any():
            empty.append(path)
        img, mask = square_resize(img, mask, size)
        out[start + k] = img[..., None] if img.ndim == 2 else img
        if masks_out is not None:
            masks_out[start + k] = mask
    return empty
