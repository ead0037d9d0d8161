"""Decoding image files into fixed-size uint8 arrays (used by file-based dataset adapters)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import DataError


def load_square_rgb(path: Path, size: int, *, draft: bool = True) -> np.ndarray:
    """Decode ``path``, resize its shorter side to ``size`` and centre-crop to ``size``².

    With ``draft`` JPEGs are decoded at a reduced scale (Pillow's draft mode, a power-of-two
    DCT reduction no smaller than twice the target) before the final high-quality resize.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if draft and im.format == "JPEG":
                im.draft("RGB", (size * 2, size * 2))
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file {str(path)!r} is missing; check --data-root") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"image file {str(path)!r} is unreadable or corrupt ({exc}); replace or remove it"
        ) from None


def decode_files_into(
    paths: Sequence[Path],
    size: int,
    out: np.ndarray,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    draft: bool = True,
) -> None:
    """Decode ``paths`` into ``out[i]`` in parallel threads (Pillow releases the GIL)."""
    workers = workers or max(1, os.cpu_count() or 1)

    def work(i: int) -> int:
        out[i] = load_square_rgb(Path(paths[i]), size, draft=draft)
        return i

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(paths))):
            if progress is not None:
                progress(1)
