"""Plots (matplotlib, Agg backend; every figure is written as PNG and PDF).

* :func:`plot_tradeoff`: accuracy–fairness trade-off of a leaderboard table: test F1 against
  the equalized-odds gap per method (mean ± std over seeds as error bars), every evaluated
  parameter setting as a faint point, and the Pareto front of the methods (higher F1, lower
  gap).
* :func:`plot_ablation`: FairQuantize's ratio ablation (the paper's Fig. 2): test precision and
  EOdd against the quantization ratio, one line per β, from a run's ``ablation.csv`` (written
  with ``ablation_betas=...``) or, for runs without it, from ``steps.csv`` (written with
  ``save_every_step=true``; one line per run's β).
* :func:`plot_groups`: per-group bars of a method's runs (mean over its seeds, with the spread
  over seeds as error bars and every seed as a dot), the vanilla runs of the same split and
  seeds beside them, and the number of test samples per group.
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

from fairbench.bench.board import mean_std, setting_candidates
from fairbench.core.errors import FairbenchError
from fairbench.core.files import read_json
from fairbench.metrics.catalog import GROUP_PLOT_COLUMNS
from fairbench.run.report import find_vanilla_run
from fairbench.run.store import DamagedRunError, check_run, read_run_files

PLOT_KINDS = ("tradeoff", "ablation", "groups", "cd")

#: fixed colours of the built-in methods (the same in every figure of every suite); other
#: labels get a colour from a hash of their name, so it does not depend on row order
METHOD_COLORS: dict[str, str] = {
    "vanilla": "#333333", "fairquantize": "#1f77b4", "fairprune": "#ff7f0e",
    "snnl_prune": "#2ca02c", "resampling": "#d62728", "groupdro": "#9467bd", "mfd": "#8c564b",
    "adv_conf": "#e377c2", "adv_rev": "#7f7f7f", "fairdi": "#bcbd22", "me_vanilla": "#17becf",
    "me_fairprune": "#aec7e8", "apple": "#ffbb78",
}
_EXTRA_COLORS = ("#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
                 "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")


def method_color(label: str, method: str | None = None) -> str:
    """The colour of a method in every figure: its built-in colour (by label, else by the
    registered method name behind the label), else one picked by a hash of the label."""
    import zlib

    for key in (label, method):
        if key in METHOD_COLORS:
            return METHOD_COLORS[key]
    return _EXTRA_COLORS[zlib.crc32(label.encode()) % len(_EXTRA_COLORS)]


def readable(name: str) -> str:
    """``skin_tone`` → ``skin tone`` (identifiers in titles and legends)."""
    return str(name).replace("_", " ")


def table_file_stem(table: Any) -> str:
    """A file name for the figure of one leaderboard table: ``<dataset>-<attribute>-<backbone>``
    (characters other than letters, digits, ``-`` and ``.`` become ``-``)."""
    raw = f"{table.dataset}-{table.attribute}-{table.backbone}"
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in raw)


def spread_note(n_seeds: Sequence[int]) -> str:
    """What the error bars of a figure are: ``error bars: ± std over 5 seeds``."""
    ns = sorted(set(n_seeds))
    if not ns or ns == [1]:
        return "one seed: no error bars"
    count = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"error bars: ± std over {count} seeds (sample std)"


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
    return save(tradeoff_figure(table, x=x, y=y), out)


def svg_text(fig: Any) -> str:
    """``fig`` as an inline SVG document (for self-contained HTML pages); closes ``fig``."""
    import io

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def tradeoff_figure(table: Any, *, x: str = "EqOddsGap", y: str = "F1") -> Any:
    """The figure of :func:`plot_tradeoff` (not saved)."""

    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    mx, my = [], []
    first_other = True
    for row in table.rows:
        c = method_color(row.label, row.method)
        # every other setting of the method (faint), test metrics mean over seeds
        for cand, runs in setting_candidates(row.all_runs or row.runs):
            if cand.key == row.selection.candidate.key:
                continue
            px = mean_std(r.flat(table.part).get(x, math.nan) for r in runs)[0]
            py = mean_std(r.flat(table.part).get(y, math.nan) for r in runs)[0]
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
    ax.set_title(f"{table.dataset} ({readable(table.attribute)}), {table.backbone}: "
                 f"{table.part}\n{spread_note([len(r.runs) for r in table.rows])}",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


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


def _unquantized(run_dirs: Sequence[str | Path], part: str,
                 metrics: Sequence[str]) -> dict[str, tuple[float, float]] | None:
    """The starting (unquantized, ratio 0) point of the ablation: the vanilla runs of the same
    runs folder, split, backbone and seeds as ``run_dirs`` (mean ± std), or ``None``."""
    found = [v for v in (find_vanilla_run(d) for d in run_dirs) if v is not None]
    if not found:
        return None
    flats = [_flat(read_json(v / "metrics.json").get(part, {})) for v in found]
    return {m: mean_std([f.get(m) for f in flats]) for m in metrics}


def plot_ablation(run_dirs: Sequence[str | Path], out: str | Path, *, part: str = "test",
                  x: str = "target_ratio", metrics: Sequence[str] = ("precision", "EOdd")
                  ) -> list[Path]:
    """Precision and EOdd against the quantization ratio, one line per β (paper Fig. 2), with
    the unquantized model at ratio 0 (the vanilla runs of the same split and seeds, when the
    runs folder has them) and ticks at the measured ratios; the title names the dataset, the
    seeds and what the error bars are. A run folder among ``run_dirs`` is verified against its
    manifest first (a damaged one raises one line); a folder that is no run (an exported
    ``ablation.csv``) is read as it is."""
    for d in run_dirs:
        state = check_run(Path(d))
        if state.state == "damaged":
            raise DamagedRunError(state.message())
    df = read_ablation(run_dirs)
    if x not in df.columns:
        raise FairbenchError(f"the ablation files have no column {x!r}; use target_ratio or "
                             "realized_ratio")
    cols = [f"{part}_{m}" for m in metrics]
    missing = [c for c in cols if c not in df.columns or df[c].isna().all()]
    if missing:
        raise FairbenchError(f"the ablation files have no {', '.join(missing)}; steps.csv has "
                             "test columns only with save_every_step=true")
    start = _unquantized(run_dirs, part, metrics)
    configs = [read_json(Path(d) / "config.json") for d in run_dirs
               if (Path(d) / "config.json").is_file()]
    seeds = sorted({int(c["seed"]) for c in configs if "seed" in c})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    axes = np.atleast_1d(axes)
    counts: list[int] = []
    for ax, m, col in zip(axes, metrics, cols):
        for beta, g in sorted(df.groupby("beta"), key=lambda kv: kv[0]):
            agg = g.groupby(x)[col].agg(["mean", "std", "count"]).reset_index()
            counts.extend(int(c) for c in agg["count"])
            xs, ys = list(agg[x] * 100), list(agg["mean"] * 100)
            errs = list(agg["std"].fillna(0) * 100)
            if start is not None and math.isfinite(start[m][0]):
                xs, ys, errs = [0.0, *xs], [start[m][0] * 100, *ys], [
                    0.0 if math.isnan(start[m][1]) else start[m][1] * 100, *errs]
            several = (agg["count"] > 1).any()   # several runs (seeds): mean ± std
            ax.errorbar(xs, ys, yerr=errs if several else None, marker="o", markersize=4,
                        capsize=3 if several else 0, label=f"β = {beta:g}")
        ticks = sorted({0.0, *(df[x].dropna() * 100)} if start is not None
                       else set(df[x].dropna() * 100))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
        ax.set_xlabel("quantization ratio (%)" if x == "target_ratio"
                      else "realized quantized share (%)")
        ax.set_ylabel(f"{m} (%, {part})")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    # a folder without config.json (files copied by hand) names neither dataset nor seeds
    dataset = configs[0].get("dataset") if configs else None
    seed_text = "" if not seeds else ("seed " + str(seeds[0])) if len(seeds) == 1 else \
        f"seeds {', '.join(map(str, seeds))}"
    origin = "; ratio 0: the unquantized (vanilla) model" if start is not None else ""
    head = ", ".join(t for t in ("FairQuantize ablation", dataset, seed_text) if t)
    fig.suptitle(f"{head}{origin}; {spread_note(counts or [1])}", fontsize=9)
    fig.tight_layout()
    return save(fig, out)


def _flat(part_metrics: dict[str, Any]) -> dict[str, Any]:
    from fairbench.metrics import flatten

    return flatten(part_metrics)


def plot_groups(run_dirs: str | Path | Sequence[str | Path], out: str | Path, *,
                part: str = "test", metrics: Sequence[str] | None = None,
                vanilla: bool = True) -> list[Path]:
    """Per-group values of a method's runs (one or several seeds of one setting): for each
    metric, one bar per group with the mean over the seeds, the spread over seeds (± std) as
    an error bar and every seed as a dot; with ``vanilla`` the vanilla runs of the same
    split, backbone and seeds (found in the same runs folder) as hatched bars beside them.
    Legends give the number of test samples per group. Default metrics: precision, recall, F1,
    accuracy, AUC (Dice and IoU, per structure, for a segmentation run)."""
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    runs = [read_run_files(d) for d in dirs]  # verified: a damaged run raises one line
    cfg, m0 = runs[0]
    if len({(c["method"], c.get("split_sha256")) for c, _ in runs}) > 1:
        raise FairbenchError("plot groups takes the runs (seeds) of one method on one split; "
                             "pass them one method at a time")
    meta = m0.get("meta", {})
    groups = meta.get("groups") or cfg["groups"]
    segmentation = meta.get("task") == "segmentation"
    if metrics is None:
        if segmentation:
            from fairbench.metrics import segmentation_metric_names

            metrics = segmentation_metric_names(meta.get("mask_classes", []))
        else:
            metrics = GROUP_PLOT_COLUMNS
    series = [(cfg["method"], [_flat(m.get(part, {})) for _, m in runs], False)]
    if vanilla:
        found = [v for v in (find_vanilla_run(d) for d in dirs) if v is not None]
        if found:
            series.append(("vanilla", [_flat(read_json(v / "metrics.json").get(part, {}))
                                       for v in found], True))
    n_bars = len(groups) * len(series)
    width = 0.8 / n_bars
    xs = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * len(metrics) * n_bars, 3.8))
    cmap = plt.get_cmap("tab10")
    for si, (name, flats, hatched) in enumerate(series):
        for gi, g in enumerate(groups):
            i = si * len(groups) + gi
            stats = [mean_std([f.get(f"{g}.{k}") for f in flats]) for k in metrics]
            means = np.array([s_[0] for s_ in stats]) * 100
            stds = np.array([0.0 if math.isnan(s_[1]) else s_[1] for s_ in stats]) * 100
            n_g = flats[0].get(f"{g}.n")
            label = f"{name}: {readable(g)}" + (f" (n = {int(n_g)})" if n_g else "")
            bars = ax.bar(xs + i * width, means, width, yerr=stds if len(flats) > 1 else None,
                          capsize=2, color=cmap(gi), alpha=0.55 if hatched else 0.9,
                          hatch="//" if hatched else None, edgecolor="0.3", linewidth=0.5,
                          label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
            for f in flats:  # every seed as a dot
                ax.scatter(xs + i * width, [(f.get(f"{g}.{k}") or np.nan) * 100
                                            for k in metrics], s=6, color="k", zorder=3)
    ax.set_xticks(xs + width * (n_bars - 1) / 2, metrics)
    ax.set_ylabel(f"% ({part})")
    ax.set_ylim(0, 108)
    seeds = sorted(int(c["seed"]) for c, _ in runs)
    headline = mean_std([f.get("ES_fairseg.Dice" if segmentation else "EqOddsGap")
                             for f in series[0][1]])[0]
    summary = (f"ES-Dice (FairSeg) {headline * 100:.2f}%" if segmentation else
               f"EqOdds gap {headline * 100:.2f}%")
    beside = "; hatched: vanilla, same split and seeds" if len(series) > 1 else ""
    ax.set_title(f"{cfg['method']} on {cfg['dataset']} by {readable(cfg['attribute'])} "
                 f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}); "
                 f"{summary}\n{spread_note([len(runs)])}; dots: single seeds{beside}",
                 fontsize=8)
    ax.legend(fontsize=7, ncol=min(4, n_bars), loc="upper center", bbox_to_anchor=(0.5, -0.12))
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
