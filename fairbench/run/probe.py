"""Leakage probes: how much of a sensitive attribute a representation still holds.

A probe is a fresh linear classifier of the group, fitted on one split's representations and
scored on another's (:func:`attribute_probe`): scikit-learn's ``LogisticRegression``
(L2, ``C``, lbfgs) on standardised features (mean and scale of the fitting split), with
classes weighted by the inverse of their frequency, so a probe that knows nothing scores a
balanced accuracy of 1 / (number of groups) whatever the group sizes. Rows whose group is
unknown (code −1) are left out of both sides. The inputs are plain arrays, so any method (or
a general leakage report) can probe any representation: :func:`collect_representations`
gathers one over a run's split.

Scores: balanced accuracy (the mean per-group recall) and, for two groups, the ROC AUC of the
probability of the second group; with more groups the one-vs-rest macro AUC. Both are
computed by scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from fairbench.run.context import RunContext


@dataclass(frozen=True)
class ProbeResult:
    """A probe's scores on the evaluation split (``chance``: the balanced accuracy of a probe
    that knows nothing, 1 / number of groups)."""

    balanced_accuracy: float
    auc: float | None
    chance: float
    n_fit: int
    n_eval: int

    def as_dict(self) -> dict[str, Any]:
        return {"balanced_accuracy": round(self.balanced_accuracy, 6),
                "auc": None if self.auc is None else round(self.auc, 6),
                "chance": round(self.chance, 6), "n_fit": self.n_fit, "n_eval": self.n_eval}


def attribute_probe(fit_x: np.ndarray, fit_g: np.ndarray, eval_x: np.ndarray,
                    eval_g: np.ndarray, *, C: float = 1.0, max_iter: int = 2000,
                    seed: int = 0) -> ProbeResult:
    """Fit a linear probe of the group on ``fit_x`` (N×D) / ``fit_g`` (N group codes) and
    score it on ``eval_x`` / ``eval_g``. Raises ``ValueError`` when the fitting split holds
    fewer than two groups or the evaluation split none."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    fit_x, eval_x = _as_2d(fit_x), _as_2d(eval_x)
    fit_g, eval_g = np.asarray(fit_g).reshape(-1), np.asarray(eval_g).reshape(-1)
    keep_fit, keep_eval = fit_g >= 0, eval_g >= 0
    fit_x, fit_g = fit_x[keep_fit], fit_g[keep_fit]
    eval_x, eval_g = eval_x[keep_eval], eval_g[keep_eval]
    groups = np.unique(fit_g)
    if len(groups) < 2:
        raise ValueError("the probe's fitting split holds fewer than two groups")
    if len(eval_g) == 0:
        raise ValueError("the probe's evaluation split holds no row with a known group")
    scaler = StandardScaler().fit(fit_x)
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced",
                             random_state=seed)
    clf.fit(scaler.transform(fit_x), fit_g)
    z = scaler.transform(eval_x)
    bal = float(balanced_accuracy_score(eval_g, clf.predict(z)))
    auc: float | None = None
    present = np.unique(eval_g)
    if len(present) >= 2 and set(present) <= set(groups):
        proba = clf.predict_proba(z)
        if len(groups) == 2:
            auc = float(roc_auc_score(eval_g == groups[1], proba[:, 1]))
        elif len(present) == len(groups):
            auc = float(roc_auc_score(eval_g, proba, multi_class="ovr", average="macro",
                                      labels=groups))
    return ProbeResult(bal, auc, 1.0 / len(groups), len(fit_g), len(eval_g))


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


@torch.no_grad()
def collect_representations(ctx: RunContext, part: str,
                            represent: Callable[[torch.Tensor], torch.Tensor]
                            ) -> tuple[np.ndarray, np.ndarray]:
    """``represent(x)`` (B×D, or B×… flattened) over every row of ``part`` (sequential, no
    augmentation) and the rows' group codes, as numpy arrays. The caller puts its modules in
    eval mode."""
    feats, groups = [], []
    codes = ctx.table.attr(ctx.attribute)
    for batch in ctx.loader(part, sampler="sequential", augment=False, drop_last=False):  # type: ignore[arg-type]
        feats.append(represent(batch.x).float().flatten(1).cpu().numpy())
        groups.append(codes[batch.index.cpu().numpy()])
    return np.concatenate(feats), np.concatenate(groups)
