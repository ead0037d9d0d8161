"""``vanilla``: the shared baseline, the backbone trained with plain cross-entropy."""

from __future__ import annotations

from torch import nn

from fairbench.core.params import NoParams
from fairbench.run.context import RunContext
from fairbench.run.engagement import NO_MECHANISM, Engagement
from fairbench.run.method import Method, register_method


@register_method("vanilla")
class Vanilla(Method):
    """No mitigation: the backbone trained with the run's train config (the baseline).

    Classification: cross-entropy. Segmentation: a U-Net trained with soft Dice + BCE/CE."""

    Params = NoParams
    kind = "baseline"
    tasks = ("classification", "segmentation")

    def run(self, ctx: RunContext, params: NoParams) -> nn.Module:
        return ctx.vanilla()

    def engagement(self, notes: dict) -> Engagement:
        return NO_MECHANISM
