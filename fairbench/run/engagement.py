"""Whether a method's mechanism acted in a run: its engagement record.

A method that returns its starting model unchanged, prunes nothing or never confuses its
adversary has measured a no-op, not itself. Every method therefore declares, in
:meth:`fairbench.run.method.Method.engagement`, what shows that its mechanism acted (the
*criterion*, one line) and reads it off the run's notes; the runner writes the record into
``config.json`` (``engagement``: ``engaged`` true/false, the criterion and the figures), ``show``
prints it, and the leaderboard and the mechanism matrix show a cell whose runs mostly did not
engage with the mark ∅ and the count instead of a verdict. ``engaged`` is ``None`` for a
method without a mechanism (the vanilla baseline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Engagement:
    """The record of one run: did the mechanism act, by which criterion, with which figures."""

    engaged: bool | None
    criterion: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the record of a method that has no mechanism to engage
NO_MECHANISM = Engagement(None, "the baseline: no mechanism to engage")


def engagement_text(record: Mapping[str, Any] | None) -> str:
    """One line for ``show``: engaged / did not engage / no mechanism, the criterion and the
    figures."""
    if not record:
        return "engagement: not recorded (a run from before engagement records)"
    engaged = record.get("engaged")
    head = {True: "engaged", False: "DID NOT ENGAGE", None: "no mechanism"}.get(engaged, "?")
    figures = ", ".join(f"{k}={_fmt(v)}" for k, v in (record.get("figures") or {}).items())
    return f"engagement: {head} ({record.get('criterion', '')})" + (f"; {figures}" if figures
                                                                      else "")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def engaged_counts(configs: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(runs that did not engage, runs with a record that says either way) of ``configs``."""
    flags = [(c.get("engagement") or {}).get("engaged") for c in configs]
    known = [f for f in flags if f is not None]
    return sum(f is False for f in known), len(known)


def mostly_idle(configs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether more than half of the runs with a record did not engage."""
    idle, known = engaged_counts(configs)
    return known > 0 and 2 * idle > known


def probe_drop_floor(a: float, b: float, group_counts: Sequence[int]) -> float:
    r"""Twice the standard error of the difference of two probes' balanced accuracies ``a``
    and ``b``, scored on the same rows (``group_counts`` of them per group), under the null
    that both read the group equally well: with :math:`\bar p = (a + b)/2` as every group's
    hit rate, one balanced accuracy over G groups has
    :math:`\mathrm{Var} = \bar p(1-\bar p)\,\sum_g 1/n_g \,/\, G^2`, and the difference of
    two independent ones twice that, so the floor is
    :math:`2\sqrt{2\,\bar p(1-\bar p)\sum_g 1/n_g}\,/\,G`. (The probes read the same rows, so
    their errors are positively correlated and the floor errs on the strict side.) A drop
    ``a − b`` above it is more than the two probes' sampling noise."""
    counts = [int(n) for n in group_counts if n]
    if not counts:
        return math.inf
    p = (a + b) / 2
    return 2.0 * math.sqrt(2.0 * p * (1 - p) * sum(1.0 / n for n in counts)) / len(counts)
