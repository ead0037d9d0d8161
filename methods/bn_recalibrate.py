"""``bn_recalibrate``: a control, the vanilla model with its BatchNorm statistics re-estimated
and nothing else.

Post-hoc pruning (``fairprune -p recalibrate_bn=true``, ``me_fairprune`` likewise, and
``snnl_prune`` without fine-tuning) can re-estimate every BatchNorm layer's running mean and
variance on the training split after zeroing weights. That side step changes the predictions
of a BatchNorm model by itself, even with nothing pruned: the vanilla model's running
averages were accumulated with momentum over augmented, changing weights, the re-estimate is
an exact average over the unaugmented training split. This method applies exactly that step
(:func:`fairbench.run.posthoc.recalibrate_batchnorm`, one gradient-free pass) to the cached
vanilla model and prunes nothing, so a suite holding ``vanilla``, ``bn_recalibrate`` and a
pruning method with re-estimation separates the effect of the pruning from that of the
re-estimation. Only running statistics change (tested); a backbone without BatchNorm
(VGG-11) returns the vanilla model unchanged. No sensitive attribute is used.
"""

from __future__ import annotations

from torch import nn

from fairbench.core.params import NoParams
from fairbench.run.context import RunContext
from fairbench.run.engagement import Engagement
from fairbench.run.method import Method, register_method
from fairbench.run.posthoc import recalibrate_batchnorm


@register_method("bn_recalibrate")
class BNRecalibrate(Method):
    """Control: the vanilla model with BatchNorm statistics re-estimated, nothing pruned."""

    Params = NoParams
    kind = "post-hoc"

    def run(self, ctx: RunContext, params: NoParams) -> nn.Module:
        model = ctx.vanilla()
        layers = recalibrate_batchnorm(ctx, model)
        ctx.notes["bn_recalibrate"] = {"layers": layers}
        return model

    def engagement(self, notes: dict) -> Engagement:
        layers = int(notes["bn_recalibrate"]["layers"])
        return Engagement(layers > 0, "BatchNorm layers re-estimated > 0", {"layers": layers})
