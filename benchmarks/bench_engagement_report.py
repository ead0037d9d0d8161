"""Run: python benchmarks/bench_engagement_report.py SUITE (after `fairbench sweep SUITE`).

One line per (method setting, scenario) of a suite's finished runs: how many runs engaged
their mechanism (the method's current criterion applied to the notes in config.json, so
records written under an earlier criterion are read by today's), the mean of each figure of the engagement record
(booleans as counts), the run's leakage probe (balanced accuracy of a fresh linear probe of the
group on the pooled embedding, metrics.json ``leakage``), and the test EqOdds gap and F1 change
against the vanilla run of the same scenario and seed (mean over seeds; true labels where the
dataset has them, as the matrix reads them). Written for benchmarks/engagement.toml."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

import fairbench.methods  # noqa: F401  (registers the built-in methods)

from fairbench import load_suite
from fairbench.run.method import get_method_class


def test_metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    return m.get("test_true") or m["test"], m.get("leakage") or {}


def main(suite_path: str) -> None:
    suite = load_suite(Path(suite_path))
    root = Path(suite.runs_dir)
    axes = defaultdict(set)  # the grid axes of each method entry: what the lines tell apart
    for entry in suite.methods:
        axes[entry.name] |= set(entry.grid)
    vanilla: dict[tuple[str, int], dict] = {}
    groups: dict[tuple[str, str, str], list[tuple[int, dict, dict, dict]]] = defaultdict(list)
    for cfg_file in sorted(root.glob("*/*/*/config.json")):
        if not (cfg_file.parent / "metrics.json").exists():
            continue
        cfg = json.loads(cfg_file.read_text())
        scenario = cfg["dataset_params"].get("scenario", "?")
        test, leak = test_metrics(cfg_file.parent)
        if cfg["method"] == "vanilla":
            vanilla[(scenario, cfg["seed"])] = test
            continue
        varied = {k: v for k, v in cfg["method_params"].items() if k in axes[cfg["method"]]}
        label = cfg["method"] + (" " + json.dumps(varied, sort_keys=True) if varied else "")
        record = get_method_class(cfg["method"])().engagement(cfg.get("notes") or {})
        groups[(cfg["method"], label, scenario)].append(
            (cfg["seed"], record.to_dict() if record else {}, test, leak))
    print("| setting | scenario | engaged | figures (mean) | probe | ΔEqOdds | ΔF1 |")
    print("|:--|:--|--:|:--|--:|--:|--:|")
    for (_, label, scenario), runs in sorted(groups.items()):
        engaged = sum(1 for _, e, _, _ in runs if e.get("engaged"))
        figures: dict[str, list] = defaultdict(list)
        for _, e, _, _ in runs:
            for k, v in (e.get("figures") or {}).items():
                if isinstance(v, (bool, int, float)) and v is not None:
                    figures[k].append(float(v))
        shown = ", ".join(f"{k} {mean(v):.3g}" for k, v in figures.items())
        probe = [leak.get("balanced_accuracy") for _, _, _, leak in runs
                 if leak.get("balanced_accuracy") is not None]
        d_gap = [t["EqOddsGap"] - vanilla[(scenario, s)]["EqOddsGap"]
                 for s, _, t, _ in runs if (scenario, s) in vanilla]
        d_f1 = [t["F1"] - vanilla[(scenario, s)]["F1"] for s, _, t, _ in runs
                if (scenario, s) in vanilla]
        fmt = (lambda xs: f"{100 * mean(xs):+.1f}" if xs else "–")
        print(f"| {label} | {scenario} | {engaged}/{len(runs)} | {shown} | "
              f"{mean(probe):.3f} | {fmt(d_gap)} | {fmt(d_f1)} |" if probe else
              f"| {label} | {scenario} | {engaged}/{len(runs)} | {shown} | – | {fmt(d_gap)} | "
              f"{fmt(d_f1)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench_engagement_report.py SUITE")
    main(sys.argv[1])
