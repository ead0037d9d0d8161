"""Segmentation metrics checked against hand-computed numbers on tiny masks, an independent
per-image computation with scikit-learn (and Python sets), and hand-computed group summaries
and equity-scaled values (Harvard-FairSeg and FairMedFM definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score

from fairbench import higher_is_better
from fairbench.metrics import (
    dice_iou_from_counts,
    evaluate_segmentation,
    flatten,
    overlap_counts,
    selection_score,
)

nan = float("nan")


def _dice_iou(pred, true, n_classes):
    return dice_iou_from_counts(overlap_counts(pred, true, n_classes))


# -- hand-made masks -------------------------------------------------------------------------------
def test_binary_hand_cases():
    z = np.zeros((3, 3), int)
    full = np.ones((3, 3), int)
    left = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]])   # 4 pixels
    right = np.array([[0, 1, 1], [0, 1, 1], [0, 0, 0]])  # 4 pixels, 2 shared with left
    one = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])    # 1 pixel, inside left
    pred = np.stack([z, z, one, left, left, left])
    true = np.stack([z, left, z, left, right, full])
    counts = overlap_counts(pred, true, 2)
    assert counts.shape == (6, 1, 3)
    assert counts[:, 0].tolist() == [[0, 0, 0], [0, 0, 4], [0, 1, 0], [4, 4, 4], [2, 4, 4],
                                     [4, 4, 9]]
    dice, iou = dice_iou_from_counts(counts)
    assert dice.shape == iou.shape == (6, 1)
    # both empty -> 1; pred empty -> 0; truth empty -> 0; perfect -> 1;
    # partial: Dice 2*2/(4+4) = 0.5, IoU 2/(4+4-2) = 1/3; left vs full: 2*4/13, 4/9
    np.testing.assert_allclose(dice[:, 0], [1, 0, 0, 1, 0.5, 8 / 13])
    np.testing.assert_allclose(iou[:, 0], [1, 0, 0, 1, 1 / 3, 4 / 9])


def test_three_class_rim_cup():
    # true: cup (2) = 2 pixels, rim (1) = 4 pixels; pred moves one cup pixel into the rim
    true = np.array([[0, 1, 1, 0],
                     [0, 1, 2, 0],
                     [0, 1, 2, 0]])
    pred = np.array([[0, 1, 1, 0],
                     [0, 1, 1, 0],
                     [1, 1, 2, 0]])
    counts = overlap_counts(pred[None], true[None], 3)
    # rim: P = 6 pixels, T = 4, P∩T = 4;  cup: P = 1, T = 2, P∩T = 1
    assert counts[0].tolist() == [[4, 6, 4], [1, 1, 2]]
    dice, iou = dice_iou_from_counts(counts)
    np.testing.assert_allclose(dice[0], [2 * 4 / 10, 2 * 1 / 3])   # 0.8, 0.667
    np.testing.assert_allclose(iou[0], [4 / 6, 1 / 2])
    out = evaluate_segmentation(dice, iou, np.array([0]), ["a"], ["background", "rim", "cup"])
    assert out["Dice_rim"] == pytest.approx(0.8) and out["Dice_cup"] == pytest.approx(2 / 3)
    assert out["IoU_rim"] == pytest.approx(2 / 3) and out["IoU_cup"] == pytest.approx(0.5)
    assert out["Dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert out["IoU"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert out["a"]["Dice_cup"] == pytest.approx(2 / 3)


def test_counts_reject_bad_input():
    with pytest.raises(ValueError):
        overlap_counts(np.zeros((1, 2, 2), int), np.zeros((1, 2, 3), int), 2)
    with pytest.raises(ValueError):
        overlap_counts(np.full((1, 2, 2), 2), np.zeros((1, 2, 2), int), 2)


# -- independent computation -----------------------------------------------------------------------
def _ref_sklearn(p, t, c):
    pc, tc = (p == c).ravel(), (t == c).ravel()
    if not pc.any() and not tc.any():
        return 1.0, 1.0
    return (f1_score(tc, pc, zero_division=0.0), jaccard_score(tc, pc, zero_division=0.0))


def _ref_sets(p, t, c):
    P = {idx for idx, v in np.ndenumerate(p) if v == c}
    T = {idx for idx, v in np.ndenumerate(t) if v == c}
    if not P and not T:
        return 1.0, 1.0
    return 2 * len(P & T) / (len(P) + len(T)), len(P & T) / len(P | T)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_random_masks_match_sklearn_and_sets(n_classes):
    rng = np.random.default_rng(n_classes)
    true = rng.integers(0, n_classes, (30, 7, 9))
    noise = rng.random(true.shape) < 0.3
    pred = np.where(noise, rng.integers(0, n_classes, true.shape), true)
    # a few images without some class, to exercise the empty convention
    true[:3][true[:3] == 1] = 0
    pred[2:5][pred[2:5] == 1] = 0
    dice, iou = _dice_iou(pred, true, n_classes)
    for i in range(len(true)):
        for c in range(1, n_classes):
            d_ref, j_ref = _ref_sklearn(pred[i], true[i], c)
            assert dice[i, c - 1] == pytest.approx(d_ref)
            assert iou[i, c - 1] == pytest.approx(j_ref)
            assert (dice[i, c - 1], iou[i, c - 1]) == pytest.approx(_ref_sets(pred[i], true[i], c))
    assert dice[2, 0] == 1.0 and dice[0, 0] == 0.0  # both empty; only truth empty


# -- evaluate_segmentation -------------------------------------------------------------------------
def test_two_groups_by_hand():
    # binary task; per-image Dice / IoU
    dice = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.9])
    iou = np.array([1.0, 0.6, 0.5, 0.3, 0.1, 0.7])
    groups = np.array([0, 0, 1, 1, 1, -1])
    out = evaluate_segmentation(dice[:, None], iou[:, None], groups, ["light", "dark"],
                                ["background", "lesion"])
    assert out["n_missing_group"] == 1 and out["n"] == 5
    # overall over known-group images only: Dice (1+.8+.6+.4+.2)/5 = .6, IoU 2.5/5 = .5
    assert out["Dice"] == pytest.approx(0.6) and out["IoU"] == pytest.approx(0.5)
    assert "Dice_lesion" not in out and "IoU_lesion" not in out
    # groups: light Dice .9, IoU .8 ; dark Dice .4, IoU .3
    assert out["light"] == pytest.approx({"n": 2, "Dice": 0.9, "IoU": 0.8})
    assert out["dark"] == pytest.approx({"n": 3, "Dice": 0.4, "IoU": 0.3})
    assert out["Avg"]["Dice"] == pytest.approx(0.65)
    assert out["gap"]["Dice"] == pytest.approx(0.5) and out["worst"]["Dice"] == pytest.approx(0.4)
    assert out["Diff_signed"]["IoU"] == pytest.approx(0.5)  # light − dark, as every signed key
    # ES_fairseg: .6 / (1 + |.9-.6| + |.4-.6|) = .6/1.5 = .4 ; IoU .5/(1+.3+.2) = 1/3
    assert out["ES_fairseg"]["Dice"] == pytest.approx(0.4)
    assert out["ES_fairseg"]["IoU"] == pytest.approx(1 / 3)
    # ES_fairmedfm: population std of (.9, .4) = .25 -> .6/1.25 = .48 ; IoU .5/1.25 = .4
    assert out["ES_fairmedfm"]["Dice"] == pytest.approx(0.48)
    assert out["ES_fairmedfm"]["IoU"] == pytest.approx(0.4)
    # skew: (1-.4)/(1-.9) = 6 ; IoU (1-.3)/(1-.8) = 3.5
    assert out["skew"]["Dice"] == pytest.approx(6.0) and out["skew"]["IoU"] == pytest.approx(3.5)
    # 1-D per-image arrays are accepted for K = 2
    same = evaluate_segmentation(dice, iou, groups, ["light", "dark"], ["background", "lesion"])
    assert same["ES_fairseg"] == pytest.approx(out["ES_fairseg"])


def test_three_groups_three_classes_by_hand():
    # columns: rim, cup
    dice = np.array([[0.8, 0.6], [0.6, 0.4],    # group a
                     [0.9, 0.9],                # group b
                     [0.5, 0.1], [0.7, 0.3]])   # group c
    iou = dice / 2
    groups = np.array([0, 0, 1, 2, 2])
    names = ["a", "b", "c"]
    out = evaluate_segmentation(dice, iou, groups, names, ["background", "rim", "cup"])
    # per-image Dice: .7, .5, .9, .3, .5 -> overall 2.9/5 = .58 ; groups a .6, b .9, c .4
    assert out["Dice"] == pytest.approx(0.58)
    assert out["Dice_rim"] == pytest.approx(3.5 / 5) and out["Dice_cup"] == pytest.approx(2.3 / 5)
    assert out["IoU"] == pytest.approx(0.29) and out["IoU_cup"] == pytest.approx(2.3 / 10)
    assert [out[g]["Dice"] for g in names] == pytest.approx([0.6, 0.9, 0.4])
    assert [out[g]["Dice_cup"] for g in names] == pytest.approx([0.5, 0.9, 0.2])
    assert out["a"]["n"] == 2 and out["b"]["n"] == 1 and out["c"]["n"] == 2
    assert out["gap"]["Dice"] == pytest.approx(0.5) and out["worst"]["Dice"] == pytest.approx(0.4)
    assert out["gap"]["Dice_cup"] == pytest.approx(0.7)
    assert out["worst"]["Dice_cup"] == pytest.approx(0.2)
    assert out["Diff"]["Dice"] == pytest.approx(0.5) and math.isnan(out["Diff_signed"]["Dice"])
    # ES_fairseg Dice: .58 / (1 + .02 + .32 + .18) = .58/1.52
    assert out["ES_fairseg"]["Dice"] == pytest.approx(0.58 / 1.52)
    # cup: overall .46; groups .5 .9 .2 -> deviations .04 .44 .26 -> .46/1.74
    assert out["ES_fairseg"]["Dice_cup"] == pytest.approx(0.46 / 1.74)
    # ES_fairmedfm Dice: mean of (.6,.9,.4) = 19/30; pop var = ((-1/30)^2+(8/30)^2+(-7/30)^2)/3
    std = math.sqrt((1 + 64 + 49) / 900 / 3)
    assert out["ES_fairmedfm"]["Dice"] == pytest.approx(0.58 / (1 + std))
    # IoU is Dice / 2 everywhere: deviations and std halve
    assert out["ES_fairseg"]["IoU"] == pytest.approx(0.29 / 1.26)
    assert out["ES_fairmedfm"]["IoU"] == pytest.approx(0.29 / (1 + std / 2))
    assert out["skew"]["Dice"] == pytest.approx(0.6 / 0.1)
    assert out["skew"]["Dice_cup"] == pytest.approx(0.8 / 0.1)
    # the sample std (FairSeg's other variant) is not what is reported
    sample = float(np.std([0.6, 0.9, 0.4], ddof=1))
    assert out["ES_fairmedfm"]["Dice"] != pytest.approx(0.58 / (1 + sample))


def test_one_group_only_gives_nan_equity():
    dice = np.array([[0.5], [0.7], [0.9]])
    out = evaluate_segmentation(dice, dice, np.array([1, 1, -1]), ["light", "dark"],
                                ["background", "lesion"])
    assert out["n_missing_group"] == 1 and out["n"] == 2 and "light" not in out
    assert out["Dice"] == pytest.approx(0.6) and out["dark"]["Dice"] == pytest.approx(0.6)
    for fam in ("ES_fairseg", "ES_fairmedfm", "skew", "gap", "worst", "Diff"):
        assert math.isnan(out[fam]["Dice"]) and math.isnan(out[fam]["IoU"])


def test_skew_nan_when_best_group_is_perfect():
    dice = np.array([[1.0], [0.5]])
    out = evaluate_segmentation(dice, dice, np.array([0, 1]), ["a", "b"], ["bg", "fg"])
    assert math.isnan(out["skew"]["Dice"])
    assert out["ES_fairseg"]["Dice"] == pytest.approx(0.75 / 1.5)


def test_shape_checks():
    with pytest.raises(ValueError):
        evaluate_segmentation(np.ones((2, 1)), np.ones((2, 1)), np.array([0, 1]), ["a", "b"],
                              ["bg", "rim", "cup"])
    with pytest.raises(ValueError):
        evaluate_segmentation(np.ones((2, 1)), np.ones((2, 1)), np.array([0]), ["a", "b"],
                              ["bg", "fg"])


# -- directions and selection ----------------------------------------------------------------------
def test_directions_of_segmentation_keys():
    for k in ("Dice", "IoU", "Dice_cup", "IoU_rim", "Dice_lesion", "worst.Dice", "Avg.IoU",
              "dark.IoU_cup", "worst.Dice_rim", "ES_fairseg.Dice", "ES_fairmedfm.IoU",
              "ES_fairseg.Dice_cup", "ES_fairmedfm.IoU_rim"):
        assert higher_is_better(k) is True, k
    for k in ("gap.Dice", "Diff.IoU", "gap.Dice_cup", "skew.Dice", "skew.IoU_cup"):
        assert higher_is_better(k) is False, k
    assert higher_is_better("Diff_signed.Dice") is None
    with pytest.raises(KeyError):
        higher_is_better("Dicey")


def test_every_flat_key_has_a_direction_and_selection_works():
    rng = np.random.default_rng(0)
    dice = rng.random((40, 2))
    iou = dice * rng.random((40, 2))
    groups = rng.integers(-1, 3, 40)
    out = evaluate_segmentation(dice, iou, groups, ["x", "y", "z"], ["bg", "rim", "cup"])
    flat = flatten(out)
    for k in flat:
        if k == "n_missing_group":  # bookkeeping, not a metric (as for classification)
            continue
        if k == "n" or k.endswith(".n") or k.startswith("Diff_signed."):
            assert higher_is_better(k) is None
        else:
            assert higher_is_better(k) in (True, False), k
    assert selection_score(out, "Dice") == pytest.approx(out["Dice"])
    assert selection_score(out, "worst.Dice") == pytest.approx(out["worst"]["Dice"])
    assert selection_score(out, "gap.IoU") == pytest.approx(-out["gap"]["IoU"])
    assert selection_score(out, "ES_fairseg.Dice") == pytest.approx(out["ES_fairseg"]["Dice"])
    assert selection_score(out, "skew.Dice_cup") == pytest.approx(-out["skew"]["Dice_cup"])
    assert selection_score(out, "y.IoU_rim") == pytest.approx(out["y"]["IoU_rim"])
