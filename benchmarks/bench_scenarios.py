"""Calibrate synthderm's scenarios: a vanilla model per scenario and seed, its group gap on
observed and on true labels, and the wall time by phase.

Each run goes through :func:`fairbench.run_experiment` in this process (set
``OMP_NUM_THREADS`` for the thread count); finished runs in ``--runs-dir`` are reused, so a
second call only prints. One markdown table: per scenario, mean ± std over seeds of the
test worst-group F1, the light − dark F1 gap (observed labels, then true labels), the
equalized-odds gap (observed, true), and the mean wall time of a run. Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_scenarios.py --seeds 0 1 --n-samples 1500 \\
        --epochs 8 --set shortcut:lesion_contrast=0.3

``--suite FILE`` instead reads the finished vanilla runs of a suite with one dataset entry per
scenario (``benchmarks/mechanisms.toml``) and prints, per scenario, the dark − light F1
difference on observed and on true labels, the worst-group F1 and the equalized-odds gap,
each as mean ± std over seeds with its two-stage bootstrap interval (seeds, then test
patients; :func:`fairbench.bench.stats.bootstrap_runs`)::

    python benchmarks/bench_scenarios.py --suite benchmarks/mechanisms.toml
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None if text.lower() in ("none", "null") else text


def fmt(values: list[float], scale: float = 100.0) -> str:
    vals = [v * scale for v in values if math.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def main() -> None:
    from fairbench.datasets.synthderm import SCENARIOS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n-samples", type=int, default=1500)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--method", default="vanilla")
    ap.add_argument("--runs-dir", default=None,
                    help="runs folder [default: runs/calibrate; with --suite: the suite's]")
    ap.add_argument("--set", action="append", default=[], metavar="SCENARIO:KEY=VALUE",
                    help="override one scenario knob (repeatable)")
    ap.add_argument("--suite", default=None, help="read a suite's vanilla runs instead")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    if args.suite:
        from_suite(args.suite, args.n_boot, args.runs_dir)
        return
    args.runs_dir = args.runs_dir or "runs/calibrate"

    from fairbench import RunConfig, run_experiment

    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        scen, _, kv = item.partition(":")
        key, _, val = kv.partition("=")
        overrides.setdefault(scen, {})[key] = _value(val)
    print("| scenario | knobs | worst-group F1 | dark − light F1 (obs) | dark − light F1 (true) "
          "| EqOddsGap (obs) | EqOddsGap (true) | s/run |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for scen in args.scenarios:
        params = {"scenario": scen, "n_samples": args.n_samples, **overrides.get(scen, {})}
        rows: dict[str, list[float]] = {k: [] for k in
                                        ("worst", "gap", "gap_t", "eo", "eo_t", "s")}
        for seed in args.seeds:
            res = run_experiment(RunConfig(
                method=args.method, dataset="synthderm", dataset_params=params,
                image_size=args.image_size, seed=seed, train={"epochs": args.epochs},
                runs_dir=args.runs_dir, progress=False))
            test, true = res.metrics["test"], res.metrics.get("test_true", {})
            rows["worst"].append(test["worst"]["F1"])
            rows["gap"].append(test["Diff_signed"]["F1"])  # dark − light, as with --suite
            rows["gap_t"].append(true["Diff_signed"]["F1"] if true else float("nan"))
            rows["eo"].append(test["EqOddsGap"])
            rows["eo_t"].append(true.get("EqOddsGap", float("nan")))
            rows["s"].append(res.config["seconds"]["total"])
        knobs = ", ".join(f"{k}={v}" for k, v in overrides.get(scen, {}).items()) or "preset"
        print(f"| {scen} | {knobs} | {fmt(rows['worst'])} | {fmt(rows['gap'])} | "
              f"{fmt(rows['gap_t'])} | {fmt(rows['eo'])} | {fmt(rows['eo_t'])} | "
              f"{fmt(rows['s'], 1.0)} |", flush=True)


def from_suite(suite_file: str, n_boot: int, runs_dir: str | None = None) -> None:
    from fairbench import load_suite
    from fairbench.bench.stats import RunPredictions, bootstrap_runs
    from fairbench.bench.sweep import plan

    planned = [p for p in plan(load_suite(suite_file, runs_dir=runs_dir))
               if p.finished and p.planned.config.method == "vanilla"]
    keys = [("Diff_signed.F1", "label", "dark − light F1 (obs)"),
            ("Diff_signed.F1", "true_label", "dark − light F1 (true)"),
            ("worst.F1", "true_label", "worst-group F1 (true)"),
            ("EqOddsGap", "label", "EqOddsGap (obs)"),
            ("EqOddsGap", "true_label", "EqOddsGap (true)")]
    print("| scenario | seeds | " + " | ".join(k[2] for k in keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for scen in dict.fromkeys(p.planned.dataset for p in planned):
        runs = [p for p in planned if p.planned.dataset == scen]
        cells = []
        by_column = {column: [RunPredictions.read(p.run_dir, label_column=column)
                              for p in runs] for column in {k[1] for k in keys}}
        for key, column, _ in keys:
            preds = by_column[column]
            values = [r.metric(key) for r in preds]
            iv = bootstrap_runs(preds, key, n_resamples=n_boot)
            cells.append(f"{fmt(values)} [{iv.low * 100:.2f}, {iv.high * 100:.2f}]")
        print(f"| {scen} | {len(runs)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
