"""Run: python benchmarks/bench_group_loss_gap.py SUITE [--runs-dir DIR]

Is there a loss gap for GroupDRO to act on? GroupDRO (Sagawa et al., ICLR 2020) moves its
group weights by exponentiated gradient, q_g ∝ q_g·exp(η·ℓ_g) at every step, so
log(q_dark / q_light) = η·Σ_t (ℓ_dark,t − ℓ_light,t): the weights leave uniform only as far as
the groups' losses differ. Per scenario (dataset label) of a suite's finished runs this prints
the vanilla model's validation cross-entropy of the unprivileged minus the privileged group
(nats, from each vanilla run's ``predictions.csv``: validation rows, probability of the
observed label), median and range over seeds, beside the median distance of GroupDRO's final
weights from uniform (its engagement figure ``tv_from_uniform``) and its engaged runs.

Example: python benchmarks/bench_group_loss_gap.py benchmarks/mechanisms.toml"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from fairbench.bench.suite import load_suite


def group_loss_gap(run_dir: Path, attribute: str, privileged: int) -> float:
    """Mean validation cross-entropy of the rows outside the privileged group minus that of
    the privileged group's rows (rows of unknown group left out)."""
    pred = pd.read_csv(run_dir / "predictions.csv")
    pred = pred[pred["part"] == "val"]
    columns = sorted((c for c in pred if c.startswith("prob_")), key=lambda c: int(c[5:]))
    probs = pred[columns].to_numpy()  # column k is class k (prob_10 after prob_9)
    ce = -np.log(np.clip(probs[np.arange(len(pred)), pred["label"].to_numpy()], 1e-12, None))
    codes = pred[f"attr_{attribute}"].to_numpy()
    return float(ce[(codes >= 0) & (codes != privileged)].mean() - ce[codes == privileged].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("suite", help="suite file whose runs are finished")
    parser.add_argument("--runs-dir", help="its runs folder (default: the suite's)")
    args = parser.parse_args()
    suite = load_suite(args.suite)
    root = Path(args.runs_dir or suite.runs_dir)
    gaps: dict[str, list[float]] = defaultdict(list)
    tv: dict[str, list[float]] = defaultdict(list)
    engaged: dict[str, list[bool]] = defaultdict(list)
    for cfg_file in sorted(root.rglob("config.json")):
        cfg = json.loads(cfg_file.read_text())
        scenario = cfg["dataset_params"].get("scenario", cfg["dataset"])
        if cfg["method"] == "vanilla":
            privileged = cfg["groups"].index(cfg["privileged"])
            gaps[scenario].append(group_loss_gap(cfg_file.parent, cfg["attribute"], privileged))
        elif cfg["method"] == "groupdro" and cfg.get("engagement"):
            tv[scenario].append(cfg["engagement"]["figures"]["tv_from_uniform"])
            engaged[scenario].append(bool(cfg["engagement"]["engaged"]))
    print("| scenario | vanilla val CE gap (nats), median [range] | GroupDRO weights' TV "
          "from uniform, median | GroupDRO engaged |")
    print("|:--|--:|--:|--:|")
    for scenario in sorted(gaps, key=lambda s: np.median(gaps[s])):
        g = gaps[scenario]
        t = f"{np.median(tv[scenario]):.3f}" if tv[scenario] else "–"
        e = f"{sum(engaged[scenario])}/{len(engaged[scenario])}" if engaged[scenario] else "–"
        print(f"| {scenario} | {np.median(g):.3f} [{min(g):.3f}, {max(g):.3f}] | {t} | {e} |")


if __name__ == "__main__":
    main()
