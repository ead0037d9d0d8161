"""Bounds on sizes and seeds, checked before anything is allocated: a value past them is one
clear line naming the limit and the memory it would take, not an allocation error."""

from __future__ import annotations

from fairbench.core.errors import FairbenchError

#: the largest image side (pixels) a run or a cache accepts
MAX_IMAGE_SIZE = 1024
#: the largest seed (torch's and numpy's generators take 64-bit seeds)
MAX_SEED = 2**63 - 1


def human_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB, GiB, TiB or PiB, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_image_size(size: int, what: str = "--image-size") -> int:
    """``size`` if it lies in [8, MAX_IMAGE_SIZE], else one line naming the limit and what one
    image would take (size² × 3 bytes in the cache)."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise FairbenchError(f"{what} {size!r} must be a whole number of pixels, e.g. 32")
    if size < 8:
        raise FairbenchError(f"{what} {size} is too small; use at least 8")
    if size > MAX_IMAGE_SIZE:
        raise FairbenchError(
            f"{what} {size} is too large: at most {MAX_IMAGE_SIZE} px (one image would take "
            f"{human_bytes(size * size * 3)} in the image cache); use e.g. 224")
    return size


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` if it is an integer in [0, MAX_SEED], else one line."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FairbenchError(f"{what} {seed!r} must be a non-negative integer")
    if seed > MAX_SEED:
        raise FairbenchError(f"{what} {seed} is too large: at most 2^63 - 1 = {MAX_SEED}")
    return seed
