"""``label_smoothing``: a complete plugin method, the vanilla baseline trained with
label-smoothed cross-entropy (Szegedy et al., CVPR 2016) through fairbench's shared trainer.

Label smoothing is no fairness method; it is here because it is the smallest change to the
baseline that still shows every part of a method: typed parameters with defaults and ranges,
a loss hook for the shared trainer (never a training loop of its own), the model returned to
fairbench, which scores it on validation and test like every other method.

Use it (no installation; the file is loaded by path)::

    fairbench check examples/label_smoothing.py                       # the conformance checks
    fairbench run --plugin examples/label_smoothing.py --method label_smoothing -p smoothing=0.2
    fairbench list methods --plugin examples/label_smoothing.py -v     # its parameters

A package can ship it instead through the entry-point group ``fairbench.methods``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Plugins import from the top level only: these names are fairbench's stable API.
from fairbench import (
    Batch,
    Engagement,
    Method,
    RunContext,
    StepState,
    TrainHooks,
    param,
    register_method,
)


@dataclass
class LabelSmoothingParams:
    """The method's parameters: ``-p smoothing=0.2`` on the command line, checked against the
    type and the range declared here (a bad value is one clear error before any work)."""

    smoothing: float = param(0.1, min=0.0, max=1.0, max_exclusive=True,
                             help="weight ε of the uniform target: (1-ε)·one-hot + ε/C")


@register_method("label_smoothing")  # the name for --method and in the leaderboard
class LabelSmoothing(Method):
    """Vanilla training with label-smoothed cross-entropy (an example plugin)."""

    Params = LabelSmoothingParams
    #: "in-training" trains its own model; a "post-hoc" method starts from ctx.vanilla()
    kind = "in-training"
    #: the returned model maps images to logits without the sensitive attribute (the
    #: conformance checks verify it by scrambling the attribute)
    needs_attribute_at_inference = False
    tasks = ("classification",)

    def run(self, ctx: RunContext, params: LabelSmoothingParams) -> torch.nn.Module:
        # the loss of one batch; the shared trainer calls it, back-propagates, steps the
        # optimizer of the run's train config (--train lr=..., epochs=...), logs every epoch and
        # keeps the checkpoint that is best on validation
        def loss(model: torch.nn.Module, batch: Batch, state: StepState) -> torch.Tensor:
            logits = model(batch.x)
            return F.cross_entropy(logits.float(), batch.y, label_smoothing=params.smoothing)

        # a freshly initialised backbone of the run (seeded, on the run's device)
        model = ctx.new_model()
        ctx.fit(model, hooks=TrainHooks(loss=loss))
        # fairbench predicts val and test with the returned model and writes the run folder
        ctx.notes["label_smoothing"] = {"smoothing": params.smoothing}
        return model

    def engagement(self, notes: dict) -> Engagement:
        # what shows that the mechanism acted in this run (written to config.json, shown by
        # `fairbench show`; the leaderboard marks rows whose runs mostly did not engage)
        eps = notes["label_smoothing"]["smoothing"]
        return Engagement(eps > 0, "smoothed targets (ε > 0)", {"smoothing": eps})
