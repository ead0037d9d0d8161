"""Where a suite's time goes: per method, the runs, their mean wall time and its split by
phase (``config.json`` ``seconds.phases``: data, vanilla, train, curvature, other, evaluate,
leakage), and the suite's total run-seconds; with ``--jobs`` the wall time a sweep with that
many runs side by side would take if the runs kept their seconds (a projection, labelled as
such: it ignores contention between the jobs and the wait for each baseline). Example::

    python benchmarks/bench_suite_phases.py benchmarks/mechanisms.toml --jobs 2
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="suite file (its finished runs are read)")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    from fairbench import load_suite
    from fairbench.bench.sweep import plan

    planned = plan(load_suite(args.suite, runs_dir=args.runs_dir))
    per: dict[str, list[dict]] = defaultdict(list)
    for p in planned:
        if p.finished and p.run_dir is not None:
            cfg = json.loads((Path(p.run_dir) / "config.json").read_text())
            per[p.planned.method].append(cfg["seconds"])
    phases = ["data", "vanilla", "train", "curvature", "other", "evaluate", "leakage"]
    print(f"| method | runs | s/run | {' | '.join(phases)} |")
    print("|---|---:|---:|" + "---:|" * len(phases))
    total = 0.0
    n_runs = 0
    for method, secs in per.items():
        n = len(secs)
        mean = sum(s["total"] for s in secs) / n
        total += sum(s["total"] for s in secs)
        n_runs += n
        cells = [sum(s.get("phases", {}).get(ph, 0.0) for s in secs) / n for ph in phases]
        print(f"| {method} | {n} | {mean:.1f} | " + " | ".join(f"{c:.1f}" for c in cells)
              + " |")
    missing = sum(not p.finished for p in planned)
    print(f"\n{n_runs} finished runs ({missing} not finished): {total:.0f} run-seconds in all, "
          f"{total / max(n_runs, 1):.1f} s per run; projected wall time with {args.jobs} runs "
          f"side by side: {total / args.jobs / 60:.1f} min (a projection: contention between "
          "jobs and baseline waits not included)")


if __name__ == "__main__":
    main()
