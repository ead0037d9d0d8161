"""``fairprune``: ``prune_masks`` against brute-force lowest-k (per layer and global,
with already-pruned entries), tiny command-line runs whose saved weights are checked against
an independent recomputation of the fair OBD score, fine-tuning that keeps pruned entries at
zero, the iterative mode, bad input, and ``check_method`` conformance.

Default values of the method's parameters are never asserted; every run sets what it uses."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from dataset_helpers import assert_cli_error

import fairbench.run.pruning as fp
from fairbench import RunContext
from fairbench.cli.main import main
from fairbench.run.pruning import prune_masks

TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "-q"]
FAST = {"estimator": "fisher", "score_samples": "16", "score_batch_size": "8",
        "ratio": "0.1", "beta": "0.5", "beta_grid": "", "ranking": "per_layer",
        "mode": "oneshot", "finetune_epochs": "0"}


def as_args(params: dict[str, str]) -> list[str]:
    return [a for k, v in params.items() for a in ("--param", f"{k}={v}")]


def invoke(runs: Path, cache: Path, params: dict[str, str], *extra: str):
    return CliRunner().invoke(main, ["run", "--method", "fairprune", *TINY, "--runs-dir",
                                     str(runs), "--cache-dir", str(cache), *as_args(params),
                                     *extra])


def the_run_dir(runs: Path) -> Path:
    (run_dir,) = [p for p in (runs / "synthderm" / "fairprune").iterdir() if p.is_dir()]
    return run_dir


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# -- prune_masks against brute force -----------------------------------------------------------
def distinct_scores(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct values over all tensors together (so per-layer and global lowest-k are unique)."""
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    values = np.random.default_rng(seed).permutation(sum(sizes.values())).astype(np.float32)
    values = values * 0.01 - 1.0
    out, start = {}, 0
    for n, s in shapes.items():
        out[n] = torch.from_numpy(values[start:start + sizes[n]].copy()).reshape(s)
        start += sizes[n]
    return out


SHAPES = {"conv.weight": (4, 3, 3, 3), "fc.weight": (5, 7), "tiny.weight": (3,)}


def lowest_k(flat: np.ndarray, k: int, prev: np.ndarray) -> np.ndarray:
    mask = prev.copy()
    free = [i for i in np.argsort(flat, kind="stable") if not prev[i]]
    mask[free[:max(0, k - int(prev.sum()))]] = True
    return mask


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.25, 1 / 3, 0.5, 0.999, 1.0])
def test_prune_masks_per_layer(ratio):
    scores = distinct_scores(SHAPES, seed=1)
    masks = prune_masks(scores, ratio, ranking="per_layer")
    assert list(masks) == list(scores)
    for n, s in scores.items():
        k = math.ceil(round(ratio * s.numel(), 9))
        assert masks[n].shape == s.shape and masks[n].dtype == torch.bool
        assert int(masks[n].sum()) == k, (n, ratio)
        want = lowest_k(s.reshape(-1).numpy(), k, np.zeros(s.numel(), bool))
        assert np.array_equal(masks[n].reshape(-1).numpy(), want), (n, ratio)


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.25, 0.5, 1.0])
def test_prune_masks_global(ratio):
    scores = distinct_scores(SHAPES, seed=2)
    # make one layer much lower-scored so a global ranking differs from per-layer
    scores["fc.weight"] = scores["fc.weight"] - 100.0
    masks = prune_masks(scores, ratio, ranking="global")
    flat = torch.cat([s.reshape(-1) for s in scores.values()]).numpy()
    k = math.ceil(round(ratio * flat.size, 9))
    want = lowest_k(flat, k, np.zeros(flat.size, bool))
    got = torch.cat([masks[n].reshape(-1) for n in scores]).numpy()
    assert int(got.sum()) == k
    assert np.array_equal(got, want)
    for n, s in scores.items():
        assert masks[n].shape == s.shape
    if ratio == 0.25:  # 0.25·170 = 42.5 -> 43 entries: all 35 fc entries are the lowest
        assert bool(masks["fc.weight"].all())
        assert not torch.equal(masks["conv.weight"],
                               prune_masks(scores, ratio)["conv.weight"])


def test_prune_masks_keep_already_pruned():
    scores = distinct_scores(SHAPES, seed=3)
    rng = np.random.default_rng(4)
    already = {n: torch.from_numpy(rng.random(s.shape) < 0.15) for n, s in scores.items()}
    # some already-pruned entries are the highest-scored of their tensor
    for n, s in scores.items():
        already[n].view(-1)[torch.argmax(s)] = True
    for ratio in (0.05, 0.3, 0.6):
        per_layer = prune_masks(scores, ratio, already=already)
        for n, s in scores.items():
            k = math.ceil(round(ratio * s.numel(), 9))
            assert bool(per_layer[n][already[n]].all()), n
            want = lowest_k(s.reshape(-1).numpy(), k, already[n].reshape(-1).numpy())
            assert np.array_equal(per_layer[n].reshape(-1).numpy(), want), (n, ratio)
            assert int(per_layer[n].sum()) == max(k, int(already[n].sum()))
        glob = prune_masks(scores, ratio, ranking="global", already=already)
        flat = torch.cat([s.reshape(-1) for s in scores.values()]).numpy()
        prev = torch.cat([already[n].reshape(-1) for n in scores]).numpy()
        k = math.ceil(round(ratio * flat.size, 9))
        got = torch.cat([glob[n].reshape(-1) for n in scores]).numpy()
        assert np.array_equal(got, lowest_k(flat, k, prev)), ratio
    # a partial ``already`` (one tensor only) is fine
    part = prune_masks(scores, 0.3, already={"fc.weight": already["fc.weight"]})
    assert bool(part["fc.weight"][already["fc.weight"]].all())
    with pytest.raises(ValueError, match="ranking"):
        prune_masks(scores, 0.1, ranking="by_channel")


# -- tiny runs ---------------------------------------------------------------------------------
def snap(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def conv_linear_names(state: dict[str, torch.Tensor]) -> list[str]:
    """smallcnn's conv and linear weights: the 4-D conv kernels and the 2-D classifier."""
    return [k for k, v in state.items() if k.endswith("weight") and v.dim() in (2, 4)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One runs dir per module, so the tiny vanilla baseline is trained once."""
    return tmp_path_factory.mktemp("fp_runs")


def spied_run(root: Path, cache: Path, params: dict[str, str]) -> dict:
    """Run fairprune with the curvature calls (model in, result out) and fine-tuning fits
    (frozen masks, weights before and after) recorded."""
    rec: dict = {"curv": [], "fit": []}
    real_gc, real_fit = fp.group_curvature, RunContext.fit

    def spy_gc(ctx, model, **kw):
        out = real_gc(ctx, model, **kw)
        rec["curv"].append((snap(model), out, kw))
        return out

    def spy_fit(self, model, *args, **kw):
        if not kw.get("stage", "").startswith("fairprune"):
            return real_fit(self, model, *args, **kw)
        masks = {k: m.clone() for k, m in kw["hooks"].frozen.items()}
        before = snap(model)
        result = real_fit(self, model, *args, **kw)
        rec["fit"].append((masks, before, snap(model)))
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fp, "group_curvature", spy_gc)
        mp.setattr(RunContext, "fit", spy_fit)
        result = invoke(root, cache, params, "--save-weights")
    assert result.exit_code == 0, result.output
    rec["output"] = result.output
    rec["run_dir"] = the_run_dir(root)
    rec["weights"] = torch.load(rec["run_dir"] / "weights.pt", weights_only=True)
    return rec


@pytest.fixture(scope="module")
def oneshot(runs, tiny_cache):
    return spied_run(runs / "oneshot", tiny_cache, FAST)


def test_oneshot_prunes_lowest_fair_scores(oneshot):
    (start, curv, kw), = oneshot["curv"]  # one curvature pass
    assert kw["scope"] == "conv_linear" and kw["estimator"] == "fisher"
    weights = oneshot["weights"]
    names = conv_linear_names(weights)
    assert sorted(curv.h_u) == sorted(names)  # conv + linear only, no BN, no bias
    total_pruned = total = 0
    for n in names:
        w = start[n].double()
        score = 0.5 * w ** 2 * (curv.h_u[n].double() - 0.5 * curv.h_p[n].double())
        pruned = weights[n] == 0
        k = math.ceil(round(0.1 * w.numel(), 9))
        assert int(pruned.sum()) == k, n  # exactly ceil(ratio·N) zeros per layer
        assert bool((start[n][pruned] != 0).all())  # they were not zero before
        tol = 1e-5 * float(score.abs().max()) + 1e-15
        assert float(score[pruned].max()) <= float(score[~pruned].min()) + tol, n
        # the kept weights are untouched (no fine-tuning by request)
        assert torch.equal(weights[n][~pruned], start[n][~pruned]), n
        total_pruned += k
        total += w.numel()
    rows = read_rows(oneshot["run_dir"] / "prune.csv")
    assert len(rows) == 1
    assert float(rows[0]["ratio"]) == pytest.approx(0.1)
    assert float(rows[0]["realized_ratio"]) == pytest.approx(total_pruned / total, abs=1e-12)
    notes = json.loads((oneshot["run_dir"] / "config.json").read_text())["notes"]["fairprune"]
    for n in names:
        share = math.ceil(round(0.1 * weights[n].numel(), 9)) / weights[n].numel()
        assert notes["realized_ratio_per_tensor"][n] == pytest.approx(share, abs=1e-6)
    assert notes["chosen_ratio"] == pytest.approx(0.1) and notes["chosen_beta"] == 0.5
    # one pruned candidate, no unpruned one (FairPrune prunes always); its count within the
    # F1 tolerance is the rule's (score > -100)
    assert notes["pruned_candidates"] == 1 and "unpruned_score" not in notes
    assert notes["pruned_within_tolerance"] == int(float(rows[0]["score"]) > -100)
    assert notes["best_pruned_score"] == pytest.approx(float(rows[0]["score"]))


def test_oneshot_run_files_and_privileged_group(oneshot):
    run_dir = oneshot["run_dir"]
    for f in ("metrics.json", "config.json", "predictions.csv", "prune.csv", "weights.pt"):
        assert (run_dir / f).is_file(), f
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["privileged"] in config["groups"]
    assert metrics["meta"]["privileged"] == config["privileged"]
    assert "privileged:" in oneshot["output"]
    assert not oneshot["fit"], "no fine-tuning was asked for"


def test_finetune_keeps_pruned_entries_zero(runs, tiny_cache):
    rec = spied_run(runs / "finetune", tiny_cache, {
        **FAST, "finetune_epochs": "1", "finetune_optimizer": "adam", "finetune_lr": "0.001",
        "finetune_batch_size": "16"})
    (masks, before, after), = rec["fit"]
    moved = 0
    for n, m in masks.items():
        assert int(m.sum()) == math.ceil(round(0.1 * m.numel(), 9)), n
        assert bool((before[n][m] == 0).all()) and bool((after[n][m] == 0).all()), n
        moved += int((after[n][~m] != before[n][~m]).sum())
    assert moved > 0, "fine-tuning must have moved the kept weights (else the check is vacuous)"
    weights = rec["weights"]
    for n, m in masks.items():
        assert bool((weights[n][m] == 0).all()), n
    log = read_rows(rec["run_dir"] / "train_log.csv")
    assert any(r.get("stage") == "fairprune fine-tune" for r in log)


def test_iterative_mode_nested_rounds(runs, tiny_cache):
    rec = spied_run(runs / "iterative", tiny_cache, {
        **FAST, "mode": "iterative", "step": "0.05", "max_ratio": "0.1", "patience": "5",
        "ratio": "none"})
    rows = read_rows(rec["run_dir"] / "prune.csv")
    assert [float(r["ratio"]) for r in rows] == pytest.approx([0.05, 0.1])
    assert len(rec["curv"]) == 2  # the curvature is recomputed on the pruned model
    first_model = rec["curv"][1][0]  # the model entering round 2: round 1's pruning applied
    names = list(rec["curv"][0][1].h_u)
    total = sum(first_model[n].numel() for n in names)
    for t, row in enumerate(rows, start=1):
        want = sum(math.ceil(round(0.05 * t * first_model[n].numel(), 9)) for n in names)
        assert float(row["realized_ratio"]) == pytest.approx(want / total, abs=1e-12)
    weights = rec["weights"]
    notes = json.loads((rec["run_dir"] / "config.json").read_text())["notes"]["fairprune"]
    chosen = notes["chosen_ratio"]
    assert chosen in (pytest.approx(0.05), pytest.approx(0.1))
    for n in names:
        zero1 = first_model[n] == 0
        assert int(zero1.sum()) == math.ceil(round(0.05 * zero1.numel(), 9))
        # the saved model (best round) keeps round 1's pruned entries at zero, and holds
        # exactly ceil(chosen·N) zeros: round 2 counts round 1's entries toward its total
        assert bool((weights[n][zero1] == 0).all()), n
        assert int((weights[n] == 0).sum()) == math.ceil(round(chosen * zero1.numel(), 9)), n


def test_explicit_beta_is_the_beta_used_and_recorded(runs, tiny_cache):
    """``-p beta=0.7`` with the default β grid: only β 0.7 is tried, and the recorded
    parameters say so (beta_grid [0.7]); the chosen β and ratio are in ``notes.chosen``."""
    params = {k: v for k, v in FAST.items() if k not in ("beta_grid",)}
    params.update(beta="0.7", ratio="none", ratio_grid="0.05,0.1")
    rec = spied_run(runs / "explicit_beta", tiny_cache, params)
    config = json.loads((rec["run_dir"] / "config.json").read_text())
    assert config["method_params"]["beta"] == 0.7
    assert config["method_params"]["beta_grid"] == [0.7]
    rows = read_rows(rec["run_dir"] / "prune.csv")
    assert {float(r["beta"]) for r in rows} == {0.7}
    assert sorted(float(r["ratio"]) for r in rows) == [0.05, 0.1]
    chosen = config["notes"]["chosen"]
    assert chosen["beta"] == 0.7 and chosen["ratio"] in (0.05, 0.1)
    # the leaderboard row names the β and ratio the run used
    from fairbench.bench.leaderboard import leaderboard

    board = leaderboard(runs / "explicit_beta")
    text = board.to_markdown()
    assert f"chosen in run (seeds 0): beta=0.7, ratio={chosen['ratio']:g}" in text
    frame = board.to_frame()
    frame = frame[frame.method == "fairprune"]   # (beside the vanilla run the run left)
    assert json.loads(frame["chosen_in_run"].iloc[0]) == {"beta": [0.7],
                                                          "ratio": [chosen["ratio"]]}


def test_beta_and_other_beta_grid_refused(tmp_path):
    result = invoke(tmp_path / "runs", tmp_path / "cache",
                    {**FAST, "beta": "0.7", "beta_grid": "0.1,0.3"})
    assert_cli_error(result, "beta=0.7", "beta_grid", "not both")
    assert not (tmp_path / "runs").exists()


def rule_score(row: dict[str, str], f1_start: float, tol: float) -> float:
    """The documented selection rule recomputed from a logged row: −EqOddsGap within the F1
    tolerance of the vanilla model, else −1000 + F1 (so the best F1 wins among those)."""
    f1 = float(row["val_F1"])
    return -float(row["val_EqOddsGap"]) if f1 >= f1_start - tol - 1e-12 else -1e3 + f1


def test_chosen_beta_and_ratio_are_the_best_logged_candidate(runs, tiny_cache):
    """The (β, ratio) the run keeps is the best of ``prune.csv`` by the documented rule, the
    score logged for every candidate is that rule, and the saved model is that candidate's
    (its zeros are the chosen ratio's count per layer)."""
    params = {**FAST, "beta": "none", "beta_grid": "0.1,0.5,1.0", "ratio": "none",
              "ratio_grid": "0.02,0.1,0.3", "f1_tolerance": "0.05"}
    rec = spied_run(runs / "grid", tiny_cache, params)
    config = json.loads((rec["run_dir"] / "config.json").read_text())
    notes = config["notes"]["fairprune"]
    rows = read_rows(rec["run_dir"] / "prune.csv")
    assert len(rows) == 9
    f1_start = notes["vanilla_val_F1"]
    for r in rows:
        assert float(r["score"]) == pytest.approx(rule_score(r, f1_start, 0.05), abs=1e-9)
    scores = [float(r["score"]) for r in rows]
    best = rows[scores.index(max(scores))]  # the first of equal scores wins
    chosen = config["notes"]["chosen"]
    assert chosen == {"beta": float(best["beta"]), "ratio": float(best["ratio"])}
    assert notes["chosen_beta"] == chosen["beta"] and notes["chosen_ratio"] == chosen["ratio"]
    weights = rec["weights"]
    for n in conv_linear_names(weights):
        k = math.ceil(round(chosen["ratio"] * weights[n].numel(), 9))
        assert int((weights[n] == 0).sum()) >= k, n


def test_default_keeps_batchnorm_statistics_and_option_reestimates(runs, tiny_cache):
    """By default (as the paper) pruning re-estimates nothing: every BatchNorm buffer of the
    saved model equals the vanilla model's; ``recalibrate_bn=true`` changes them."""
    from fairbench.run.pruning import FairPruneParams

    assert FairPruneParams().recalibrate_bn is False
    off = spied_run(runs / "bn_off", tiny_cache, {**FAST, "recalibrate_bn": "false"})
    on = spied_run(runs / "bn_on", tiny_cache, {**FAST, "recalibrate_bn": "true"})
    vanilla = torch.load(next((runs / "bn_off" / "_vanilla").rglob("model.pt")),
                         weights_only=True)
    stats = [k for k in vanilla if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k in stats:
        assert torch.equal(off["weights"][k], vanilla[k]), k
    assert any(not torch.equal(on["weights"][k], vanilla[k]) for k in stats)
    # the same weights were pruned either way: only the statistics differ
    for n in conv_linear_names(off["weights"]):
        assert torch.equal(off["weights"][n], on["weights"][n]), n


# -- bad input ---------------------------------------------------------------------------------


PARAM_ERRORS = {
    "negative beta": ({"beta": "-1"}, ["beta"]),
    "ratio above one": ({"ratio": "1.5"}, ["ratio", "(0, 1]"]),
    "zero ratio": ({"ratio": "0"}, ["ratio", "(0, 1]"]),
    "iterative step above max": ({"mode": "iterative", "step": "0.3", "max_ratio": "0.2"},
                                 ["step", "max_ratio"]),
    "empty ratio grid": ({"ratio": "none", "ratio_grid": ""}, ["ratio_grid"]),
    "ratio grid outside": ({"ratio": "none", "ratio_grid": "0.1,1.5"}, ["ratio_grid", "1.5"]),
    "zero in ratio grid": ({"ratio": "none", "ratio_grid": "0,0.1"}, ["ratio_grid"]),
    "negative beta grid": ({"beta": "none", "beta_grid": "0.5,-0.1"}, ["beta_grid"]),
    "no beta and empty grid": ({"beta": "none", "beta_grid": ""}, ["beta_grid", "beta="]),
    "iterative with a beta grid": ({"mode": "iterative", "beta": "none",
                                    "beta_grid": "0.1,0.5"}, ["iterative", "beta"]),
    "unknown ranking": ({"ranking": "by_channel"}, ["ranking", "global"]),
    "unknown estimator": ({"estimator": "kfac"}, ["estimator"]),
    "zero max ratio": ({"mode": "iterative", "max_ratio": "0"}, ["max_ratio"]),
}


@pytest.mark.parametrize("case", list(PARAM_ERRORS))
def test_bad_params_fail_before_any_work(case, tmp_path):
    params, fragments = PARAM_ERRORS[case]
    result = invoke(tmp_path / "runs", tmp_path / "cache", {**FAST, **params})
    assert_cli_error(result, *fragments)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_hessian_exact_with_batchnorm_backbone(tmp_path, tiny_cache):
    runs = tmp_path / "runs"
    result = invoke(runs, tiny_cache, {**FAST, "estimator": "hessian_exact"})
    assert_cli_error(result, "hessian_exact", "BatchNorm")
    assert not (runs / "_vanilla").exists(), "must fail before the vanilla model is trained"


# -- conformance -------------------------------------------------------------------------------
def test_check_method_conformance(tmp_path):
    from fairbench import check_method

    metrics = check_method("fairprune", tmp_path, params={
        "estimator": "fisher", "score_samples": 8, "score_batch_size": 8, "ratio": 0.05,
        "beta_grid": (), "beta": 0.5})
    assert {"val", "test", "meta"} <= set(metrics)


def test_candidate_search_has_its_own_progress_bar(tmp_path, monkeypatch, capfd):
    import dataclasses

    from fairbench import run_experiment
    from fairbench.testing import tiny_run_config

    monkeypatch.delenv("FAIRBENCH_NO_PROGRESS", raising=False)
    config = tiny_run_config("fairprune", tmp_path / "runs", params={
        "estimator": "ggn_mc", "beta_grid": "0.5,1.0", "ratio_grid": "0.01,0.02",
        "score_samples": 8})
    run_experiment(dataclasses.replace(config, progress=True))
    err = capfd.readouterr().err
    assert "fairprune candidates" in err and "/4 " in err  # 2 betas x 2 ratios
