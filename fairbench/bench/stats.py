r"""Statistics for leaderboards: intervals that include the training seed, paired tests of
each method against vanilla over seeds with Holm's correction, and the Friedman test with
average ranks (and the Nemenyi critical difference) across datasets.

* **Intervals** (:func:`bootstrap_runs`): percentile bootstrap of a setting's seed-mean from
  its runs' ``predictions.csv``. ``kind="seeds+samples"`` (the default) is a two-stage
  bootstrap: each resample draws the seeds with replacement, then, for each drawn seed, the
  test samples (patients, ``patient_id``, when the dataset has them; else images) with
  replacement, and averages the metric over the drawn seeds, so seed-to-seed variation and
  test-set variation are both in the interval. ``kind="samples"`` resamples only the test
  samples (one draw shared by all seeds): the interval of the seed-mean *for these trained
  models*, narrower because it leaves the training seed out. Seeded: the same seed gives the
  same interval. Segmentation runs resample their images' Dice and IoU
  (:class:`SegmentationPredictions`).
* **Paired test** (:func:`paired_test`): over seeds, pairing a method's run with vanilla's run
  of the same seed; ``ttest`` (:func:`scipy.stats.ttest_rel`, the default: with 3–5 seeds the
  exact Wilcoxon test cannot reach p < 0.05, its smallest two-sided p with 5 pairs is 0.0625)
  or ``wilcoxon`` (:func:`scipy.stats.wilcoxon`). A comparison is *testable* only with at least
  :data:`MIN_PAIRS` (3) paired seeds whose differences vary: fewer pairs, or a constant non-zero
  difference (zero variance: the t statistic is infinite, which says nothing about the next
  seed), give ``p = nan`` and a reason; identical values give p = 1.
* **Holm** (:func:`holm`): step-down adjusted p-values over the testable methods compared
  with vanilla (one family per metric and table). A significant comparison carries its
  direction (:attr:`Comparison.direction`: ``better`` or ``worse`` than vanilla by the metric's
  direction; ``higher``/``lower`` for a metric without one).
* **Friedman** (:func:`friedman`): datasets are blocks, methods are treatments; the
  statistic :math:`\chi^2_F` (:func:`scipy.stats.friedmanchisquare`) and Iman and Davenport's
  :math:`F_F = \frac{(N-1)\chi^2_F}{N(k-1)-\chi^2_F}` with :math:`(k-1, (k-1)(N-1))` degrees
  of freedom (less conservative; Demšar 2006), average ranks with rank 1 = best (ties
  averaged), and Nemenyi's critical difference
  :math:`CD = \frac{q_\alpha}{\sqrt2}\sqrt{k(k+1)/(6N)}`, with :math:`q_\alpha` the upper
  :math:`\alpha` quantile of the studentized range of :math:`k` means with infinite degrees of
  freedom (:data:`scipy.stats.studentized_range`). Ranks may only be read pairwise (the CD
  diagram) when the omnibus test rejects (:attr:`FriedmanResult.significant`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.bench.equivalence import POWER, paired_mde, paired_tost, seeds_to_decide
from fairbench.core.errors import FairbenchError
from fairbench.metrics import (
    GroupConfusion,
    Interval,
    bootstrap_ci,
    count_metrics,
    evaluate_classification,
    evaluate_segmentation,
    flatten,
    higher_is_better,
    two_stage_bootstrap_ci,
)
from fairbench.metrics.catalog import COUNT_UTILITY, EQUALIZED_ODDS

#: fewest paired seeds a comparison against vanilla needs to be tested at all
MIN_PAIRS = 3
#: interval kinds of :func:`bootstrap_runs`
CI_KINDS = ("seeds+samples", "samples")


# -- paired tests -----------------------------------------------------------------------------
def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def untestable_reason(a: Sequence[float], b: Sequence[float], *,
                      min_pairs: int = MIN_PAIRS) -> str | None:
    """Why a paired comparison of ``a`` and ``b`` cannot be tested (``None`` when it can):
    fewer than ``min_pairs`` complete pairs, or a constant non-zero difference."""
    x, y = _paired(a, b)
    if len(x) < min_pairs:
        return f"{len(x)} paired seed{'s' if len(x) != 1 else ''} (a test needs {min_pairs})"
    d = x - y
    if not np.allclose(d, 0) and np.allclose(d, d[0]):
        return "the same difference on every seed (zero variance: not testable)"
    return None


def paired_test(a: Sequence[float], b: Sequence[float], *, test: str = "ttest",
                min_pairs: int = MIN_PAIRS) -> float:
    """Two-sided p-value of a paired test between ``a`` and ``b`` (same order = same seed).

    ``nan`` when the comparison is not testable (:func:`untestable_reason`); 1.0 when all
    differences are 0."""
    from scipy import stats

    if test not in ("ttest", "wilcoxon"):
        raise FairbenchError(f"unknown paired test {test!r}; use ttest or wilcoxon")
    if untestable_reason(a, b, min_pairs=min_pairs) is not None:
        return float("nan")
    x, y = _paired(a, b)
    if np.allclose(x - y, 0):
        return 1.0
    if test == "ttest":
        return float(stats.ttest_rel(x, y).pvalue)
    return float(stats.wilcoxon(x, y).pvalue)


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
    """A method against the reference (vanilla) on one metric, paired by seed; with an
    equivalence ``margin``, also the equivalence test, the minimal detectable effect and the
    seeds that would decide it (:mod:`fairbench.bench.equivalence`)."""

    method: str
    reference: str
    metric: str
    n_pairs: int
    mean_diff: float
    p: float
    p_holm: float
    significant: bool
    #: why the comparison was not tested (too few seeds, zero variance), else None
    untestable: str | None = None
    alpha: float = 0.05
    #: ±δ of the equivalence test (a fraction, as the metric), None: no equivalence test
    margin: float | None = None
    #: the paired TOST p-value, Holm-adjusted over the same methods
    p_equivalence: float = math.nan
    #: sd of the paired differences and the minimal detectable effect at the Holm level
    sd_diff: float = math.nan
    mde: float = math.nan
    #: seeds at which the observed mean and sd would decide an undecided comparison
    seeds_needed: int | None = None

    @property
    def direction(self) -> str | None:
        """``better``/``worse`` than the reference by the metric's direction (``higher``/
        ``lower`` for a metric without one); ``None`` unless significant."""
        if not self.significant or not math.isfinite(self.mean_diff) or self.mean_diff == 0:
            return None
        hib = higher_is_better(self.metric)
        if hib is None:
            return "higher" if self.mean_diff > 0 else "lower"
        return "better" if (self.mean_diff > 0) == hib else "worse"

    @property
    def equivalent(self) -> bool:
        """Within ±margin of the reference (Holm-adjusted TOST p < alpha)."""
        return bool(math.isfinite(self.p_equivalence) and self.p_equivalence < self.alpha)

    @property
    def verdict(self) -> str | None:
        """``better``/``worse`` (or ``higher``/``lower``), else ``equivalent`` within the
        margin, else ``undecided``; ``None`` without a margin (only the difference is
        tested) or when the comparison is not testable."""
        if self.direction is not None:
            return self.direction
        if self.margin is None or self.untestable is not None:
            return None
        return "equivalent" if self.equivalent else "undecided"


def compare_to_reference(values: Mapping[str, Mapping[int, float]], reference: str, metric: str,
                         *, test: str = "ttest", alpha: float = 0.05,
                         min_pairs: int = MIN_PAIRS, margin: float | None = None,
                         power: float = POWER) -> list[Comparison]:
    """Paired test of every method against ``reference`` over the seeds both have, Holm
    corrected over the testable methods. ``values[method][seed] = value``. With ``margin``
    (±δ, in the metric's units), also the paired TOST (Holm-adjusted over the same methods),
    the MDE at ``power`` and level alpha/m, and the seeds needed to decide."""
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
        reason = untestable_reason(a, b, min_pairs=min_pairs)
        p = paired_test(a, b, test=test, min_pairs=min_pairs)
        x, y = _paired(a, b)
        diff = float(np.mean(x - y)) if len(x) else float("nan")
        p_eq = (paired_tost(x, y, margin) if margin is not None and reason is None
                else float("nan"))
        sd = float(np.std(x - y, ddof=1)) if len(x) > 1 else float("nan")
        rows.append([method, len(x), diff, p, reason, p_eq, sd])
    adjusted = holm([r[3] for r in rows])
    adjusted_eq = holm([r[5] for r in rows])
    m = max(1, int(np.isfinite([r[3] for r in rows]).sum()))
    out = []
    for (name, n, d, p, reason, _, sd), ph, pe in zip(rows, adjusted, adjusted_eq):
        comp = Comparison(name, reference, metric, n, d, p, float(ph),
                          bool(np.isfinite(ph) and ph < alpha), reason, alpha)
        if margin is not None and reason is None:
            comp.margin, comp.p_equivalence, comp.sd_diff = margin, float(pe), sd
            comp.mde = paired_mde(sd, n, alpha / m, power)
            if comp.verdict == "undecided":
                comp.seeds_needed = seeds_to_decide(d, sd, n, margin, alpha / m, power)
        out.append(comp)
    return out


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
    #: Iman and Davenport's F statistic and its p-value
    f_statistic: float = float("nan")
    f_pvalue: float = float("nan")
    #: which omnibus test gates the pairwise reading: "chi2" (Friedman) or "iman_davenport"
    gate: str = "chi2"

    @property
    def n_methods(self) -> int:
        return len(self.avg_ranks)

    @property
    def gate_pvalue(self) -> float:
        return self.f_pvalue if self.gate == "iman_davenport" else self.pvalue

    @property
    def significant(self) -> bool:
        """Whether the omnibus test rejects "all methods rank alike" at ``alpha``: only then
        may the average ranks be compared pairwise (CD diagram)."""
        return bool(math.isfinite(self.gate_pvalue) and self.gate_pvalue < self.alpha)

    @property
    def gate_text(self) -> str:
        name = "Iman-Davenport F" if self.gate == "iman_davenport" else "Friedman chi2"
        verdict = "significant" if self.significant else "not significant"
        return f"{name} p = {self.gate_pvalue:.4f} ({verdict} at alpha {self.alpha:g})"


def average_ranks(scores: pd.DataFrame, *, higher_is_better: bool = True) -> pd.Series:
    """Mean rank of every column (method) over rows (datasets); rank 1 = best, ties averaged."""
    from scipy.stats import rankdata

    values = scores.to_numpy(dtype=float)
    ranks = np.vstack([rankdata(-row if higher_is_better else row) for row in values])
    return pd.Series(ranks.mean(axis=0), index=scores.columns)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's two-tailed critical value :math:`q_\\alpha/\\sqrt2` for ``k`` methods: the
    upper ``alpha`` quantile of the studentized range of ``k`` means (infinite degrees of
    freedom), over √2."""
    from scipy.stats import studentized_range

    if k < 2:
        raise FairbenchError(f"the critical difference needs at least 2 methods, not {k}")
    if not 0 < alpha < 1:
        raise FairbenchError(f"alpha must be between 0 and 1, not {alpha}")
    return float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks for ``k`` methods over ``n`` datasets."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def iman_davenport(chi2: float, k: int, n: int) -> tuple[float, float]:
    """Iman and Davenport's :math:`F_F` from Friedman's :math:`\\chi^2_F` and its p-value
    (F distribution with :math:`k-1` and :math:`(k-1)(n-1)` degrees of freedom)."""
    from scipy.stats import f as f_dist

    denom = n * (k - 1) - chi2
    if denom <= 0:  # perfect agreement of the rankings: F is infinite
        return float("inf"), 0.0
    ff = (n - 1) * chi2 / denom
    return float(ff), float(f_dist.sf(ff, k - 1, (k - 1) * (n - 1)))


def friedman(scores: pd.DataFrame, *, metric: str = "F1", alpha: float = 0.05,
             gate: str = "chi2") -> FriedmanResult:
    """Friedman test over ``scores`` (rows: datasets, columns: methods, no missing values)."""
    from scipy.stats import friedmanchisquare

    if gate not in ("chi2", "iman_davenport"):
        raise FairbenchError(f"unknown omnibus test {gate!r}; use chi2 or iman_davenport")
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
    ff, fp = iman_davenport(float(stat), k, n)
    ranks = average_ranks(scores, higher_is_better=hib)
    return FriedmanResult(metric, float(stat), float(p), ranks.to_dict(), n,
                          nemenyi_cd(k, n, alpha), alpha, ff, fp, gate)


# -- metrics from predictions (fast path for the bootstrap) ------------------------------------
def prediction_metrics(y: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                       names: Sequence[str], n_classes: int, *,
                       keys: Sequence[str] | None = None) -> dict[str, float]:
    """Flat prediction-based metrics (accuracy, precision, recall, F1 overall, per group and
    as Avg/Diff/gap/worst; EqOddsGap and the papers' EOpp0, EOpp1, EOdd), the same as
    :func:`fairbench.metrics.evaluate_classification`'s, from the group-wise confusion counts
    (:func:`fairbench.metrics.count_metrics`). With ``keys``, only the family that holds them
    is computed (the equalized-odds family, or the precision/recall/F1 family): the bootstrap
    asks for one metric per resample."""
    cm = GroupConfusion.from_labels(y, pred, groups, n_groups=len(names), n_classes=n_classes)
    families = []
    if keys is None or any(key not in EQUALIZED_ODDS for key in keys):
        families.append("utility")
    if keys is None or any(key in EQUALIZED_ODDS for key in keys):
        families.append("equalized_odds")
    return count_metrics(cm, names, families=families)


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
    #: the predictions of the counterfactual twins (synthetic data), else None
    twin_pred: np.ndarray | None = None

    @classmethod
    def read(cls, run_dir: str | Path, *, part: str = "test",
             config: Mapping[str, Any] | None = None,
             label_column: str = "label") -> RunPredictions:
        """``label_column``: ``label`` (observed) or ``true_label`` (synthetic data)."""
        df, config, groups, clusters = _read_part(run_dir, part, config)
        if label_column not in df.columns:
            raise FairbenchError(f"{str(run_dir)!r}: predictions.csv lacks column "
                                 f"{label_column!r} (true labels exist for synthetic data only)")
        probs = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy(dtype=float)
        twin = (df["twin_pred"].to_numpy() if "twin_pred" in df.columns
                and df["twin_pred"].notna().all() else None)
        return cls(df["sample_id"].to_numpy(), df[label_column].to_numpy(dtype=np.int64),
                   df["pred"].to_numpy(dtype=np.int64), probs, groups,
                   list(config["groups"]), clusters,
                   None if twin is None else twin.astype(np.int64))

    def metric(self, key: str, idx: np.ndarray | None = None) -> float:
        sel = slice(None) if idx is None else idx
        y, pred, g = self.y[sel], self.pred[sel], self.groups[sel]
        if key == "flip_rate":  # the counterfactual twins' share of changed predictions
            if self.twin_pred is None:
                return float("nan")
            return float((pred != self.twin_pred[sel]).mean())
        if _fast_key(key):
            return prediction_metrics(y, pred, g, self.names, self.probs.shape[1],
                                      keys=(key,)).get(key, float("nan"))
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
    return base in COUNT_UTILITY or key in EQUALIZED_ODDS


def bootstrap_runs(runs: Sequence[RunPredictions] | Sequence[SegmentationPredictions], key: str,
                   *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                   kind: str = "seeds+samples") -> Interval:
    """Bootstrap interval of the seed-mean of ``key`` over the runs (one per seed) and their
    shared test samples, resampling patients where known; ``kind`` as in the module docstring
    (``seeds+samples``: two-stage, seeds then samples; ``samples``: samples only)."""
    if kind not in CI_KINDS:
        raise FairbenchError(f"unknown interval kind {kind!r}; use {' or '.join(CI_KINDS)}")
    if not runs:
        raise FairbenchError("no runs to bootstrap")
    ids = runs[0].sample_id
    for r in runs[1:]:
        if len(r.sample_id) != len(ids) or not np.array_equal(r.sample_id, ids):
            raise FairbenchError("runs to bootstrap together must share their test samples "
                                 "(the same split)")
    clusters = runs[0].clusters
    if kind == "seeds+samples":
        return two_stage_bootstrap_ci(lambda unit, idx: runs[unit].metric(key, idx), len(runs),
                                      len(ids), n_resamples=n_resamples,
                                      confidence=confidence, seed=seed, clusters=clusters)

    def seed_mean(idx: np.ndarray) -> float:
        return float(np.mean([r.metric(key, idx) for r in runs]))

    return bootstrap_ci(seed_mean, len(ids), n_resamples=n_resamples, confidence=confidence,
                        seed=seed, clusters=clusters)
