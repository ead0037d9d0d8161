"""Decoding image files into fixed-size uint8 arrays (used by file-based dataset adapters).

Every image is decoded once, its shorter side resized to the target size and the centre
square cropped (the crop box is resized directly, so no pixel outside it is resampled). JPEGs
are decoded in Pillow's *draft mode*: libjpeg's scaled inverse DCT decodes at 1/2, 1/4 or 1/8
of the stored size, never below the target, which skips most of the decoding work for photos
much larger than the target (a 1024×768 photo is decoded at 512×384 for 224 px and at
256×192 for 112 px). The final antialiased bilinear resize then goes from that size to the
target.

:func:`decode_files_into` spreads the files over all usable cores, in worker processes that
write straight into the memory-mapped output (or threads; see ``backend``), and reports
progress per finished chunk.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Literal

import numpy as np

from fairbench.core.errors import DataError

Backend = Literal["auto", "process", "thread", "serial"]

#: below this many images ``backend="auto"`` decodes in threads (a process pool's start-up,
#: about 0.1 s per worker, would cost more than it saves)
PROCESS_MIN_IMAGES = 256
#: images per task handed to a worker (progress is reported per chunk)
CHUNK = 32


def usable_cpus() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def load_square_rgb(path: Path, size: int, *, draft: bool = True) -> np.ndarray:
    """Decode ``path``, resize its shorter side to ``size`` and centre-crop to ``size``².

    With ``draft`` JPEGs are decoded at a reduced scale (Pillow's draft mode, a power-of-two
    DCT reduction that keeps the shorter side at least ``size``) before the final
    antialiased resize.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if draft and im.format == "JPEG" and min(w, h) >= 2 * size:
                s = size / min(w, h)
                im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            im = im.resize((size, size), Image.Resampling.BILINEAR,
                           box=(left, top, left + side, top + side), reducing_gap=3.0)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file {str(path)!r} is missing; check --data-root") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"image file {str(path)!r} is unreadable or corrupt ({exc}); replace it, or delete "
            "it and pass --data-param missing_images=drop"
        ) from None


# -- workers --------------------------------------------------------------------------------
def _decode_chunk(paths: Sequence[str], size: int, draft: bool,
                  target: tuple[str, int, tuple[int, ...], int] | None,
                  ) -> np.ndarray | None:
    """Decode ``paths``; write them into rows ``start..`` of the memory-mapped ``target``
    file (name, byte offset, array shape, start row) or return them as one array."""
    if target is None:
        return np.stack([load_square_rgb(Path(p), size, draft=draft) for p in paths])
    filename, offset, shape, start = target
    mm = np.memmap(filename, dtype=np.uint8, mode="r+", offset=offset, shape=shape)
    try:
        for k, p in enumerate(paths):
            mm[start + k] = load_square_rgb(Path(p), size, draft=draft)
    finally:
        del mm
    return None


def _memmap_target(out: np.ndarray) -> tuple[str, int] | None:
    """(file name, byte offset) when ``out`` is a whole, C-contiguous file-backed memmap."""
    if (isinstance(out, np.memmap) and isinstance(out.base, mmap.mmap)
            and getattr(out, "filename", None) and out.flags.c_contiguous
            and out.dtype == np.uint8 and out.flags.writeable):
        return str(out.filename), int(out.offset)
    return None


def _process_pool(workers: int) -> Executor:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # fork is fast and does not re-import the caller's main module; the workers only run
    # Pillow and numpy. Elsewhere, spawn.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))


def decode_files_into(
    paths: Sequence[Path],
    size: int,
    out: np.ndarray,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    draft: bool = True,
    backend: Backend = "auto",
    chunk: int = CHUNK,
) -> None:
    """Decode ``paths`` into ``out[i]`` (uint8, N×size×size×3), in parallel.

    ``backend``: ``"process"`` runs worker processes that write into ``out`` directly when it
    is a file-backed memmap (the tensor cache's case; otherwise they send their chunks back);
    ``"thread"`` runs threads (Pillow releases the GIL while decoding and resizing);
    ``"serial"`` decodes in this thread; ``"auto"`` takes processes for
    :data:`PROCESS_MIN_IMAGES` images or more, threads below. ``workers`` defaults to the
    usable cores. The first unreadable file raises :class:`DataError` naming it.
    """
    n = len(paths)
    if out.shape[0] != n or out.shape[1:] != (size, size, 3):
        raise ValueError(f"output shape {out.shape} does not fit {n} images of {size}px")
    workers = max(1, workers or usable_cpus())
    if backend == "auto":
        backend = "process" if (n >= PROCESS_MIN_IMAGES and workers > 1) else "thread"
    if backend == "thread" and workers == 1:
        backend = "serial"
    names = [str(p) for p in paths]
    if backend == "serial":
        for i, p in enumerate(names):
            out[i] = load_square_rgb(Path(p), size, draft=draft)
            if progress is not None:
                progress(1)
        return
    if backend not in ("process", "thread"):
        raise ValueError(f"unknown decode backend {backend!r}")
    # small chunks at first so that every worker is busy early
    chunk = max(1, min(chunk, math.ceil(n / (4 * workers)) or 1))
    starts = list(range(0, n, chunk))
    mm = _memmap_target(out) if backend == "process" else None
    if backend == "process":
        if mm is not None:
            out.flush()  # the header and any rows written so far are on disk for the workers
        pool: Executor = _process_pool(workers)
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
    futures: dict[Future, int] = {}
    try:
        for s in starts:
            e = min(n, s + chunk)
            if backend == "thread":
                fut = pool.submit(_decode_into_array, names[s:e], size, draft, out, s)
            else:
                target = None if mm is None else (mm[0], mm[1], tuple(out.shape), s)
                fut = pool.submit(_decode_chunk, names[s:e], size, draft, target)
            futures[fut] = s
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                result = fut.result()  # re-raises a worker's DataError
                s = futures[fut]
                e = min(n, s + chunk)
                if result is not None:
                    out[s:e] = result
                if progress is not None:
                    progress(e - s)
    except BaseException:
        for fut in futures:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _decode_into_array(paths: Sequence[str], size: int, draft: bool, out: np.ndarray,
                       start: int) -> None:
    for k, p in enumerate(paths):
        out[start + k] = load_square_rgb(Path(p), size, draft=draft)
