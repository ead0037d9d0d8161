"""Seeded percentile-bootstrap confidence intervals, optionally resampling clusters (patients),
over one model's samples (:func:`bootstrap_ci`) or over seeds and then samples
(:func:`two_stage_bootstrap_ci`)."""

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
    members = _cluster_members(n, clusters)
    values = np.array([statistic(_draw(rng, n, members)) for _ in range(n_resamples)])
    return _percentile_interval(values, estimate, confidence)


def _draw(rng: np.random.Generator, n: int, members: list[np.ndarray] | None) -> np.ndarray:
    """One resample of row indices: ``n`` rows with replacement, or as many clusters as
    there are (with replacement), all rows of each."""
    if members is None:
        return rng.integers(0, n, n)
    pick = rng.integers(0, len(members), len(members))
    return np.concatenate([members[k] for k in pick])


def _percentile_interval(values: np.ndarray, estimate: float, confidence: float) -> Interval:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return Interval(estimate, float("nan"), float("nan"), confidence)
    lo, hi = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(estimate, float(lo), float(hi), confidence)


def _cluster_members(n: int, clusters: np.ndarray | None) -> list[np.ndarray] | None:
    if clusters is None:
        return None
    uniq, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
    return np.split(order, bounds)


def two_stage_bootstrap_ci(
    statistic: Callable[[int, np.ndarray], float],
    n_units: int,
    n: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> Interval:
    r"""Two-stage (hierarchical) percentile bootstrap of the mean over ``n_units`` units
    (training seeds) of ``statistic(unit, indices)`` over ``n`` rows shared by every unit.

    The estimate is :math:`\bar\theta = \frac1S\sum_s \theta_s(\text{all rows})`. Each resample
    draws :math:`S` units with replacement, :math:`s_1^*, \dots, s_S^*`; for each drawn unit
    independently it draws :math:`n` rows with replacement (or, with ``clusters``, as many
    clusters as there are, taking all their rows), :math:`I_j^*`, and records
    :math:`\bar\theta^* = \frac1S\sum_j \theta_{s_j^*}(I_j^*)`. The interval is the
    :math:`(\frac{1-\gamma}2, \frac{1+\gamma}2)` quantiles of the finite :math:`\bar\theta^*`
    (:math:`\gamma` = ``confidence``), so it carries both the between-unit (seed) and the
    within-unit (test sample) variation. With one unit it is the one-stage bootstrap of that
    unit. The same seed gives the same interval.
    """
    if n_units < 1:
        raise ValueError("two_stage_bootstrap_ci needs at least one unit")
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([statistic(u, np.arange(n)) for u in range(n_units)]))
    members = _cluster_members(n, clusters)
    values = np.empty(n_resamples)
    for b in range(n_resamples):
        units = rng.integers(0, n_units, n_units)
        values[b] = sum(statistic(int(u), _draw(rng, n, members)) for u in units) / n_units
    return _percentile_interval(values, estimate, confidence)
