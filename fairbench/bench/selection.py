"""Which parameter setting of a method fills a leaderboard row, on validation data only.

:func:`select` applies a *rule* to *candidates*, one candidate per parameter setting, holding
the setting's validation metrics averaged over its seeds; it never looks at a test label.
Every selection records the rule and why it picked what it picked (``Selection.reason``).
(The other validation-only decision, a binary task's threshold, is
:mod:`fairbench.metrics.decision`.)

Rules (``--rule NAME`` or ``NAME:key=value,...``; ``rule = "..."`` in a suite):

``best``  (``metric=F1``)
    highest validation ``metric`` (any flat key with a direction; ``best_f1`` and
    ``best_auc`` are shorthands).
``worst_group``  (``metric=F1``)
    best worst-group value ``worst.<metric>``.
``minimax_pareto``  (``metric=F1``)
    the Pareto set of the per-group validation scores, then the point that maximises the group
    that is worst for the reference (vanilla) model (MEDFAIR's "pareto" rule); without a
    reference, the point with the best worst group.
``dto``  (``metric=F1``)
    smallest Euclidean distance between the per-group validation scores and the utopia point
    (per group, the best score of any candidate). Scores are used as they are (all metrics
    used here live on [0, 1]); MEDFAIR's "DTO".
``fair_within_eps``  (``eps=0.02, fairness=EqOddsGap, utility=F1``) — **the default**
    among the settings whose validation ``utility`` is within ``eps`` of the reference's (the
    vanilla model's, mean over seeds), the one with the best validation ``fairness``; if none
    qualifies, the one with the highest validation ``utility`` (said so in the reason).

Ties are broken by the higher validation utility, then by the setting's key, so a selection
is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairbench.core.errors import FairbenchError, ParamError
from fairbench.metrics import (
    HEADLINE_FAIRNESS,
    check_directed_metric,
    higher_is_better,
    is_segmentation_metric,
)
from fairbench.metrics.catalog import SEGMENTATION_COUNTERPART

DEFAULT_RULE = "fair_within_eps"


#: rule name -> (default options, one-line description)
RULES: dict[str, tuple[dict[str, Any], str]] = {
    "best": ({"metric": "F1"}, "highest validation metric"),
    "best_f1": ({"metric": "F1"}, "highest validation macro-F1"),
    "best_auc": ({"metric": "AUC"}, "highest validation AUC"),
    "worst_group": ({"metric": "F1"}, "best worst-group validation metric"),
    "minimax_pareto": ({"metric": "F1"},
                       "Pareto set over group scores, then best for vanilla's worst group"),
    "dto": ({"metric": "F1"}, "closest to the utopia point of the group scores"),
    "fair_within_eps": ({"eps": 0.02, "fairness": HEADLINE_FAIRNESS, "utility": "F1"},
                        "best validation fairness with utility within eps of vanilla"),
}


# -- rules over parameter settings ---------------------------------------------------------------
@dataclass
class Candidate:
    """One parameter setting of one method: validation metrics (flat keys, mean over seeds)."""

    key: str
    params: dict[str, Any]
    val: dict[str, float]
    groups: list[str]
    n_seeds: int = 1
    payload: Any = None


@dataclass
class Selection:
    candidate: Candidate
    rule: str
    reason: str
    n_candidates: int
    eligible: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rule:
    name: str
    options: tuple[tuple[str, Any], ...]

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    def __str__(self) -> str:
        defaults = RULES[self.name][0]
        changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in self.options if defaults.get(k) != v]
        return self.name + (":" + ",".join(changed) if changed else "")

    def describe(self) -> str:
        o = self.opts
        if self.name == "fair_within_eps":
            return (f"best validation {o['fairness']} with validation {o['utility']} within "
                    f"{o['eps']:g} of vanilla")
        if self.name in ("best", "best_f1", "best_auc"):
            return f"highest validation {o['metric']}"
        if self.name == "worst_group":
            return f"best worst-group validation {o['metric']}"
        if self.name == "minimax_pareto":
            return f"minimax-Pareto over per-group validation {o['metric']}"
        return f"distance to the utopia point of per-group validation {o['metric']}"


def parse_rule(spec: str | Mapping[str, Any] | Rule | None) -> Rule:
    """``"fair_within_eps:eps=0.05,fairness=EOpp1"`` or ``{"rule": ..., "eps": ...}`` → Rule;
    one clear error for an unknown rule, option or metric."""
    if isinstance(spec, Rule):
        return spec
    if spec is None:
        spec = DEFAULT_RULE
    raw: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        raw = {k: v for k, v in spec.items() if k != "rule"}
        name = str(spec.get("rule", DEFAULT_RULE))
    else:
        name, _, rest = str(spec).strip().partition(":")
        for item in filter(None, (s.strip() for s in rest.split(","))):
            if "=" not in item:
                raise ParamError(f"malformed rule option {item!r} in {spec!r}; write key=value")
            k, v = item.split("=", 1)
            raw[k.strip()] = v.strip()
    name = name.strip().replace("-", "_")
    if "epsilon" in raw:
        raw["eps"] = raw.pop("epsilon")
    if name not in RULES:
        import difflib

        close = difflib.get_close_matches(name, list(RULES), n=1)
        hint = f"did you mean {close[0]}?" if close else f"choose one of {', '.join(RULES)}"
        raise FairbenchError(f"unknown selection rule {name!r}; {hint}")
    defaults = RULES[name][0]
    opts = dict(defaults)
    for k, v in raw.items():
        if k not in defaults:
            raise FairbenchError(f"selection rule {name!r} has no option {k!r}; options: "
                                 f"{', '.join(defaults) or 'none'}")
        if k == "eps":
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ParamError(f"selection option eps={v!r} is not a number") from None
            if not math.isfinite(v) or v < 0:
                raise ParamError(f"selection option eps={v!r} must be a number >= 0")
        else:
            v = str(v)
            check_directed_metric(v, f"selection option {k}")
        opts[k] = v
    if name in ("worst_group", "minimax_pareto", "dto") and higher_is_better(opts["metric"]) is not True:
        raise ParamError(f"selection rule {name!r} needs a higher-is-better metric such as F1, "
                         f"AUC or accuracy, not {opts['metric']!r}")
    return Rule(name, tuple(sorted(opts.items())))


def rule_for_task(rule: Rule, task: str) -> Rule:
    """``rule`` for a table of ``task``: for segmentation, a classification default (F1,
    AUC, EOdd) becomes its segmentation counterpart (Dice, Dice, gap.Dice); an explicit
    classification metric is one clear error."""
    if task != "segmentation":
        return rule
    opts = {}
    for k, v in rule.options:
        if k != "eps" and not is_segmentation_metric(str(v)):
            if v not in SEGMENTATION_COUNTERPART:
                raise ParamError(f"selection option {k}={v!r} is not a segmentation metric; "
                                 "use e.g. Dice, IoU, gap.Dice or ES_fairseg.Dice")
            v = SEGMENTATION_COUNTERPART[v]
        opts[k] = v
    return Rule(rule.name, tuple(sorted(opts.items())))


def _oriented(c: Candidate, key: str) -> float:
    """``key`` with larger = better; missing or nan values are worst."""
    v = c.val.get(key)
    if v is None or not math.isfinite(float(v)):
        return -math.inf
    return float(v) if higher_is_better(key) else -float(v)


def _group_scores(c: Candidate, metric: str) -> np.ndarray:
    return np.array([c.val.get(f"{g}.{metric}", float("nan")) for g in c.groups], dtype=float)


def _pick(cands: Sequence[Candidate], score: Any, utility: str = "F1") -> Candidate:
    return max(cands, key=lambda c: (score(c), _oriented(c, utility), _neg_key(c.key)))


def _neg_key(key: str) -> tuple[int, ...]:  # smaller key wins ties
    return tuple(-ord(ch) for ch in key)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``points`` (every column higher-is-better)."""
    pts = np.asarray(points, dtype=float)
    keep = []
    for i, p in enumerate(pts):
        dominated = np.any(np.all(pts >= p, axis=1) & np.any(pts > p, axis=1))
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


def select(candidates: Sequence[Candidate], rule: Rule | str | None = None, *,
           reference: Candidate | None = None) -> Selection:
    """Pick one candidate with ``rule`` (validation metrics only). ``reference`` is the
    vanilla model's candidate (for ``fair_within_eps`` and ``minimax_pareto``)."""
    rule = parse_rule(rule)
    if not candidates:
        raise FairbenchError("no candidates to select from")
    o = rule.opts
    cands = list(candidates)
    n = len(cands)
    if n == 1:
        return Selection(cands[0], str(rule), "single setting", 1, [cands[0].key])
    if rule.name in ("best", "best_f1", "best_auc"):
        best = _pick(cands, lambda c: _oriented(c, o["metric"]))
        return Selection(best, str(rule), f"highest validation {o['metric']} "
                         f"({best.val.get(o['metric'], float('nan')):.4f}) of {n}", n)
    if rule.name == "worst_group":
        key = f"worst.{o['metric']}"
        best = _pick(cands, lambda c: _oriented(c, key), o["metric"])
        return Selection(best, str(rule), f"best validation {key} "
                         f"({best.val.get(key, float('nan')):.4f}) of {n}", n)
    if rule.name == "minimax_pareto":
        scores = np.array([_group_scores(c, o["metric"]) for c in cands])
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        front = [cands[i] for i in pareto_front(scores)]
        idx = {id(c): i for i, c in enumerate(cands)}
        if reference is not None and np.isfinite(_group_scores(reference, o["metric"])).all():
            ref = _group_scores(reference, o["metric"])
            worst = int(np.argmin(ref))
            gname = reference.groups[worst]
            best = _pick(front, lambda c: scores[idx[id(c)], worst], o["metric"])
            why = f"of the Pareto set ({len(front)} of {n}), best on vanilla's worst group {gname}"
        else:
            best = _pick(front, lambda c: scores[idx[id(c)]].min(), o["metric"])
            why = f"of the Pareto set ({len(front)} of {n}), best worst group (no vanilla reference)"
        return Selection(best, str(rule), why, n, [c.key for c in front])
    if rule.name == "dto":
        scores = np.array([_group_scores(c, o["metric"]) for c in cands])
        scores = np.where(np.isfinite(scores), scores, 0.0)
        utopia = scores.max(axis=0)
        dist = np.sqrt(((utopia - scores) ** 2).sum(axis=1))
        i = {id(c): k for k, c in enumerate(cands)}
        best = _pick(cands, lambda c: -dist[i[id(c)]], o["metric"])
        return Selection(best, str(rule), f"distance {dist[i[id(best)]]:.4f} to the utopia point "
                         f"of per-group {o['metric']} ({n} settings)", n)
    # fair_within_eps
    util, fair, eps = o["utility"], o["fairness"], float(o["eps"])
    if reference is not None and math.isfinite(_oriented(reference, util)):
        ref_value = _oriented(reference, util)
        ref_name = "vanilla"
    else:
        ref_value = max(_oriented(c, util) for c in cands)
        ref_name = "the best setting (no vanilla run)"
    eligible = [c for c in cands if _oriented(c, util) >= ref_value - eps - 1e-12]
    if eligible:
        best = _pick(eligible, lambda c: _oriented(c, fair), util)
        why = (f"best validation {fair} ({best.val.get(fair, float('nan')):.4f}) among "
               f"{len(eligible)} of {n} settings with validation {util} within {eps:g} of "
               f"{ref_name}")
    else:
        best = _pick(cands, lambda c: _oriented(c, util), util)
        why = (f"no setting within {eps:g} of {ref_name}'s validation {util}; fell back to the "
               f"highest validation {util}")
    return Selection(best, str(rule), why, n, [c.key for c in eligible])
