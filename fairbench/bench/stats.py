"""Statistics for leaderboards: bootstrap confidence intervals over test samples, paired tests
of each method against vanilla over seeds with Holm's correction, and the Friedman test with
average ranks (and the Nemenyi critical difference) across datasets.

* **Bootstrap** (:func:`bootstrap_runs`): percentile bootstrap over the *test samples* of a
  run's ``predictions.csv``, resampling patients (``patient_id``) when the dataset has them,
  else images. For several seeds of one setting (same split, so the same test samples) every
  resample draws one set of patients and averages the metric over the seeds, which gives the
  interval of the seed-mean. Seeded: the same seed gives the same interval. Segmentation runs
  resample their images' Dice and IoU (:class:`SegmentationPredictions`).
* **Paired test** (:func:`paired_test`): over seeds, pairing a method's run with vanilla's run
  of the same seed; ``ttest`` (:func:`scipy.stats.ttest_rel`, the default: with 3–5 seeds the
  exact Wilcoxon test cannot reach p < 0.05, its smallest two-sided p with 5 pairs is 0.0625)
  or ``wilcoxon`` (:func:`scipy.stats.wilcoxon`). Identical values give p = 1.
* **Holm** (:func:`holm`): step-down adjusted p-values over the methods compared with vanilla
  (one family per metric and table).
* **Friedman** (:func:`friedman`): datasets are blocks, methods are treatments
  (:func:`scipy.stats.friedmanchisquare`), average ranks with rank 1 = best (ties averaged)
  and Nemenyi's critical difference :math:`q_\\alpha\\sqrt{k(k+1)/(6N)}` for the CD plot
  (:func:`fairbench.bench.plots.plot_cd`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.core.errors import FairbenchError
from fairbench.metrics import (
    Interval,
    bootstrap_ci,
    evaluate_classification,
    evaluate_segmentation,
    flatten,
    higher_is_better,
)

# Nemenyi: studentized range statistic / sqrt(2), two-tailed (Demšar 2006, Table 5)
_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164, 3.219, 3.268, 3.313,
        3.354, 3.391, 3.426, 3.458, 3.489, 3.517, 3.544]
_Q10 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920, 2.978, 3.030, 3.077,
        3.120, 3.159, 3.196, 3.230, 3.261, 3.291, 3.319]


# -- paired tests -----------------------------------------------------------------------------
def paired_test(a: Sequence[float], b: Sequence[float], *, test: str = "ttest") -> float:
    """Two-sided p-value of a paired test between ``a`` and ``b`` (same order = same seed).

    ``nan`` when fewer than 2 complete pairs; 1.0 when all differences are 0."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    d = x - y
    if np.allclose(d, 0):
        return 1.0
    if test == "ttest":
        if np.allclose(d, d[0]):  # constant non-zero difference: t is infinite
            return 0.0
        return float(stats.ttest_rel(x, y).pvalue)
    if test == "wilcoxon":
        return float(stats.wilcoxon(x, y).pvalue)
    raise FairbenchError(f"unknown paired test {test!r}; use ttest or wilcoxon")


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (nan stays nan and does not count in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@dataclass
class Comparison:
    method: str
    reference: str
    metric: str
    n_pairs: int
    mean_diff: float
    p: float
    p_holm: float
    significant: bool


def compare_to_reference(values: Mapping[str, Mapping[int, float]], reference: str, metric: str,
                         *, test: str = "ttest", alpha: float = 0.05) -> list[Comparison]:
    """Paired test of every method against ``reference`` over the seeds both have, Holm
    corrected over the methods. ``values[method][seed] = value``."""
    if reference not in values:
        return []
    ref = values[reference]
    rows = []
    for method, by_seed in values.items():
        if method == reference:
            continue
        seeds = sorted(set(by_seed) & set(ref))
        a = [by_seed[s] for s in seeds]
        b = [ref[s] for s in seeds]
        p = paired_test(a, b, test=test)
        diff = float(np.nanmean(np.subtract(a, b))) if seeds else float("nan")
        rows.append([method, len(seeds), diff, p])
    adjusted = holm([r[3] for r in rows])
    return [Comparison(m, reference, metric, n, d, p, float(ph),
                       bool(np.isfinite(ph) and ph < alpha))
            for (m, n, d, p), ph in zip(rows, adjusted)]


# -- Friedman / ranks --------------------------------------------------------------------------
@dataclass
class FriedmanResult:
    metric: str
    statistic: float
    pvalue: float
    avg_ranks: dict[str, float]
    n_datasets: int
    cd: float
    alpha: float


def average_ranks(scores: pd.DataFrame, *, higher_is_better: bool = True) -> pd.Series:
    """Mean rank of every column (method) over rows (datasets); rank 1 = best, ties averaged."""
    from scipy.stats import rankdata

    values = scores.to_numpy(dtype=float)
    ranks = np.vstack([rankdata(-row if higher_is_better else row) for row in values])
    return pd.Series(ranks.mean(axis=0), index=scores.columns)


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks for ``k`` methods over ``n`` datasets."""
    table = {0.05: _Q05, 0.10: _Q10}.get(round(alpha, 2))
    if table is None:
        raise FairbenchError("the critical difference is tabulated for alpha 0.05 and 0.10")
    if not 2 <= k <= len(table) + 1:
        raise FairbenchError(f"the critical difference is tabulated for 2 to {len(table) + 1} "
                             f"methods, not {k}")
    return table[k - 2] * math.sqrt(k * (k + 1) / (6.0 * n))


def friedman(scores: pd.DataFrame, *, metric: str = "F1", alpha: float = 0.05) -> FriedmanResult:
    """Friedman test over ``scores`` (rows: datasets, columns: methods, no missing values)."""
    from scipy.stats import friedmanchisquare

    if scores.isna().any().any():
        raise FairbenchError("the Friedman test needs every method on every dataset")
    k, n = scores.shape[1], scores.shape[0]
    if k < 3:
        raise FairbenchError(f"the Friedman test needs at least 3 methods, not {k}")
    if n < 2:
        raise FairbenchError(f"the Friedman test needs at least 2 datasets, not {n}")
    hib = higher_is_better(metric)
    if hib is None:
        raise FairbenchError(f"metric {metric!r} has no direction to rank by")
    stat, p = friedmanchisquare(*[scores[c].to_numpy(dtype=float) for c in scores.columns])
    ranks = average_ranks(scores, higher_is_better=hib)
    return FriedmanResult(metric, float(stat), float(p), ranks.to_dict(), n,
                          nemenyi_cd(k, n, alpha), alpha)


# -- metrics from predictions (fast path for the bootstrap) ------------------------------------
_PRED_METRICS = ("accuracy", "precision", "recall", "F1")
_EO = ("EOpp0", "EOpp1", "EOdd")


def _prf(m: np.ndarray) -> dict[str, float]:
    """Accuracy and macro P/R/F1 of a confusion matrix (rows true, columns predicted), with
    scikit-learn's label set (classes present in the truth or the predictions)."""
    tp = np.diag(m).astype(float)
    rows, cols = m.sum(1).astype(float), m.sum(0).astype(float)
    n = m.sum()
    if n == 0:
        return {k: float("nan") for k in _PRED_METRICS}
    present = (rows + cols) > 0
    fp, fn = cols - tp, rows - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {"accuracy": float(tp.sum() / n), "precision": float(p[present].mean()),
            "recall": float(r[present].mean()), "F1": float(f[present].mean())}


def prediction_metrics(y: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                       names: Sequence[str], n_classes: int) -> dict[str, float]:
    """Flat prediction-based metrics (accuracy, precision, recall, F1 overall, per group and
    as Avg/Diff/gap/worst; EOpp0, EOpp1, EOdd), equal to those of
    :func:`fairbench.metrics.evaluate_classification`, from confusion counts (fast)."""
    keep = groups >= 0
    y, pred, groups = y[keep], pred[keep], groups[keep]
    k = n_classes
    g_n = len(names)
    counts = np.bincount((groups * k + y) * k + pred, minlength=g_n * k * k).reshape(g_n, k, k)
    out: dict[str, float] = dict(_prf(counts.sum(0)))
    per = {}
    for code, name in enumerate(names):
        if counts[code].sum() > 0:
            per[name] = _prf(counts[code])
            out.update({f"{name}.{m}": v for m, v in per[name].items()})
    present = [n for n in names if n in per]
    for m in _PRED_METRICS:
        vals = np.array([per[n][m] for n in present])
        out[f"Avg.{m}"] = float(vals.mean()) if len(vals) else float("nan")
        if len(vals) >= 2:
            out[f"gap.{m}"] = float(vals.max() - vals.min())
            out[f"worst.{m}"] = float(vals.min())
            if len(names) == 2 and len(present) == 2:
                signed = per[names[1]][m] - per[names[0]][m]
                out[f"Diff.{m}"], out[f"Diff_signed.{m}"] = abs(signed), signed
            else:
                out[f"Diff.{m}"], out[f"Diff_signed.{m}"] = out[f"gap.{m}"], float("nan")
        else:
            for pre in ("gap", "worst", "Diff", "Diff_signed"):
                out[f"{pre}.{m}"] = float("nan")
    # equalized-odds family (fairbench.metrics.fairness, same conventions)
    codes = [c for c in range(g_n) if counts[c].sum() > 0]
    if len(codes) < 2 or len(y) == 0:
        out.update({m: float("nan") for m in _EO})
        return out
    c_max = int(max(y.max(), pred.max())) + 1
    rates = {}
    for c in codes:
        m = counts[c][:c_max, :c_max].astype(float)
        tp = np.diag(m)
        fn = m.sum(1) - tp
        fp = m.sum(0) - tp
        tn = m.sum() - tp - fn - fp
        with np.errstate(divide="ignore", invalid="ignore"):
            rates[c] = (np.where(tp + fn > 0, tp / (tp + fn), 0.0),
                        np.where(tn + fp > 0, tn / (tn + fp), 0.0),
                        np.where(tn + fp > 0, fp / (tn + fp), 0.0))
    e0, e1, eo = np.zeros(c_max), np.zeros(c_max), np.zeros(c_max)
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            (tpr_a, tnr_a, fpr_a), (tpr_b, tnr_b, fpr_b) = rates[a], rates[b]
            e0 = np.maximum(e0, np.abs(tnr_a - tnr_b))
            e1 = np.maximum(e1, np.abs(tpr_a - tpr_b))
            eo = np.maximum(eo, np.abs((tpr_a - tpr_b) + (fpr_a - fpr_b)) / 2)
    out.update(EOpp0=float(e0.mean()), EOpp1=float(e1.mean()), EOdd=float(eo.mean()))
    return out


def _read_part(run_dir: str | Path, part: str, config: Mapping[str, Any] | None
               ) -> tuple[pd.DataFrame, Mapping[str, Any], np.ndarray, np.ndarray | None]:
    """The ``part`` rows of a run's ``predictions.csv`` (sorted by sample id), its config, the
    group codes of its attribute and the patient ids (clusters) where known."""
    import json

    run_dir = Path(run_dir)
    config = config or json.loads((run_dir / "config.json").read_text())
    df = pd.read_csv(run_dir / "predictions.csv", dtype={"sample_id": str, "patient_id": str})
    df = df[df["part"] == part].sort_values("sample_id", kind="stable")
    if df.empty:
        raise FairbenchError(f"{str(run_dir)!r} has no {part} predictions")
    col = f"attr_{config['attribute']}"
    if col not in df.columns:
        raise FairbenchError(f"{str(run_dir)!r}: predictions.csv lacks column {col!r}")
    clusters = df["patient_id"].to_numpy() if "patient_id" in df.columns else None
    return df, config, df[col].to_numpy(dtype=np.int64), clusters


@dataclass
class RunPredictions:
    """The test (or val) predictions of one run, as arrays, for resampling."""

    sample_id: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    groups: np.ndarray
    names: list[str]
    clusters: np.ndarray | None

    @classmethod
    def read(cls, run_dir: str | Path, *, part: str = "test",
             config: Mapping[str, Any] | None = None) -> RunPredictions:
        df, config, groups, clusters = _read_part(run_dir, part, config)
        probs = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy(dtype=float)
        return cls(df["sample_id"].to_numpy(), df["label"].to_numpy(dtype=np.int64),
                   df["pred"].to_numpy(dtype=np.int64), probs, groups,
                   list(config["groups"]), clusters)

    def metric(self, key: str, idx: np.ndarray | None = None) -> float:
        sel = slice(None) if idx is None else idx
        y, pred, g = self.y[sel], self.pred[sel], self.groups[sel]
        if _fast_key(key):
            return prediction_metrics(y, pred, g, self.names, self.probs.shape[1]).get(
                key, float("nan"))
        flat = flatten(evaluate_classification(y, self.probs[sel], g, self.names, y_pred=pred))
        value = flat.get(key)
        if value is None:
            raise FairbenchError(f"unknown metric {key!r} for the bootstrap")
        return float(value)


@dataclass
class SegmentationPredictions:
    """The per-image Dice and IoU (N × structures) of one segmentation run, for resampling."""

    sample_id: np.ndarray
    dice: np.ndarray
    iou: np.ndarray
    groups: np.ndarray
    names: list[str]
    mask_classes: list[str]
    clusters: np.ndarray | None

    @classmethod
    def read(cls, run_dir: str | Path, *, part: str = "test",
             config: Mapping[str, Any] | None = None) -> SegmentationPredictions:
        df, config, groups, clusters = _read_part(run_dir, part, config)
        classes = list(config["mask_classes"])
        suffixes = [""] if len(classes) == 2 else [f"_{c}" for c in classes[1:]]
        try:
            dice = df[[f"Dice{x}" for x in suffixes]].to_numpy(dtype=float)
            iou = df[[f"IoU{x}" for x in suffixes]].to_numpy(dtype=float)
        except KeyError as exc:
            raise FairbenchError(f"{str(run_dir)!r}: predictions.csv lacks {exc}") from None
        return cls(df["sample_id"].to_numpy(), dice, iou, groups, list(config["groups"]),
                   classes, clusters)

    def metric(self, key: str, idx: np.ndarray | None = None) -> float:
        sel = slice(None) if idx is None else idx
        flat = flatten(evaluate_segmentation(self.dice[sel], self.iou[sel], self.groups[sel],
                                             self.names, self.mask_classes))
        value = flat.get(key)
        if value is None:
            raise FairbenchError(f"unknown metric {key!r} for the bootstrap")
        return float(value)


def _fast_key(key: str) -> bool:
    base = key.rsplit(".", 1)[-1]
    return base in _PRED_METRICS or key in _EO


def bootstrap_runs(runs: Sequence[RunPredictions] | Sequence[SegmentationPredictions], key: str,
                   *, n_resamples: int = 1000,
                   confidence: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap interval of the seed-mean of ``key`` over the runs' shared test samples,
    resampling patients where known (see the module docstring)."""
    if not runs:
        raise FairbenchError("no runs to bootstrap")
    ids = runs[0].sample_id
    for r in runs[1:]:
        if len(r.sample_id) != len(ids) or not np.array_equal(r.sample_id, ids):
            raise FairbenchError("runs to bootstrap together must share their test samples "
                                 "(the same split)")
    clusters = runs[0].clusters
    stat: Callable[[np.ndarray], float] = lambda idx: float(np.mean(
        [r.metric(key, idx) for r in runs]))
    return bootstrap_ci(stat, len(ids), n_resamples=n_resamples, confidence=confidence,
                        seed=seed, clusters=clusters)
