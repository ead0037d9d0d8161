r"""Leakage: how recoverable the sensitive attribute is from a representation.

A linear probe (:func:`leakage_probe`) is fitted on one part's representations and scored on
another's:

* every feature is standardised with the fit part's mean :math:`\mu_j` and standard deviation
  :math:`s_j` (:math:`s_j = 1` where a feature is constant): :math:`\tilde z_j = (z_j -
  \mu_j)/s_j`;
* an L2-regularised logistic regression (scikit-learn's ``LogisticRegression``, lbfgs,
  multinomial over the groups, ``C`` = 1) with class weights :math:`n/(G\,n_g)`, so a minority
  group counts as much as the majority (otherwise a probe that always answers "majority" would
  look informative on imbalanced data), is fitted on :math:`(\tilde z, g)`;
* on the score part: **balanced accuracy**, the mean over groups of the share of that group's
  rows predicted as that group, :math:`\frac1G\sum_g \frac{|\{i: \hat g_i = g = g_i\}|}
  {|\{i: g_i = g\}|}` (chance :math:`1/G`), and **AUC** of the probe's probabilities: for two
  groups the ROC AUC of :math:`p(g = 1 \mid z)`, for more the macro one-vs-rest AUC.

Rows whose group is unknown (code < 0) are left out of both parts. A representation that
carries no group information reads about 0.5 (two groups) on both; one from which the group
is linearly recoverable reads about 1.0. The probe is linear, so "about 0.5" means "not
*linearly* recoverable": a nonlinear probe might still find it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LeakageResult:
    """A probe's scores on the score part (see the module docstring)."""

    balanced_accuracy: float
    auc: float
    n_fit: int
    n_score: int
    n_groups: int
    dim: int

    @property
    def chance(self) -> float:
        return 1.0 / self.n_groups

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chance": self.chance}


def _known(z: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    g = np.asarray(g, dtype=np.int64)
    if len(z) != len(g):
        raise ValueError(f"{len(z)} representations but {len(g)} group codes")
    keep = g >= 0
    return z[keep], g[keep]


def leakage_probe(z_fit: np.ndarray, g_fit: np.ndarray, z_score: np.ndarray,
                  g_score: np.ndarray, *, C: float = 1.0, max_iter: int = 2000,
                  max_fit: int | None = 5000, seed: int = 0) -> LeakageResult:
    """Fit the linear probe on ``(z_fit, g_fit)`` and score it on ``(z_score, g_score)``
    (representations N×D, or N×… flattened per row; group codes, −1 = unknown). At most
    ``max_fit`` fit rows are used (a seeded random subset). See the module docstring."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    zf, gf = _known(z_fit, g_fit)
    zs, gs = _known(z_score, g_score)
    groups = np.unique(gf)
    if len(groups) < 2:
        raise ValueError("the probe needs at least two groups among the fit rows")
    if len(np.unique(gs)) < 2:
        raise ValueError("the probe needs at least two groups among the score rows")
    if max_fit is not None and len(zf) > max_fit:
        pick = np.sort(np.random.default_rng(seed).choice(len(zf), max_fit, replace=False))
        zf, gf = zf[pick], gf[pick]
    mu = zf.mean(0)
    sd = zf.std(0)
    sd[sd < 1e-12] = 1.0
    probe = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced")
    probe.fit((zf - mu) / sd, gf)
    xs = (zs - mu) / sd
    pred = probe.predict(xs)
    proba = probe.predict_proba(xs)
    bacc = float(balanced_accuracy_score(gs, pred))
    present = np.isin(probe.classes_, gs)
    if len(probe.classes_) == 2:
        auc = float(roc_auc_score(gs == probe.classes_[1], proba[:, 1]))
    else:  # macro one-vs-rest over the groups present in the score part
        scores = [roc_auc_score(gs == c, proba[:, k]) for k, c in enumerate(probe.classes_)
                  if present[k] and (gs != c).any()]
        auc = float(np.mean(scores))
    return LeakageResult(bacc, auc, len(zf), len(zs), len(groups), int(zf.shape[1]))
