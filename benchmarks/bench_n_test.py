"""Interval widths as the test part grows: for every dataset entry of a suite of vanilla runs
(``benchmarks/n_test.toml``), the test part's size, the mean over seeds of the 95 % width of
the test-sample bootstrap of each run's EqOddsGap and worst-group F1 (true labels; patients
resampled, ``kind="samples"``), and the seed-to-seed sd of the same metrics, in points::

    fairbench sweep benchmarks/n_test.toml --jobs 2 --threads-per-job 1
    python benchmarks/bench_n_test.py benchmarks/n_test.toml
"""

from __future__ import annotations

import argparse
import statistics

from fairbench import leaderboard
from fairbench.bench.stats import RunPredictions, bootstrap_runs

METRICS = ("EqOddsGap", "worst.F1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    board = leaderboard(args.suite, labels="true")
    print("| entry | test images | " + " | ".join(
        f"{m} bootstrap width | {m} seed sd" for m in METRICS) + " |")
    print("|:--|--:|" + "--:|--:|" * len(METRICS))
    for t in board.tables:
        (row,) = [r for r in t.rows if r.label == "vanilla"]
        preds = [RunPredictions.read(r.path, part="test", config=r.config,
                                     label_column="true_label") for r in row.runs]
        n_test = int(row.runs[0].config["split_sizes"]["test"])
        cells = []
        for m in METRICS:
            widths = []
            for p in preds:
                iv = bootstrap_runs([p], m, n_resamples=args.n_boot, kind="samples", seed=0)
                widths.append((iv.high - iv.low) * 100)
            sd = statistics.stdev(row.values(m).values()) * 100
            cells += [f"{statistics.mean(widths):.2f}", f"{sd:.2f}"]
        print(f"| {t.dataset} | {n_test} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
