"""Seeded percentile-bootstrap confidence intervals, optionally resampling clusters (patients)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval at ``confidence``."""

    estimate: float
    low: float
    high: float
    confidence: float


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> Interval:
    r"""Percentile bootstrap of ``statistic(indices)`` over ``n`` rows.

    Each resample draws :math:`n` row indices with replacement (or, with ``clusters``, as many
    clusters as there are, with replacement, taking all their rows), evaluates the statistic,
    and the interval is the :math:`(\frac{1-\gamma}2, \frac{1+\gamma}2)` quantiles of the
    finite values, :math:`\gamma` = ``confidence``. The same seed gives the same interval.
    """
    rng = np.random.default_rng(seed)
    estimate = float(statistic(np.arange(n)))
    values = np.empty(n_resamples)
    if clusters is not None:
        clusters = np.asarray(clusters)
        uniq, inverse = np.unique(clusters, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    for b in range(n_resamples):
        if clusters is None:
            idx = rng.integers(0, n, n)
        else:
            pick = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[k] for k in pick])
        values[b] = statistic(idx)
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return Interval(estimate, float("nan"), float("nan"), confidence)
    lo, hi = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(estimate, float(lo), float(hi), confidence)
