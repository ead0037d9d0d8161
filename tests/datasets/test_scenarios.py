"""synthderm's scenarios, checked on the generated table and images without training: each
switches on its one mechanism and leaves the groups alike otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from fairbench.datasets.synthderm import ALIKE, SCENARIOS, SynthDermParams, build_metadata
from repo_paths import BENCHMARKS

from fairbench import ImageSpec, ParamError, create_dataset

N = 6000


def _table(scenario: str, **knobs):
    ds = create_dataset("synthderm", n_samples=N, scenario=scenario, **knobs)
    df = ds.build_table().df
    return ds, df, df["attr_skin_tone"].to_numpy() == 1


def _class_mix(labels: np.ndarray, k: int = 5) -> np.ndarray:
    return np.bincount(labels, minlength=k) / len(labels)


def _noise(df, mask) -> float:
    return float((df["label"] != df["true_label"])[mask].mean())


def _alike(df, dark, *, mix=True, noise=True, marker=True, share=True):
    if share:
        assert abs(dark.mean() - 0.5) < 0.03
    if mix:
        assert np.abs(_class_mix(df["true_label"][dark]) -
                      _class_mix(df["true_label"][~dark])).max() < 0.04
    if noise:
        assert _noise(df, dark) == 0 and _noise(df, ~dark) == 0
    if marker:
        assert not df["marker"].any()


def test_control_has_no_mechanism():
    ds, df, dark = _table("control")
    _alike(df, dark)
    assert ds.params.dark_contrast == 1.0 and ds.params.lesion_contrast == 1.0


def test_representation_only_shrinks_the_dark_group():
    _, df, dark = _table("representation")
    assert abs(dark.mean() - 0.05) < 0.015
    _alike(df, dark, share=False)


def test_prevalence_only_changes_the_dark_class_mix():
    _, df, dark = _table("prevalence")
    _alike(df, dark, mix=False)
    light, dk = _class_mix(df["true_label"][~dark]), _class_mix(df["true_label"][dark])
    w = 0.7 ** np.arange(5)
    wd = 0.3 ** np.arange(5)
    assert np.abs(light - w / w.sum()).max() < 0.03
    assert np.abs(dk - wd / wd.sum()).max() < 0.03


def test_annotation_only_adds_dark_label_noise():
    _, df, dark = _table("annotation")
    _alike(df, dark, noise=False)
    assert abs(_noise(df, dark) - 0.4) < 0.03 and _noise(df, ~dark) == 0


def test_shortcut_marks_the_last_class_on_light_skin_only():
    ds, df, dark = _table("shortcut")
    _alike(df, dark, marker=False)
    last = df["true_label"].to_numpy() == 4
    marker = df["marker"].to_numpy()
    assert marker[~dark & last].all() and not marker[~dark & ~last].any()
    for cls in (last, ~last):  # on dark skin, the mark says nothing about the class
        assert abs(marker[dark & cls].mean() - 0.2) < 0.05
    assert ds.params.lookalike == 0.8 and ds.params.lesion_contrast == 1.0


def _lesion_contrast(scenario: str, **knobs) -> tuple[float, float]:
    """Mean |lesion − surrounding skin| per group, from the rendered images and masks."""
    ds = create_dataset("synthderm", n_samples=400, scenario=scenario, **knobs)
    table = ds.build_table()
    images = np.zeros((400, 32, 32, 3), np.uint8)
    masks = np.zeros((400, 32, 32), np.uint8)
    ds.fill_images(table, ImageSpec(32), images, masks)
    diff = np.array([np.abs(images[i][masks[i] == 1].mean(0).astype(float)
                            - images[i][masks[i] == 0].mean(0)).sum() for i in range(400)])
    dark = table.attr("skin_tone") == 1
    return float(diff[~dark].mean()), float(diff[dark].mean())


def test_presentation_fades_dark_lesions_and_nothing_else():
    _, df, dark = _table("presentation")
    _alike(df, dark)
    light_c, dark_c = _lesion_contrast("presentation")
    control_light, control_dark = _lesion_contrast("control")
    assert dark_c < 0.6 * control_dark  # fainter on dark skin...
    assert light_c == pytest.approx(control_light, rel=1e-6)  # ...and unchanged on light
    assert _lesion_contrast("control", lesion_contrast=0.4)[0] < 0.6 * control_light


def test_lookalike_draws_the_last_class_toward_the_first_on_every_skin():
    def class_colours(**knobs):
        ds = create_dataset("synthderm", n_samples=600, scenario="control", **knobs)
        table = ds.build_table()
        images = np.zeros((600, 32, 32, 3), np.uint8)
        masks = np.zeros((600, 32, 32), np.uint8)
        ds.fill_images(table, ImageSpec(32), images, masks)
        colour = np.array([images[i][masks[i] == 1].mean(0) for i in range(600)])
        y, dark = table.df["true_label"].to_numpy(), table.attr("skin_tone") == 1
        return {(k, d): colour[(y == k) & (dark == d)].mean(0) for k in (0, 4)
                for d in (False, True)}

    own, alike = class_colours(), class_colours(lookalike=0.8)
    for dark in (False, True):
        dist_own = np.abs(own[(4, dark)] - own[(0, dark)]).sum()
        dist_alike = np.abs(alike[(4, dark)] - alike[(0, dark)]).sum()
        assert dist_alike < 0.4 * dist_own


def test_explicit_knobs_win_over_the_scenario_and_custom_keeps_the_defaults():
    ds = create_dataset("synthderm", scenario="annotation", label_noise_dark=0.2,
                        dark_fraction=0.3)
    assert ds.params.label_noise_dark == 0.2 and ds.params.dark_fraction == 0.3
    assert ds.params.marker_shortcut == 0.0  # the rest from the scenario
    default = create_dataset("synthderm")
    assert default.params.scenario == "custom" and default.params.dark_contrast == 0.4
    # tables made before the scenarios keep their identity (run folders, caches)
    assert set(default.config()["params"]) == set(ALIKE) - {
        "dark_class_imbalance", "lesion_contrast", "marker_dark_rate", "lookalike"} | {
        "n_samples", "n_classes", "seed", "female_fraction", "class_imbalance",
        "images_per_patient"}
    assert create_dataset("synthderm", scenario="control").config()["params"][
        "scenario"] == "control"
    with pytest.raises(ParamError):
        create_dataset("synthderm", scenario="nonsense")


def test_every_scenario_is_listed_and_differs_from_control():
    assert set(SCENARIOS) == {"control", "representation", "prevalence", "presentation",
                              "annotation", "shortcut"}
    for name, knobs in SCENARIOS.items():
        assert set(knobs) == set(ALIKE)
        changed = {k for k in knobs if knobs[k] != ALIKE[k]}
        assert (name == "control") == (not changed)


def test_dark_class_mix_is_deterministic():
    p = SynthDermParams(n_samples=500, dark_class_imbalance=0.5)
    assert build_metadata(p).equals(build_metadata(p))


def test_mechanisms_suite_covers_every_method_and_scenario():
    """The matrix suite runs every built-in classification method on every scenario, with
    at least 5 seeds (a method added to fairbench must be added to the suite too)."""

    from fairbench import load_suite
    from fairbench.run.method import get_method_class, list_methods

    suite = load_suite(BENCHMARKS / "mechanisms.toml")
    builtin = [m for m in list_methods() if "classification" in get_method_class(m).tasks
               and get_method_class(m).__module__.startswith("fairbench.methods")]
    assert sorted({m.name for m in suite.methods}) == sorted(builtin)
    assert len(suite.seeds) >= 5
    assert [d.params["scenario"] for d in suite.datasets] == list(SCENARIOS)
    assert [d.label for d in suite.datasets] == list(SCENARIOS)
    assert len({repr(sorted({k: v for k, v in d.params.items() if k != "scenario"}.items()))
                for d in suite.datasets}) == 1  # the scenarios differ in their mechanism only


def test_a_built_params_object_with_a_scenario_is_refused():
    """A scenario fills in knobs given as a dict; a built SynthDermParams cannot say which
    knobs were given, so its scenario would label data it does not describe."""
    from fairbench.datasets.synthderm import SynthDerm

    with pytest.raises(ParamError, match="scenario 'annotation'"):
        SynthDerm(SynthDermParams(scenario="annotation"))
    SynthDerm(SynthDermParams())  # custom: the knobs as given
