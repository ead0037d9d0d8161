r"""An equal tuning budget: every method of a suite gets the same number of trials.

A suite's ``tuning = { trials = K, seed = 0 }`` gives each method entry ``K`` settings
(*trials*) instead of its grid. Trial 0 is the entry as written (its ``params`` on top of the
method's defaults); trials 1..K−1 draw every parameter of the method's search space
(:func:`fairbench.core.params.search_space`: the ``search=`` ranges its ``Params`` declare,
shown by ``fairbench list methods -v`` as ``tuned: …``) that the entry does not fix, by a
seeded Latin hypercube over those dimensions (scipy's ``qmc.LatinHypercube``: each
dimension's range cut into K−1 equal-probability strata, one draw in each, so that a small
budget still spans every range; log-uniform ranges in log space). The draws depend on the
suite's tuning seed and the entry's label only, so the same suite always expands to the same
trials and a sweep resumes them.

Each trial is an ordinary setting: one run per seed in its own run folder (its parameters are
its identity), and the leaderboard picks one per method by the suite's selection rule on
validation metrics, as it does for a grid, and says of how many settings it chose. A method
whose search space is empty (``vanilla``, ``bn_recalibrate``, ``me_vanilla``, ``resampling``)
has nothing to tune: it runs once, and the leaderboard's row says 1 setting.

What the budget does not equalise: choices a method makes *inside* one run on validation
(FairPrune's β × ratio grid when ``beta``/``ratio`` are not given, ME-FairPrune's τ,
FairQuantize's and APPLE's checkpoints, SNNL's rounds) are part of the method as published;
a trial that fixes ``beta`` and ``ratio`` (trials 1..K−1 of FairPrune) evaluates one candidate.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fairbench.core.errors import FairbenchError
from fairbench.core.params import Search

#: the most trials a suite may ask per method (each is one run per seed and dataset)
MAX_TRIALS = 1000


@dataclass(frozen=True)
class Tuning:
    """A suite's tuning budget: ``trials`` settings per method entry, drawn with ``seed``."""

    trials: int
    seed: int = 0


def parse_tuning(value: Any, where: str) -> Tuning | None:
    """The suite's ``tuning`` table (``{ trials = K, seed = S }``), checked; None if absent."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise FairbenchError(f"{where}: tuning must be a table, e.g. tuning = {{ trials = 8 }}")
    unknown = sorted(set(value) - {"trials", "seed"})
    if unknown:
        raise FairbenchError(f"{where}: tuning has unknown key {unknown[0]!r}; valid: seed, "
                             "trials")
    trials, seed = value.get("trials"), value.get("seed", 0)
    if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= MAX_TRIALS:
        raise FairbenchError(f"{where}: tuning.trials = {trials!r} must be an integer from 1 "
                             f"to {MAX_TRIALS}, e.g. tuning = {{ trials = 8 }}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise FairbenchError(f"{where}: tuning.seed = {seed!r} must be a non-negative integer")
    return Tuning(trials, seed)


def draw_trials(space: Mapping[str, Search], fixed: Mapping[str, Any], tuning: Tuning,
                label: str, defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ``tuning.trials`` settings of one method entry (module docstring): ``fixed`` first
    (with the ``defaults`` of the free dimensions written out, which names the same run),
    then Latin-hypercube draws of the dimensions of ``space`` that ``fixed`` leaves free.
    Without a free dimension, the one setting ``fixed``."""
    free = [name for name in space if name not in fixed]
    first = dict(fixed)
    first.update({k: defaults[k] for k in free if defaults and k in defaults})
    if not free or tuning.trials == 1:
        return [first]
    import numpy as np
    from scipy.stats import qmc

    rng = np.random.default_rng([tuning.seed, zlib.crc32(label.encode())])
    points = qmc.LatinHypercube(d=len(free), rng=rng).random(tuning.trials - 1)
    trials = [first]
    for u in points:
        trial = dict(fixed)
        trial.update({name: space[name].value(float(x)) for name, x in zip(free, u)})
        if trial not in trials:  # an integer range narrower than the budget repeats values
            trials.append(trial)
    return trials
