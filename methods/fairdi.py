"""``fairdi``: fair distillation from biased group-specific teachers (FairDi, Masroor et al.
2024, arXiv 2411.11939). No official code exists; the decisions below are fairbench's, with
the fair identity scaling of FairVision (github.com/Harvard-Ophthalmology-AI-Lab/FairVision,
``src/modules.py``).

* **Step 0, the base.** ``base=vanilla`` (default): the run's cached vanilla model
  (cross-entropy with the run's train config), shared with every other method.
  ``base=fis``: a model trained from scratch with the run's train config and the fair identity
  scaling loss of FairVision (:func:`fis_loss`; weights scaled by the batch size, unlike
  FairVision's code, see :func:`fis_weights`), as the FairDi paper's step 0.
* **Step 1, teachers.** One teacher per group a: a copy of the base fine-tuned for
  ``teacher_epochs`` (run's optimizer, ``teacher_lr``, cosine schedule, augmentation as the
  run) on the training samples of group a only, the paper's "biased teachers"; the
  checkpoint is the fine-tuned epoch with the best macro-F1 on the validation samples of
  group a (the last epoch if the group has no validation samples). ``kept_base`` in the
  notes says whether the teacher's weights are still the base's, bit for bit (measured).
  ``teacher_keeps_base=true`` (fairbench's rule before 2026-12-07) makes the base model a
  candidate of that choice too, so a teacher is never worse on its own group's validation
  samples than the model it started from. Measured with it on the ``synthderm`` defaults
  (seeds 0–2): fine-tuning beat the base on its own group in 1 of 6 (group, seed) cases
  (light, seed 1: 98.25 vs 98.10 F1), so the student mostly distilled the model it starts
  from and FairDi changed the test EqOddsGap by −0.09 ± 0.24 points
  (``benchmarks/defaults.toml``); in the mechanism suite both teachers were the base in 13
  of 48 runs. ``teacher_scope=full``
  (default) trains the whole network; ``head`` trains only the linear classifier, the body kept
  in eval mode (its BatchNorm statistics frozen too), as the only public FairDi-style code
  (DIAGNOSE, third-party) does. A group with fewer than ``min_teacher_samples`` training
  samples stops the run before any training.
* **Step 2, the student.** A copy of the base trained for ``student_epochs`` on all training
  samples with, per sample i of group g_i,

      L_i = (1 − λ)·CE(s(x_i), y_i) + λ·τ²·KL(softmax(t_{g_i}(x_i)/τ) ‖ softmax(s(x_i)/τ))

  averaged over the batch (:mod:`fairbench.training.distill`, task-independent, reused for
  segmentation). The teachers run in eval mode on the same (augmented) batch, each on its own
  group's samples only. A sample whose group is unknown (−1) has no teacher: L_i = CE alone.
  The checkpoint is the best validation ``select_metric`` (default ``worst.F1``, the
  worst-group criterion DIAGNOSE early-stops on).
* **λ, τ.** The reference's values (λ = 0.95, τ = 1.5) are DIAGNOSE's, a third party's, not
  confirmed as the paper's. τ = 1.5 is kept; λ = 0.5 was chosen on validation of
  ``synthderm`` (seed 0: validation EOdd 0.072 and worst-group F1 0.828 at λ = 0.5 against
  0.096 and 0.785 at λ = 0.95; vanilla 0.076 and 0.819): with λ near 1 the student copies
  teachers that were fine-tuned on, and fit, the very training samples it sees (the
  teacher of the small group overfits its 471 samples), so the distillation target is
  little more than the noisy training labels.
* The student needs no attribute at inference: the returned module is the plain backbone.
* **Segmentation** (``--task segmentation``): the same three steps with U-Net
  segmentors. The supervised loss is the task's (soft Dice + BCE/CE against the masks, per
  image) and the distillation term the pixel-wise τ²·KL between the group teacher's and the
  student's per-pixel class distributions, averaged over pixels (the same
  :func:`distillation_kl`; a one-channel binary output is read as the two classes
  background/structure, softmax([0, z]) = [1 − σ(z), σ(z)], so the KL is that of the two
  Bernoulli distributions). Teachers keep their best validation Dice on their group;
  ``teacher_scope=head`` trains the decoder and segmentation head with the encoder frozen;
  the student's checkpoint rule defaults to ``worst.Dice``. FIS works per image's loss.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fairbench.core.errors import FairbenchError
from fairbench.core.params import Search, param
from fairbench.data.loaders import Batch, BatchLoader
from fairbench.metrics.classification import macro_prf
from fairbench.run.context import RunContext
from fairbench.run.engagement import Engagement
from fairbench.run.method import Method, register_method
from fairbench.run.posthoc import check_select_metric
from fairbench.training.distill import distillation_kl, distillation_objective
from fairbench.training.segmentation import as_class_logits
from fairbench.training.trainer import StepState, TrainHooks, better


@dataclass
class FairDiParams:
    lam: float = param(0.5, help="weight λ of the distillation term (tuned on synthderm "
                                 "validation; the third-party DIAGNOSE pipeline, "
                                 "github.com/Abhinoob1501/KnowledgeDistillation: 0.95)", min=0.0, max=1.0,
                       search=Search(0.1, 0.95))
    temperature: float = param(1.5, help="distillation temperature τ (DIAGNOSE: 1.5)", min=0.0,
                               min_exclusive=True, search=Search(1.0, 4.0))
    base: Literal["vanilla", "fis"] = param("vanilla", help="step 0: the cached vanilla model, "
                                            "or a model trained with the FIS loss")
    teacher_scope: Literal["full", "head"] = param("full", help="fine-tune the whole teacher "
                                                   "or only its linear head")
    teacher_epochs: int = param(3, help="fine-tuning epochs of each teacher", min=1)
    teacher_lr: float = param(5e-4, help="teachers' learning rate", min=0.0, min_exclusive=True)
    teacher_keeps_base: bool = param(
        False, help="let the base model compete with each teacher's fine-tuned epochs on its "
                    "group's validation part (fairbench's former rule; the paper's teachers "
                    "are the base fine-tuned on their group)")
    student_epochs: int = param(5, help="student training epochs", min=1)
    student_lr: float = param(5e-4, help="student learning rate", min=0.0, min_exclusive=True)
    select_metric: str = param("auto", help="validation metric that picks the student's "
                                            "checkpoint (auto = worst.F1, or worst.Dice for "
                                            "segmentation)")
    min_teacher_samples: int = param(16, help="fewest training samples a group needs for a "
                                              "teacher", min=1)
    fis_c: float = param(0.5, help="FIS: weight c of the group term", min=0.0, max=1.0)
    fis_temperature: float = param(1.0, help="FIS: softmax temperature", min=0.0,
                                   min_exclusive=True)
    fis_r: float = param(1.0, help="FIS: mean sample weight r (right asymptote)", min=0.0,
                         min_exclusive=True)
    fis_group_batch: int = param(64, help="FIS: samples drawn per group each step", min=2)

    def validate(self) -> None:
        if self.select_metric != "auto":
            check_select_metric(self.select_metric)


# -- FIS (step 0 option) ------------------------------------------------------------------------
def wasserstein2_1d(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact W2² between the empirical distributions of 1-D samples ``u`` and ``v``:
    ∫₀¹ (F_u⁻¹(q) − F_v⁻¹(q))² dq, the quantile functions being step functions that change at
    the levels k/n and k/m (so the integral is a finite sum)."""
    u, v = torch.sort(u.reshape(-1).double())[0], torch.sort(v.reshape(-1).double())[0]
    n, m = u.numel(), v.numel()
    levels = torch.unique(torch.cat([torch.arange(1, n + 1, device=u.device) / n,
                                     torch.arange(1, m + 1, device=u.device) / m]))
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - widths / 2
    iu = (mid * n).floor().long().clamp_(0, n - 1)
    iv = (mid * m).floor().long().clamp_(0, m - 1)
    return (widths * (u[iu] - v[iv]) ** 2).sum()


def fis_weights(losses: torch.Tensor, group_distance: torch.Tensor, *, c: float,
                temperature: float, r: float) -> torch.Tensor:
    """Fair identity scaling weights of a batch (FairVision, ``src/modules.py``)::

        w_i = r·B·[(1 − c)·softmax_i(ℓ_i / T) + c·softmax_i(δ_{a_i} / T)]

    ``losses`` ℓ (B, with gradient: as in FairVision's code, the weights are not detached) and
    each sample's group distance δ_{a_i} (B). The factor B is fairbench's: it makes the
    weights average r, so the FIS loss stays on the scale of the plain mean cross-entropy.
    FairVision's released ``Fair_Loss_Scaler`` has that multiplication commented out and
    uses r·softmax, which makes its loss B times smaller (a rescaled learning rate for SGD;
    nearly no change under Adam, which is invariant to a constant loss scale up to its ε);
    the loss is mean_i(w_i·ℓ_i)."""
    b = losses.shape[0]
    w_ind = torch.softmax(losses / temperature, dim=0)
    w_grp = torch.softmax(group_distance.to(losses.dtype) / temperature, dim=0)
    return r * b * ((1.0 - c) * w_ind + c * w_grp)


def _endless(loader: BatchLoader) -> Iterator[Batch]:
    while True:
        yield from loader


def fis_loss(ctx: RunContext, params: FairDiParams) -> Any:
    """The FIS training objective as a trainer loss hook. Every step also draws
    ``fis_group_batch`` training samples of each group (endless per-group loaders, as
    FairVision does), takes their per-sample cross-entropies without gradient, and sets
    δ_a = ½·W2²(losses of group a, losses of all groups' draws): the exact 1-D optimal
    transport cost that geomloss' debiased Sinkhorn divergence (p = 2, cost |x−y|²/2,
    blur 0.1) approximates. Samples of unknown group get δ = 0."""
    streams = {a: _endless(ctx.loader("train", groups=[a], sampler="shuffle",
                                      batch_size=params.fis_group_batch, drop_last=False,
                                      seed_offset=500 + a))
               for a in range(ctx.n_groups) if len(ctx.positions("train", [a])) > 0}

    def loss(model: nn.Module, batch: Batch, state: StepState) -> torch.Tensor:
        per_sample = ctx.task_loss(model(batch.x), batch, reduction="none").float()
        with torch.no_grad():
            drawn = {a: ctx.task_loss(model(b.x), b, reduction="none").float()
                     for a, b in ((a, next(s)) for a, s in streams.items())}
            pooled = torch.cat(list(drawn.values()))
            delta = torch.zeros(ctx.n_groups + 1, device=per_sample.device)  # last: unknown
            for a, la in drawn.items():
                delta[a] = 0.5 * wasserstein2_1d(la, pooled).float()
            g = batch.g if batch.g is not None else torch.full_like(batch.y, -1)
            dist = delta[torch.where(g >= 0, g, torch.full_like(g, ctx.n_groups))]
        w = fis_weights(per_sample, dist, c=params.fis_c, temperature=params.fis_temperature,
                        r=params.fis_r)
        return (w * per_sample).mean()

    return loss


# -- teachers --------------------------------------------------------------------------------------
class _HeadOnly(nn.Module):
    """Trains only the head: a classifier's ``classifier`` (the ``body`` frozen) or a
    segmentor's decoder and segmentation head (the ``encoder`` frozen). The frozen part has no
    gradient and stays in eval mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for p in self._frozen().parameters():
            p.requires_grad_(False)

    def _frozen(self) -> nn.Module:
        return self.model.encoder if hasattr(self.model, "encoder") else self.model.body

    def train(self, mode: bool = True) -> _HeadOnly:
        super().train(mode)
        self._frozen().eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _group_f1(ctx: RunContext) -> Any:
    """Validation evaluator of a teacher: macro-F1 (argmax) over the loader's samples, or the
    mean per-image Dice for segmentation."""
    labels = ctx.table.labels

    def evaluate(model: nn.Module, loader: BatchLoader) -> dict[str, Any]:
        if ctx.task == "segmentation":
            scores = ctx.trainer.predict_segmentation(model, loader, ctx.train_config)
            return {"Dice": float(scores.dice.mean())}
        pred = ctx.trainer.predict(model, loader, ctx.train_config)
        return {"F1": macro_prf(labels[pred.index], pred.probs.argmax(1))[2]}

    return evaluate


def check_groups(ctx: RunContext, params: FairDiParams) -> dict[int, int]:
    """Training-sample count per group; raises :class:`FairbenchError` for a group too small
    to train its teacher."""
    counts = {a: len(ctx.positions("train", [a])) for a in range(ctx.n_groups)}
    for a, n in counts.items():
        if n < params.min_teacher_samples:
            raise FairbenchError(
                f"group {ctx.group_names[a]!r} of attribute {ctx.attribute!r} has {n} training "
                f"samples, fewer than min_teacher_samples={params.min_teacher_samples} needed "
                "to train its teacher; use another attribute or split, or lower "
                "min_teacher_samples")
    return counts


def train_teacher(ctx: RunContext, base: nn.Module, group: int,
                  params: FairDiParams) -> tuple[nn.Module, dict[str, Any]]:
    """The base fine-tuned on group ``group``'s training samples only (see the module
    docstring); returned in eval mode without gradients."""
    teacher = copy.deepcopy(base)
    trained: nn.Module = _HeadOnly(teacher) if params.teacher_scope == "head" else teacher
    has_val = len(ctx.positions("val", [group])) > 0
    config = dataclasses.replace(ctx.train_config, epochs=params.teacher_epochs,
                                 lr=params.teacher_lr,
                                 select=ctx.utility_metric if has_val else "last", patience=0)
    train = ctx.loader("train", groups=[group], seed_offset=300 + group)
    val = ctx.loader("val", groups=[group]) if has_val else None
    evaluate = _group_f1(ctx)
    base_score = None
    if val is not None:  # the base's score on the group: for the notes, and the candidate's
        base_score = float(evaluate(teacher, val)[ctx.utility_metric])  # with keeps_base
    result = ctx.trainer.fit(trained, train, val, config=config,
                             hooks=TrainHooks(evaluate=evaluate),
                             stage=f"fairdi teacher {ctx.group_names[group]}")
    if params.teacher_keeps_base:
        # the base model is the first candidate: a fine-tuned epoch replaces it only by the
        # trainer's own rule (the teacher is a copy, so ``base`` still holds the base weights)
        kept_base = base_score is not None and not (
            result.best_score is not None and better(result.best_score, base_score))
        if kept_base:
            teacher.load_state_dict(base.state_dict())
    else:  # the best fine-tuned epoch; measured: are its weights still the base's?
        reference = base.state_dict()
        kept_base = all(torch.equal(v, reference[k]) for k, v in teacher.state_dict().items())
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, {"group": ctx.group_names[group], "train_samples": len(train.positions),
                     "best_epoch": 0 if kept_base and params.teacher_keeps_base
                     else result.best_epoch,
                     "kept_base": kept_base, f"base_val_{ctx.utility_metric}": base_score,
                     f"val_{ctx.utility_metric}": base_score if kept_base
                     else result.best_score}


def teacher_logits(teachers: list[nn.Module], x: torch.Tensor, g: torch.Tensor,
                   shape: tuple[int, ...]) -> torch.Tensor:
    """Row i = logits of the teacher of sample i's group (zeros where g_i < 0); each teacher
    runs on its own group's rows only. ``shape``: one sample's logits (C, or C×H×W)."""
    out = torch.zeros(x.shape[0], *shape, device=x.device)
    with torch.no_grad():
        for a, teacher in enumerate(teachers):
            rows = (g == a).nonzero().squeeze(1)
            if rows.numel():
                out[rows] = teacher(x[rows]).float()
    return out


# -- the method --------------------------------------------------------------------------------------
@register_method("fairdi")
class FairDi(Method):
    """Fair distillation: a student distilled from per-group teachers (Masroor et al. 2024)."""

    Params = FairDiParams
    kind = "in-training"
    tasks = ("classification", "segmentation")

    def run(self, ctx: RunContext, params: FairDiParams) -> nn.Module:
        counts = check_groups(ctx, params)  # before any training
        if params.base == "fis":
            base = ctx.new_model()
            fit = ctx.fit(base, hooks=TrainHooks(loss=fis_loss(ctx, params)),
                          stage="fairdi base (FIS)")
            base_info: dict[str, Any] = {"base": "fis", "best_epoch": fit.best_epoch}
        else:
            base = ctx.vanilla()
            base_info = {"base": "vanilla"}
        base.eval()
        teachers, infos = [], []
        for a in range(ctx.n_groups):
            teacher, info = train_teacher(ctx, base, a, params)
            teachers.append(teacher)
            infos.append(info)

        student = copy.deepcopy(base)
        for p in student.parameters():
            p.requires_grad_(True)
        segmentation = ctx.task == "segmentation"

        def loss(model: nn.Module, batch: Batch, state: StepState) -> torch.Tensor:
            logits = model(batch.x)
            supervised = ctx.task_loss(logits, batch, reduction="none")
            g = batch.g if batch.g is not None else torch.full_like(batch.y, -1)
            t = teacher_logits(teachers, batch.x, g, tuple(logits.shape[1:]))
            if segmentation:  # per-pixel class logits (a binary map's one channel → two)
                logits, t = as_class_logits(logits), as_class_logits(t)
            kd = distillation_kl(logits, t, params.temperature)
            return distillation_objective(supervised, kd, g >= 0, params.lam)

        config = dataclasses.replace(ctx.train_config, epochs=params.student_epochs,
                                     lr=params.student_lr, select=ctx.utility_metric,
                                     patience=0)
        metric = params.select_metric
        if metric == "auto":
            metric = f"worst.{ctx.utility_metric}"
        hooks = TrainHooks(loss=loss, evaluate=lambda m, _loader: ctx.evaluate(m, "val"),
                           score=lambda metrics: _score(metrics, metric))
        result = ctx.fit(student, hooks=hooks, config=config,
                         train=ctx.loader("train", seed_offset=400), stage="fairdi student")
        ctx.notes["fairdi"] = {
            **base_info, "teachers": infos, "train_samples_per_group": {
                ctx.group_names[a]: n for a, n in counts.items()},
            "student_best_epoch": result.best_epoch, "student_val_score": result.best_score,
            "select_metric": metric, "lam": params.lam, "temperature": params.temperature,
        }
        return student

    def engagement(self, notes: dict) -> Engagement:
        teachers = notes["fairdi"]["teachers"]
        trained = sum(not t.get("kept_base") for t in teachers)
        return Engagement(trained > 0, "group teachers that are not the base model > 0",
                          {"teachers_trained": trained, "teachers": len(teachers)})


def _score(metrics: dict[str, Any], key: str) -> float:
    from fairbench.metrics import selection_score

    value = selection_score(metrics, key)
    return value if np.isfinite(value) else float("-inf")
