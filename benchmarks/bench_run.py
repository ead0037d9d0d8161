"""End-to-end runs: ``fairbench run --method M`` for several seeds, wall time and test metrics.

Each seed runs as its own subprocess with the default settings (plus any ``--param``,
``--train`` or ``--data-param`` passed through), in a fresh runs directory, so nothing is
reused from an earlier run. All seeds share one fresh tensor cache (``FAIRBENCH_CACHE`` set to
a new temporary folder, unless ``--cache-dir`` is given): the first seed's wall time includes
generating the data, the others reuse it. Each run's ``metrics.json`` is read (test part:
overall macro-F1, EOdd, and the per-group macro-F1 stored under each group's name) and one
markdown table is printed: per seed and mean ± std (sample std) of F1 per group, the gap
(first group − second group, in points; light − dark on synthderm), overall F1, EOdd and the
wall time. Goals: vanilla ≤ 60 s on 2 CPU cores, data generation included;
a light − dark gap ≥ 5 points averaged over 3 seeds. Example::

    python benchmarks/bench_run.py --method vanilla --seeds 0 1 2
    python benchmarks/bench_run.py --method fairquantize --param beta=0.75
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def find_run(runs_dir: Path, method: str) -> Path:
    found = [p.parent for p in runs_dir.glob(f"*/{method}/*/metrics.json")]
    if len(found) != 1:
        raise SystemExit(f"expected one finished {method} run under {runs_dir}, found {found}")
    return found[0]


def fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--method", default="vanilla")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs-dir", default=None,
                    help="parent of the per-seed runs directories [a new temporary folder]")
    ap.add_argument("--cache-dir", default=None,
                    help="tensor cache to use [a new temporary folder: seed 1 generates the data]")
    ap.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                    help="method parameter, passed through (repeatable)")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="training setting, passed through (repeatable)")
    ap.add_argument("--data-param", action="append", default=[], metavar="KEY=VALUE",
                    help="dataset option, passed through (repeatable)")
    ap.add_argument("--extra", default="", help="more `fairbench run` arguments, one string")
    ap.add_argument("--device", default=None, help="passed as --device (auto, cpu, cuda)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = ap.parse_args()

    tmp_root = Path(tempfile.mkdtemp(prefix="fairbench-bench-run-"))
    runs_parent = Path(args.runs_dir) if args.runs_dir else tmp_root / "runs"
    cache = Path(args.cache_dir) if args.cache_dir else tmp_root / "cache"
    env = dict(os.environ, FAIRBENCH_CACHE=str(cache), FAIRBENCH_NO_PROGRESS="1")
    exe = shutil.which("fairbench")
    base_cmd = [exe] if exe else [sys.executable, "-m", "fairbench.cli"]
    print(f"method {args.method}, seeds {args.seeds}, cache {cache} "
          f"({'fresh' if not args.cache_dir else 'given'}), runs under {runs_parent}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n", flush=True)

    results: list[dict[str, Any]] = []
    groups: list[str] | None = None
    try:
        for seed in args.seeds:
            runs_dir = runs_parent / f"seed{seed}"
            cmd = [*base_cmd, "run", "--method", args.method, "--seed", str(seed),
                   "--runs-dir", str(runs_dir), "--quiet"]
            for kv in args.param:
                cmd += ["--param", kv]
            for kv in args.train:
                cmd += ["--train", kv]
            for kv in args.data_param:
                cmd += ["--data-param", kv]
            if args.device:
                cmd += ["--device", args.device]
            cmd += args.extra.split()
            load = os.getloadavg()[0]
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"seed {seed}: `{' '.join(cmd)}` failed (exit {proc.returncode})")
            run_dir = find_run(runs_dir, args.method)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            config = json.loads((run_dir / "config.json").read_text())
            test = metrics["test"]
            groups = metrics.get("meta", {}).get("groups") or config["groups"]
            row = {"seed": seed, "wall_s": wall, "load1": load,
                   "F1": test["F1"], "EOdd": test["EOdd"],
                   "group_F1": {g: test[g]["F1"] for g in groups},
                   "seconds": config.get("seconds", {}), "run_dir": str(run_dir),
                   "command": " ".join(cmd)}
            row["gap"] = row["group_F1"][groups[0]] - row["group_F1"][groups[1]]
            results.append(row)
            print(f"seed {seed}: {wall:.1f} s wall (run's own total "
                  f"{row['seconds'].get('total', float('nan')):.1f} s), test F1 {row['F1']:.4f}, "
                  f"gap {100 * row['gap']:+.2f} pts", flush=True)
    finally:
        if not args.keep and not args.runs_dir and not args.cache_dir:
            shutil.rmtree(tmp_root, ignore_errors=True)
        elif not args.keep and not args.runs_dir:
            shutil.rmtree(tmp_root / "runs", ignore_errors=True)

    assert groups is not None
    g0, g1 = groups[0], groups[1]
    print(f"\n`fairbench run --method {args.method}`"
          + (f" {' '.join('--param ' + p for p in args.param)}" if args.param else "")
          + " (test part; F1 = macro-F1, in %; gap in points)\n")
    print(f"| seed | F1 {g0} | F1 {g1} | gap {g0} − {g1} (pts) | F1 overall | EOdd | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        note = " (incl. data generation)" if r is results[0] and not args.cache_dir else ""
        print(f"| {r['seed']} | {100 * r['group_F1'][g0]:.2f} | {100 * r['group_F1'][g1]:.2f} | "
              f"{100 * r['gap']:+.2f} | {100 * r['F1']:.2f} | {r['EOdd']:.4f} | "
              f"{r['wall_s']:.1f}{note} |")
    col = lambda k: [r[k] for r in results]  # noqa: E731
    print(f"| mean ± std | {fmt([r['group_F1'][g0] for r in results], 100)} | "
          f"{fmt([r['group_F1'][g1] for r in results], 100)} | {fmt(col('gap'), 100)} | "
          f"{fmt(col('F1'), 100)} | {fmt(col('EOdd'), 1, 4)} | {fmt(col('wall_s'), 1, 1)} |")
    first = results[0]["wall_s"]
    print(f"\nslowest run {max(col('wall_s')):.1f} s (first, with data generation: {first:.1f} s); "
          f"mean gap {100 * statistics.mean(col('gap')):+.2f} pts")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "run", "method": args.method, "params": args.param,
                       "groups": groups, "rows": results}, fh, indent=2)


if __name__ == "__main__":
    main()
