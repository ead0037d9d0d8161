"""FairPrune's pruning procedure, shared by the ``fairprune`` and ``me_fairprune`` methods
(and its masks by ``fairquantize``), so that no method imports another: its parameters, the
candidate masks of the lowest fair scores, the oneshot and iterative candidate loops, BatchNorm
re-estimation, fine-tuning with the masks kept and the validation choice. The procedure and
its sources are described in :mod:`fairbench.methods.fairprune`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fairbench.core.errors import ParamError
from fairbench.core.params import Search, param
from fairbench.core.progress import progress_bar
from fairbench.metrics import HEADLINE_FAIRNESS, flatten
from fairbench.metrics.catalog import CANDIDATE_COLUMNS
from fairbench.run.context import RunContext
from fairbench.run.engagement import Engagement
from fairbench.run.method import Method
from fairbench.run.posthoc import (
    check_select_metric,
    group_curvature,
    recalibrate_batchnorm,
    snapshot,
    within_tolerance,
    write_rows,
)
from fairbench.training.curvature import fair_saliency, scored_parameters, select_lowest
from fairbench.training.trainer import TrainConfig, TrainHooks

DEFAULT_BETA_GRID = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
DEFAULT_RATIO_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def _resolve_grid(name: str, value: float | None, grid: tuple[float, ...],
                  default: tuple[float, ...]) -> tuple[float, ...]:
    """The candidate values of ``name``: ``grid`` when ``value`` is None, else ``(value,)``;
    an explicit value beside an explicit other grid is refused (one line)."""
    if value is None:
        if not grid:
            raise ParamError(f"parameter {name}_grid is empty and {name} is not given; give "
                             f"-p {name}=VALUE or a non-empty {name}_grid")
        return tuple(grid)
    if tuple(grid) not in ((), tuple(default), (value,)):
        raise ParamError(f"parameters {name}={value} and {name}_grid={','.join(map(str, grid))} "
                         f"contradict each other; give {name} (one value) or {name}_grid "
                         "(chosen on validation), not both")
    return (value,)


@dataclass
class FairPruneParams:
    beta: float | None = param(
        None, help="weight of the privileged group's saliency (None = choose on validation "
                   "from beta_grid)", min=0.0, search=Search(0.1, 1.0))
    ratio: float | None = param(
        None, help="fraction of conv/linear weights to prune (None = choose on validation "
                   "from ratio_grid)", min=0.0, max=1.0, min_exclusive=True,
        search=Search(0.001, 0.05, log=True))
    ratio_grid: tuple[float, ...] = param(
        DEFAULT_RATIO_GRID, help="candidate ratios when ratio is None")
    ranking: Literal["per_layer", "global"] = param("per_layer", help="rank weights per layer "
                                                     "or over the whole network")
    mode: Literal["oneshot", "iterative"] = param("oneshot", help="prune once, or in rounds "
                                                  "with the curvature recomputed")
    step: float = param(0.05, help="ratio added per round (iterative mode)", min=0.0, max=1.0,
                        min_exclusive=True)
    max_ratio: float = param(0.5, help="largest ratio in iterative mode", min=0.0, max=1.0,
                             min_exclusive=True)
    patience: int = param(3, help="iterative mode stops after this many rounds without a "
                                  "better validation select_metric", min=1)
    estimator: Literal["ggn_exact", "ggn_mc", "hessian_exact", "fisher"] = param(
        "ggn_exact", help="curvature estimator")
    score_batch_size: int = param(32, help="batch size of the curvature pass", min=1)
    score_samples: int | None = param(None, help="cap on score-set size per group", min=1)
    beta_grid: tuple[float, ...] = param(
        DEFAULT_BETA_GRID,
        help="β values swept on validation together with the ratios, from one curvature pass "
             "(oneshot mode) when beta is None")
    recalibrate_bn: bool = param(False, help="re-estimate BatchNorm running statistics on the "
                                 "training split after pruning (no gradients; not in the "
                                 "paper)")
    finetune_epochs: int = param(0, help="fine-tuning epochs with the masks kept (0 = none)",
                                 min=0)
    finetune_optimizer: Literal["sgd", "adam"] = param("adam", help="fine-tuning optimizer")
    finetune_lr: float = param(3e-4, help="fine-tuning learning rate", min=0.0,
                               min_exclusive=True)
    finetune_batch_size: int = param(32, help="fine-tuning batch (half per group)", min=2)
    select_metric: str = param(HEADLINE_FAIRNESS, help="validation metric that picks the candidate")
    f1_tolerance: float = param(0.02, help="allowed validation macro-F1 drop", min=0.0)

    def validate(self) -> None:
        """Checks, and makes the recorded grids the values used: an explicit ``beta`` (or
        ``ratio``) replaces the default grid by that one value."""
        self.beta_grid = _resolve_grid("beta", self.beta, self.beta_grid, DEFAULT_BETA_GRID)
        self.ratio_grid = _resolve_grid("ratio", self.ratio, self.ratio_grid,
                                        DEFAULT_RATIO_GRID)
        bad = [r for r in self.ratio_grid if not 0.0 < r <= 1.0]
        if bad:
            raise ParamError(f"parameter ratio_grid holds {bad[0]}, outside (0, 1]; "
                             "use ratios such as 0.05,0.1,0.2")
        if self.mode == "iterative" and self.step > self.max_ratio + 1e-12:
            raise ParamError(f"parameter step={self.step} is larger than max_ratio="
                             f"{self.max_ratio}; use a step no larger than max_ratio")
        if self.mode == "iterative" and self.beta is None:
            if len(self.beta_grid) != 1:
                raise ParamError("iterative mode prunes with one β; give it with -p beta=0.5")
            self.beta = self.beta_grid[0]
        if any(b < 0 for b in self.beta_grid):
            raise ParamError("parameter beta_grid must hold non-negative values, e.g. "
                             "0.1,0.3,0.5,0.7,0.9")
        check_select_metric(self.select_metric)


def prune_masks(
    scores: dict[str, torch.Tensor],
    ratio: float,
    *,
    ranking: str = "per_layer",
    already: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks (True = pruned) of the lowest-scored entries: per tensor ``ceil(ratio·N)`` of them
    (``per_layer``) or ``ceil(ratio·ΣN)`` over all tensors (``global``). Entries in ``already``
    count toward the total and stay pruned."""
    already = already or {}
    if ranking == "per_layer":
        return {n: select_lowest(s, math.ceil(ratio * s.numel() - 1e-9), already.get(n))
                for n, s in scores.items()}
    if ranking != "global":
        raise ValueError(f"unknown ranking {ranking!r}")
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    prev = torch.cat([already[n].reshape(-1) if n in already
                      else torch.zeros(scores[n].numel(), dtype=torch.bool, device=flat.device)
                      for n in names])
    mask = select_lowest(flat, math.ceil(ratio * flat.numel() - 1e-9), prev)
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = mask[start:start + size].view_as(scores[n])
        start += size
    return out


def candidate_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the validation choice had to choose from (``prune.csv``'s rows): the pruned
    candidates (ratio > 0), how many of them were within the F1 tolerance, and the best
    score of a pruned candidate and of the unpruned one (where it is a candidate, as in
    ME-FairPrune), so a run that kept the unpruned model says whether pruning lost on the
    F1 tolerance (none within it) or on the fairness score (some within it, all worse)."""
    pruned = [r for r in rows if float(r.get("ratio") or 0.0) > 0]
    unpruned = [r for r in rows if float(r.get("ratio") or 0.0) == 0]
    out: dict[str, Any] = {
        "pruned_candidates": len(pruned),
        "pruned_within_tolerance": sum(within_tolerance(float(r["score"])) for r in pruned),
        "best_pruned_score": max((float(r["score"]) for r in pruned), default=None),
    }
    if unpruned:
        out["unpruned_score"] = max(float(r["score"]) for r in unpruned)
    return out


def pruning_engagement(info: dict[str, Any]) -> Engagement:
    """FairPrune's (and ME-FairPrune's) engagement: weights pruned in the chosen candidate,
    which was within the F1 tolerance (else the choice fell back to the best F1). The figures
    also carry :func:`candidate_counts` (runs recorded before it lack them)."""
    realized = float(info.get("realized_ratio") or 0.0)
    within = bool(info.get("within_f1_tolerance"))
    kept = bool(info.get("kept_unpruned"))
    figures = {"realized_ratio": realized, "within_f1_tolerance": within,
               "chosen_ratio": info.get("chosen_ratio"),
               "chosen_beta": info.get("chosen_beta"), "kept_unpruned": kept}
    figures.update({k: info[k] for k in ("pruned_candidates", "pruned_within_tolerance",
                                          "best_pruned_score", "unpruned_score") if k in info})
    return Engagement(realized > 0 and within and not kept,
                      "weights pruned > 0 in a candidate within the F1 tolerance", figures)


def chosen_setting(info: dict[str, Any]) -> dict[str, Any]:
    """The settings a pruning run chose on validation (β, ratio and, on multi-exit models, τ),
    for the run's notes (``notes.chosen`` in ``config.json``, shown by the leaderboard)."""
    keys = {"chosen_beta": "beta", "chosen_ratio": "ratio", "chosen_tau": "tau",
            "finetune_epoch": "finetune_epoch"}
    return {name: info[k] for k, name in keys.items() if info.get(k) is not None}


class SaliencyPruning(Method):
    """FairPrune's procedure (Wu et al., MICCAI 2022), registered by the ``fairprune`` method
    and extended by ``me_fairprune``: the fair saliency, candidate masks in oneshot or
    iterative mode, BatchNorm re-estimation, optional fine-tuning with the masks kept and the
    validation choice."""

    Params = FairPruneParams
    kind = "post-hoc"

    def _prune(self, ctx: RunContext, model: nn.Module, params: FairPruneParams, rule: Any,
               *, unpruned_candidate: bool = False
               ) -> tuple[float, dict[str, torch.Tensor], dict[str, Any]]:
        """Prune ``model`` in place by ``params.mode`` (and fine-tune with the masks kept if
        asked); writes ``prune.csv``; returns the validation score, the masks and the info
        for the notes. ``unpruned_candidate``: the unpruned model competes too (ratio 0 in
        ``prune.csv``). Shared with ME-FairPrune, which overrides the steps it calls."""
        rows: list[dict[str, Any]] = []
        start = None
        if unpruned_candidate:
            masks = {n: torch.zeros_like(p, dtype=torch.bool)
                     for n, p in scored_parameters(model, "conv_linear").items()}
            score, info = self._record(ctx, model, masks, rule, rows, ratio=0.0)
            start = (score, snapshot(model), masks, {**info, "chosen_ratio": 0.0})
        if params.mode == "oneshot":
            best = self._oneshot(ctx, model, params, rule, rows, start)
        else:
            best = self._iterative(ctx, model, params, rule, rows, start)
        score, state, masks, info = best
        model.load_state_dict(state)
        if params.finetune_epochs > 0:
            score, info = self._finetune(ctx, model, params, rule, masks, score, info)
        write_rows(ctx.run_dir / "prune.csv", rows)
        return score, masks, {**info, **candidate_counts(rows)}

    # -- modes ----------------------------------------------------------------------------------
    def _curvature_scores(self, ctx: RunContext, model: nn.Module, params: FairPruneParams,
                          seed: int, betas: tuple[float, ...] | None = None
                          ) -> dict[float, dict[str, torch.Tensor]]:
        """Fair scores per β (default: ``params.beta`` only) from one curvature pass."""
        curv = group_curvature(ctx, model, estimator=params.estimator, scope="conv_linear",
                               batch_size=params.score_batch_size, seed=seed,
                               max_per_group=params.score_samples)
        named = dict(model.named_parameters())
        return {beta: {n: fair_saliency(-named[n].detach(), curv.h_u[n], curv.h_p[n], beta)
                       for n in curv.h_u}
                for beta in (betas or (params.beta,))}

    def _apply(self, ctx: RunContext, model: nn.Module, masks: dict[str, torch.Tensor],
               params: FairPruneParams) -> None:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, m in masks.items():
                named[n].masked_fill_(m, 0.0)
        if params.recalibrate_bn:
            recalibrate_batchnorm(ctx, model)

    def _record(self, ctx: RunContext, model: nn.Module, masks: dict[str, torch.Tensor],
                rule: Any, rows: list[dict[str, Any]], **info: Any) -> tuple[float, dict]:
        val = ctx.evaluate(model, "val")
        total = sum(m.numel() for m in masks.values())
        realized = sum(int(m.sum()) for m in masks.values()) / total
        flat = flatten(val)
        score = rule(val)
        rows.append({**info, "realized_ratio": realized, "score": score,
                     **{f"val_{k}": flat.get(k) for k in CANDIDATE_COLUMNS}})
        ctx.logger.info("fairprune %s: realized %.4f val F1 %.4f EqOddsGap %.4f", info, realized,
                        val["F1"], val["EqOddsGap"])
        return score, {**info, "realized_ratio": realized, "val_F1": val["F1"],
                       "val_EqOddsGap": val["EqOddsGap"], "val_EOdd": val["EOdd"]}

    def _oneshot(self, ctx: RunContext, model: nn.Module, params: FairPruneParams, rule: Any,
                 rows: list[dict[str, Any]], best: Any = None) -> tuple[float, dict, dict, dict]:
        betas = tuple(dict.fromkeys(params.beta_grid))
        per_beta = self._curvature_scores(ctx, model, params, seed=1, betas=betas)
        start = snapshot(model)
        ratios = sorted(set(params.ratio_grid))
        with progress_bar(total=len(per_beta) * len(ratios), desc="fairprune candidates",
                          unit="cand", enabled=ctx.progress) as bar:
            for beta, scores in per_beta.items():
                for ratio in ratios:
                    model.load_state_dict(start)
                    masks = prune_masks(scores, ratio, ranking=params.ranking)
                    self._apply(ctx, model, masks, params)
                    score, info = self._record(ctx, model, masks, rule, rows, beta=beta,
                                               ratio=ratio)
                    if best is None or score > best[0]:
                        best = (score, snapshot(model), masks,
                                {**info, "chosen_ratio": ratio, "chosen_beta": beta})
                    bar.update(1)
                    bar.set_postfix_str(f"beta {beta:g}, ratio {ratio:g}", refresh=False)
        assert best is not None
        return best

    def _iterative(self, ctx: RunContext, model: nn.Module, params: FairPruneParams, rule: Any,
                   rows: list[dict[str, Any]], best: Any = None
                   ) -> tuple[float, dict, dict, dict]:
        masks: dict[str, torch.Tensor] | None = None
        since_best, t = 0, 0
        while True:
            t += 1
            ratio = min(params.max_ratio, t * params.step)
            assert params.beta is not None  # set by FairPruneParams.validate
            scores = self._curvature_scores(ctx, model, params, seed=t)[params.beta]
            masks = prune_masks(scores, ratio, ranking=params.ranking, already=masks)
            self._apply(ctx, model, masks, params)
            score, info = self._record(ctx, model, masks, rule, rows, round=t, ratio=ratio)
            if best is None or score > best[0]:
                best = (score, snapshot(model), dict(masks),
                        {**info, "chosen_ratio": ratio, "chosen_beta": params.beta})
                since_best = 0
            else:
                since_best += 1
            if since_best >= params.patience or ratio >= params.max_ratio - 1e-12:
                break
        assert best is not None
        return best

    @staticmethod
    def _finetune_setup(ctx: RunContext, params: FairPruneParams) -> tuple[TrainConfig, Any]:
        """The fine-tuning config and its loader: group-balanced, unaugmented batches, an epoch
        as long as twice the smaller group, constant learning rate, no weight decay."""
        config = TrainConfig(
            epochs=params.finetune_epochs, batch_size=params.finetune_batch_size,
            optimizer=params.finetune_optimizer, lr=params.finetune_lr, weight_decay=0.0,
            schedule="constant", sampler="group", augment=False, select="F1",
            amp=ctx.train_config.amp, channels_last=ctx.train_config.channels_last,
            cpu_channels_last=ctx.train_config.cpu_channels_last,
            eval_batch_size=ctx.train_config.eval_batch_size)
        n_train = 2 * min(len(ctx.positions("train", [ctx.privileged])),
                          len(ctx.positions("train", ctx.unprivileged)))
        train = ctx.loader("train", sampler="group", augment=False,
                           batch_size=params.finetune_batch_size, epoch_size=n_train,
                           seed_offset=200)
        return config, train

    def _finetune(self, ctx: RunContext, model: nn.Module, params: FairPruneParams, rule: Any,
                  masks: dict[str, torch.Tensor], score: float, info: dict[str, Any]
                  ) -> tuple[float, dict[str, Any]]:
        config, train = self._finetune_setup(ctx, params)
        before = snapshot(model)
        hooks = TrainHooks(frozen=masks, score=rule,
                           evaluate=lambda m, _loader: ctx.evaluate(m, "val"))
        result = ctx.fit(model, hooks=hooks, config=config, train=train,
                         stage="fairprune fine-tune")
        if result.best_score is not None and result.best_score > score:
            return result.best_score, {**info, "finetune_epoch": result.best_epoch}
        model.load_state_dict(before)  # fine-tuning did not beat the pruned model on val
        return score, {**info, "finetune_epoch": 0}
