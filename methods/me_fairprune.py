"""``me_vanilla`` and ``me_fairprune``: the fair multi-exit framework (Chiu et al., MICCAI 2023)
without and with FairPrune.

The multi-exit model (:mod:`fairbench.models.multiexit`: heads after each stage, Σ w_k·CE_k through the
shared trainer, batched exit policy A/B) is trained once per (dataset, split, attribute,
backbone, train config, seed, exit architecture, τ grid and policy of checkpoint selection) and
cached under ``<runs_dir>/_me_vanilla/`` like the vanilla baseline; both methods start from it.

**Selection, validation only**: a candidate is scored by
:func:`fairbench.run.posthoc.tolerance_rule`: best validation ``select_metric``
(``EqOddsGap``) among candidates whose validation macro-F1 under the exit policy is within
``f1_tolerance`` of a reference, else the best F1. ``me_vanilla``'s candidates are the
thresholds τ of ``tau_grid`` (or the given ``tau``), its reference the validation macro-F1 of
the multi-exit model's **final exit** (the network as an ordinary classifier).
``me_fairprune``'s candidates are the pruned (β, ratio, τ), as FairPrune's are pruned ones
only (the paper runs FairPrune on the multi-exit network), its reference the validation
macro-F1 of the unpruned model under its exit policy at me_vanilla's τ; the leaderboard
separates the effect of the exits (me_vanilla against vanilla) from that of the pruning
(me_fairprune against me_vanilla). ``unpruned_candidate=true`` (fairbench's rule before
2026-12-07) adds the unpruned model at every τ (ratio 0 in ``prune.csv``), so pruning has
to beat the model it starts from or that model is returned (``kept_unpruned`` in the
notes). Measured on the mechanism suite (48 runs, 2026-12-07): with it, 19 runs kept the
unpruned model, 12 of them with pruned candidates within the F1 tolerance that scored worse
on the validation EqOdds gap.

**ME-FairPrune** (not released: github.com/chiuhaohao/Fair-Multi-Exit-Framework holds the
multi-exit training and evaluation only; fairbench's reconstruction from the paper):
group curvature (balanced unprivileged and privileged score sets of the training split) of
each exit's own cross-entropy, one BackPACK pass per exit and group, combined with the exit
weights (the GGN is additive over loss terms, so with the default ``ggn_exact`` this is the
curvature of the training loss Σ w_k·CE_k); then FairPrune's fair score
:math:`\\tfrac12\\theta^2(h_u-\\beta h_p)`, masks (:func:`fairbench.run.pruning.prune_masks`)
and candidate loop (the ``fairprune`` method's oneshot/iterative modes, BatchNorm
recalibration and optional fine-tuning, here with the multi-exit loss) applied to every conv
and linear weight of the whole network, **heads included**; every candidate is evaluated with
the exit policy at every τ, from one pass through all exits. Candidates go to ``prune.csv``,
the choice, the exit histogram and the mean compute per sample to the run's notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fairbench.core.params import param
from fairbench.metrics import flatten
from fairbench.metrics.catalog import CANDIDATE_COLUMNS
from fairbench.models.multiexit import resolve_exit_spec
from fairbench.run.context import RunContext
from fairbench.run.engagement import Engagement
from fairbench.run.method import Method, register_method
from fairbench.run.multiexit import (
    MultiExitParams,
    best_tau,
    check_stages,
    exit_logits,
    exit_notes,
    group_multi_exit_curvature,
    part_metrics,
    probe_curvature,
    sweep_tau,
    trained_multi_exit,
    validate_exit_params,
)
from fairbench.run.posthoc import (
    preflight_curvature,
    snapshot,
    tolerance_rule,
    within_tolerance,
    write_rows,
)
from fairbench.run.pruning import (
    FairPruneParams,
    SaliencyPruning,
    chosen_setting,
    pruning_engagement,
)
from fairbench.training.curvature import fair_saliency
from fairbench.training.multiexit import exit_loss
from fairbench.training.trainer import TrainHooks


def exit_engagement(multiexit: dict[str, Any]) -> Engagement:
    """The multi-exit model's engagement: test samples that leave before the final exit."""
    fractions = multiexit["test"]["fractions"]
    early = round(float(sum(fractions[:-1])), 4)
    return Engagement(early > 0, "test samples leaving before the final exit > 0",
                      {"early_exit_share": early, "tau": multiexit.get("tau")})


def _taus(params: Any) -> tuple[float, ...]:
    return (params.tau,) if params.tau is not None else tuple(dict.fromkeys(params.tau_grid))


def _start(ctx: RunContext, params: Any, spec: Any) -> tuple[nn.Module, Any, float, Any]:
    """The cached multi-exit model, its validation exit logits, the final exit's validation
    macro-F1 (the reference) and the tolerance rule."""
    model, _ = trained_multi_exit(ctx, spec, policy=params.policy, taus=params.tau_grid)
    index, logits = exit_logits(ctx, model, "val")
    f1_ref = float(part_metrics(ctx, index, logits[-1])["F1"])
    rule = tolerance_rule(params.select_metric, f1_ref, params.f1_tolerance)
    return model, (index, logits), f1_ref, rule


@register_method("me_vanilla")
class MeVanilla(Method):
    """Multi-exit model (heads after each stage, early exit at a validation-chosen τ), no pruning."""

    Params = MultiExitParams
    kind = "in-training"

    def run(self, ctx: RunContext, params: MultiExitParams) -> nn.Module:
        spec = resolve_exit_spec(ctx.backbone.name, params)
        check_stages(ctx, spec)
        model, (index, logits), f1_ref, rule = _start(ctx, params, spec)
        results = sweep_tau(ctx, index, logits, _taus(params), params.policy, rule)
        best = best_tau(results)
        model.tau.fill_(best.tau)
        write_rows(ctx.run_dir / "tau.csv", [
            {"tau": r.tau, "score": r.score,
             **{f"val_{k}": flatten(r.metrics).get(k) for k in CANDIDATE_COLUMNS}} for r in results])
        ctx.notes["me_vanilla"] = {"final_exit_val_F1": f1_ref, "chosen_tau": best.tau,
                                   "val_F1": best.metrics["F1"],
                                   "val_EqOddsGap": best.metrics["EqOddsGap"], "val_EOdd": best.metrics["EOdd"],
                                   "within_f1_tolerance": within_tolerance(best.score)}
        ctx.notes["multiexit"] = exit_notes(ctx, model, results)
        return model

    def engagement(self, notes: dict) -> Engagement:
        return exit_engagement(notes["multiexit"])


@dataclass
class MeFairPruneParams(FairPruneParams, MultiExitParams):
    unpruned_candidate: bool = param(
        False, help="let the unpruned multi-exit model compete with the pruned candidates "
                    "(fairbench's former rule; the paper runs FairPrune on the multi-exit "
                    "network, whose candidates are pruned ones only)")

    def validate(self) -> None:
        FairPruneParams.validate(self)
        validate_exit_params(self)


@register_method("me_fairprune")
class MeFairPrune(SaliencyPruning):
    """ME-FairPrune: FairPrune on a multi-exit model (per-exit curvature, heads pruned too)."""

    Params = MeFairPruneParams
    kind = "post-hoc"

    def run(self, ctx: RunContext, params: MeFairPruneParams) -> nn.Module:  # type: ignore[override]
        spec = resolve_exit_spec(ctx.backbone.name, params)
        check_stages(ctx, spec)
        preflight_curvature(ctx, estimator=params.estimator, scope="conv_linear")
        probe_curvature(ctx, spec, estimator=params.estimator, scope="conv_linear")
        self._taus = _taus(params)
        self._policy = params.policy
        model, (index, logits), f1_ref, vanilla_rule = _start(ctx, params, spec)
        # the unpruned multi-exit model as me_vanilla delivers it (τ by me_vanilla's rule): the
        # F1 tolerance is anchored on its validation F1, and it is itself a candidate
        start = best_tau(sweep_tau(ctx, index, logits, self._taus, params.policy, vanilla_rule))
        rule = tolerance_rule(params.select_metric, float(start.metrics["F1"]),
                              params.f1_tolerance)
        score, masks, info = self._prune(ctx, model, params, rule,
                                         unpruned_candidate=params.unpruned_candidate)
        ctx.notes["chosen"] = chosen_setting(info)
        ctx.notes["me_fairprune"] = {
            **info, "beta_grid": list(params.beta_grid), "mode": params.mode,
            "ranking": params.ranking, "estimator": params.estimator,
            "curvature": "per-exit, combined with the exit weights",
            "within_f1_tolerance": within_tolerance(score), "final_exit_val_F1": f1_ref,
            "kept_unpruned": info.get("chosen_ratio") == 0.0,
            "unpruned": {"tau": start.tau, "val_F1": start.metrics["F1"],
                         "val_EqOddsGap": start.metrics["EqOddsGap"],
                         "val_EOdd": start.metrics["EOdd"]},
            "realized_ratio_per_tensor": {n: round(float(m.float().mean()), 6)
                                          for n, m in masks.items()},
        }
        ctx.notes["multiexit"] = exit_notes(ctx, model)
        return model

    def engagement(self, notes: dict) -> Engagement:
        return pruning_engagement(notes["me_fairprune"])

    # -- FairPrune's steps, for the multi-exit model ------------------------------------------
    def _curvature_scores(self, ctx: RunContext, model: nn.Module, params: FairPruneParams,
                          seed: int, betas: tuple[float, ...] | None = None
                          ) -> dict[float, dict[str, torch.Tensor]]:
        """Fair scores per β from the exit-weighted group curvature (one pass per exit)."""
        curv = group_multi_exit_curvature(
            ctx, model, estimator=params.estimator, scope="conv_linear",  # type: ignore[arg-type]
            batch_size=params.score_batch_size, seed=seed, max_per_group=params.score_samples)
        named = dict(model.named_parameters())
        return {beta: {n: fair_saliency(-named[n].detach(), curv.h_u[n], curv.h_p[n], beta)
                       for n in curv.h_u}
                for beta in (betas or (params.beta,))}

    def _record(self, ctx: RunContext, model: nn.Module, masks: dict[str, torch.Tensor],
                rule: Any, rows: list[dict[str, Any]], **info: Any) -> tuple[float, dict]:
        """Every τ of the candidate from one pass through all exits; the model keeps the best
        τ (a buffer, so the candidate's snapshot holds it)."""
        index, logits = exit_logits(ctx, model, "val")  # type: ignore[arg-type]
        total = sum(m.numel() for m in masks.values())
        realized = sum(int(m.sum()) for m in masks.values()) / total
        results = sweep_tau(ctx, index, logits, self._taus, self._policy, rule)
        for r in results:
            flat = flatten(r.metrics)
            rows.append({**info, "tau": r.tau, "realized_ratio": realized, "score": r.score,
                         **{f"val_{k}": flat.get(k) for k in CANDIDATE_COLUMNS}})
        best = best_tau(results)
        model.tau.fill_(best.tau)  # type: ignore[operator]
        ctx.logger.info("me_fairprune %s: realized %.4f tau %g val F1 %.4f EqOddsGap %.4f", info,
                        realized, best.tau, best.metrics["F1"], best.metrics["EqOddsGap"])
        return best.score, {**info, "realized_ratio": realized, "chosen_tau": best.tau,
                            "val_F1": best.metrics["F1"],
                            "val_EqOddsGap": best.metrics["EqOddsGap"], "val_EOdd": best.metrics["EOdd"]}

    def _finetune(self, ctx: RunContext, model: nn.Module, params: FairPruneParams, rule: Any,
                  masks: dict[str, torch.Tensor], score: float, info: dict[str, Any]
                  ) -> tuple[float, dict[str, Any]]:
        """FairPrune's fine-tuning with the multi-exit loss; each epoch is scored at its best
        τ (kept in the checkpoint)."""
        config, train = self._finetune_setup(ctx, params)
        before = snapshot(model)

        def evaluate(m: nn.Module, _loader: Any) -> dict[str, Any]:
            index, logits = exit_logits(ctx, m, "val")  # type: ignore[arg-type]
            best = best_tau(sweep_tau(ctx, index, logits, self._taus, self._policy, rule))
            m.tau.fill_(best.tau)  # type: ignore[operator]
            return best.metrics

        hooks = TrainHooks(loss=exit_loss, frozen=masks, score=rule, evaluate=evaluate)
        result = ctx.fit(model, hooks=hooks, config=config, train=train,
                         stage="me_fairprune fine-tune")
        if result.best_score is not None and result.best_score > score:
            return result.best_score, {**info, "finetune_epoch": result.best_epoch,
                                       "chosen_tau": float(model.tau)}  # type: ignore[arg-type]
        model.load_state_dict(before)  # fine-tuning did not beat the pruned model on val
        return score, {**info, "finetune_epoch": 0}
