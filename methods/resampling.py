"""``resampling``: group-balanced sampling, nothing else (MEDFAIR's resampling baseline).

A fresh backbone is trained with plain cross-entropy and the run's train config, except that
the training batches are balanced over strata (``by``):

* ``group`` (default): every group equally often, MEDFAIR's resampling
  (github.com/ys-zong/MEDFAIR: a ``WeightedRandomSampler`` with weight 1 / (size of the
  sample's group), drawn with replacement, as many draws as training samples). It is the
  default because that is the baseline the name stands for, and because it changes one thing
  only, the group mix: balancing classes as well changes the class prior, which by itself
  moves macro-F1 and the per-class error rates that the fairness gaps are made of.
* ``group_class``: every group × class cell equally often (the ``--labelwise`` sampler of
  MFD's code), offered for comparison.

fairbench draws the same expected composition without the variance of independent draws:
each batch holds the configured number of rows with equal counts per stratum up to one row,
strata are walked in fresh seeded permutations (small ones repeated), and an epoch has the
split's size (:func:`fairbench.data.loaders.balanced_order`), so the expected loss is
:math:`\\frac1{|S|}\\sum_s \\mathbb E[\\mathrm{CE}\\mid s]` instead of the empirical mean. Rows
of unknown group (g = −1) cannot be balanced against the groups and are left out (counted in
the run's notes). Nothing else changes, so the difference from ``vanilla`` is the sampling
alone; the model needs no sensitive attribute at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fairbench.core.params import param
from fairbench.run.context import RunContext
from fairbench.run.engagement import Engagement
from fairbench.run.inprocessing import batch_mix, require_groups, train_setup
from fairbench.run.method import Method, register_method
from fairbench.training.trainer import GroupBy


@dataclass
class ResamplingParams:
    by: GroupBy = param(
        "group", help="strata balanced in every batch: group (MEDFAIR), or group × class")


@register_method("resampling")
class Resampling(Method):
    """Cross-entropy with group-balanced (or group × class balanced) batches, nothing else."""

    Params = ResamplingParams
    kind = "in-training"

    def run(self, ctx: RunContext, params: ResamplingParams) -> nn.Module:
        require_groups(ctx, self.name)
        model = ctx.new_model()
        config, train = train_setup(ctx, params.by)
        result = ctx.fit(model, config=config, train=train, stage="resampling")
        ctx.notes["resampling"] = {"by": params.by, "best_epoch": result.best_epoch,
                                   "mix": batch_mix(ctx, train)}
        return model

    def engagement(self, notes: dict) -> Engagement:
        mix = notes["resampling"]["mix"]
        return Engagement(
            mix["batches_smallest_share"] > mix["train_smallest_share"],
            "the smallest group's share of the drawn batches exceeds its share of the "
            "training part", mix)
