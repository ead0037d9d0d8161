"""Plots (matplotlib, Agg backend; every figure is written as PNG and PDF).

* :func:`plot_tradeoff`: accuracy–fairness trade-off of a leaderboard table: test F1 against
  the equalized-odds gap per method (mean ± std over seeds as error bars), every evaluated
  parameter setting as a faint point, and the Pareto front of the methods (higher F1, lower
  gap).
* :func:`plot_ablation`: FairQuantize's ratio ablation (the paper's Fig. 2): test precision and
  EOdd against the quantization ratio, one line per β, from a run's ``ablation.csv`` (written
  with ``ablation_betas=...``) or, for runs without it, from ``steps.csv`` (written with
  ``save_every_step=true``; one line per run's β).
* :func:`plot_groups`: per-group bar chart of one run (precision, recall, F1, accuracy, AUC).
* :func:`plot_cd`: critical-difference diagram of average ranks across datasets
  (:func:`fairbench.bench.stats.friedman`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fairbench.core.errors import FairbenchError
from fairbench.core.files import read_json

PLOT_KINDS = ("tradeoff", "ablation", "groups", "cd")


def save(fig: Any, out: str | Path) -> list[Path]:
    """Write ``fig`` as ``<out>.png`` (150 dpi) and ``<out>.pdf``; returns both paths."""
    base = Path(out)
    if base.suffix.lower() in (".png", ".pdf"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _pareto_min_x_max_y(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Indices of points not dominated when lower x and higher y are better, sorted by x."""
    keep = []
    for i in range(len(xs)):
        dominated = np.any((xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i])))
        if not dominated and np.isfinite(xs[i]) and np.isfinite(ys[i]):
            keep.append(i)
    keep = np.array(keep, dtype=int)
    return keep[np.argsort(xs[keep])] if len(keep) else keep


def plot_tradeoff(table: Any, out: str | Path, *, x: str = "EqOddsGap", y: str = "F1"
                  ) -> list[Path]:
    """F1 (y) against the equalized-odds gap (x) for the methods of one leaderboard table."""
    from fairbench.bench.leaderboard import _candidates, _mean_std

    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    mx, my = [], []
    first_other = True
    for i, row in enumerate(table.rows):
        c = colors[i % len(colors)]
        # every other setting of the method (faint), test metrics mean over seeds
        for cand, runs in _candidates(row.all_runs or row.runs):
            if cand.key == row.selection.candidate.key:
                continue
            px = _mean_std(r.flat(table.part).get(x, math.nan) for r in runs)[0]
            py = _mean_std(r.flat(table.part).get(y, math.nan) for r in runs)[0]
            ax.scatter([px * 100], [py * 100], s=14, color=c, alpha=0.3, linewidths=0,
                       label="other settings (faint)" if first_other else None)
            first_other = False
        xm, xs = row.stats.get(x, (math.nan, math.nan))
        ym, ys = row.stats.get(y, (math.nan, math.nan))
        ax.errorbar([xm * 100], [ym * 100], xerr=[0 if math.isnan(xs) else xs * 100],
                    yerr=[0 if math.isnan(ys) else ys * 100], fmt="o", color=c, capsize=3,
                    markersize=7, label=row.label, zorder=3)
        mx.append(xm)
        my.append(ym)
    xs_, ys_ = np.array(mx) * 100, np.array(my) * 100
    front = _pareto_min_x_max_y(xs_, ys_)
    if len(front):
        ax.scatter(xs_[front], ys_[front], s=170, facecolors="none", edgecolors="0.2",
                   linewidths=1.2, label="Pareto front (methods)", zorder=4)
        if len(front) > 1:
            ax.step(xs_[front], ys_[front], where="post", color="0.3", linestyle="--",
                    linewidth=1, zorder=2)
    ax.set_xlabel(f"{x} (%, lower is fairer)")
    ax.set_ylabel(f"{y} (%, macro)")
    ax.set_title(f"{table.dataset} ({table.attribute}), {table.backbone}: {table.part}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save(fig, out)


def read_ablation(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """The ablation rows of ``run_dirs``: ``ablation.csv`` where present, else ``steps.csv``
    (which needs ``save_every_step=true`` for its test columns)."""
    frames = []
    for d in run_dirs:
        d = Path(d)
        if (d / "ablation.csv").is_file():
            frames.append(pd.read_csv(d / "ablation.csv").assign(source=str(d)))
        elif (d / "steps.csv").is_file():
            df = pd.read_csv(d / "steps.csv")
            if "beta" not in df.columns:
                cfg = read_json(d / "config.json") if (d / "config.json").is_file() else {}
                df["beta"] = cfg.get("method_params", {}).get("beta", math.nan)
            frames.append(df.assign(source=str(d)))
        else:
            raise FairbenchError(f"{str(d)!r} has neither ablation.csv nor steps.csv; run "
                                 "fairquantize with ablation_betas=... (or save_every_step=true)")
    return pd.concat(frames, ignore_index=True)


def plot_ablation(run_dirs: Sequence[str | Path], out: str | Path, *, part: str = "test",
                  x: str = "target_ratio", metrics: Sequence[str] = ("precision", "EOdd")
                  ) -> list[Path]:
    """Precision and EOdd against the quantization ratio, one line per β (paper Fig. 2)."""
    df = read_ablation(run_dirs)
    if x not in df.columns:
        raise FairbenchError(f"the ablation files have no column {x!r}; use target_ratio or "
                             "realized_ratio")
    cols = [f"{part}_{m}" for m in metrics]
    missing = [c for c in cols if c not in df.columns or df[c].isna().all()]
    if missing:
        raise FairbenchError(f"the ablation files have no {', '.join(missing)}; steps.csv has "
                             "test columns only with save_every_step=true")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    axes = np.atleast_1d(axes)
    for ax, m, col in zip(axes, metrics, cols):
        for beta, g in sorted(df.groupby("beta"), key=lambda kv: kv[0]):
            agg = g.groupby(x)[col].agg(["mean", "std", "count"]).reset_index()
            several = (agg["count"] > 1).any()   # several runs (seeds): mean ± std
            ax.errorbar(agg[x] * 100, agg["mean"] * 100,
                        yerr=agg["std"].fillna(0) * 100 if several else None,
                        marker="o", markersize=4, capsize=3 if several else 0,
                        label=f"β = {beta:g}")
        ax.set_xlabel("quantization ratio (%)" if x == "target_ratio"
                      else "realized quantized share (%)")
        ax.set_ylabel(f"{m} (%, {part})")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("FairQuantize ablation", fontsize=10)
    fig.tight_layout()
    return save(fig, out)


def plot_groups(run_dir: str | Path, out: str | Path, *, part: str = "test",
                metrics: Sequence[str] | None = None) -> list[Path]:
    """Per-group values of one run, one bar per group for each metric (default: precision,
    recall, F1, accuracy, AUC; for a segmentation run Dice and IoU, per structure too)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise FairbenchError(f"{str(run_dir)!r} is not a finished run directory")
    m = read_json(run_dir / "metrics.json")
    cfg = read_json(run_dir / "config.json")
    groups = m.get("meta", {}).get("groups") or cfg["groups"]
    pm = m[part]
    segmentation = m.get("meta", {}).get("task") == "segmentation"
    if metrics is None:
        if segmentation:
            from fairbench.metrics import segmentation_metric_names

            metrics = segmentation_metric_names(m["meta"].get("mask_classes", []))
        else:
            metrics = ("precision", "recall", "F1", "accuracy", "AUC")
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(metrics) * max(1, len(groups)) / 2, 3.6))
    width = 0.8 / (len(groups) + 1)
    xs = np.arange(len(metrics))
    for i, g in enumerate(groups):
        vals = [pm.get(g, {}).get(k) for k in metrics]
        vals = [np.nan if v is None else v * 100 for v in vals]
        bars = ax.bar(xs + i * width, vals, width, label=g)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    overall = [pm.get(k) for k in metrics]
    bars = ax.bar(xs + len(groups) * width, [np.nan if v is None else v * 100 for v in overall],
                  width, label="all", color="0.7")
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1, color="0.4")
    ax.set_xticks(xs + width * len(groups) / 2, metrics)
    ax.set_ylabel(f"% ({part})")
    ax.set_ylim(0, 105)
    summary = (f"ES-Dice (FairSeg) {pm.get('ES_fairseg', {}).get('Dice', float('nan')) * 100:.2f}%"
               if segmentation else
               f"EqOdds gap {pm.get('EqOddsGap', float('nan')) * 100:.2f}%, "
               f"EOdd (paper) {pm.get('EOdd', float('nan')) * 100:.2f}%")
    ax.set_title(f"{cfg['method']} on {cfg['dataset']} by {cfg['attribute']} (seed {cfg['seed']})"
                 f"; {summary}", fontsize=9)
    ax.legend(fontsize=8, ncol=len(groups) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, out)


def plot_cd(avg_ranks: dict[str, float], cd: float, out: str | Path, *,
            title: str = "", significant: bool = True, gate_text: str = "") -> list[Path]:
    """Critical-difference diagram: methods on the average-rank axis (1 = best, left), the CD
    as a bar, and thick lines joining methods whose ranks differ by less than the CD. When the
    omnibus test did not reject (``significant=False``), neither the CD nor the cliques are
    drawn and the figure says that the ranks are not to be compared pairwise
    (``gate_text`` names the test and its p-value)."""
    names = sorted(avg_ranks, key=lambda k: avg_ranks[k])
    ranks = np.array([avg_ranks[n] for n in names])
    k = len(names)
    lo, hi = 1, max(k, math.ceil(ranks.max()))
    fig, ax = plt.subplots(figsize=(6.0, 1.4 + 0.28 * k))
    ax.set_xlim(lo - 0.3, hi + 0.3)
    ax.set_ylim(-(k // 2 + 2) * 0.5 - 0.3, 1.6)
    ax.axis("off")
    ax.hlines(0, lo, hi, color="k", linewidth=1)
    for t in range(lo, hi + 1):
        ax.vlines(t, 0, 0.12, color="k", linewidth=1)
        ax.text(t, 0.2, str(t), ha="center", va="bottom", fontsize=8)
    if significant:  # CD bar
        ax.hlines(1.2, lo, lo + cd, color="k", linewidth=1.5)
        ax.vlines([lo, lo + cd], 1.12, 1.28, color="k", linewidth=1.5)
        ax.text(lo + cd / 2, 1.32, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    else:
        ax.text((lo + hi) / 2, 1.2, f"{gate_text or 'omnibus test not significant'}: ranks "
                "not compared pairwise", ha="center", va="bottom", fontsize=8, color="0.2")
    half = (k + 1) // 2
    for i, (n, r) in enumerate(zip(names, ranks)):
        left = i < half
        level = -(i if left else k - 1 - i) * 0.5 - 0.5
        xend = lo - 0.2 if left else hi + 0.2
        ax.plot([r, r, xend], [0, level, level], color="0.3", linewidth=0.8)
        ax.text(xend + (-0.05 if left else 0.05), level, f"{n} ({r:.2f})",
                ha="right" if left else "left", va="center", fontsize=8)
    # cliques: maximal runs of methods within CD of each other
    cliques = []
    for i in range(k if significant else 0):
        j = i
        while j + 1 < k and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for n_c, (a, b) in enumerate(cliques):
        y = -0.15 - 0.12 * n_c
        ax.hlines(y, ranks[a] - 0.03, ranks[b] + 0.03, color="k", linewidth=3)
    if title:
        ax.set_title(title, fontsize=9)
    return save(fig, out)
