"""What shrinks the paired interval most per core-second: for every dataset entry of a suite
(``benchmarks/resize.toml``: one scenario at the base size, with twice the training images,
with twice the epochs) and every method, the sd over seeds of the paired change against
vanilla (true labels, in points), the mean run-seconds of a method run and of a vanilla run,
and the *efficiency* 1 / (sd² · seconds of one paired seed), relative to the scenario's
``base`` entry: above 1, that size buys a narrower paired interval per core-second than more
seeds at the base size (the interval's half-width at n seeds is t·sd/√n, so its square per
core-second scales as sd² · cost)::

    fairbench sweep benchmarks/resize.toml --jobs 2 --threads-per-job 1
    python benchmarks/bench_resize.py benchmarks/resize.toml
"""

from __future__ import annotations

import argparse
import statistics

from fairbench import leaderboard

METRICS = ("EqOddsGap", "worst.F1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite")
    args = parser.parse_args()
    board = leaderboard(args.suite, labels="true")
    rows = []
    for t in board.tables:
        scenario, size = t.dataset.split("/", 1)
        vanilla = next(r for r in t.rows if r.label == "vanilla")
        v_seconds = statistics.mean(r.config["seconds"]["total"] for r in vanilla.runs)
        for row in t.rows:
            if row.label == "vanilla":
                continue
            seconds = statistics.mean(r.config["seconds"]["total"] for r in row.runs)
            sds = {}
            for m in METRICS:
                mv, vv = row.values(m), vanilla.values(m)
                diffs = [(mv[s] - vv[s]) * 100 for s in sorted(set(mv) & set(vv))]
                sds[m] = statistics.stdev(diffs)
            rows.append((scenario, size, row.label, len(row.runs), seconds, v_seconds, sds))
    base = {(r[0], r[2]): r for r in rows if r[1] == "base"}
    print("| scenario | size | method | seeds | s per method run | s per vanilla run | "
          + " | ".join(f"{m} paired sd | {m} efficiency" for m in METRICS) + " |")
    print("|:--|:--|:--|--:|--:|--:|" + "--:|--:|" * len(METRICS))
    for scenario, size, method, n, seconds, v_seconds, sds in rows:
        ref = base.get((scenario, method))
        cells = []
        for m in METRICS:
            eff = "–"
            if ref is not None:
                eff = (ref[6][m] ** 2 * (ref[4] + ref[5])) / (sds[m] ** 2 * (seconds + v_seconds))
                eff = f"{eff:.2f}"
            cells += [f"{sds[m]:.2f}", eff]
        print(f"| {scenario} | {size} | {method} | {n} | {seconds:.1f} | {v_seconds:.1f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
