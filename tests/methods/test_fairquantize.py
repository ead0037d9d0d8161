"""``fairquantize``: the power-of-two quantizer against an independent reference, the
incremental schedule observed step by step inside a real tiny run (realized fraction, lowest
fair score selection, frozen entries bit-identical through retraining), the command line end
to end, ``selection=as_released``, bad input, and ``check_method`` conformance.

Default values of the method's parameters are never asserted (they are being tuned); every
run sets what it relies on."""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import fairbench.methods.fairquantize as fq
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from dataset_helpers import assert_cli_error
from fairbench.methods.fairquantize import pow2_quantize

from fairbench import RunContext
from fairbench.cli.main import main

TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "-q"]
# fast settings: empirical Fisher on 16 images per group, 3 steps (0.1, 0.2, 0.25)
FAST = {"estimator": "fisher", "score_samples": "16", "score_batch_size": "8",
        "target_ratio": "0.25", "step": "0.1", "retrain_epochs": "1",
        "retrain_optimizer": "adam", "retrain_lr": "0.001", "retrain_batch_size": "16"}
STEP = Fraction(1, 10)
TARGET = Fraction(1, 4)


def as_args(params: dict[str, str]) -> list[str]:
    return [a for k, v in params.items() for a in ("--param", f"{k}={v}")]


def invoke(runs: Path, cache: Path, params: dict[str, str], *extra: str):
    return CliRunner().invoke(main, ["run", "--method", "fairquantize", *TINY, "--runs-dir",
                                     str(runs), "--cache-dir", str(cache), *as_args(params),
                                     *extra])


def the_run_dir(runs: Path) -> Path:
    (run_dir,) = [p for p in (runs / "synthderm" / "fairquantize").iterdir() if p.is_dir()]
    return run_dir


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# -- the quantizer -----------------------------------------------------------------------------
def reference_pow2(w: np.ndarray) -> np.ndarray:
    """sign(w)·2^n with n the log-domain rounding of log2|w|: between 2^k and 2^(k+1) the
    boundary is the geometric midpoint 2^k·√2 (float64, no log rounding)."""
    w = w.astype(np.float64)
    out = np.zeros_like(w)
    nz = w != 0
    a = np.abs(w[nz])
    lo = np.exp2(np.floor(np.log2(a)))
    lo = np.where(lo > a, lo / 2, lo)  # guard log2 rounding at exact powers of two
    lo = np.where(2 * lo <= a, 2 * lo, lo)
    out[nz] = np.sign(w[nz]) * np.where(a >= lo * math.sqrt(2.0), 2 * lo, lo)
    return out


def assert_powers_of_two(q: torch.Tensor) -> None:
    mantissa, _ = torch.frexp(q)
    nonzero = q != 0
    assert bool((mantissa[nonzero].abs() == 0.5).all()), "nonzero outputs must be ±2^k"
    assert bool((mantissa[~nonzero] == 0).all())


def test_pow2_by_hand():
    w = torch.tensor([3.0, 0.7, -3.0, 1.4, 1.42, 1.5, 5.0, 6.0, -0.3, 1.0, 0.25, 0.0, -0.0])
    q = pow2_quantize(w)
    # 3 -> 4 (log2 3 = 1.58 rounds to 2); 0.7 -> 0.5 (log2 0.7 = -0.51 rounds to -1);
    # 1.4 < √2 -> 1; 1.42 > √2 -> 2; 5 (2.32) -> 4; 6 (2.58) -> 8; -0.3 (-1.74) -> -0.25
    assert q.tolist() == [4.0, 0.5, -4.0, 1.0, 2.0, 2.0, 4.0, 8.0, -0.25, 1.0, 0.25, 0.0, 0.0]
    assert q.dtype == w.dtype and q.shape == w.shape
    assert_powers_of_two(q)


def test_pow2_matches_reference_on_random_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4000, generator=g) * torch.exp(torch.empty(4000).uniform_(-12, 12,
                                                                             generator=g))
    w[::97] = 0.0
    w = w.reshape(40, 100)
    q = pow2_quantize(w)
    assert np.array_equal(q.numpy().astype(np.float64), reference_pow2(w.numpy()))
    assert_powers_of_two(q)
    assert bool((q[w == 0] == 0).all())
    assert bool((torch.sign(q) == torch.sign(w)).all())
    # idempotent; error within the geometric half-step
    assert torch.equal(pow2_quantize(q), q)
    nz = w != 0
    ratio = (q[nz] / w[nz]).abs()
    assert float(ratio.max()) <= math.sqrt(2) + 1e-6 and float(ratio.min()) >= 1 / math.sqrt(2) - 1e-6


def test_pow2_bit_width_by_hand():
    w = torch.tensor([8.0, 3.0, 1.0, 0.4, 0.1, -0.2, 0.0])
    # the largest exponent is round(log2 8) = 3; bits=b keeps 2^(b-1) - 1 exponents below it
    assert pow2_quantize(w, bits=2).tolist() == [8.0, 0, 0, 0, 0, 0, 0]  # 1 exponent: 3
    assert pow2_quantize(w, bits=3).tolist() == [8.0, 4.0, 0, 0, 0, 0, 0]  # 3, 2, 1
    assert pow2_quantize(w, bits=4).tolist() == [8.0, 4.0, 1.0, 0.5, 0.125, -0.25, 0]  # 3..-3
    # the top exponent is that of the largest magnitude after rounding (11.5 -> 16)
    assert pow2_quantize(torch.tensor([11.5, 4.0, 1.0]), bits=3).tolist() == [16.0, 4.0, 0.0]
    assert pow2_quantize(torch.zeros(3), bits=3).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_pow2_bit_width_random(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(30, 20, generator=g) * torch.exp(torch.empty(30, 20).uniform_(-6, 6,
                                                                                  generator=g))
    full = reference_pow2(w.numpy())
    q = pow2_quantize(w, bits=bits)
    assert_powers_of_two(q)
    exps = np.round(np.log2(np.abs(full[full != 0])))
    top = exps.max()
    n_levels = 2 ** (bits - 1) - 1
    keep = np.zeros_like(full, dtype=bool)
    keep[full != 0] = exps > top - n_levels
    want = np.where(keep, full, 0.0)
    assert np.array_equal(q.numpy().astype(np.float64), want)
    used = np.unique(np.abs(q.numpy()[q.numpy() != 0]))
    assert 1 <= len(used) <= n_levels


# -- the incremental schedule, observed inside a real run -------------------------------------
def snap(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One runs dir per module, so the tiny vanilla baseline is trained once."""
    return tmp_path_factory.mktemp("fq_runs")


@pytest.fixture(scope="module")
def spied(runs, tiny_cache):
    """A tiny fairquantize run (scope=all, selection=paper) with the model recorded at the start
    of every step (``group_curvature``), right before and after every retraining (``ctx.fit``)
    with the frozen masks, and the curvature handed to the score."""
    return spy_run(runs / "spied", tiny_cache, {**FAST, "beta": "0.7", "scope": "all"})


def spy_run(root: Path, tiny_cache: Path, params: dict[str, str]) -> dict:
    rec: dict[str, list] = {"start": [], "curv": [], "fit": []}
    real_gc, real_fit = fq.group_curvature, RunContext.fit

    def spy_gc(ctx, model, **kw):
        rec["start"].append(snap(model))
        out = real_gc(ctx, model, **kw)
        rec["curv"].append(out)
        return out

    def spy_fit(self, model, *args, **kw):
        stage = kw.get("stage", "")
        if not stage.startswith("fairquantize"):
            return real_fit(self, model, *args, **kw)
        masks = {k: m.clone() for k, m in kw["hooks"].frozen.items()}
        before = snap(model)
        result = real_fit(self, model, *args, **kw)
        rec["fit"].append((masks, before, snap(model)))
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fq, "group_curvature", spy_gc)
        mp.setattr(RunContext, "fit", spy_fit)
        result = invoke(root, tiny_cache, params, "--save-weights")
    assert result.exit_code == 0, result.output
    run_dir = the_run_dir(root)
    rec["run_dir"] = run_dir
    rec["weights"] = torch.load(run_dir / "weights.pt", weights_only=True)
    return rec


def expected_count(t: int, n: int) -> int:
    return math.ceil(min(TARGET, t * STEP) * n)


def test_schedule_realized_fraction_per_layer(spied):
    fits = spied["fit"]
    assert len(fits) == 3 and len(spied["start"]) == 3  # ratios 0.1, 0.2, 0.25
    names = list(fits[0][0])
    # scope=all: the weight of every conv, linear and BatchNorm module of smallcnn, no bias
    from fairbench import create_backbone

    model = create_backbone("smallcnn", num_classes=3, image_size=16, width=8)
    kinds = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)
    assert names == [f"{k}.weight" for k, m in model.named_modules() if isinstance(m, kinds)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 4
    for t, (masks, _, _) in enumerate(fits, start=1):
        assert list(masks) == names
        for n, m in masks.items():
            assert int(m.sum()) == expected_count(t, m.numel()), (t, n, m.numel())
    rows = read_rows(spied["run_dir"] / "steps.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [float(r["target_ratio"]) for r in rows] == pytest.approx([0.1, 0.2, 0.25])
    for t, row in enumerate(rows, start=1):
        masks = fits[t - 1][0]
        total = sum(m.numel() for m in masks.values())
        want = sum(expected_count(t, m.numel()) for m in masks.values()) / total
        assert float(row["realized_ratio"]) == pytest.approx(want, abs=1e-12)
    summary = json.loads((spied["run_dir"] / "config.json").read_text())["notes"]["fairquantize"]
    for n, share in summary["realized_ratio_per_tensor"].items():
        numel = fits[-1][0][n].numel()
        assert share == pytest.approx(expected_count(3, numel) / numel, abs=1e-6)


def test_schedule_masks_nest_and_quantized_entries_never_change(spied):
    fits, starts = spied["fit"], spied["start"]
    for t in range(1, len(fits)):
        prev_masks, prev_before, _ = fits[t - 1]
        masks, before, _ = fits[t]
        for n, old in prev_masks.items():
            assert bool(masks[n][old].all()), f"step {t + 1} dropped quantized entries of {n}"
            # entering step t+1 and after its quantization: bit-identical on old entries
            assert torch.equal(starts[t][n][old], prev_before[n][old]), n
            assert torch.equal(before[n][old], prev_before[n][old]), n


def test_new_entries_are_quantized_and_lowest_scored(spied):
    beta = 0.7
    fits, starts, curvs = spied["fit"], spied["start"], spied["curv"]
    prev: dict[str, torch.Tensor] | None = None
    for t, (masks, before, _) in enumerate(fits):
        for n, m in masks.items():
            old = prev[n] if prev is not None else torch.zeros_like(m)
            new = m & ~old
            w = starts[t][n].double()
            q = torch.from_numpy(reference_pow2(w.numpy()))
            # the new entries hold Q(w) of the weights entering the step; the others are untouched
            assert torch.equal(before[n][new].double(), q[new]), (t, n)
            assert torch.equal(before[n][~m], starts[t][n][~m]), (t, n)
            # and they are the lowest fair scores among the entries not yet quantized
            h_u, h_p = curvs[t].h_u[n].double(), curvs[t].h_p[n].double()
            score = 0.5 * (q - w) ** 2 * (h_u - beta * h_p)
            rest = ~m
            if int(new.sum()) and int(rest.sum()):
                tol = 1e-5 * float(score.abs().max()) + 1e-12
                assert float(score[new].max()) <= float(score[rest].min()) + tol, (t, n)
        prev = masks


def test_quantized_entries_frozen_through_retraining(spied):
    moved = 0
    for masks, before, after in spied["fit"]:
        for n, m in masks.items():
            assert torch.equal(after[n][m], before[n][m]), n
            assert_powers_of_two(after[n][m])
            moved += int((after[n][~m] != before[n][~m]).sum())
    assert moved > 0, "retraining must have moved the free weights (else the check is vacuous)"
    # the saved final model: the last step's entries, bit-identical and powers of two
    final_masks, final_before, _ = spied["fit"][-1]
    weights = spied["weights"]
    for n, m in final_masks.items():
        assert torch.equal(weights[n][m], final_before[n][m]), n
        assert_powers_of_two(weights[n][m])


# -- the schedule between steps and the choice of the checkpoint ------------------------------
def rule_score(row: dict[str, str], f1_start: float, tol: float) -> float:
    """The documented rule from a logged row: −EqOddsGap within the F1 tolerance of the
    starting model, else −1000 + F1."""
    f1 = float(row["val_F1"])
    return -float(row["val_EqOddsGap"]) if f1 >= f1_start - tol - 1e-12 else -1e3 + f1


def assert_choice_follows_rule(run_dir: Path, tol: float) -> dict:
    """Every logged score is the documented rule on the logged values, and the chosen
    checkpoint is the best eligible row of checkpoints.csv (the first of equal scores)."""
    config = json.loads((run_dir / "config.json").read_text())
    summary = config["notes"]["fairquantize"]
    rows = read_rows(run_dir / "checkpoints.csv")
    for r in rows:
        assert float(r["score"]) == pytest.approx(
            rule_score(r, summary["start_val_F1"], tol), abs=1e-9)
    eligible = [r for r in rows if r["eligible"] == "True"]
    assert eligible
    scores = [float(r["score"]) for r in eligible]
    best = eligible[scores.index(max(scores))]
    chosen = config["notes"]["chosen"]
    assert (chosen["step"], chosen["epoch"]) == (int(best["step"]), int(best["epoch"]))
    assert summary["selected"]["val_F1"] == pytest.approx(float(best["val_F1"]))
    return {"rows": rows, "eligible": eligible, "chosen": chosen}


@pytest.fixture(scope="module")
def paper_schedule(runs, tiny_cache):
    return spy_run(runs / "paper_schedule", tiny_cache,
                   {**FAST, "beta": "0.7", "retrain_epochs": "2", "f1_tolerance": "0.1"})


def test_default_schedule_continues_from_the_retrained_model(paper_schedule):
    """The paper's schedule: every step starts from the previous step's retrained model (its
    last epoch), never from the state right after quantizing."""
    starts, fits = paper_schedule["start"], paper_schedule["fit"]
    assert len(fits) == 3
    for t in range(1, 3):
        _, before, after = fits[t - 1]
        assert any(not torch.equal(after[n], before[n]) for n in after)
        for n, v in starts[t].items():
            assert torch.equal(v, after[n]), (t, n)
    rows = read_rows(paper_schedule["run_dir"] / "steps.csv")
    assert [int(r["continued_from_epoch"]) for r in rows] == [2, 2, 2]


def test_default_choice_is_the_best_final_step_retraining_epoch(paper_schedule):
    out = assert_choice_follows_rule(paper_schedule["run_dir"], 0.1)
    assert {(int(r["step"]), int(r["epoch"])) for r in out["rows"]} == {
        (t, e) for t in (1, 2, 3) for e in (0, 1, 2)}
    # eligible: the final step's retraining epochs only (never the quantized state)
    assert {(int(r["step"]), int(r["epoch"])) for r in out["eligible"]} == {(3, 1), (3, 2)}
    assert out["chosen"]["step"] == 3 and out["chosen"]["epoch"] >= 1


def test_path_steering_option_continues_from_the_selected_checkpoint(runs, tiny_cache):
    rec = spy_run(runs / "steered", tiny_cache,
                  {**FAST, "beta": "0.7", "retrain_epochs": "2", "continue_from": "selected",
                   "f1_tolerance": "0.1"})
    out = assert_choice_follows_rule(rec["run_dir"], 0.1)
    # eligible: every checkpoint of the final step, the quantized state (epoch 0) included
    assert {(int(r["step"]), int(r["epoch"])) for r in out["eligible"]} == {
        (3, 0), (3, 1), (3, 2)}
    rows = read_rows(rec["run_dir"] / "steps.csv")
    for t, r in enumerate(rows, start=1):
        assert r["continued_from_epoch"] == r["selected_epoch"]
        epochs = [c for c in out["rows"] if int(c["step"]) == t]
        scores = [float(c["score"]) for c in epochs]
        assert int(r["selected_epoch"]) == int(epochs[scores.index(max(scores))]["epoch"])
    # a step that kept its quantized state starts the next one from exactly that state
    for t in range(1, 3):
        if rows[t - 1]["selected_epoch"] == "0":
            _, before, _ = rec["fit"][t - 1]
            for n, v in rec["start"][t].items():
                assert torch.equal(v, before[n]), (t, n)


def test_quantize_step_global_ranking_is_the_network_wide_lowest_k():
    """``ranking=global`` (the paper's Algorithm 1): the ⌈r·N⌉ lowest fair scores over all
    scored weights together, already quantized entries counting toward it and kept; the
    per-layer default takes ⌈r·N_l⌉ in every tensor."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(5, 6))
    names = ["0.weight", "1.weight"]
    named = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    curv = SimpleNamespace(
        h_u={n: torch.rand(named[n].shape, generator=gen) for n in names},
        h_p={n: torch.rand(named[n].shape, generator=gen) * 3 for n in names})
    start = {n: named[n].detach().clone() for n in names}
    w = torch.cat([start[n].reshape(-1).double() for n in names])
    q = torch.from_numpy(reference_pow2(w.numpy()))
    score = (0.5 * (q - w) ** 2 * (torch.cat([curv.h_u[n].reshape(-1) for n in names]).double()
                                   - 0.7 * torch.cat([curv.h_p[n].reshape(-1)
                                                      for n in names]).double())).numpy()
    already = {n: torch.zeros_like(named[n], dtype=torch.bool) for n in names}
    already["1.weight"].view(-1)[:3] = True  # three entries quantized before
    params = fq.FairQuantizeParams(ranking="global")
    masks = fq.quantize_step(model, names, already, curv, 0.3, 0.7, params)
    got = torch.cat([masks[n].reshape(-1) for n in names]).numpy()
    prev = torch.cat([already[n].reshape(-1) for n in names]).numpy()
    k = math.ceil(0.3 * w.numel())
    free = [i for i in np.argsort(score, kind="stable") if not prev[i]]
    want = prev.copy()
    want[free[:k - int(prev.sum())]] = True
    assert np.array_equal(got, want) and int(got.sum()) == k
    after = torch.cat([named[n].detach().reshape(-1).double() for n in names]).numpy()
    new = want & ~prev
    assert np.array_equal(after[new], q.numpy()[new])  # new entries hold Q(w)
    assert np.array_equal(after[~new], w.numpy()[~new])  # the others are untouched
    # per layer: ceil(r·N_l) in every tensor
    for n in names:
        named[n].data.copy_(start[n])
    per_layer = fq.quantize_step(model, names, {n: torch.zeros_like(named[n], dtype=torch.bool)
                                                for n in names}, curv, 0.3, 0.7,
                                 fq.FairQuantizeParams())
    for n in names:
        assert int(per_layer[n].sum()) == math.ceil(0.3 * named[n].numel())


def test_cli_global_ranking_realizes_the_ratio_over_the_network(runs, tiny_cache):
    root = runs / "global"
    result = invoke(root, tiny_cache, {**FAST, "retrain_epochs": "0", "ranking": "global",
                                       "scope": "conv_linear"})
    assert result.exit_code == 0, result.output
    rows = read_rows(the_run_dir(root) / "steps.csv")
    config = json.loads((the_run_dir(root) / "config.json").read_text())
    assert config["method_params"]["ranking"] == "global"
    shares = config["notes"]["fairquantize"]["realized_ratio_per_tensor"]
    for r in rows:
        # ⌈r·N⌉ over the network: the realized share is r up to one weight in N
        assert float(r["realized_ratio"]) == pytest.approx(float(r["target_ratio"]), abs=1e-3)
    assert max(shares.values()) - min(shares.values()) > 0.01  # not the per-layer split


# -- command line end to end -------------------------------------------------------------------
def test_cli_end_to_end_records_privileged_group(spied):
    run_dir = spied["run_dir"]
    for f in ("metrics.json", "config.json", "predictions.csv", "steps.csv", "weights.pt"):
        assert (run_dir / f).is_file(), f
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "fairquantize"
    assert config["privileged"] in config["groups"] == ["light", "dark"]
    assert metrics["meta"]["privileged"] == config["privileged"]
    assert 0.0 <= metrics["test"]["F1"] <= 1.0 and "EOdd" in metrics["test"]
    assert config["method_params"]["estimator"] == "fisher"
    assert config["method_params"]["selection"] == "paper"
    summary = config["notes"]["fairquantize"]
    assert summary["steps"] == 3 and summary["selected"]["step"] == 3  # final step only



def test_run_records_its_wall_time_by_phase(spied):
    from fairbench.run.report import run_summary

    config = json.loads((spied["run_dir"] / "config.json").read_text())
    seconds = config["seconds"]
    phases = seconds["phases"]
    assert set(phases) == {"data", "vanilla", "train", "curvature", "other", "evaluate",
                           "leakage", "counterfactual"}
    assert all(v >= 0 for v in phases.values())
    # exclusive phases: they add up to (nearly all of) the run's wall time, never more
    assert 0.5 * seconds["total"] <= sum(phases.values()) <= seconds["total"] + 0.01
    assert phases["train"] > 0 and phases["curvature"] > 0
    metrics = json.loads((spied["run_dir"] / "metrics.json").read_text())
    assert "; by phase (s): " in run_summary(config, metrics)  # phases under 0.05 s omitted

def test_cli_selection_as_released(runs, tiny_cache):
    root = runs / "released"
    params = {**FAST, "selection": "as_released", "retrain_epochs": "0", "scope": "conv_linear"}
    result = invoke(root, tiny_cache, params)
    assert result.exit_code == 0, result.output
    assert "privileged:" in result.output
    rows = read_rows(the_run_dir(root) / "steps.csv")
    realized = [float(r["realized_ratio"]) for r in rows]
    # argsort-as-rank marks round(r·N)+1 positions per tensor, OR-ed with the old ones: always
    # more than the target, and never fewer than the step before
    for r, row in zip(realized, rows):
        assert r > float(row["target_ratio"])
    assert realized == sorted(realized)
    assert (the_run_dir(root) / "metrics.json").is_file()


@pytest.mark.slow
def test_cli_ablation_every_step_for_several_betas(runs, tiny_cache):
    # the paper's Fig. 2 data: metrics at every ratio step for several β (no retraining)
    root = runs / "ablation"
    params = {**FAST, "retrain_epochs": "0", "save_every_step": "true",
              "ablation_betas": "0.0,2.0"}
    result = invoke(root, tiny_cache, params)
    assert result.exit_code == 0, result.output
    run_dir = the_run_dir(root)
    steps = read_rows(run_dir / "steps.csv")
    assert all(r["test_F1"] != "" and r["test_EOdd"] != "" for r in steps)
    rows = read_rows(run_dir / "ablation.csv")
    assert [(float(r["beta"]), int(r["step"])) for r in rows] == [
        (b, t) for b in (0.0, 2.0) for t in (1, 2, 3)]
    for r in rows:
        assert 0.0 <= float(r["test_F1"]) <= 1.0 and 0.0 <= float(r["val_F1"]) <= 1.0
        assert float(r["test_EOdd"]) >= 0.0
    # the same schedule for every β: the realized fraction does not depend on β
    for t in (1, 2, 3):
        realized = {r["realized_ratio"] for r in rows + steps if int(r["step"]) == t}
        assert len(realized) == 1, t


# -- bad input ---------------------------------------------------------------------------------


PARAM_ERRORS = {
    "negative beta": ({"beta": "-0.5"}, ["beta"]),
    "zero ratio": ({"target_ratio": "0"}, ["target_ratio", "(0, 1]"]),
    "ratio above one": ({"target_ratio": "1.5"}, ["target_ratio", "(0, 1]"]),
    "zero step": ({"step": "0"}, ["step"]),
    "step above target": ({"target_ratio": "0.1", "step": "0.2"}, ["step", "target_ratio"]),
    "unknown estimator": ({"estimator": "kfac"}, ["estimator", "ggn_exact"]),
    "unknown selection": ({"selection": "random"}, ["selection", "as_released"]),
    "unknown scope": ({"scope": "bn"}, ["scope", "conv_linear"]),
    "negative ablation beta": ({"ablation_betas": "0.5,-1"}, ["ablation_betas"]),
}


@pytest.mark.parametrize("case", list(PARAM_ERRORS))
def test_bad_params_fail_before_any_work(case, tmp_path):
    params, fragments = PARAM_ERRORS[case]
    result = invoke(tmp_path / "runs", tmp_path / "cache", params)
    assert_cli_error(result, *fragments)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_hessian_exact_with_batchnorm_backbone(tmp_path, tiny_cache):
    runs = tmp_path / "runs"
    result = invoke(runs, tiny_cache, {**FAST, "estimator": "hessian_exact"})
    line = assert_cli_error(result, "hessian_exact", "BatchNorm")
    assert "ggn_exact" in line  # names a way out
    assert not (runs / "_vanilla").exists(), "must fail before the vanilla model is trained"
    assert not list((runs / "synthderm").rglob("metrics.json"))


def test_backbone_backpack_cannot_handle(tmp_path, tiny_cache, monkeypatch):
    # timm's ResNet-10-T pools with AvgPool2d(count_include_pad=False), which BackPACK's
    # second-order pass rejects: one clear line naming the problem and a way out, before any
    # training (the default autograd engine handles it; BackPACK is forced here)
    import fairbench.training.curvature as S

    monkeypatch.setitem(S.ENGINES, "ggn_mc", "backpack")
    runs = tmp_path / "runs"
    result = invoke(runs, tiny_cache, {**FAST, "estimator": "ggn_mc"},
                    "--backbone", "timm:resnet10t")
    assert_cli_error(result, "ggn_mc", "BackPACK", "AvgPool2d", "fisher")
    assert not (runs / "_vanilla").exists()


def test_group_without_training_samples(tmp_path, tiny_cache):
    from fairbench import create_dataset
    from fairbench.data.splits import make_split

    table = create_dataset("synthderm", n_samples=160, n_classes=3,
                           images_per_patient=1.0).build_table()
    split = make_split(table, seed=0)
    dark = set(table.sample_ids[table.attr("skin_tone") == 1])
    parts = {p: np.array([i for i in ids if not (p == "train" and i in dark)])
             for p, ids in split.parts.items()}
    parts["val"] = np.concatenate([parts["val"], [i for i in split.parts["train"] if i in dark]])
    path = tmp_path / "no_dark_train.csv"
    with path.open("w") as fh:
        fh.write("sample_id,part\n")
        for p, ids in parts.items():
            fh.writelines(f"{i},{p}\n" for i in ids)
    runs = tmp_path / "runs"
    result = invoke(runs, tiny_cache, FAST, "--split-file", str(path))
    assert_cli_error(result, "dark", "no training samples")
    assert not (runs / "_vanilla").exists()


# -- conformance -------------------------------------------------------------------------------
def test_check_method_conformance(tmp_path):
    from fairbench import check_method

    metrics = check_method("fairquantize", tmp_path, params={
        "estimator": "fisher", "score_samples": 8, "score_batch_size": 8,
        "target_ratio": 0.1, "step": 0.1, "retrain_epochs": 1})
    assert {"val", "test", "meta"} <= set(metrics)


@pytest.mark.slow
def test_curvature_out_of_memory_is_survived_and_recorded(runs, tiny_cache, monkeypatch):
    """A run whose curvature passes do not fit in memory at the score batch size goes on in
    smaller passes (found once, kept for every later step) and records the size in its notes."""
    import fairbench.training.curvature as S

    tried: list[int] = []
    real = S._backpack_step

    def step(model, loss_fn, ext, x, y):
        tried.append(int(x.shape[0]))
        if x.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        real(model, loss_fn, ext, x, y)

    monkeypatch.setattr(S, "_backpack_step", step)
    root = runs / "oom"
    result = invoke(root, tiny_cache, {**FAST, "estimator": "ggn_exact", "score_batch_size": "8"})
    assert result.exit_code == 0, result.output
    config = json.loads((the_run_dir(root) / "config.json").read_text())
    assert config["notes"]["curvature_samples_per_pass"] == 2
    assert tried.count(8) == 1 and tried.count(4) == 1  # found once, for the whole run


def test_retraining_control_follows_the_schedule_and_quantizes_nothing(runs, tiny_cache):
    """fairquantize_retrain: the same steps, balanced retraining and choice among the final
    step's epochs as FairQuantize, no weight quantized (realized ratio 0), no curvature pass."""
    params = {**FAST, "retrain_epochs": "2", "f1_tolerance": "0.1"}
    res = CliRunner().invoke(main, ["run", "--method", "fairquantize_retrain", *TINY,
                                    "--runs-dir", str(runs / "control"), "--cache-dir",
                                    str(tiny_cache), *as_args(params)])
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in (runs / "control" / "synthderm" / "fairquantize_retrain").iterdir()
                  if p.is_dir()]
    config = json.loads((run_dir / "config.json").read_text())
    rows = read_rows(run_dir / "steps.csv")
    assert [float(r["realized_ratio"]) for r in rows] == [0.0, 0.0, 0.0]   # 3 steps, nothing
    assert [int(r["continued_from_epoch"]) for r in rows] == [2, 2, 2]
    assert "curvature" not in config["seconds"]["phases"]
    summary = config["notes"]["fairquantize"]
    assert set(summary["realized_ratio_per_tensor"].values()) == {0.0}
    assert config["notes"]["chosen"]["step"] == 3 and config["notes"]["chosen"]["epoch"] >= 1
    # the delivered model was retrained: it differs from the vanilla model it started from
    out = assert_choice_follows_rule(run_dir, 0.1)
    assert {(int(r["step"]), int(r["epoch"])) for r in out["eligible"]} == {(3, 1), (3, 2)}
