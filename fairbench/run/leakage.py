"""The leakage probe of a run: the returned model's representation of the train and test
images, and how well a linear probe recovers the sensitive attribute from it
(:func:`fairbench.metrics.leakage.leakage_probe`: fit on train, scored on test).

**Which representation.** The probe reads the representation a method acts on. A returned
module may say which one:

* a method ``representation(x) -> Tensor`` (B×…; flattened per image), used as it is: APPLE's
  perturbed model gives the perturbed latent that its discriminator reads;
* an attribute ``representation_site``: ``"features"`` (the pooled embedding before the
  classifier, ``features(x)``: what AdvConf's and AdvRev's adversaries read), ``"pre_pool"``
  (the final feature map, flattened: the map MFD aligns by default, taken where MFD takes it,
  :class:`~fairbench.models.features.FeatureTap`), or
  ``"logits"`` (AdvRev with ``input=logits``).

Otherwise the probe reads ``features(x)`` (every :class:`~fairbench.models.backbones.Classifier`:
vanilla and every method that returns a trained or edited backbone), a multi-exit model's
backbone embedding (the final exit's), or, for any other module, the input of its last
``nn.Linear``. Where the site read is not the pooled embedding and the model has one, the
pooled embedding is probed too (``pooled``), so every run has a comparable number.

The probe is recorded in ``metrics.json`` under ``leakage``: ``balanced_accuracy``, ``auc``,
``chance``, ``n_fit``, ``n_score``, ``n_groups``, ``dim``, ``representation`` (which site).
Images are read in evaluation mode without augmentation; nothing here is used for a choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fairbench.metrics.leakage import leakage_probe
from fairbench.models.features import FeatureTap

#: the sites a module's ``representation_site`` may name
SITES = ("features", "pre_pool", "logits")
SITE_TEXT = {
    "representation": "the model's representation(x)",
    "features": "pooled embedding before the classifier",
    "pre_pool": "final feature map before global pooling",
    "logits": "logits",
    "backbone.features": "backbone's pooled embedding (final exit)",
    "last_linear_input": "input of the last linear layer",
}

Extractor = Callable[[torch.Tensor], torch.Tensor]


def _final_map(model: nn.Module) -> Extractor:
    """An extractor giving the final feature map (flattened) during ``model(x)``: the map MFD
    aligns (:class:`~fairbench.models.features.FeatureTap`)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        tap = FeatureTap(model)
        try:
            model(x)
            return tap.take()
        finally:
            tap.remove()

    return run


def _input_of(model: nn.Module, target: nn.Module) -> Extractor:
    """An extractor giving ``target``'s input during ``model(x)``."""

    def run(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = target.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
        try:
            model(x)
        finally:
            handle.remove()
        return seen[-1]

    return run


def representation_site(model: nn.Module) -> tuple[str, Extractor]:
    """The site the probe reads on ``model`` and an extractor for it (see the module
    docstring)."""
    own = getattr(model, "representation", None)
    if callable(own):
        return "representation", own
    site = getattr(model, "representation_site", None)
    if site is not None:
        if site not in SITES:
            raise ValueError(f"representation_site {site!r} is not one of {', '.join(SITES)}")
        if site == "features":
            return site, model.features  # type: ignore[return-value]
        if site == "logits":
            return site, model
        tap = FeatureTap(model)
        tap.remove()
        if not tap.found:
            raise ValueError("representation_site 'pre_pool': the model has no global pooling "
                             "or max-pooling layer")
        return site, _final_map(model)
    if callable(getattr(model, "features", None)):
        return "features", model.features  # type: ignore[return-value]
    backbone = getattr(model, "backbone", None)
    if backbone is not None and callable(getattr(backbone, "features", None)):
        return "backbone.features", backbone.features
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no representation to probe (no representation(), "
                         "features() or linear layer)")
    return "last_linear_input", _input_of(model, linears[-1])


@torch.no_grad()
def collect(model: nn.Module, extract: Extractor, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """The representations (N×D, float32) of ``loader``'s rows and their table positions,
    in evaluation mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    reps, index = [], []
    try:
        for batch in loader:
            z = extract(batch.x)
            reps.append(z.float().flatten(1).cpu())
            index.append(batch.index.cpu())
    finally:
        model.train(was_training)
    return torch.cat(reps).numpy(), torch.cat(index).numpy()


def run_leakage(ctx: Any, model: nn.Module, *, fit_part: str = "train",
                score_part: str = "test",
                score_features: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """The leakage probe of ``model`` on ``ctx``'s data (fit on ``fit_part``, scored on
    ``score_part``), as recorded in ``metrics.json`` (see the module docstring).

    ``score_features``: the pooled embeddings ``model.features(x)`` of the score part and
    their table positions, read in the evaluation pass
    (:meth:`~fairbench.training.trainer.Trainer.predict` with ``features=True``: the same
    numbers a pass of the probe's own gives); used wherever the probe reads the pooled
    embedding, so the score part is not forwarded twice."""
    codes = ctx.table.attr(ctx.attribute)
    loaders = part_loaders(ctx, (fit_part, score_part))
    site, extract = representation_site(model)
    out = probe_model(model, extract, loaders, codes, fit_part, score_part,
                      score_features if site == "features" else None)
    out["representation"] = SITE_TEXT.get(site, site)
    out["site"] = site
    if site not in ("features", "backbone.features") and callable(
            getattr(model, "features", None)):
        pooled = probe_model(model, model.features, loaders, codes, fit_part, score_part,
                             score_features)
        out["pooled"] = pooled
    out["fit_part"], out["score_part"] = fit_part, score_part
    return out


def part_loaders(ctx: Any, parts: tuple[str, ...]) -> dict[str, Any]:
    """Sequential, unaugmented loaders of ``parts`` at the evaluation batch size: what the
    probe reads."""
    return {part: ctx.loader(part, sampler="sequential", augment=False, drop_last=False,
                             batch_size=ctx.train_config.eval_batch_size)
            for part in parts}


def probe_numbers(z_fit: np.ndarray, g_fit: np.ndarray, z_score: np.ndarray,
                  g_score: np.ndarray) -> dict[str, Any]:
    """:func:`~fairbench.metrics.leakage.leakage_probe` as recorded (floats to 6 places)."""
    res = leakage_probe(z_fit, g_fit, z_score, g_score)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.to_dict().items()}


def probe_model(model: nn.Module, extract: Extractor, loaders: dict[str, Any],
                codes: np.ndarray, fit_part: str, score_part: str,
                score: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """A fresh linear probe of ``codes`` (one group code per row of the table) on what
    ``extract`` gives for ``model``: fitted on ``loaders[fit_part]``, scored on
    ``loaders[score_part]`` (or on ``score``, embeddings and rows already collected), as
    :func:`probe_numbers` records it. Raises ValueError when a part holds a single group."""
    z_fit, i_fit = collect(model, extract, loaders[fit_part])
    z_score, i_score = score if score is not None else collect(model, extract,
                                                              loaders[score_part])
    return probe_numbers(z_fit, codes[i_fit], z_score, codes[i_score])
