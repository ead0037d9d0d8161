"""The leakage probe: the pure probe against analytic values, the site each kind of model
exposes, and a tiny real run (skin tone is visible in the image, sex is not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from fairbench.metrics.leakage import leakage_probe
from fairbench.run.leakage import collect, representation_site


def _gaussians(n: int, d: float, dims: int = 1, seed: int = 0, p1: float = 0.5):
    rng = np.random.default_rng(seed)
    g = (rng.random(n) < p1).astype(int)
    z = rng.normal(size=(n, dims))
    z[:, 0] += np.where(g == 1, d / 2, -d / 2)
    return z, g


def test_probe_chance_on_a_representation_without_the_attribute():
    z, g = _gaussians(4000, 0.0, dims=8)
    zs, gs = _gaussians(4000, 0.0, dims=8, seed=1)
    res = leakage_probe(z, g, zs, gs)
    assert abs(res.balanced_accuracy - 0.5) < 0.04 and abs(res.auc - 0.5) < 0.04
    assert res.chance == 0.5 and res.n_groups == 2 and res.dim == 8


def test_probe_one_on_a_representation_that_holds_the_attribute():
    z, g = _gaussians(600, 12.0, dims=4)
    zs, gs = _gaussians(600, 12.0, dims=4, seed=1)
    res = leakage_probe(z, g, zs, gs)
    assert res.balanced_accuracy > 0.99 and res.auc > 0.999


@pytest.mark.parametrize("d", [0.8, 1.6])
def test_probe_matches_the_bayes_values_of_two_gaussians(d):
    """Two unit-variance Gaussians at ±d/2: the best (linear) rule has balanced accuracy
    Φ(d/2) and AUC Φ(d/√2) (independent computation with scipy), also with imbalanced groups
    (the probe weights the groups equally)."""
    z, g = _gaussians(20000, d, dims=2, p1=0.2)
    zs, gs = _gaussians(20000, d, dims=2, seed=1, p1=0.2)
    res = leakage_probe(z, g, zs, gs, max_fit=None)
    assert res.balanced_accuracy == pytest.approx(norm.cdf(d / 2), abs=0.015)
    assert res.auc == pytest.approx(norm.cdf(d / np.sqrt(2)), abs=0.015)


def test_probe_leaves_out_unknown_groups_and_subsamples():
    z, g = _gaussians(3000, 3.0, dims=2)
    g[:500] = -1
    res = leakage_probe(z, g, z, g, max_fit=1000)
    assert res.n_fit == 1000 and res.n_score == 2500


def test_probe_three_groups_macro_auc():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 3, 3000)
    z = rng.normal(size=(3000, 3)) + 6 * np.eye(3)[g]
    res = leakage_probe(z[:1500], g[:1500], z[1500:], g[1500:])
    assert res.n_groups == 3 and res.chance == pytest.approx(1 / 3)
    assert res.balanced_accuracy > 0.98 and res.auc > 0.99


def test_probe_matches_a_direct_scikit_learn_pipeline():
    """Independent computation: scikit-learn's StandardScaler + class-balanced
    LogisticRegression pipeline, balanced accuracy by hand from its predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z, g = _gaussians(400, 2.0, dims=5, p1=0.3)
    zs, gs = _gaussians(300, 2.0, dims=5, seed=1, p1=0.3)
    res = leakage_probe(z, g, zs, gs)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced",
                                                              max_iter=2000)).fit(z, g)
    pred = pipe.predict(zs)
    recalls = [np.mean(pred[gs == k] == k) for k in (0, 1)]
    assert res.balanced_accuracy == pytest.approx(np.mean(recalls))
    assert res.auc == pytest.approx(roc_auc_score(gs, pipe.predict_proba(zs)[:, 1]))
    assert (res.n_fit, res.n_score) == (400, 300)


def test_probe_needs_two_groups():
    z = np.zeros((10, 2))
    with pytest.raises(ValueError, match="two groups"):
        leakage_probe(z, np.zeros(10, int), z, np.zeros(10, int))


# -- sites -------------------------------------------------------------------------------------
def _classifier():
    from fairbench.models.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone("smallcnn", num_classes=3, image_size=16, width=4)


@pytest.mark.parametrize("name", ["timm_vgg11", "smallcnn"])
def test_pre_pool_site_is_the_map_mfd_aligns(name):
    """The leakage probe of an MFD student reads the tensor MFD's MMD term aligned (the
    FeatureTap map: VGG's 512×s×s features, not timm's 4096-d pre-logits vector)."""
    from fairbench.models.backbones import create_backbone
    from fairbench.models.features import FeatureTap

    torch.manual_seed(0)
    model = create_backbone(name, num_classes=3, image_size=64).eval()
    model.representation_site = "pre_pool"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tap = FeatureTap(model)
    with torch.no_grad():
        model(x)
        want = tap.take()
        tap.remove()
        got = representation_site(model)[1](x)
    assert torch.equal(got, want)
    if name == "timm_vgg11":
        assert got.shape == (2, 512 * 2 * 2)


def test_sites_of_the_models_methods_return():
    model = _classifier()
    x = torch.randn(5, 3, 16, 16)
    site, fn = representation_site(model)
    assert site == "features" and torch.equal(fn(x), model.features(x))
    model.representation_site = "pre_pool"  # MFD's map: 4w channels × 1 × 1 at 16 px
    site, fn = representation_site(model)
    assert site == "pre_pool" and fn(x).shape == (5, 32)
    model.representation_site = "logits"  # AdvRev on the logits
    site, fn = representation_site(model)
    assert site == "logits" and torch.equal(fn(x), model(x))
    model.representation_site = "nonsense"
    with pytest.raises(ValueError, match="representation_site"):
        representation_site(model)

    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x)

        def representation(self, x):
            return x * 2

    site, fn = representation_site(Own())
    assert site == "representation" and torch.equal(fn(torch.ones(1, 4)), 2 * torch.ones(1, 4))
    plain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    site, fn = representation_site(plain)
    z = torch.randn(3, 4)
    assert site == "last_linear_input" and torch.equal(fn(z), plain[1](plain[0](z)))


def test_apple_exposes_its_perturbed_latent():
    from fairbench.methods.apple import PerturbedModel, VectorPerturber

    base = _classifier()
    perturber = VectorPerturber(32, 8)
    nn.init.constant_(perturber.net[-1].bias, 1.0)  # a visible offset
    model = PerturbedModel(base, {0: perturber}, False, 32)
    x = torch.randn(4, 3, 16, 16)
    site, fn = representation_site(model)
    with torch.no_grad():
        z = fn(x)
        expected = base.features(x) + perturber(base.features(x))
    assert site == "representation" and torch.allclose(z, expected)


def test_collect_keeps_rows_and_restores_the_mode():
    model = _classifier().train()

    class Loader:
        def __iter__(self):
            for start in (0, 3):
                yield type("B", (), {"x": torch.randn(3, 3, 16, 16),
                                     "index": torch.arange(start, start + 3)})()

    z, index = collect(model, model.features, Loader())
    assert z.shape == (6, 32) and list(index) == list(range(6)) and model.training


# -- a real run --------------------------------------------------------------------------------
def test_tiny_run_records_the_probe(tiny_run):
    leak = tiny_run.metrics["leakage"]
    assert leak["site"] == "features" and leak["fit_part"] == "train"
    assert leak["score_part"] == "test" and leak["chance"] == 0.5
    assert leak["balanced_accuracy"] > 0.8  # skin tone is the skin's colour


def test_recorded_probe_equals_a_probe_with_its_own_pass(tiny_run):
    """The run reads the test part's embeddings from its evaluation pass; a probe that
    forwards the test part again gives the same record."""
    from fairbench.run.leakage import run_leakage

    again = run_leakage(tiny_run.context, tiny_run.model)
    assert again == tiny_run.metrics["leakage"]


@pytest.mark.slow
def test_run_records_leakage_near_one_for_skin_tone_and_chance_for_sex(tmp_path,
                                                                     make_tiny_config):
    """Skin tone sets the skin colour (visible in every image); sex changes nothing in the
    image, so no representation can carry it."""
    import dataclasses

    from fairbench import run_experiment

    out = {}
    for attribute in ("skin_tone", "sex"):
        config = dataclasses.replace(make_tiny_config("vanilla", tmp_path), attribute=attribute,
                                     dataset_params={"n_samples": 400, "n_classes": 3,
                                                     "images_per_patient": 1.0})
        out[attribute] = run_experiment(config).metrics["leakage"]
    tone, sex = out["skin_tone"], out["sex"]
    assert tone["site"] == "features" and tone["n_score"] == 80 and tone["dim"] == 64
    assert tone["balanced_accuracy"] > 0.95 and tone["auc"] > 0.98
    assert abs(sex["balanced_accuracy"] - 0.5) < 0.2 and abs(sex["auc"] - 0.5) < 0.2
