"""``resampling``: group × class balanced sampling, nothing else (MEDFAIR's strong baseline).

A fresh backbone is trained with plain cross-entropy and the run's train config, except that
every training batch holds equal counts of each stratum (``by``): group × class (default) or
group only. Strata are walked in fresh seeded permutations, small ones repeated, so the
expected loss is :math:`\\frac1{|S|}\\sum_s \\mathbb E[\\mathrm{CE}\\mid s]` instead of the
empirical mean (:func:`fairbench.data.loaders.balanced_order`). An epoch keeps the number of batches
of the unbalanced one. Rows of unknown group (g = −1) cannot be balanced against the groups
and are left out (counted in the run's notes). Nothing else changes, so the difference from
``vanilla`` is the sampling alone; the model needs no sensitive attribute at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from fairbench.core.params import param
from fairbench.run.context import RunContext
from fairbench.run.method import Method, register_method

from ._inprocessing import require_groups, train_setup


@dataclass
class ResamplingParams:
    by: Literal["group_class", "group"] = param(
        "group_class", help="strata balanced in every batch: group × class, or group")


@register_method("resampling")
class Resampling(Method):
    """Cross-entropy with group × class balanced batches (no other change)."""

    Params = ResamplingParams
    kind = "in-training"

    def run(self, ctx: RunContext, params: ResamplingParams) -> nn.Module:
        require_groups(ctx, self.name)
        model = ctx.new_model()
        config, train = train_setup(ctx, params.by)
        result = ctx.fit(model, config=config, train=train, stage="resampling")
        ctx.notes["resampling"] = {"by": params.by, "best_epoch": result.best_epoch}
        return model
