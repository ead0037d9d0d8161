"""Decided comparisons with vanilla: the paired TOST, the minimal detectable effect and the
seeds that would decide a cell, each against statsmodels (an independent implementation), and
the verdicts the leaderboard and the matrix print."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fairbench.bench.equivalence import (
    equivalence_decides,
    paired_mde,
    paired_tost,
    seeds_to_decide,
)
from fairbench.bench.stats import compare_to_reference

statsmodels = pytest.importorskip("statsmodels")
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [3, 5, 12])
def test_paired_tost_is_statsmodels_ttost_paired(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.5, 0.05, n)
    b = a + rng.normal(rng.uniform(-0.03, 0.03), 0.01, n)
    for margin in (0.005, 0.02, 0.05):
        expected = ttost_paired(a, b, -margin, margin)[0]
        assert paired_tost(a, b, margin) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("n,alpha", [(3, 0.05), (5, 0.05), (10, 0.01), (30, 0.05)])
def test_mde_is_statsmodels_solve_power_times_the_sd(n: int, alpha: float) -> None:
    d = TTestPower().solve_power(nobs=n, alpha=alpha, power=0.8, alternative="two-sided")
    for sd in (0.01, 0.3):
        assert paired_mde(sd, n, alpha) == pytest.approx(d * sd, rel=1e-6)


def _power_by_quadrature(effect: float, n: int, alpha: float) -> float:
    """P(|T'| > c) for T' = (Z + λ) / sqrt(V / df), integrated over V ~ chi2(df): no use of
    scipy's noncentral t (whose far tail is nan at small alpha, and statsmodels' with it)."""
    from scipy import integrate, stats

    df, lam = n - 1, effect * math.sqrt(n)
    c = stats.t.ppf(1 - alpha / 2, df)

    def density(v: float) -> float:
        s = math.sqrt(v / df)
        return (stats.norm.sf(c * s - lam) + stats.norm.cdf(-c * s - lam)) * stats.chi2.pdf(v, df)

    return integrate.quad(density, 0, np.inf, limit=200)[0]


@pytest.mark.parametrize("n,alpha", [(5, 0.05 / 14), (6, 0.05 / 3), (4, 0.001)])
def test_mde_at_holm_levels_has_80_percent_power_by_quadrature(n: int, alpha: float) -> None:
    """At the Holm family's strict levels statsmodels' power is nan (scipy's nct tail);
    the MDE is checked by integrating the noncentral t's definition instead."""
    mde = paired_mde(1.0, n, alpha)
    assert _power_by_quadrature(mde, n, alpha) == pytest.approx(0.8, abs=1e-6)
    assert _power_by_quadrature(mde * 0.97, n, alpha) < 0.8


def test_mde_edge_cases() -> None:
    assert math.isnan(paired_mde(0.1, 1, 0.05)) and paired_mde(0.0, 5, 0.05) == 0.0


def _decides_by_statsmodels(mean: float, sd: float, k: int, margin: float, alpha: float
                            ) -> bool:
    """The definition of deciding at k seeds, with statsmodels' power and scipy's t."""
    from scipy import stats

    power = _power_by_quadrature(abs(mean) / sd, k, alpha)
    equivalent = margin - abs(mean) >= stats.t.ppf(1 - alpha, k - 1) * sd / math.sqrt(k)
    return bool(power >= 0.8 - 1e-9 or equivalent)


@pytest.mark.parametrize("mean,sd,margin", [(0.01, 0.03, 0.02), (0.05, 0.04, 0.02),
                                            (0.0, 0.02, 0.02), (0.019, 0.01, 0.02),
                                            (0.004, 0.006, 0.02)])
def test_seeds_to_decide_is_the_first_k_that_decides(mean: float, sd: float,
                                                     margin: float) -> None:
    alpha = 0.05 / 14
    k = seeds_to_decide(mean, sd, 5, margin, alpha)
    brute = next((j for j in range(5, 201) if _decides_by_statsmodels(mean, sd, j, margin,
                                                                      alpha)), None)
    assert k == brute


def test_a_difference_at_the_margin_itself_never_decides() -> None:
    # no difference to detect at this sd within 200 seeds, and equivalence needs |mean| < δ
    assert seeds_to_decide(0.02, 1.0, 5, 0.02, 0.05) is None
    assert not equivalence_decides(0.02, 0.0001, 100, 0.02, 0.05)


def _values(rng: np.random.Generator, shift: float, noise: float, n: int = 6
            ) -> dict[int, float]:
    base = rng.normal(0.4, 0.05, n)
    return {s: float(base[s] + shift + rng.normal(0, noise)) for s in range(n)}


def test_verdicts_of_a_built_family_against_statsmodels() -> None:
    """Three methods against vanilla: one equivalent (tiny, consistent noise), one clearly
    worse (F1 down 10 points), one too noisy to tell. The verdicts, the Holm-adjusted TOST
    p-values and the MDEs are recomputed with statsmodels."""
    rng = np.random.default_rng(3)
    vanilla = {s: float(v) for s, v in enumerate(rng.normal(0.8, 0.02, 6))}
    values = {"vanilla": vanilla,
              "same": {s: v + float(rng.normal(0, 0.002)) for s, v in vanilla.items()},
              "worse": {s: v - 0.10 + float(rng.normal(0, 0.005)) for s, v in vanilla.items()},
              "noisy": {s: v + float(rng.normal(0, 0.05)) for s, v in vanilla.items()}}
    comps = {c.method: c for c in compare_to_reference(values, "vanilla", "F1", margin=0.02)}
    assert comps["same"].verdict == "equivalent"
    assert comps["worse"].verdict == "worse"
    assert comps["noisy"].verdict == "undecided"
    assert comps["noisy"].seeds_needed is None or comps["noisy"].seeds_needed > 6
    names = ["same", "worse", "noisy"]
    raw = [ttost_paired(np.array(list(values[m].values())), np.array(list(vanilla.values())),
                        -0.02, 0.02)[0] for m in names]
    holm = multipletests(raw, method="holm")[1]
    for m, p in zip(names, holm):
        assert comps[m].p_equivalence == pytest.approx(p, rel=1e-9)
        d = np.array(list(values[m].values())) - np.array(list(vanilla.values()))
        assert _power_by_quadrature(comps[m].mde / d.std(ddof=1), 6, 0.05 / 3) == (
            pytest.approx(0.8, abs=1e-6))


def test_no_margin_keeps_the_difference_test_only() -> None:
    rng = np.random.default_rng(0)
    values = {"vanilla": _values(rng, 0, 0.01), "m": _values(rng, 0, 0.01)}
    (comp,) = compare_to_reference(values, "vanilla", "F1")
    assert comp.verdict is None and math.isnan(comp.p_equivalence)


def test_matrix_and_leaderboard_print_the_verdicts(tmp_path) -> None:
    """A runs folder where one method is equivalent to vanilla and one is undecided: the
    compact view marks them ≈ and ?k, the frame carries verdict, p_equivalence, mde and
    seeds_needed, and the notes count the decided comparisons."""
    from bench_helpers import make_run_with_metrics

    from fairbench import leaderboard

    rng = np.random.default_rng(1)
    for seed in range(5):
        base = 0.8 + float(rng.normal(0, 0.02))
        for method, f1 in (("vanilla", base), ("same", base + float(rng.normal(0, 0.001))),
                           ("noisy", base + float(rng.normal(0, 0.06)))):
            make_run_with_metrics(tmp_path, method=method, seed=seed,
                                  test={"F1": f1, "EqOddsGap": 0.3, "worst": {"F1": f1 - 0.1}})
    board = leaderboard(tmp_path, rule="best_f1", margins={"F1": 0.02})
    md = board.render("md", "compact")
    row = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "≈" in row["same"].split("|")[2]
    assert "?" in row["noisy"].split("|")[2]
    frame = board.to_frame("compact").set_index("method")
    assert frame.loc["same", "F1_verdict"] == "equivalent"
    assert frame.loc["noisy", "F1_verdict"] == "undecided"
    assert frame.loc["same", "F1_p_equivalence"] < 0.05
    assert "decided 1 of 2 comparisons with a margin" in md
