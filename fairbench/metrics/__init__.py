"""Metrics: pure numpy functions with their math in the docstrings, and the directions
(``higher_is_better``) a leaderboard needs to rank them.

:func:`evaluate_classification` computes everything a run stores for one split part: overall
utility, the fairness family, per-group values (under the group's name), and ``Avg``,
``Diff``, ``Diff_signed``, ``gap`` and ``worst`` per metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bootstrap import Interval, bootstrap_ci
from .classification import accuracy, expected_calibration_error, macro_auc, macro_prf
from .fairness import equalized_odds_family
from .groups import disaggregate, summarise

#: direction of every base metric (None: signed, no direction)
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "F1": True,
    "AUC": True,
    "ECE": False,
    "EOpp0": False,
    "EOpp1": False,
    "EOdd": False,
    "EOpp0_signed": None,
    "EOpp1_signed": None,
    "EOdd_signed": None,
    "n": None,
}

SUMMARY_KEYS = ("Avg", "gap", "worst", "Diff", "Diff_signed")


def higher_is_better(key: str) -> bool | None:
    """Direction of a flat metric key: ``F1``, ``gap.F1``, ``worst.AUC``, ``dark.F1``...

    ``gap.*`` and ``Diff.*`` are lower-is-better, ``Diff_signed.*`` has no direction, and
    ``worst.*``, ``Avg.*`` and ``<group>.*`` follow their base metric.
    """
    if "." in key:
        prefix, base = key.split(".", 1)
        if prefix in ("gap", "Diff"):
            return False
        if prefix == "Diff_signed":
            return None
        return HIGHER_IS_BETTER.get(base)
    if key not in HIGHER_IS_BETTER:
        raise KeyError(f"unknown metric {key!r}")
    return HIGHER_IS_BETTER[key]


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
    "HIGHER_IS_BETTER",
    "Interval",
    "accuracy",
    "bootstrap_ci",
    "disaggregate",
    "equalized_odds_family",
    "evaluate_classification",
    "expected_calibration_error",
    "flatten",
    "higher_is_better",
    "macro_auc",
    "macro_prf",
    "selection_score",
    "summarise",
]
