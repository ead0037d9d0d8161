"""What a finished mechanism suite decided, and whether its methods acted: the matrix on true
labels (markdown and csv, one build), the decided fraction per panel, engaged runs per method,
the counterfactual flip rate per scenario, and the suite's wall time from its runs.

    fairbench sweep benchmarks/mechanisms.toml --jobs 2 --threads-per-job 1
    python benchmarks/bench_matrix_report.py benchmarks/mechanisms.toml --out report/

Writes ``matrix.md``, ``matrix.csv``, ``engagement.md`` and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite")
    ap.add_argument("--out", default="matrix-report")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--labels", default="true", choices=["true", "observed"])
    args = ap.parse_args()
    from fairbench.bench.leaderboard import leaderboard
    from fairbench.bench.matrix import build_matrix
    from fairbench.metrics.catalog import title

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard(args.suite, labels=args.labels)
    matrix = build_matrix(board, n_resamples=args.n_boot)
    (out / "matrix.md").write_text(matrix.render("md"))
    (out / "matrix.csv").write_text(matrix.render("csv"))

    lines = [f"# {args.suite} ({args.labels} labels)", ""]
    for metric in matrix.metrics:
        decided, total = matrix.decided(metric)
        marks: dict[str, int] = defaultdict(int)
        for (m, _, _), cell in matrix.cells.items():
            if m == metric:
                marks["∅" if cell.mostly_idle else (cell.verdict or "none")] += 1
        share = decided / total if total else math.nan
        lines.append(f"- {title(metric)}: {decided} of {total} cells decided ({share:.0%}); "
                     + ", ".join(f"{k} {v}" for k, v in sorted(marks.items())))
    # engagement and time, from every run of the suite's tables
    engaged: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # yes, no, no record
    seconds, flips = [], defaultdict(list)
    for table in board.tables:
        for row in table.rows:
            for run in row.all_runs:
                rec = (run.config.get("engagement") or {}).get("engaged")
                engaged[row.label][0 if rec is True else 1 if rec is False else 2] += 1
                seconds.append(float(run.config.get("seconds", {}).get("total", 0.0)))
                cf = run.metrics.get("counterfactual") or {}
                if "flip_rate" in cf:
                    flips[(row.label, table.dataset)].append(cf["flip_rate"])
    eng = ["| method | engaged | did not | no mechanism / no record |", "|:--|--:|--:|--:|"]
    for method, (yes, no, none) in engaged.items():
        eng.append(f"| {method} | {yes} | {no} | {none} |")
    (out / "engagement.md").write_text("\n".join(eng) + "\n")
    lines += ["", f"runs read: {len(seconds)}; run-seconds {sum(seconds):.0f} "
              f"({sum(seconds) / max(len(seconds), 1):.1f} s per run)", ""]
    scen = [t.dataset for t in board.tables]
    lines += ["vanilla's counterfactual flip rate per scenario (mean over seeds):", ""]
    lines.append("| " + " | ".join(scen) + " |")
    lines.append("|" + "--:|" * len(scen))
    lines.append("| " + " | ".join(
        f"{sum(v) / len(v):.3f}" if (v := flips.get(("vanilla", s))) else "–" for s in scen)
        + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print((out / "engagement.md").read_text())
    print(json.dumps({"written": sorted(p.name for p in out.iterdir())}))


if __name__ == "__main__":
    main()
