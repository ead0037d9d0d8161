"""``fairbench.run.posthoc``: the balanced group score sets the curvature-based methods draw
from the training split."""

from __future__ import annotations

import numpy as np
import pytest

from fairbench import FairbenchError


# -- group score sets --------------------------------------------------------------------------
class FakeTable:
    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes

    def attr(self, name: str) -> np.ndarray:
        assert name == "tone"
        return self.codes


class FakeContext:
    """Just what ``balanced_score_sets`` reads: train positions, the attribute codes, the
    privileged code and the run seed."""

    attribute = "tone"

    def __init__(self, codes, train, privileged: int, seed: int = 0) -> None:
        self.table = FakeTable(np.asarray(codes))
        self.train = np.asarray(train)
        self.privileged = privileged
        self.seed = seed

    def positions(self, part: str) -> np.ndarray:
        assert part == "train"
        return self.train


def test_balanced_score_sets():
    from fairbench.run.posthoc import balanced_score_sets

    rng = np.random.default_rng(0)
    codes = rng.choice([0, 1, -1], size=200, p=[0.7, 0.2, 0.1])  # -1: attribute missing
    train = np.sort(rng.choice(200, 150, replace=False))
    ctx = FakeContext(codes, train, privileged=0)
    priv_all = train[codes[train] == 0]
    unpriv_all = train[codes[train] == 1]
    assert len(unpriv_all) < len(priv_all)
    u, p = balanced_score_sets(ctx, seed=1)
    assert np.array_equal(u, unpriv_all)  # the whole smaller group
    assert len(p) == len(u) and len(set(p)) == len(p) and set(p) <= set(priv_all)
    assert np.array_equal(p, np.sort(p))
    u2, p2 = balanced_score_sets(ctx, seed=1)
    assert np.array_equal(p, p2)  # seeded
    draws = {tuple(balanced_score_sets(ctx, seed=s)[1]) for s in range(2, 6)}
    assert len(draws) > 1  # a different step draws another subset
    u3, p3 = balanced_score_sets(ctx, seed=1, max_per_group=5)
    assert len(u3) == len(p3) == 5 and set(u3) <= set(unpriv_all)
    # with the privileged group the smaller one, it is taken whole
    ctx_p = FakeContext(codes, train, privileged=1)
    u4, p4 = balanced_score_sets(ctx_p, seed=0)
    assert np.array_equal(p4, unpriv_all) and len(u4) == len(p4)
    # three groups: every non-privileged group is pooled
    codes3 = np.where(np.arange(200) % 5 == 0, 2, codes)
    ctx3 = FakeContext(codes3, train, privileged=1)
    u5, p5 = balanced_score_sets(ctx3, seed=0)
    assert set(codes3[u5]) <= {0, 2} and len(u5) == len(p5) == int((codes3[train] == 1).sum())
    # a group without training samples is a clear error
    with pytest.raises(FairbenchError, match="no training samples"):
        balanced_score_sets(FakeContext(np.zeros(10, int), np.arange(10), privileged=0), seed=0)
