r"""Deciding a comparison with vanilla: the paired equivalence test, the minimal detectable
effect and the seeds a comparison needs.

A cell of a leaderboard or of the mechanism matrix compares a method with vanilla over the
:math:`n` seeds both have, through the paired differences :math:`d_s=\theta_{m,s}-\theta_{v,s}`
(mean :math:`\bar d`, sample sd :math:`s_d`, :math:`\mathrm{se}=s_d/\sqrt n`). Besides the
difference test that marks ▲/▼ (:func:`fairbench.bench.stats.compare_to_reference`), it
reads:

* **Equivalence within ±δ** (the suite's ``equivalence_margin``), by Schuirmann's two
  one-sided tests on the paired differences:

  .. math:: t_\ell = \frac{\bar d+\delta}{\mathrm{se}},\quad
            t_u = \frac{\bar d-\delta}{\mathrm{se}},\quad
            p_{\mathrm{TOST}} = \max\big(1-F_{n-1}(t_\ell),\; F_{n-1}(t_u)\big)

  (:math:`F_{n-1}` the Student t cdf); the difference lies within ±δ when
  :math:`p_{\mathrm{TOST}}<\alpha`. This is statsmodels' ``ttost_paired(a, b, -δ, δ)``.
* **Minimal detectable effect** (MDE) at power :math:`1-\beta` (80 % by default): the smallest
  :math:`|\Delta|` the two-sided paired t-test at level :math:`\alpha'` detects with that power
  at the observed :math:`s_d`, i.e. :math:`\mathrm{MDE}=\lambda^*s_d/\sqrt n` where the
  noncentrality :math:`\lambda^*` solves

  .. math:: P\big(|T'_{n-1,\lambda}| > t_{1-\alpha'/2,\,n-1}\big) = 1-\beta

  (:math:`T'` the noncentral t). The level is the strictest step of the Holm family the cell
  is marked in, :math:`\alpha'=\alpha/m` with :math:`m` testable methods, so the MDE is the
  effect the cell is sure to have been able to see. This is statsmodels'
  ``TTestPower().solve_power(nobs=n, alpha=α', power=1-β)`` times :math:`s_d`.
* **Seeds to decide**: the smallest :math:`n'\ge n` at which the observed :math:`\bar d` and
  :math:`s_d` would decide the cell: :math:`|\bar d|\ge\mathrm{MDE}(n')` (a difference at the
  stated power) or :math:`\delta-|\bar d|\ge t_{1-\alpha',\,n'-1}\,s_d/\sqrt{n'}` (equivalence
  at the observed values). ``None`` when no :math:`n'\le` ``max_seeds`` does (an observed
  difference at the margin itself decides neither way).

The tests and the power use the t distribution whatever paired test marks ▲/▼ (``wilcoxon``
included): they are the planning quantities, stated as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: the power a minimal detectable effect and the seeds needed are computed at
POWER = 0.8
#: the most seeds :func:`seeds_to_decide` considers
MAX_SEEDS = 200


def paired_tost(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """p-value of the paired two one-sided tests that ``a - b`` lies within ±``margin``
    (see the module docstring); ``nan`` with fewer than 2 pairs. Zero variance: 0 when the
    constant difference lies strictly inside the margin, else 1."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2 or not margin > 0:
        return math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    p_lower = float(stats.t.sf((mean + margin) / se, n - 1))
    p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))
    return max(p_lower, p_upper)


def _power(noncentrality: float, n: int, alpha: float) -> float:
    from scipy import stats

    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    upper = float(stats.nct.sf(crit, n - 1, noncentrality))
    # the far tail P(T' < -crit): scipy returns nan where it is far below double precision
    lower = float(stats.nct.cdf(-crit, n - 1, noncentrality))
    return upper + (lower if math.isfinite(lower) else 0.0)


def paired_mde(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """Minimal detectable effect of a two-sided paired t-test over ``n`` pairs whose
    differences have sd ``sd``, at level ``alpha`` and ``power`` (module docstring); ``nan``
    with fewer than 2 pairs or a non-finite sd, 0 with sd 0."""
    from scipy.optimize import brentq

    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    upper = 1.0
    while _power(upper, n, alpha) < power:
        upper *= 2
    lam = brentq(lambda nc: _power(nc, n, alpha) - power, 0.0, upper, xtol=1e-10)
    return lam * sd / math.sqrt(n)


def equivalence_decides(mean: float, sd: float, n: int, margin: float, alpha: float) -> bool:
    """Whether a one-sided bound at level ``alpha`` around the observed ``mean`` lies inside
    ±``margin`` with ``n`` pairs of sd ``sd`` (TOST at the observed values)."""
    from scipy import stats

    if n < 2:
        return False
    return margin - abs(mean) >= float(stats.t.ppf(1 - alpha, n - 1)) * sd / math.sqrt(n)


def _first(condition: object, low: int, high: int) -> int | None:
    """The smallest k in [low, high] with ``condition(k)``, for a condition that stays true
    once it holds (bisection); ``None`` when ``condition(high)`` is false."""
    if not condition(high):  # type: ignore[operator]
        return None
    while low < high:
        mid = (low + high) // 2
        if condition(mid):  # type: ignore[operator]
            high = mid
        else:
            low = mid + 1
    return low


def seeds_to_decide(mean: float, sd: float, n: int, margin: float | None, alpha: float,
                    power: float = POWER, max_seeds: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (at least ``n``, at least 2) at which the observed ``mean`` and ``sd``
    of the paired differences would decide the comparison (module docstring); ``None`` when
    none up to ``max_seeds`` would. Both conditions only get easier with more seeds, so each
    is found by bisection."""
    if not (math.isfinite(mean) and math.isfinite(sd)):
        return None
    low = max(n, 2)
    if low > max_seeds:
        return None
    found = []
    if abs(mean) > 0:
        found.append(_first(lambda k: abs(mean) >= paired_mde(sd, k, alpha, power),
                            low, max_seeds))
    if margin is not None:
        found.append(_first(lambda k: equivalence_decides(mean, sd, k, margin, alpha),
                            low, max_seeds))
    found = [k for k in found if k is not None]
    return min(found) if found else None
