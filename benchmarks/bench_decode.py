"""Cache-build speed: images/s per core for decoding + resizing JPEGs into the uint8 cache.

Writes ``--n`` synthetic photos of ``--width``×``--height`` (smooth skin-like shading, a
lesion, fine texture and sensor noise, JPEG quality 90, so their size and decode cost are
those of real dermoscopy photos) to a temporary folder, then times
:func:`fairbench.data.images.decode_files_into` into a memory-mapped array:

* serial (one core), with and without Pillow's JPEG draft mode, at each target size;
* all usable cores, with worker processes and with threads (draft mode on);
* then the per-epoch path that replaces DataLoader workers: batches cut from the decoded
  cache, augmented (random shift and flips) and normalised by
  :class:`fairbench.data.loaders.BatchLoader` on the CPU, with 1 and with all usable threads.

It also reports the PSNR of the draft-mode result against the full decode, so the speed-up
can be weighed against the (small) change in pixels. Example::

    python benchmarks/bench_decode.py --n 200 --sizes 224 112
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_photos(folder: Path, n: int, width: int, height: int, seed: int = 0,
                distinct: int = 16) -> list[Path]:
    """``n`` files; ``distinct`` different photos, the rest byte copies (same decode cost)."""
    import shutil

    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths: list[Path] = []
    for i in range(n):
        if i >= distinct:
            paths.append(Path(shutil.copyfile(paths[i % distinct], folder / f"img_{i:05d}.jpg")))
            continue
        base = rng.uniform(120, 230, 3).astype(np.float32)
        shade = 1 + 0.15 * np.sin(xx / rng.uniform(80, 200) + rng.uniform(0, 6)) * np.cos(
            yy / rng.uniform(80, 200))
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        r = rng.uniform(0.1, 0.3) * height
        d = np.sqrt((xx - cx) ** 2 + ((yy - cy) * rng.uniform(0.7, 1.3)) ** 2) / r
        lesion = np.clip(1.2 - d, 0, 1)[..., None]
        tex = 8 * np.sin(xx / 3.1 + yy / 4.7)[..., None]
        img = base * shade[..., None] * (1 - 0.55 * lesion) + lesion * tex
        img += rng.normal(0, 4, img.shape).astype(np.float32)
        p = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def timed(paths: list[Path], size: int, folder: Path, **kw: object) -> tuple[float, np.ndarray]:
    from fairbench.data.images import decode_files_into

    out = np.lib.format.open_memmap(folder / f"out-{size}.npy", mode="w+", dtype=np.uint8,
                                    shape=(len(paths), size, size, 3))
    t = time.perf_counter()
    decode_files_into(paths, size, out, **kw)  # type: ignore[arg-type]
    out.flush()
    return time.perf_counter() - t, np.array(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def batches_per_second(images: np.ndarray, threads: int, batch_size: int = 32,
                       epochs: int = 3) -> float:
    """Images/s of the training batches (gather, augment, normalise, channels-last) cut from
    ``images`` (N×H×W×3 uint8) on the CPU with ``threads`` torch threads; the first epoch is
    a warm-up and not timed."""
    import torch

    from fairbench.data.loaders import Augment, BatchLoader, DeviceData

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = len(images)
        data = DeviceData(images, np.zeros(n, dtype=np.int64), {"g": np.zeros(n, dtype=np.int64)},
                          torch.device("cpu"))
        loader = BatchLoader(data, np.arange(n), batch_size=batch_size, attribute="g",
                             order="shuffle", augment=Augment(), channels_last=True, seed=0)
        for _ in loader:
            pass
        t = time.perf_counter()
        seen = 0
        for _ in range(epochs):
            for batch in loader:
                seen += len(batch)
        return seen / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)


def main() -> None:
    from fairbench.data.images import usable_cpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of photos")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    ap.add_argument("--workers", type=int, default=None, help="cores for the parallel rows")
    args = ap.parse_args()
    cores = args.workers or usable_cpus()
    with tempfile.TemporaryDirectory(prefix="fairbench-bench-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        paths = make_photos(folder, args.n, args.width, args.height)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e3
        print(f"{args.n} JPEGs {args.width}x{args.height}, mean {mb:.0f} kB "
              f"(generated in {time.perf_counter() - t:.1f} s); {cores} usable core(s)\n")
        print(f"{'size':>5} {'mode':<22} {'cores':>5} {'img/s':>8} {'img/s/core':>10} "
              f"{'PSNR vs full':>12}")
        for size in args.sizes:
            t_full, full = timed(paths, size, folder, backend="serial", draft=False)
            t_draft, drafted = timed(paths, size, folder, backend="serial", draft=True)
            q = psnr(full, drafted)
            rows = [("full decode, serial", 1, t_full, ""),
                    ("draft, serial", 1, t_draft, f"{q:.1f} dB")]
            if cores > 1:
                for backend in ("process", "thread"):
                    tp, _ = timed(paths, size, folder, backend=backend, draft=True,
                                  workers=cores)
                    rows.append((f"draft, {backend}es" if backend == "process"
                                 else f"draft, {backend}s", cores, tp, ""))
            for name, c, secs, note in rows:
                rate = args.n / secs
                print(f"{size:>5} {name:<22} {c:>5} {rate:>8.0f} {rate / c:>10.0f} {note:>12}")
            for threads in sorted({1, cores}):
                rate = batches_per_second(drafted, threads)
                print(f"{size:>5} {'augment + normalise':<22} {threads:>5} {rate:>8.0f} "
                      f"{rate / threads:>10.0f} {'':>12}")


if __name__ == "__main__":
    main()
