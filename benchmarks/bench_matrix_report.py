"""What a finished mechanism suite decided, and whether its methods acted: the matrix on true
labels (markdown and csv, one build), the decided fraction per panel, engaged runs per method,
the counterfactual flip rate per scenario, and the suite's wall time from its runs.

    fairbench sweep benchmarks/mechanisms.toml --jobs 2 --threads-per-job 1
    python benchmarks/bench_matrix_report.py benchmarks/mechanisms.toml --out report/

Writes ``matrix.md``, ``matrix.csv``, ``engagement.md``, ``engagement_by_scenario.md`` and
``summary.md`` into ``--out``. ``engagement_by_scenario.md`` has, per method and scenario, the
runs engaged and, over the runs that did not engage, the median of each figure of their
engagement record (the share for a yes/no figure): what the criterion saw instead. For
ME-FairPrune it adds from ``prune.csv`` how many of those runs had no pruned candidate within
the F1 tolerance of the unpruned model.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def figure_summary(records: list[dict[str, Any]]) -> str:
    """``name median`` for every numeric figure of ``records`` (engagement records), the share
    of true for a yes/no figure."""
    values: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        for key, value in (rec.get("figures") or {}).items():
            if isinstance(value, bool):
                values[key].append(float(value))
            elif isinstance(value, (int, float)) and math.isfinite(value):
                values[key].append(float(value))
    return ", ".join(f"{k} {statistics.median(v):.3g}" for k, v in values.items())


def no_pruned_candidate_within_tolerance(run_dir: Path, config: dict[str, Any]) -> bool | None:
    """For an ME-FairPrune run: whether no pruned candidate (ratio > 0, any β and τ) was within
    the F1 tolerance of the unpruned model: the run's own count (``pruned_within_tolerance``
    of its engagement figures) where it has one, else read from its ``prune.csv`` (runs
    recorded before the count); None for another run."""
    import csv

    notes = (config.get("notes") or {}).get("me_fairprune") or {}
    if "pruned_within_tolerance" in notes:
        return int(notes["pruned_within_tolerance"]) == 0
    if "unpruned" not in notes or not (run_dir / "prune.csv").is_file():
        return None
    ref = float(notes["unpruned"]["val_F1"])
    tol = float(config.get("method_params", {}).get("f1_tolerance", 0.02))
    with open(run_dir / "prune.csv", newline="") as fh:
        pruned = [float(r["val_F1"]) for r in csv.DictReader(fh) if float(r["ratio"]) > 0]
    return not any(f1 >= ref - tol for f1 in pruned)


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
    by_scenario: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    no_candidate: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for table in board.tables:
        for row in table.rows:
            for run in row.all_runs:
                rec = run.config.get("engagement") or {}
                if "engaged" not in rec:
                    continue
                by_scenario[(row.label, table.dataset)].append(rec)
                if rec["engaged"] is False:
                    flag = no_pruned_candidate_within_tolerance(Path(run.path), run.config)
                    if flag is not None:
                        no_candidate[(row.label, table.dataset)].append(flag)
    scenarios = [t.dataset for t in board.tables]
    methods = list(dict.fromkeys(m for m, _ in by_scenario))
    by = ["| method | " + " | ".join(scenarios) + " |", "|:--|" + "--:|" * len(scenarios)]
    for method in methods:
        cells = []
        for s in scenarios:
            recs = by_scenario.get((method, s), [])
            cells.append(f"{sum(r['engaged'] is True for r in recs)}/{len(recs)}" if recs else "–")
        by.append(f"| {method} | " + " | ".join(cells) + " |")
    by += ["", "Runs that did not engage: median of each figure of their record", ""]
    for method in methods:
        for s in scenarios:
            idle = [r for r in by_scenario.get((method, s), []) if r["engaged"] is False]
            if idle:
                extra = ""
                if flags := no_candidate.get((method, s)):
                    extra = (f"; no pruned candidate within the F1 tolerance in {sum(flags)} of "
                             f"{len(flags)}")
                by.append(f"* {method}, {s} ({len(idle)} runs): {figure_summary(idle)}{extra}")
    (out / "engagement_by_scenario.md").write_text("\n".join(by) + "\n")
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
    print((out / "engagement_by_scenario.md").read_text())
    print(json.dumps({"written": sorted(p.name for p in out.iterdir())}))


if __name__ == "__main__":
    main()
