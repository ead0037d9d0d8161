"""``me_vanilla`` and ``me_fairprune`` (``fairbench.run.multiexit`` and
``fairbench.methods.me_fairprune``): a tiny ``me_fairprune`` run whose notes, candidates and
masks are checked, bad input through the CLI, and ``check_method`` conformance of both methods.

Default values of the methods' parameters are never asserted; every run sets what it uses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from dataset_helpers import assert_cli_error

from fairbench import create_backbone
from fairbench.cli.main import main
from fairbench.models.multiexit import (
    KNOWN_STAGES,
    MultiExit,
    resolve_exit_spec,
)
from fairbench.run.multiexit import MultiExitParams

TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "-q"]


FAST_PRUNE = {"estimator": "ggn_exact", "score_samples": "8", "score_batch_size": "8",
              "ratio": "0.05", "beta_grid": "0.5,1.0", "mode": "oneshot",
              "finetune_epochs": "0", "tau_grid": "0.5,0.9", "policy": "A",
              "unpruned_candidate": "true"}  # the default (false) is checked in test_mechanisms_act


def as_args(params: dict[str, str]) -> list[str]:
    return [a for k, v in params.items() for a in ("--param", f"{k}={v}")]


def invoke(method: str, runs: Path, cache: Path, params: dict[str, str], *extra: str):
    return CliRunner().invoke(main, ["run", "--method", method, *TINY, "--runs-dir", str(runs),
                                     "--cache-dir", str(cache), *as_args(params), *extra])


def tiny_model(seed: int = 0, weights=(0.5, 1.0, 0.0, 2.0, 1.5), width: int = 2) -> MultiExit:
    torch.manual_seed(seed)
    backbone = create_backbone("smallcnn", num_classes=3, image_size=16, width=width)
    spec = resolve_exit_spec("smallcnn", MultiExitParams(exit_weights=tuple(weights)))
    return MultiExit(backbone, spec, image_size=16, num_classes=3, tau=0.9, policy="A")


# -- a tiny me_fairprune run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("me")
    runs, cache = root / "runs", root / "cache"
    result = invoke("me_fairprune", runs, cache, FAST_PRUNE, "--save-weights")
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (runs / "synthderm" / "me_fairprune").iterdir() if p.is_dir()]
    return {"runs": runs, "cache": cache, "run_dir": run_dir,
            "config": json.loads((run_dir / "config.json").read_text())}


def rule_score(row: dict[str, str], f1_ref: float, tol: float = 0.02) -> float:
    """The documented rule from a logged row: −EqOddsGap within the F1 tolerance of the
    reference, else −1000 + F1."""
    f1 = float(row["val_F1"])
    return -float(row["val_EqOddsGap"]) if f1 >= f1_ref - tol - 1e-12 else -1e3 + f1


def test_me_fairprune_notes_candidates_and_masks(pruned):
    notes = pruned["config"]["notes"]
    me, ex = notes["me_fairprune"], notes["multiexit"]
    assert me["chosen_tau"] in (0.5, 0.9)
    assert ex["tau"] == pytest.approx(me["chosen_tau"], abs=1e-6)
    assert ex["stages"] == list(KNOWN_STAGES["smallcnn"]) and len(ex["mmac_per_exit"]) == 5
    sizes = pruned["config"]["split_sizes"]
    for part in ("val", "test"):
        rep = ex[part]
        assert sum(rep["counts"]) == sizes[part] and len(rep["counts"]) == 5
        assert min(ex["mmac_per_exit"]) <= rep["mean_mmac_per_sample"] <= max(ex["mmac_per_exit"])
    with (pruned["run_dir"] / "prune.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # the unpruned model at every τ (ratio 0), then β × τ (one ratio)
    assert [(r["beta"], float(r["ratio"])) for r in rows[:2]] == [("", 0.0), ("", 0.0)]
    assert len(rows) == 2 + 2 * 2
    # the tolerance is anchored on the unpruned model under its exit policy, and the choice
    # is the best logged candidate by the documented rule (the first of equal scores)
    anchor = me["unpruned"]["val_F1"]
    for r in rows:
        assert float(r["score"]) == pytest.approx(rule_score(r, anchor), abs=1e-9)
    scores = [float(r["score"]) for r in rows]
    best = rows[scores.index(max(scores))]
    assert float(best["tau"]) == me["chosen_tau"]
    assert float(best["ratio"]) == me["chosen_ratio"]
    assert me["kept_unpruned"] == (me["chosen_ratio"] == 0.0)
    # the record of what the choice had: pruned candidates, those within the F1 tolerance
    # (score > -100 by the rule), the best pruned and unpruned scores, counted from prune.csv
    pruned_rows = [r for r in rows if float(r["ratio"]) > 0]
    assert me["pruned_candidates"] == len(pruned_rows) == 4
    assert me["pruned_within_tolerance"] == sum(float(r["score"]) > -100 for r in pruned_rows)
    assert me["best_pruned_score"] == pytest.approx(max(float(r["score"]) for r in pruned_rows))
    assert me["unpruned_score"] == pytest.approx(max(scores[:2]))
    assert me["kept_unpruned"] == (me["unpruned_score"] >= me["best_pruned_score"])
    assert notes["chosen"]["tau"] == me["chosen_tau"]
    state = torch.load(pruned["run_dir"] / "weights.pt", weights_only=True)
    assert float(state["tau"]) == pytest.approx(me["chosen_tau"], abs=1e-6)
    ratios = me["realized_ratio_per_tensor"]
    assert any(n.startswith("heads.") for n in ratios)  # heads are scored and pruned too
    for n, r in ratios.items():
        assert float((state[n] == 0).float().mean()) >= r - 1e-6
    if not me["kept_unpruned"]:
        assert me["chosen_beta"] in (0.5, 1.0)
        # every conv/linear weight of the whole network lost ~5 %
        assert all(0.04 <= r <= 0.2 for r in ratios.values()), ratios
    # the trained multi-exit model is cached and shared with me_vanilla
    assert len(list((pruned["runs"] / "_me_vanilla").glob("*/model.pt"))) == 1
    result = invoke("me_vanilla", pruned["runs"], pruned["cache"],
                    {"tau_grid": "0.5,0.9", "policy": "A"})
    assert result.exit_code == 0, result.output
    assert len(list((pruned["runs"] / "_me_vanilla").glob("*/model.pt"))) == 1
    # me_vanilla's τ is the best of its tau.csv by the rule anchored on the final exit
    (van_dir,) = [p for p in (pruned["runs"] / "synthderm" / "me_vanilla").iterdir()
                  if p.is_dir()]
    van = json.loads((van_dir / "config.json").read_text())["notes"]["me_vanilla"]
    with (van_dir / "tau.csv").open() as fh:
        taus = list(csv.DictReader(fh))
    for r in taus:
        assert float(r["score"]) == pytest.approx(
            rule_score(r, van["final_exit_val_F1"]), abs=1e-9)
    tau_scores = [float(r["score"]) for r in taus]
    assert float(taus[tau_scores.index(max(tau_scores))]["tau"]) == van["chosen_tau"]
    # me_fairprune's unpruned reference is me_vanilla's delivered model
    assert me["unpruned"]["tau"] == van["chosen_tau"]
    assert me["unpruned"]["val_F1"] == pytest.approx(van["val_F1"])


@pytest.mark.slow
def test_me_fairprune_keeps_the_unpruned_model_when_pruning_does_not_help(tmp_path,
                                                                          tiny_cache):
    """With a ratio that destroys the model, no pruned candidate is within the tolerance of
    the unpruned one: the unpruned multi-exit model is returned unchanged."""
    runs = tmp_path / "runs"
    params = {**FAST_PRUNE, "ratio": "0.9", "beta_grid": "1.0"}
    result = invoke("me_fairprune", runs, tiny_cache, params, "--save-weights")
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (runs / "synthderm" / "me_fairprune").iterdir() if p.is_dir()]
    me = json.loads((run_dir / "config.json").read_text())["notes"]["me_fairprune"]
    assert me["kept_unpruned"] and me["chosen_ratio"] == 0.0
    # and its engagement record says why: no pruned candidate was within the tolerance
    record = json.loads((run_dir / "config.json").read_text())["engagement"]
    assert record["engaged"] is False
    assert record["figures"]["pruned_within_tolerance"] == 0
    assert record["figures"]["pruned_candidates"] >= 1
    state = torch.load(run_dir / "weights.pt", weights_only=True)
    cached = torch.load(next((runs / "_me_vanilla").glob("*/model.pt")), weights_only=True)
    for k, v in cached.items():
        if k != "tau":
            assert torch.equal(state[k], v), k


# -- bad input -------------------------------------------------------------------------------------
BAD = {
    "tau above one": ("me_vanilla", {"tau": "1.5"}, [], ["tau", "(0, 1]"]),
    "tau zero": ("me_fairprune", {"tau": "0"}, [], ["tau", "(0, 1]"]),
    "tau grid outside": ("me_vanilla", {"tau_grid": "0.9,1.2"}, [], ["tau_grid", "1.2"]),
    "empty tau grid": ("me_vanilla", {"tau_grid": ""}, [], ["tau_grid"]),
    "unknown policy": ("me_vanilla", {"policy": "C"}, [], ["policy", "A, B"]),
    "negative weight": ("me_fairprune", {"exit_weights": "1,1,-1,1,1"}, [], ["exit_weights"]),
    "weights do not match the exits": ("me_vanilla", {"exit_weights": "1,1"}, [],
                                       ["exit_weights", "2 values", "5 exits", "give 5"]),
    "no stage list": ("me_fairprune", {}, ["--backbone", "timm:resnet10t"],
                      ["no known stage list", "stages="]),
    "unknown stage": ("me_vanilla", {"stages": "body.3,body.77"}, [],
                      ["body.77", "not a module"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_before_training(case, tmp_path, tiny_cache):
    method, params, extra, fragments = BAD[case]
    runs = tmp_path / "runs"
    result = invoke(method, runs, tiny_cache, params, *extra)
    assert_cli_error(result, *fragments)
    assert not (runs / "_me_vanilla").exists() and not (runs / "_vanilla").exists()


# -- conformance -----------------------------------------------------------------------------------
def test_check_method_me_vanilla(tmp_path):
    from fairbench import check_method

    metrics = check_method("me_vanilla", tmp_path, params={"tau_grid": (0.5, 0.9)})
    assert {"val", "test", "meta"} <= set(metrics)


@pytest.mark.slow
def test_check_method_me_fairprune(tmp_path):
    from fairbench import check_method

    metrics = check_method("me_fairprune", tmp_path, params={
        "estimator": "fisher", "score_samples": 8, "score_batch_size": 8, "ratio": 0.05,
        "beta_grid": (), "beta": 0.5, "tau_grid": (0.5, 0.9)})
    assert {"val", "test", "meta"} <= set(metrics)
