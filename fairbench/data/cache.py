"""The tensor cache: images decoded and resized once into a memory-mapped uint8 array.

Layout: ``<cache_dir>/images/<dataset>-<size>px-<key>/`` holding ``images.npy`` (N×H×W×3,
uint8), optionally ``masks.npy`` (N×H×W, uint8) and ``meta.json`` (sample ids in row order,
the key's inputs). The key hashes the dataset config, the image size and the source files'
fingerprint, so changing an option or an image builds a new entry. An entry is built in a
temporary directory and renamed into place when complete: an interrupted build never leaves
a directory that reads as valid, and the next build starts again cleanly (removing the
temporary directory of a killed build on the same host).

An entry is checked whenever it is opened (:func:`entry_problem`): ``meta.json`` parses and
names the table's sample ids, the arrays' headers parse, their shapes fit the table and the
image size, and their files hold all their bytes. A damaged entry (a truncated array, a garbled
``meta.json``, a folder without ``meta.json``) is rebuilt from the source images with one
warning line. The pixels themselves carry no checksum (hashing gigabytes at every run would
cost more than decoding them): a same-length overwrite of pixel bytes goes unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairbench.core.errors import DataError
from fairbench.core.files import discard_dir, remove_stale_temporaries, temporary_path
from fairbench.core.progress import progress_bar
from fairbench.data.dataset import DatasetAdapter, ImageSpec, SampleTable

CACHE_FORMAT = 1

log = logging.getLogger("fairbench")


def default_cache_dir() -> Path:
    env = os.environ.get("FAIRBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fairbench"


@dataclass
class CachedImages:
    """Arrays of one cache entry, in the row order of the table that built it."""

    images: np.ndarray  # (N, H, W, 3) uint8, memory-mapped
    masks: np.ndarray | None
    sample_ids: np.ndarray
    path: Path


def cache_key(adapter: DatasetAdapter, table: SampleTable, size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(adapter.config(), sort_keys=True, default=str).encode())
    h.update(f"\0size={size}\0format={CACHE_FORMAT}\0".encode())
    h.update(adapter.source_fingerprint(table).encode())
    h.update(hashlib.sha256("\n".join(table.sample_ids.astype(str)).encode()).digest())
    return h.hexdigest()[:16]


def load_or_build(
    adapter: DatasetAdapter,
    table: SampleTable,
    size: int,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
) -> CachedImages:
    """Return the cached arrays for ``table`` at ``size`` px, building them if needed."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(adapter, table, size)
    entry = cache_dir / "images" / f"{adapter.name}-{size}px-{key}"
    if entry.exists():
        problem = entry_problem(entry, table, size)
        if problem is not None:
            log.warning("the tensor cache entry %s is damaged (%s); building it again from "
                        "the source images", entry, problem)
            discard_dir(entry)
    if not entry.exists():
        _build(adapter, table, size, entry, progress=progress)
        problem = entry_problem(entry, table, size)
        if problem is not None:
            raise DataError(f"the tensor cache entry {str(entry)!r} is damaged right after it "
                            f"was built ({problem}); check the disk, or set --cache-dir")
    return _open(entry)


def _array_problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why ``path`` is not a complete uint8 ``.npy`` array of ``shape`` (``None``: it is)."""
    fmt = np.lib.format
    try:
        with path.open("rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            got, _, dtype = read(fh)
            offset = fh.tell()
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, EOFError) as exc:
        return f"{path.name} has no valid array header ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if tuple(got) != tuple(shape) or np.dtype(dtype) != np.uint8:
        return f"{path.name} holds a {np.dtype(dtype)} array of shape {tuple(got)}, not uint8 {tuple(shape)}"
    expected = offset + int(np.prod(shape))
    actual = path.stat().st_size
    if actual != expected:
        return f"{path.name} has {actual} bytes instead of {expected} (truncated)" \
            if actual < expected else f"{path.name} has {actual - expected} bytes too many"
    return None


def entry_problem(entry: Path, table: SampleTable, size: int) -> str | None:
    """Why the cache entry at ``entry`` cannot be used for ``table`` at ``size`` px (``None``
    when it can): see the module docstring."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError):
        return "meta.json is not valid JSON (truncated or garbled)"
    ids = meta.get("sample_ids") if isinstance(meta, dict) else None
    if not isinstance(ids, list):
        return "meta.json lacks the sample ids"
    if ids != [str(s) for s in table.sample_ids]:
        return "meta.json lists other samples than the table"
    n = len(table)
    problem = _array_problem(entry / "images.npy", (n, size, size, 3))
    if problem is None and (table.has_masks or (entry / "masks.npy").exists()):
        problem = _array_problem(entry / "masks.npy", (n, size, size))
    return problem


def _open(entry: Path) -> CachedImages:
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "images.npy", mmap_mode="r")
    masks = np.load(entry / "masks.npy", mmap_mode="r") if (entry / "masks.npy").exists() else None
    return CachedImages(images, masks, np.asarray(meta["sample_ids"], dtype=object), entry)


def _build(
    adapter: DatasetAdapter, table: SampleTable, size: int, entry: Path, *, progress: bool
) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the cache directory {str(entry.parent)!r} ({exc.strerror}); "
            "set --cache-dir or FAIRBENCH_CACHE to a writable folder"
        ) from None
    remove_stale_temporaries(entry)
    tmp = temporary_path(entry)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        spec = ImageSpec(size=size)
        n = len(table)
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        masks = None
        if table.has_masks:
            masks = np.lib.format.open_memmap(
                tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size)
            )
        with progress_bar(total=n, desc=f"caching {adapter.name} at {size}px", unit="img",
                          enabled=progress) as bar:
            adapter.fill_images(table, spec, images, masks, progress=bar.update)
        images.flush()
        del images
        if masks is not None:
            masks.flush()
            del masks
        meta = {
            "format": CACHE_FORMAT,
            "dataset": adapter.config(),
            "size": size,
            "sample_ids": [str(s) for s in table.sample_ids],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, entry)
        except OSError:
            # another process finished the same entry first: keep theirs
            if not (entry / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
