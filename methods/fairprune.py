"""``fairprune``: FairPrune (Wu et al., MICCAI 2022), fairness-aware pruning by second-order
saliency.

No official code exists (the MICCAI 2022 page lists none); this follows the paper's text and
the conventions of the same group's FairQuantize code (github.com/guoyb17/FairQuantize):

* **Start**: the cached vanilla model (``ctx.vanilla()``).
* **Saliency** (Optimal Brain Damage) per weight and group g: :math:`S_g=\\tfrac12\\theta^2h_g`,
  :math:`h_g` the diagonal curvature (``estimator``; default the exact GGN diagonal, which
  BackPACK supports for VGG and ResNet alike; ``hessian_exact`` for backbones without
  BatchNorm) of the cross-entropy on the balanced score set of group g (the whole smaller group
  plus an equal-size seeded draw of the larger, from the training split, no augmentation),
  summed over batches so both groups are on the same scale. This is
  :func:`fairbench.training.curvature.fair_saliency` with :math:`\\Delta\\theta=-\\theta`.
* **Fair score** :math:`S_u-\\beta S_p`; the **lowest**-scored weights (those that
  matter to the privileged group more than to the unprivileged one) are set to zero and masked.
* **Scope**: the ``weight`` of every conv and linear module (biases and BatchNorm are not
  pruned), ranked **per layer** by default (each tensor loses the fraction p), or over all of
  them at once (``ranking=global``).
* **Ratio**: ``ratio=None`` (default) chooses p on **validation** from ``ratio_grid`` by the
  selection rule below; a number prunes exactly that fraction (the recorded ``ratio_grid``
  is then that one value). The default grid is small
  (0.1 % to 5 %): on ``synthderm`` with the small CNN, pruning the weights that matter most to
  the privileged group destroys the model quickly (validation macro-F1 falls from 0.94 to
  about 0.80 at 2 % per layer), so larger ratios never pass the F1 tolerance there.
* **β**: ``beta=None`` (default) sweeps ``beta_grid`` (default {0.1, 0.3, 0.5, 0.7, 0.9, 1.0},
  the reproductions' grid plus 1.0) jointly with p on validation from the same curvature pass
  (oneshot mode). An explicit ``beta`` means that β and no grid: the recorded ``beta_grid``
  becomes that one value, and an explicit ``beta`` together with an explicit other
  ``beta_grid`` is refused. Iterative mode takes one β (``beta``). With β fixed at 0.5 no
  candidate lowered validation EOdd below the vanilla model's on any of seeds 0-2 (measured
  with BatchNorm re-estimation on, the former default), hence the sweep.
* **BatchNorm re-estimation** (``recalibrate_bn``, off by default, as the paper: post-hoc
  pruning with nothing re-estimated): with ``true``, BatchNorm running statistics are
  re-estimated after pruning with one gradient-free pass over the training split
  (:func:`fairbench.run.posthoc.recalibrate_batchnorm`), since zeroed weights shift the
  channel statistics that the frozen running averages describe. No weight is trained, but on
  small BatchNorm models the re-estimation alone changes F1 and the fairness gaps (it
  accounted for most of a measured gain), so the control method ``bn_recalibrate`` applies
  it to the vanilla model with nothing pruned: a suite with both separates the two effects.
  Backbones without BatchNorm (VGG-11) are unaffected.
* **Modes**: ``oneshot`` (default, post-hoc, no fine-tuning: one curvature pass, nested
  candidate masks) or ``iterative``: rounds of ``step`` more pruning, the curvature recomputed
  on the pruned model each round, stopping when the validation ``select_metric`` has not
  improved for ``patience`` rounds in a row or ``max_ratio`` is reached (the stopping rule of
  AliGhadirii's reproduction); the best round is kept.
* **Fine-tuning** (off by default, ``finetune_epochs``): group-balanced batches of the training
  split with the pruned entries frozen at zero by the shared trainer's masks.
* **Selection, validation only**: best validation ``EqOddsGap`` (``select_metric``) among candidates
  whose validation macro-F1 is within ``f1_tolerance`` (0.02) of the vanilla model's; if none
  is, the candidate with the best F1. Every candidate's validation metrics go to
  ``prune.csv`` in the run directory and the choice to the run's notes (``chosen``: the β
  and ratio used, which the leaderboard shows beside the row).
* The pruned model needs no sensitive attribute at inference.
"""

from __future__ import annotations

from torch import nn

from fairbench.run.context import RunContext
from fairbench.run.engagement import Engagement
from fairbench.run.method import register_method
from fairbench.run.posthoc import preflight_curvature, tolerance_rule, within_tolerance
from fairbench.run.pruning import (
    FairPruneParams,
    SaliencyPruning,
    chosen_setting,
    pruning_engagement,
)


@register_method("fairprune")
class FairPrune(SaliencyPruning):
    """Fairness-aware pruning by group-wise second-order saliency (Wu et al., MICCAI 2022)."""

    Params = FairPruneParams
    kind = "post-hoc"

    def run(self, ctx: RunContext, params: FairPruneParams) -> nn.Module:
        preflight_curvature(ctx, estimator=params.estimator, scope="conv_linear")
        model = ctx.vanilla()
        f1_start = ctx.evaluate(model, "val")["F1"]
        rule = tolerance_rule(params.select_metric, f1_start, params.f1_tolerance)
        score, masks, info = self._prune(ctx, model, params, rule)
        ctx.notes["chosen"] = chosen_setting(info)
        ctx.notes["fairprune"] = {
            **info, "beta_grid": list(params.beta_grid), "mode": params.mode,
            "ranking": params.ranking,
            "estimator": params.estimator, "within_f1_tolerance": within_tolerance(score),
            "vanilla_val_F1": f1_start,
            "realized_ratio_per_tensor": {n: round(float(m.float().mean()), 6)
                                          for n, m in masks.items()},
        }
        return model

    def engagement(self, notes: dict) -> Engagement:
        return pruning_engagement(notes["fairprune"])
