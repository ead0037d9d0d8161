"""``synthderm``: deterministic from its seed, the documented table and masks, and bias knobs
that move the data in the documented direction. (Generation speed is a benchmark, not a test.)"""

from __future__ import annotations

import numpy as np
import pytest
from fairbench.datasets.synthderm import PROTOTYPES, build_metadata, render_into

from fairbench import ImageSpec, ParamError, create_dataset

SIZE = 16


def render(n=240, size=SIZE, **params):
    ds = create_dataset("synthderm", n_samples=n, **params)
    table = ds.build_table()
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    ds.fill_images(table, ImageSpec(size), images, masks)
    return table, images, masks


def test_deterministic_from_seed():
    t1, i1, m1 = render(seed=3)
    t2, i2, m2 = render(seed=3)
    assert i1.tobytes() == i2.tobytes() and m1.tobytes() == m2.tobytes()
    assert t1.df.equals(t2.df)
    t3, i3, _ = render(seed=4)
    assert i3.tobytes() != i1.tobytes()
    assert not np.array_equal(t3.labels, t1.labels)
    assert set(t3.sample_ids).isdisjoint(t1.sample_ids)  # ids carry the seed


@pytest.mark.parametrize("chunk", [1, 37, 256, 600])
def test_images_do_not_depend_on_chunk_size(chunk):
    """The docstring promises it: an image depends on its row only, not on the rendering
    chunk (pore noise is drawn in fixed blocks of images)."""
    from fairbench.datasets.synthderm import SynthDermParams

    p = SynthDermParams(n_samples=300)
    df = build_metadata(p)
    ref = np.zeros((300, SIZE, SIZE, 3), np.uint8)
    render_into(df, p, SIZE, ref)
    out = np.zeros_like(ref)
    render_into(df, p, SIZE, out, chunk=chunk)
    assert out.tobytes() == ref.tobytes()


def test_picked_rows_are_drawn_as_in_the_whole_stream():
    """``render_into(rows=...)`` draws only the asked rows, in the asked order, each the same
    image and mask as in the whole stream's drawing; across pore-noise blocks and chunks (the
    counterfactual twins of a test part are drawn this way)."""
    from fairbench.datasets.synthderm import PORE_BLOCK, SynthDermParams

    n = PORE_BLOCK + 90
    p = SynthDermParams(n_samples=n, seed=5)
    df = build_metadata(p)
    ref, ref_masks = np.zeros((n, SIZE, SIZE, 3), np.uint8), np.zeros((n, SIZE, SIZE), np.uint8)
    render_into(df, p, SIZE, ref, ref_masks)
    rows = np.random.default_rng(0).permutation(n)[:70]
    rows = np.concatenate([rows, [0, n - 1, PORE_BLOCK - 1, PORE_BLOCK]])
    for chunk in (256, 9):
        out = np.zeros((len(rows), SIZE, SIZE, 3), np.uint8)
        masks = np.zeros((len(rows), SIZE, SIZE), np.uint8)
        render_into(df, p, SIZE, out, masks, rows=rows, chunk=chunk)
        assert out.tobytes() == ref[rows].tobytes()
        assert masks.tobytes() == ref_masks[rows].tobytes()


def test_table_contract():
    ds = create_dataset("synthderm", n_samples=300, n_classes=4)
    table = ds.build_table()
    assert len(table) == 300 and table.n_classes == 4
    assert table.classes == [PROTOTYPES[k][0] for k in range(4)]
    assert table.attributes["skin_tone"] == ["light", "dark"]
    assert table.attributes["sex"] == ["female", "male"]
    assert len(table.attributes["fitzpatrick"]) == 6
    assert table.default_attribute == "skin_tone" and table.has_masks
    assert set(np.unique(table.labels)) == set(range(4))
    assert table.df["sample_id"].is_unique
    fitz, tone = table.attr("fitzpatrick"), table.attr("skin_tone")
    assert ((fitz >= 3) == (tone == 1)).all()  # dark = IV-VI
    # a patient's images share skin type and sex
    df = table.df
    assert (df.groupby("patient_id")[["attr_fitzpatrick", "attr_sex"]].nunique() == 1).all().all()
    assert ds.requires_data_root is False and ds.default_backbone == "smallcnn"


def test_images_and_masks():
    table, images, masks = render(n=200)
    assert images.shape == (200, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert masks.shape == (200, SIZE, SIZE) and set(np.unique(masks)) <= {0, 1}
    area = masks.reshape(200, -1).mean(1)
    assert (area > 0.01).all() and (area < 0.5).all() and 0.03 < area.mean() < 0.3
    # darker skin is darker: mean brightness of the skin around the lesion
    skin = np.array([images[i][masks[i] == 0].mean() for i in range(200)])
    tone = table.attr("skin_tone")
    assert skin[tone == 1].mean() < skin[tone == 0].mean() - 30
    # classes differ in appearance: the per-class mean lesion colours are distinct
    lesion = np.array([images[i][masks[i] == 1].mean(0) for i in range(200)])
    light = tone == 0
    means = [lesion[light & (table.labels == c)].mean(0) for c in range(table.n_classes)]
    dists = [np.abs(a - b).sum() for k, a in enumerate(means) for b in means[k + 1:]]
    assert min(dists) > 5


def test_sex_does_not_change_pixels():
    ds = create_dataset("synthderm", n_samples=100)
    df = build_metadata(ds.params)
    a = np.zeros((100, SIZE, SIZE, 3), np.uint8)
    b = np.zeros_like(a)
    render_into(df, ds.params, SIZE, a)
    flipped = df.copy()
    flipped["attr_sex"] = 1 - flipped["attr_sex"]
    render_into(flipped, ds.params, SIZE, b)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("low,high", [(0.1, 0.6)])
def test_dark_fraction_sets_the_share(low, high):
    def share(f):
        return build_metadata(create_dataset("synthderm", n_samples=3000,
                                             dark_fraction=f).params)["attr_skin_tone"].mean()

    a, b = share(low), share(high)
    assert abs(a - low) < 0.04 and abs(b - high) < 0.04


def test_label_noise_per_group():
    df = build_metadata(create_dataset("synthderm", n_samples=4000, label_noise_light=0.0,
                                       label_noise_dark=0.3, dark_fraction=0.5).params)
    flipped = df["label"] != df["true_label"]
    dark = df["attr_skin_tone"] == 1
    assert flipped[~dark].mean() == 0.0
    assert abs(flipped[dark].mean() - 0.3) < 0.04
    # a flipped label is always another class
    assert (df.loc[flipped, "label"] != df.loc[flipped, "true_label"]).all()


def test_dark_contrast_lowers_lesion_contrast_on_dark_skin():
    def contrast(c):
        table, images, masks = render(n=200, dark_fraction=0.5, dark_contrast=c,
                                      marker_shortcut=0.0, marker_base_rate=0.0)
        tone = table.attr("skin_tone")
        out = {}
        for g in (0, 1):
            idx = np.flatnonzero(tone == g)
            out[g] = np.mean([np.abs(images[i][masks[i] == 1].mean(0)
                                     - images[i][masks[i] == 0].mean(0)).sum() for i in idx])
        return out

    faint, full = contrast(0.2), contrast(1.0)
    assert faint[1] < 0.6 * full[1]  # dark skin: fainter lesions
    assert faint[0] == pytest.approx(full[0])  # light skin unchanged


def test_marker_shortcut():
    df = build_metadata(create_dataset("synthderm", n_samples=5000, n_classes=3,
                                       marker_shortcut=0.8, marker_base_rate=0.1,
                                       dark_fraction=0.5).params)
    last = df["true_label"] == 2
    dark = df["attr_skin_tone"] == 1
    assert abs(df.loc[last & ~dark, "marker"].mean() - 0.8) < 0.06
    assert abs(df.loc[~last & ~dark, "marker"].mean() - 0.1) < 0.03
    assert abs(df.loc[last & dark, "marker"].mean() - 0.1) < 0.06
    off = build_metadata(create_dataset("synthderm", n_samples=2000, marker_shortcut=0.0,
                                        marker_base_rate=0.0).params)
    assert not off["marker"].any()


def test_marker_is_drawn():
    base = {"n": 120, "dark_fraction": 0.3, "marker_base_rate": 0.0}
    _t_off, off, _ = render(marker_shortcut=0.0, **base)
    t_on, on, _ = render(marker_shortcut=1.0, **base)
    marked = t_on.df["marker"].to_numpy()
    assert marked.any()
    changed = (on != off).any(axis=(1, 2, 3))
    assert np.array_equal(changed, marked)


def test_patients_and_params():
    one = build_metadata(create_dataset("synthderm", n_samples=500,
                                        images_per_patient=1.0).params)
    assert one["patient_id"].is_unique
    many = build_metadata(create_dataset("synthderm", n_samples=500,
                                         images_per_patient=3.0).params)
    assert 2.4 < len(many) / many["patient_id"].nunique() < 3.6
    with pytest.raises(ParamError, match="too small"):
        create_dataset("synthderm", n_samples=40, n_classes=5)
    with pytest.raises(ParamError, match="out of range"):
        create_dataset("synthderm", dark_fraction=1.0)
    with pytest.raises(ParamError, match="out of range"):
        create_dataset("synthderm", n_classes=len(PROTOTYPES) + 1)


# -- test and validation parts sized apart from training -----------------------------------------
def test_added_val_and_test_images_leave_the_training_data_unchanged():
    """n_val/n_test add images from their own generator streams: the n_samples images, their
    pixels and their split are those without them; the added ones land in their part."""
    import fairbench.datasets  # noqa: F401

    from fairbench import create_dataset
    from fairbench.data.dataset import ImageSpec
    from fairbench.data.splits import make_split

    plain = create_dataset("synthderm", None, n_samples=200)
    more = create_dataset("synthderm", None, n_samples=200, n_val=40, n_test=120)
    assert plain.config() == create_dataset("synthderm", None, n_samples=200,
                                            n_test=0).config()  # old runs keep their names
    t0, t1 = plain.build_table(), more.build_table()
    assert len(t1) == 360 and t1.df.iloc[:200][t0.df.columns].equals(t0.df)
    s0, s1 = make_split(t0, seed=3), make_split(t1, seed=3)
    for part in ("train", "val", "test"):
        assert list(s1.parts[part][:len(s0.parts[part])]) == list(s0.parts[part])
    assert len(s1.parts["train"]) == len(s0.parts["train"])
    assert len(s1.parts["val"]) == len(s0.parts["val"]) + 40
    assert len(s1.parts["test"]) == len(s0.parts["test"]) + 120
    added = set(t1.df.sample_id[t1.df.fixed_part == "test"])
    assert added <= set(s1.parts["test"]) and not added & set(s1.parts["train"])
    assert not set(t1.df.patient_id[200:]) & set(t0.df.patient_id)  # patients of their own
    x0 = np.zeros((200, 16, 16, 3), np.uint8)
    x1 = np.zeros((360, 16, 16, 3), np.uint8)
    plain.fill_images(t0, ImageSpec(size=16), x0)
    more.fill_images(t1, ImageSpec(size=16), x1)
    assert np.array_equal(x0, x1[:200])
    assert all(x1[i].any() for i in range(200, 360))
    assert not any(np.array_equal(x1[200 + i], x0[i]) for i in range(40))  # fresh draws
    again = np.zeros_like(x1)
    more.fill_images(more.build_table(), ImageSpec(size=16), again)
    assert np.array_equal(again, x1)


def test_a_fixed_part_that_is_no_part_is_refused():
    import fairbench.datasets  # noqa: F401

    from fairbench import DataError, create_dataset
    from fairbench.data.splits import make_split

    table = create_dataset("synthderm", None, n_samples=100, n_test=10).build_table()
    table.df.loc[table.df.index[-1], "fixed_part"] = "holdout"
    with pytest.raises(DataError, match="fixed_part 'holdout' is not a part"):
        make_split(table)
