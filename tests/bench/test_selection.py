"""Selection rules on hand-made candidates, rule parsing, and the validation-chosen threshold
of binary tasks (unit and through a real run)."""

from __future__ import annotations

import numpy as np
import pytest

from fairbench import FairbenchError
from fairbench.bench.selection import Candidate, pareto_front, parse_rule, select


def cand(key, f1, eodd, light, dark, auc=0.8):
    val = {"F1": f1, "EqOddsGap": eodd, "EOdd": eodd, "AUC": auc, "light.F1": light, "dark.F1": dark,
           "worst.F1": min(light, dark), "gap.F1": abs(light - dark)}
    return Candidate(key, {"k": key}, val, ["light", "dark"])


VANILLA = cand("vanilla", 0.80, 0.20, 0.85, 0.60)


CANDS = [
    cand("a", 0.81, 0.15, 0.86, 0.62),   # within eps, fairer than vanilla
    cand("b", 0.79, 0.05, 0.80, 0.70),   # within eps (0.02), fairest of those
    cand("c", 0.70, 0.01, 0.72, 0.71),   # fairest overall but F1 too low
    cand("d", 0.84, 0.30, 0.90, 0.58, auc=0.9),   # best F1 and AUC
    cand("e", 0.75, 0.10, 0.75, 0.74),   # best worst-group
    cand("f", 0.70, 0.12, 0.74, 0.69),   # dominated by e on group scores
]


def test_best_f1_and_auc():
    assert select(CANDS, "best_f1").candidate.key == "d"
    assert select(CANDS, "best_auc").candidate.key == "d"
    assert select(CANDS, "best:metric=EOdd").candidate.key == "c"  # lower is better


def test_worst_group():
    s = select(CANDS, "worst_group")
    assert s.candidate.key == "e"
    assert "worst.F1" in s.reason


def test_fair_within_eps_default_and_fallback():
    s = select(CANDS, None, reference=VANILLA)
    assert s.rule == "fair_within_eps"
    assert s.candidate.key == "b"
    assert sorted(s.eligible) == ["a", "b", "d"]
    assert "within 0.02 of vanilla" in s.reason
    # a larger epsilon admits c, the fairest overall
    assert select(CANDS, "fair_within_eps:eps=0.1", reference=VANILLA).candidate.key == "c"
    # nobody within eps of a very good reference: highest validation F1, said so
    strong = cand("v", 0.95, 0.2, 0.95, 0.95)
    s = select(CANDS, "fair_within_eps", reference=strong)
    assert s.candidate.key == "d" and "fell back" in s.reason
    # another fairness metric
    s = select(CANDS, "fair_within_eps:fairness=gap.F1", reference=VANILLA)
    assert s.candidate.key == "b"


def test_minimax_pareto():
    scores = np.array([[c.val["light.F1"], c.val["dark.F1"]] for c in CANDS])
    front = {CANDS[i].key for i in pareto_front(scores)}
    assert front == {"a", "b", "d", "e"}  # c and f are dominated by e
    # vanilla's worst group is dark: the Pareto point best on dark is e
    s = select(CANDS, "minimax_pareto", reference=VANILLA)
    assert s.candidate.key == "e" and "dark" in s.reason
    # without a reference: best worst group of the Pareto set (e again)
    assert select(CANDS, "minimax_pareto").candidate.key == "e"


def test_dto_by_hand():
    scores = np.array([[c.val["light.F1"], c.val["dark.F1"]] for c in CANDS])
    utopia = scores.max(axis=0)
    expected = CANDS[int(np.argmin(np.sqrt(((utopia - scores) ** 2).sum(1))))].key
    assert select(CANDS, "dto").candidate.key == expected == "b"


def test_ties_are_deterministic():
    twins = [cand("z", 0.8, 0.1, 0.8, 0.8), cand("y", 0.8, 0.1, 0.8, 0.8)]
    assert select(twins, "best_f1").candidate.key == "y"
    assert select(list(reversed(twins)), "best_f1").candidate.key == "y"


def test_single_candidate():
    s = select([CANDS[0]], "dto")
    assert s.candidate.key == "a" and s.reason == "single setting"


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown selection rule"),
    ("fair_within_eps:delta=1", "has no option 'delta'"),
    ("fair_within_eps:eps=-1", "must be a number >= 0"),
    ("best:metric=F2", "is not a metric"),
    ("worst_group:metric=EOdd", "higher-is-better"),
    ("best:metric", "malformed rule option"),
])
def test_bad_rules(spec, message):
    with pytest.raises(FairbenchError, match=message):
        parse_rule(spec)


def test_rule_round_trip():
    assert str(parse_rule("fair_within_eps")) == "fair_within_eps"
    assert str(parse_rule({"rule": "fair_within_eps", "epsilon": 0.05})) == "fair_within_eps:eps=0.05"
    assert str(parse_rule("best_auc")) == "best_auc"
