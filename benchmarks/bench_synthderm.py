"""synthderm generation speed on ONE core: images/s of the renderer, no cache involved.

Calls :func:`fairbench.datasets.synthderm.build_metadata` (the sample table) and
:func:`fairbench.datasets.synthderm.render_into` (the drawing) directly into an in-memory
array, with numpy/BLAS and torch limited to one thread (the environment variables are set
before numpy is imported) and, with ``--pin``, the process pinned to one CPU. Masks are drawn
too (as the tensor cache does) unless ``--no-masks``. Each size is timed ``--repeats`` times
after one warm-up; the table shows the best and the median. Goal: ≥ 2,000 images/s
at 64 px. Example::

    python benchmarks/bench_synthderm.py --sizes 64 32 --n 4000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

GOAL_64PX = 2000.0


def render_rate(n: int, size: int, masks: bool, seed: int) -> tuple[float, float]:
    """Seconds to build the table and to render ``n`` images at ``size`` px."""
    from fairbench.datasets.synthderm import SynthDermParams, build_metadata, render_into

    p = SynthDermParams(n_samples=n, seed=seed)
    t0 = time.perf_counter()
    df = build_metadata(p)
    t1 = time.perf_counter()
    out = np.empty((n, size, size, 3), np.uint8)
    mask_out = np.empty((n, size, size), np.uint8) if masks else None
    render_into(df, p, size, out, mask_out)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 32], help="image sides (px)")
    ap.add_argument("--n", type=int, default=4000, help="images per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per size")
    ap.add_argument("--no-masks", action="store_true", help="do not draw the lesion masks")
    ap.add_argument("--pin", type=int, default=None, metavar="CPU",
                    help="pin the process to this CPU (os.sched_setaffinity)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    masks = not args.no_masks
    print(f"synthderm renderer, 1 thread (numpy {np.__version__}, {platform.processor() or platform.machine()}), "
          f"n={args.n}, masks={'yes' if masks else 'no'}, {args.repeats} timed runs after 1 warm-up")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    rows = []
    for size in args.sizes:
        render_rate(min(args.n, 512), size, masks, args.seed)  # warm-up
        table_s, render_s = [], []
        for r in range(args.repeats):
            t_tab, t_ren = render_rate(args.n, size, masks, args.seed + r)
            table_s.append(t_tab)
            render_s.append(t_ren)
        best = args.n / min(render_s)
        median = args.n / statistics.median(render_s)
        incl = args.n / min(a + b for a, b in zip(table_s, render_s))
        rows.append({"size": size, "n": args.n, "img_per_s_best": best,
                     "img_per_s_median": median, "img_per_s_incl_table": incl,
                     "table_seconds": min(table_s), "render_seconds": render_s,
                     "goal": GOAL_64PX if size == 64 else None})
    print(f"| size | images/s (best) | images/s (median) | incl. table | goal | status |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows:
        goal = f"{r['goal']:,.0f}" if r["goal"] else "–"
        status = ("–" if not r["goal"] else
                  "meets" if r["img_per_s_best"] >= r["goal"] else "MISSES")
        print(f"| {r['size']} px | {r['img_per_s_best']:,.0f} | {r['img_per_s_median']:,.0f} | "
              f"{r['img_per_s_incl_table']:,.0f} | {goal} | {status} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "synthderm", "masks": masks, "rows": rows,
                       "loadavg": os.getloadavg()}, fh, indent=2)


if __name__ == "__main__":
    main()
