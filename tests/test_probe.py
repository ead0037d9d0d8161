"""``fairbench.run.probe``: the linear leakage probe against a direct scikit-learn computation
and hand-made cases (a separable attribute, an absent one, unknown groups left out)."""

from __future__ import annotations

import numpy as np
import pytest

from fairbench.run.probe import attribute_probe


def blobs(n: int, shift: float, seed: int, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = (rng.random(n) < 0.3).astype(int)  # imbalanced groups
    x = rng.normal(size=(n, d))
    x[:, 0] += shift * g
    return x, g


def test_separable_attribute_is_found_and_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fx, fg = blobs(400, 2.0, 0)
    ex, eg = blobs(300, 2.0, 1)
    res = attribute_probe(fx, fg, ex, eg)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced",
                                                              max_iter=2000)).fit(fx, fg)
    pred = pipe.predict(ex)
    recalls = [np.mean(pred[eg == k] == k) for k in (0, 1)]  # balanced accuracy by hand
    assert res.balanced_accuracy == pytest.approx(np.mean(recalls))
    assert res.auc == pytest.approx(roc_auc_score(eg, pipe.predict_proba(ex)[:, 1]))
    assert res.balanced_accuracy > 0.8 and res.chance == 0.5
    assert (res.n_fit, res.n_eval) == (400, 300)


def test_absent_attribute_scores_near_chance_and_unknown_rows_are_left_out() -> None:
    fx, fg = blobs(600, 0.0, 2)
    ex, eg = blobs(600, 0.0, 3)
    eg = eg.copy()
    eg[:50] = -1
    res = attribute_probe(fx, fg, ex, eg)
    assert abs(res.balanced_accuracy - 0.5) < 0.1 and abs(res.auc - 0.5) < 0.1
    assert res.n_eval == 550
    with pytest.raises(ValueError, match="fewer than two groups"):
        attribute_probe(fx, np.zeros_like(fg), ex, eg)


def test_three_groups_macro_auc() -> None:
    rng = np.random.default_rng(4)
    g = rng.integers(0, 3, 500)
    x = rng.normal(size=(500, 4)) + np.eye(4)[g] * 3
    res = attribute_probe(x[:300], g[:300], x[300:], g[300:])
    assert res.chance == pytest.approx(1 / 3)
    assert res.balanced_accuracy > 0.9 and res.auc > 0.95
