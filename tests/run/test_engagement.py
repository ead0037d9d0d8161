"""Engagement records: every built-in method says whether its mechanism acted in a run.

Per method, the rule reads true on notes where the mechanism acted and false where it did
not (built by hand: the figures a no-op run leaves); runs write the record into config.json
and ``show`` prints it; the leaderboard and the matrix mark a row whose runs mostly did not
engage with ∅ instead of a verdict; and two runs built so the mechanism must or cannot act
read true and false (the adversary's weight 0 against a large one)."""

from __future__ import annotations

import json
from pathlib import Path

import fairbench.methods  # noqa: F401 - registers the built-in methods
import numpy as np
import pytest

from fairbench.run.engagement import engaged_counts, engagement_text, mostly_idle
from fairbench.run.method import get_method_class, list_methods

_PRUNE = {"realized_ratio": 0.01, "within_f1_tolerance": True, "chosen_ratio": 0.01,
          "chosen_beta": 0.5}
_QUANT = {"selected": {"step": 4, "epoch": 2, "realized_ratio": 0.2},
          "within_f1_tolerance": True}
_APPLE = {"kept_base_model": False,
          "probe_test": {"base": {"balanced_accuracy": 1.0},
                         "perturbed": {"balanced_accuracy": 0.8}}}
_EXITS = {"tau": 0.9, "test": {"fractions": [0.1, 0.3, 0.6]}}

#: method -> (notes where the mechanism acted, notes where it did not)
CASES: dict[str, tuple[dict, dict]] = {
    "vanilla": ({}, {}),
    "bn_recalibrate": ({"bn_recalibrate": {"layers": 4}}, {"bn_recalibrate": {"layers": 0}}),
    "resampling": (
        {"resampling": {"mix": {"group": "dark", "train_smallest_share": 0.25,
                                "batches_smallest_share": 0.5}}},
        {"resampling": {"mix": {"group": "dark", "train_smallest_share": 0.25,
                                "batches_smallest_share": 0.25}}}),
    "fairprune": ({"fairprune": _PRUNE}, {"fairprune": {**_PRUNE, "within_f1_tolerance": False}}),
    "me_fairprune": ({"me_fairprune": {**_PRUNE, "kept_unpruned": False}},
                     {"me_fairprune": {**_PRUNE, "kept_unpruned": True, "realized_ratio": 0.0}}),
    "me_vanilla": ({"multiexit": _EXITS},
                   {"multiexit": {"tau": 1.0, "test": {"fractions": [0.0, 0.0, 1.0]}}}),
    "fairquantize": ({"fairquantize": _QUANT},
                     {"fairquantize": {**_QUANT, "within_f1_tolerance": False}}),
    "fairquantize_retrain": ({"fairquantize": _QUANT},
                             {"fairquantize": {"selected": {"step": 4, "epoch": 0}}}),
    "snnl_prune": ({"snnl_prune": {"pruned_channels": [3, 7], "layer_channels": 64,
                                   "within_f1_tolerance": True}},
                   {"snnl_prune": {"pruned_channels": [], "layer_channels": 64,
                                   "within_f1_tolerance": True}}),
    "fairdi": ({"fairdi": {"teachers": [{"kept_base": True}, {"kept_base": False}]}},
               {"fairdi": {"teachers": [{"kept_base": True}, {"kept_base": True}]}}),
    "apple": ({"apple": _APPLE}, {"apple": {**_APPLE, "kept_base_model": True}}),
    # a drop within the probe's noise (one image of 1,202) is no engagement
    "apple_noise": ({"apple": _APPLE},
                    {"apple": {"kept_base_model": False, "probe_test": {
                        "base": {"balanced_accuracy": 0.992308, "n_score": 1202},
                        "perturbed": {"balanced_accuracy": 0.991428, "n_score": 1202}}}}),
    "adv_conf": ({"adv_conf": {"adversary_val_accuracy": 0.70, "val_majority_share": 0.74}},
                 {"adv_conf": {"adversary_val_accuracy": 0.99, "val_majority_share": 0.74}}),
    "adv_rev": ({"adv_rev": {"adversary_val_accuracy": 0.74, "val_majority_share": 0.74}},
                {"adv_rev": {"adversary_val_accuracy": 0.90, "val_majority_share": 0.74}}),
    # the balanced rule (records with the balanced accuracy): an adversary at chance engaged,
    # one that collapsed to the majority is at chance too (it reads nothing); one reading the
    # group is not, although its plain accuracy (0.95) is near the majority's share (0.946)
    "adv_conf_noise": ({"adv_conf": {"adversary_val_accuracy": 0.946,
                                     "val_majority_share": 0.946,
                                     "adversary_val_balanced_accuracy": 0.5,
                                     "val_group_counts": [226, 13]}},
                       {"adv_conf": {"adversary_val_accuracy": 0.95,
                                     "val_majority_share": 0.946,
                                     "adversary_val_balanced_accuracy": 0.85,
                                     "val_group_counts": [226, 13]}}),
    # with the fresh probe: an adversary at chance engaged only where the probe reads the
    # group worse than from vanilla's model (0.70 vs 0.95), not where it reads it as well
    "adv_rev_noise_probe": ({"adv_rev": {"adversary_val_balanced_accuracy": 0.5,
                                   "val_group_counts": [120, 120],
                                   "fresh_probe_val": {"method": 0.70, "vanilla": 0.95}}},
                      {"adv_rev": {"adversary_val_balanced_accuracy": 0.5,
                                   "val_group_counts": [120, 120],
                                   "fresh_probe_val": {"method": 1.0, "vanilla": 1.0}}}),
    "mfd": ({"mfd": {"first_batch_mmd_per_epoch": [3.0, 1.1, 0.7]}},
            {"mfd": {"first_batch_mmd_per_epoch": [0.7, 1.1, 3.0]}}),
    "groupdro": ({"groupdro": {"final_q": {"light": 0.2, "dark": 0.8}}},
                 {"groupdro": {"final_q": {"light": 0.5, "dark": 0.5}}}),
}


def test_every_built_in_method_has_a_case() -> None:
    assert {name.split("_noise")[0] for name in CASES} == set(list_methods())


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_rule_reads_true_when_the_mechanism_acted_and_false_when_not(name: str) -> None:
    method = get_method_class(name.split("_noise")[0])()
    acted, idle = CASES[name]
    record = method.engagement(acted)
    assert record is not None and record.criterion
    if name == "vanilla":
        assert record.engaged is None
        return
    assert record.engaged is True, (name, record)
    assert method.engagement(idle).engaged is False, name
    json.dumps(record.to_dict())  # recorded in config.json as it is


def test_counts_and_the_show_line() -> None:
    configs = [{"engagement": {"engaged": False}}, {"engagement": {"engaged": False}},
               {"engagement": {"engaged": True}}, {"engagement": None}]
    assert engaged_counts(configs) == (2, 3) and mostly_idle(configs)
    assert not mostly_idle(configs[1:])  # 1 of 2: not more than half
    assert engagement_text({"engaged": False, "criterion": "c", "figures": {"x": 0.5}}) == (
        "engagement: DID NOT ENGAGE (c); x=0.5")
    assert "not recorded" in engagement_text(None)


# -- runs -----------------------------------------------------------------------------------------
def _run(tmp_path: Path, method: str, params: dict, **kwargs: object) -> dict:
    from fairbench.run.runner import run_experiment
    from fairbench.testing import tiny_run_config

    result = run_experiment(tiny_run_config(method, tmp_path, params=params,
                                            cache_dir=tmp_path / "cache", **kwargs))
    return json.loads((result.run_dir / "config.json").read_text())


def test_a_run_records_it_and_show_prints_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fairbench.cli.main import main

    config = _run(tmp_path, "resampling", {})
    record = config["engagement"]
    mix = config["notes"]["resampling"]["mix"]
    assert record["engaged"] == (mix["batches_smallest_share"] > mix["train_smallest_share"])
    run_dir = next((tmp_path / "synthderm" / "resampling").iterdir())
    res = CliRunner().invoke(main, ["show", str(run_dir)])
    assert res.exit_code == 0 and "engagement: " in res.output


def test_the_adversary_with_weight_zero_does_not_engage(tmp_path: Path) -> None:
    """AdvConf with α = 0: the adversary is trained but never opposed, so it predicts the
    group (skin tone is the colour of the whole image) better than always guessing the
    majority one; the record must read false."""
    config = _run(tmp_path, "adv_conf", {"alpha": 0.0, "adv_steps": 5, "adv_lr": 1e-2},
                  data={"n_samples": 400}, train={"epochs": 3})
    info = config["notes"]["adv_conf"]
    assert config["engagement"]["engaged"] is False, info
    assert info["adversary_val_accuracy"] > info["val_majority_share"]


def test_pruning_within_a_wide_tolerance_engages(tmp_path: Path) -> None:
    config = _run(tmp_path, "fairprune", {"estimator": "fisher", "score_samples": 8,
                                          "score_batch_size": 8, "ratio": 0.05,
                                          "beta_grid": (), "beta": 0.5, "f1_tolerance": 1.0})
    assert config["engagement"]["engaged"] is True
    assert config["engagement"]["figures"]["realized_ratio"] > 0


def test_leaderboard_marks_a_row_whose_runs_did_not_engage(tmp_path: Path) -> None:
    from bench_helpers import make_run_with_metrics

    from fairbench import leaderboard
    from fairbench.core.files import write_manifest

    rng = np.random.default_rng(0)
    for seed in range(4):
        base = 0.8 + float(rng.normal(0, 0.02))
        for method, f1, engaged in (("vanilla", base, None), ("idle", base + 0.1, False),
                                    ("busy", base + 0.1, True)):
            run = make_run_with_metrics(tmp_path, method=method, seed=seed,
                                        test={"F1": f1 + float(rng.normal(0, 0.001)),
                                              "EqOddsGap": 0.3})
            cfg = json.loads((run / "config.json").read_text())
            cfg["engagement"] = {"engaged": engaged if seed else True, "criterion": "c",
                                 "figures": {}}
            (run / "config.json").write_text(json.dumps(cfg))
            write_manifest(run)  # the edit made by the test, verified as the run's
    board = leaderboard(tmp_path, rule="best_f1")
    md = board.render("md", "compact")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "∅3/4" in rows["idle"] and "▲" not in rows["idle"]
    assert "∅" not in rows["busy"] and "▲" in rows["busy"]
    frame = board.to_frame("compact").set_index("method")
    assert frame.loc["idle", "runs_not_engaged"] == 3
    assert "the row measures a no-op" in md


def test_apple_probe_noise_floor_is_two_binomial_standard_errors() -> None:
    from fairbench.methods.apple import probe_noise_floor

    # independent: the binomial variance a(1-a)/n by hand, for a = 0.99, n = 1,000
    assert probe_noise_floor(0.99, 1000) == pytest.approx(2 * (0.0099 / 1000) ** 0.5)
    assert probe_noise_floor(1.0, 1000) == 0.0 and probe_noise_floor(0.9, None) == 0.0
    method = get_method_class("apple")()
    record = {"kept_base_model": False, "probe_test": {
        "base": {"balanced_accuracy": 0.99, "n_score": 1000},
        "perturbed": {"balanced_accuracy": 0.99 - 0.0062, "n_score": 1000}}}
    assert method.engagement({"apple": record}).engaged is False  # 0.0062 < 0.00629
    record["probe_test"]["perturbed"]["balanced_accuracy"] = 0.99 - 0.0064
    assert method.engagement({"apple": record}).engaged is True


def test_adversary_chance_floor_is_two_standard_errors_of_a_balanced_accuracy() -> None:
    from fairbench.methods.adversarial import adversary_engagement, chance_floor

    # independent: simulate adversaries that guess at random (p = 1/2 per group) on groups of
    # 200 and 20 rows; the balanced accuracy's sd over many draws is the floor's half
    rng = np.random.default_rng(0)
    hits_a = rng.binomial(200, 0.5, 20000) / 200
    hits_b = rng.binomial(20, 0.5, 20000) / 20
    sd = float(np.std((hits_a + hits_b) / 2))
    assert chance_floor([200, 20]) == pytest.approx(2 * sd, rel=0.03)
    at = {"adversary_val_accuracy": 0.6, "val_majority_share": 0.9,
          "val_group_counts": [200, 20]}
    floor = chance_floor([200, 20])
    assert adversary_engagement({**at, "adversary_val_balanced_accuracy": 0.5 + floor * 0.99}
                                ).engaged is True
    assert adversary_engagement({**at, "adversary_val_balanced_accuracy": 0.5 + floor * 1.01}
                                ).engaged is False
    # below chance by more than the floor: the inverted guess reads the group
    assert adversary_engagement({**at, "adversary_val_balanced_accuracy": 0.5 - floor * 1.01}
                                ).engaged is False
    assert adversary_engagement({**at, "adversary_val_balanced_accuracy": 0.5 - floor * 0.99}
                                ).engaged is True


def test_the_fresh_probe_drop_must_exceed_two_standard_errors_of_the_difference() -> None:
    from fairbench.methods.adversarial import adversary_engagement

    from fairbench.run.engagement import probe_drop_floor

    # independent: two probes with the same hit rate p on groups of 200 and 20 rows,
    # simulated; the sd of their balanced accuracies' difference is the floor's half
    rng = np.random.default_rng(1)
    p, counts = 0.8, [200, 20]

    def balanced() -> np.ndarray:
        return np.mean([rng.binomial(n, p, 20000) / n for n in counts], axis=0)

    sd = float(np.std(balanced() - balanced()))
    assert probe_drop_floor(p, p, counts) == pytest.approx(2 * sd, rel=0.03)
    at = {"adversary_val_balanced_accuracy": 0.5, "val_group_counts": counts}

    def engaged(method: float) -> bool:
        probe = {"method": method, "vanilla": 0.9}
        return adversary_engagement({**at, "fresh_probe_val": probe}).engaged

    # the floor at the pair's mean hit rate, by hand: 2·sqrt(2·p(1−p)·(1/200 + 1/20))/2
    for drop, expected in ((0.20, True), (0.14, True), (0.10, False), (0.05, False)):
        p_mean = 0.9 - drop / 2
        floor = 2 * (2 * p_mean * (1 - p_mean) * (1 / 200 + 1 / 20)) ** 0.5 / 2
        assert (drop > floor) is expected, (drop, floor)
        assert engaged(0.9 - drop) is expected, drop
    # a probe that could not be fitted (one group among the rows) is no engagement
    assert adversary_engagement({**at, "fresh_probe_val": {"reason": "one group"}}
                                ).engaged is False
