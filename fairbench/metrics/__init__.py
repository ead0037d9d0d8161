"""Metrics: pure numpy functions with their math in the docstrings, and the directions
(``higher_is_better``) a leaderboard needs to rank them.

:func:`evaluate_classification` computes everything a run stores for one split part: overall
utility, the fairness family, per-group values (under the group's name), and ``Avg``,
``Diff``, ``Diff_signed``, ``gap`` and ``worst`` per metric. :func:`evaluate_segmentation`
does the same for per-image Dice/IoU and adds the equity-scaled families ``ES_fairseg``,
``ES_fairmedfm`` and ``skew``. :mod:`.decision` holds the decision rule every part is scored
under (a binary task's threshold, chosen on validation).

May import: ``fairbench.core`` only (metrics sit at the bottom, beside it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bootstrap import Interval, bootstrap_ci, two_stage_bootstrap_ci
from .classification import accuracy, expected_calibration_error, macro_auc, macro_prf
from .fairness import equalized_odds_family, equalized_odds_gap
from .groups import disaggregate, summarise
from .segmentation import (
    dice_iou_from_counts,
    evaluate_segmentation,
    overlap_counts,
    segmentation_metric_names,
)

#: the fairness criterion of every choice (selection rules, methods' candidate and checkpoint
#: choice) and the headline fairness column: the standard equalized-odds gap (see
#: :mod:`fairbench.metrics.fairness`). The papers' EOpp0/EOpp1/EOdd are computed beside it.
HEADLINE_FAIRNESS = "EqOddsGap"

#: direction of every base metric (None: signed, no direction)
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "F1": True,
    "AUC": True,
    "ECE": False,
    "EqOddsGap": False,
    "EqOddsGap_maxclass": False,
    "EOpp0": False,
    "EOpp1": False,
    "EOdd": False,
    "EOpp0_signed": None,
    "EOpp1_signed": None,
    "EOdd_signed": None,
    "Dice": True,
    "IoU": True,
    "n": None,
}

#: base-metric name prefixes whose metrics are all higher-is-better (per-class Dice_cup, IoU_rim)
HIGHER_IS_BETTER_PREFIXES: tuple[str, ...] = ("Dice_", "IoU_")

#: direction of ``<prefix>.<metric>`` keys whatever the base metric (equity-scaled families)
PREFIX_DIRECTION: dict[str, bool | None] = {
    "gap": False,
    "Diff": False,
    "Diff_signed": None,
    "ES_fairseg": True,
    "ES_fairmedfm": True,
    "skew": False,
}

SUMMARY_KEYS = ("Avg", "gap", "worst", "Diff", "Diff_signed")


def _base_direction(base: str) -> bool | None:
    if base in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[base]
    if base.startswith(HIGHER_IS_BETTER_PREFIXES):
        return True
    raise KeyError(f"unknown metric {base!r}")


def is_segmentation_metric(key: str) -> bool:
    """Whether a flat key is a segmentation metric: its base (after any ``prefix.``) is
    ``Dice``, ``IoU``, ``Dice_<class>`` or ``IoU_<class>``."""
    base = key.split(".", 1)[1] if "." in key else key
    return base in ("Dice", "IoU") or base.startswith(HIGHER_IS_BETTER_PREFIXES)


def higher_is_better(key: str) -> bool | None:
    """Direction of a flat metric key: ``F1``, ``gap.F1``, ``worst.AUC``, ``dark.F1``,
    ``Dice_cup``, ``ES_fairseg.Dice``...

    ``gap.*``, ``Diff.*`` and ``skew.*`` are lower-is-better, ``Diff_signed.*`` has no
    direction, ``ES_fairseg.*`` and ``ES_fairmedfm.*`` are higher-is-better, and ``worst.*``,
    ``Avg.*`` and ``<group>.*`` follow their base metric (``None`` for an unknown one).
    ``Dice_<class>`` and ``IoU_<class>`` are higher-is-better.
    """
    if "." in key:
        prefix, base = key.split(".", 1)
        if prefix in PREFIX_DIRECTION:
            return PREFIX_DIRECTION[prefix]
        try:
            return _base_direction(base)
        except KeyError:
            return None
    return _base_direction(key)


def check_directed_metric(key: str, what: str) -> None:
    """Raise :class:`~fairbench.core.errors.ParamError` (one line naming ``what``, e.g.
    ``parameter select_metric``) unless ``key`` is a metric with a direction, as every choice
    (checkpoint, candidate, leaderboard row) needs."""
    from fairbench.core.errors import ParamError

    try:
        direction = higher_is_better(key)
    except KeyError:
        raise ParamError(f"{what}={key!r} is not a metric; use e.g. {HEADLINE_FAIRNESS}, EOdd, "
                         "F1, worst.F1 or gap.F1") from None
    if direction is None:
        raise ParamError(f"{what}={key!r} has no direction; pick another metric")


def _utility(y: np.ndarray, probs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    p, r, f = macro_prf(y, pred)
    return {
        "n": len(y),
        "accuracy": accuracy(y, pred),
        "precision": p,
        "recall": r,
        "F1": f,
        "AUC": macro_auc(y, probs),
        "ECE": expected_calibration_error(y, probs),
    }


def evaluate_classification(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    group_names: list[str],
    *,
    y_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics of one part. Rows whose group code is negative (missing) are excluded
    from every value and counted in ``n_missing_group``; predictions default to the argmax."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    groups = np.asarray(groups)
    pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    keep = groups >= 0
    out: dict[str, Any] = {"n_missing_group": int((~keep).sum())}
    y, pr, pd_, g = y_true[keep], probs[keep], pred[keep], groups[keep]
    out.update(_utility(y, pr, pd_))
    out.update(equalized_odds_gap(y, pd_, g))
    out.update(equalized_odds_family(y, pd_, g))
    per_group = disaggregate(lambda sel: _utility(y[sel], pr[sel], pd_[sel]), g, group_names)
    out.update(per_group)
    hib = {k: v for k, v in HIGHER_IS_BETTER.items()}
    out.update(summarise({k: {m: v for m, v in d.items() if m != "n"} for k, d in per_group.items()},
                         group_names, hib))
    return out


def flatten(part_metrics: dict[str, Any]) -> dict[str, float]:
    """``{"F1": .., "dark": {"F1": ..}}`` → ``{"F1": .., "dark.F1": ..}``."""
    flat: dict[str, float] = {}
    for key, value in part_metrics.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def selection_score(part_metrics: dict[str, Any], key: str) -> float:
    """``key``'s value oriented so that larger is better (for checkpoint selection)."""
    flat = flatten(part_metrics)
    if key not in flat:
        raise KeyError(key)
    direction = higher_is_better(key)
    value = float(flat[key])
    if direction is None:
        raise ValueError(f"metric {key!r} has no direction and cannot select a model")
    return value if direction else -value


__all__ = [
    "HEADLINE_FAIRNESS",
    "HIGHER_IS_BETTER",
    "HIGHER_IS_BETTER_PREFIXES",
    "PREFIX_DIRECTION",
    "Interval",
    "accuracy",
    "bootstrap_ci",
    "check_directed_metric",
    "dice_iou_from_counts",
    "disaggregate",
    "equalized_odds_family",
    "equalized_odds_gap",
    "evaluate_classification",
    "evaluate_segmentation",
    "expected_calibration_error",
    "flatten",
    "higher_is_better",
    "is_segmentation_metric",
    "macro_auc",
    "macro_prf",
    "overlap_counts",
    "segmentation_metric_names",
    "selection_score",
    "summarise",
    "two_stage_bootstrap_ci",
]
