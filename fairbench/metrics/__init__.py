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

from . import catalog
from .bootstrap import Interval, bootstrap_ci, two_stage_bootstrap_ci
from .catalog import (
    HEADLINE_FAIRNESS,
    HIGHER_IS_BETTER,
    HIGHER_IS_BETTER_PREFIXES,
    PREFIX_DIRECTION,
    SUMMARY_KEYS,
    MetricSpec,
    check_directed_metric,
    higher_is_better,
    is_segmentation_metric,
)
from .classification import accuracy, expected_calibration_error, macro_auc, macro_prf
from .counts import (
    GroupConfusion,
    count_metrics,
    equalized_odds_from_counts,
    per_group_utility,
    utility_from_confusion,
)
from .fairness import equalized_odds_family, equalized_odds_gap
from .groups import disaggregate, summarise
from .segmentation import (
    dice_iou_from_counts,
    evaluate_segmentation,
    overlap_counts,
    segmentation_metric_names,
)


def _score_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The metrics that need the scores, not only the predictions: AUC and ECE."""
    return {"AUC": macro_auc(y, probs), "ECE": expected_calibration_error(y, probs)}


def evaluate_classification(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    group_names: list[str],
    *,
    y_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics of one part. Rows whose group code is negative (missing) are excluded
    from every value and counted in ``n_missing_group``; predictions default to the argmax.

    The prediction-based metrics (accuracy, precision, recall, F1, the equalized-odds family)
    come from one set of group-wise confusion counts (:mod:`fairbench.metrics.counts`), AUC
    and ECE from the scores; per group, then ``Avg``/``gap``/``worst``/``Diff``/
    ``Diff_signed`` (:func:`~fairbench.metrics.groups.summarise`)."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    groups = np.asarray(groups)
    pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    keep = groups >= 0
    out: dict[str, Any] = {"n_missing_group": int((~keep).sum())}
    y, pr, pd_, g = y_true[keep], probs[keep], pred[keep], groups[keep]
    n_classes = max(probs.shape[1], int(max(y.max(), pd_.max())) + 1 if len(y) else 0)
    n_groups = max(len(group_names), int(g.max()) + 1 if len(g) else 0)
    cm = GroupConfusion.from_labels(y, pd_, g, n_groups=n_groups, n_classes=n_classes)
    out.update({"n": len(y), **utility_from_confusion(cm.overall), **_score_metrics(y, pr)})
    out.update(equalized_odds_from_counts(cm))
    utility = per_group_utility(cm, group_names)
    per_group = {}
    for code, name in enumerate(group_names):
        sel = g == code
        if sel.any():
            per_group[name] = {"n": int(sel.sum()), **utility[name],
                               **_score_metrics(y[sel], pr[sel])}
    out.update(per_group)
    out.update(summarise({k: {m: v for m, v in d.items() if m != "n"} for k, d in per_group.items()},
                         group_names, HIGHER_IS_BETTER))
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
    "GroupConfusion",
    "HEADLINE_FAIRNESS",
    "HIGHER_IS_BETTER",
    "HIGHER_IS_BETTER_PREFIXES",
    "PREFIX_DIRECTION",
    "Interval",
    "MetricSpec",
    "SUMMARY_KEYS",
    "catalog",
    "count_metrics",
    "equalized_odds_from_counts",
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
    "utility_from_confusion",
    "two_stage_bootstrap_ci",
]
