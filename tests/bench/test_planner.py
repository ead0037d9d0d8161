"""``fairbench plan``: from a suite's finished pilot runs, per method × table × metric, the
verdict and the seeds that would decide it, and the projected time of those seeds from the
runs' recorded wall times; checked against numbers recomputed here from the runs' files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fairbench.bench.equivalence import paired_tost, seeds_to_decide
from fairbench.cli.main import main

SUITE = """
name = "pilot"
seeds = 3
runs_dir = "{runs}"
equivalence_margin = {{ EqOddsGap = 3 }}

[train]
epochs = 1
batch_size = 32

[[datasets]]
name = "synthderm"
image_size = 16
backbones = ["smallcnn"]
params = {{ n_samples = 240 }}

[[methods]]
name = "vanilla"

[[methods]]
name = "resampling"
"""


@pytest.fixture(scope="module")
def pilot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pilot")
    suite = root / "suite.toml"
    suite.write_text(SUITE.format(runs=root / "runs"))
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRBENCH_NO_PROGRESS", "1")
    mp.setenv("FAIRBENCH_CACHE", str(root / "cache"))
    res = CliRunner().invoke(main, ["sweep", str(suite), "-q"])
    assert res.exit_code == 0, res.output
    yield suite
    mp.undo()


def _runs(suite: Path, method: str) -> dict[int, dict]:
    out = {}
    for cfg in (suite.parent / "runs" / "synthderm" / method).glob("*/config.json"):
        config = json.loads(cfg.read_text())
        metrics = json.loads((cfg.parent / "metrics.json").read_text())
        out[config["seed"]] = {"config": config, "metrics": metrics}
    return out


def test_plan_matches_numbers_recomputed_from_the_runs(pilot: Path) -> None:
    res = CliRunner().invoke(main, ["plan", str(pilot), "--labels", "observed"])
    assert res.exit_code == 0, res.output
    vanilla, method = _runs(pilot, "vanilla"), _runs(pilot, "resampling")
    seeds = sorted(vanilla)
    lines = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in res.output.splitlines() if line.startswith("| resampling")}
    for key, title, margin in (("EqOddsGap", "EqOdds gap", 0.03),
                               ("worst.F1", "Worst-group F1", 0.02)):
        def value(run: dict, key: str = key) -> float:
            part = run["metrics"]["test"]
            return part["worst"]["F1"] if key == "worst.F1" else part[key]

        d = np.array([value(method[s]) - value(vanilla[s]) for s in seeds])
        row = lines[title]
        assert row[3] == f"{d.mean() * 100:+.2f}" and row[4] == f"{d.std(ddof=1) * 100:.2f}"
        # one method against vanilla: a Holm family of one, alpha 0.05
        needed = seeds_to_decide(float(d.mean()), float(d.std(ddof=1)), 3, margin, 0.05)
        p_diff = __import__("scipy").stats.ttest_rel(d, np.zeros(3)).pvalue
        if p_diff < 0.05:
            assert row[5] in ("better", "worse")
        elif paired_tost(d, np.zeros(3), margin) < 0.05:
            assert row[5] == "equivalent"
        else:
            assert row[5] == "undecided" and row[6] == (str(needed) if needed else ">200")
    assert "Margins (points): F1 ±2, Worst-group F1 ±2, EqOdds gap ±3" in res.output


def test_projected_time_is_the_recorded_time_per_seed(pilot: Path) -> None:
    from fairbench import leaderboard
    from fairbench.bench.planner import plan_cells, plan_tables

    board = leaderboard(pilot, labels="observed")
    (plan,) = plan_tables(board, plan_cells(board))
    for name, k in plan.seeds.items():
        runs = _runs(pilot, name)
        per_seed = np.mean([r["config"]["seconds"]["total"] for r in runs.values()])
        assert plan.extra_seconds[name] == pytest.approx((k - len(runs)) * per_seed)
    if plan.seeds:
        assert plan.seeds["vanilla"] == max(plan.seeds.values())


@pytest.mark.parametrize("args,fragment", [
    (["--margin", "-1"], "--margin must be a positive number of points"),
    (["--metric", "nonsense"], "is not a metric"),
])
def test_plan_bad_input_is_one_line(pilot: Path, args: list[str], fragment: str) -> None:
    res = CliRunner().invoke(main, ["plan", str(pilot), *args])
    assert res.exit_code == 2 and fragment in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_plan_refuses_a_folder(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["plan", str(tmp_path)])
    assert res.exit_code == 2 and "plan reads a suite file" in res.output


def test_suite_margins_are_checked(tmp_path: Path) -> None:
    from fairbench.bench.suite import parse_margins
    from fairbench.core.errors import FairbenchError

    assert parse_margins(3, "s")["EqOddsGap"] == pytest.approx(0.03)
    assert parse_margins({"gap.AUC": 1}, "s")["gap.AUC"] == pytest.approx(0.01)
    for bad, fragment in (({"EqOddsGap": 0}, "positive number"), ({"nope": 1}, "not a metric"),
                          ("two", "number of points or a table")):
        with pytest.raises(FairbenchError, match=fragment):
            parse_margins(bad, "s")
    assert math.isclose(parse_margins(None, "s") or 1.0, 1.0)


def test_cells_of_a_method_that_did_not_engage_are_not_planned(pilot: Path, tmp_path) -> None:
    """A method whose runs mostly did not engage gets no seeds: its cells read "not engaged"
    with the ∅k/n count, and the table's plan leaves it (and so vanilla, for it) out."""
    import shutil

    from fairbench import leaderboard
    from fairbench.bench.planner import plan_cells, plan_tables
    from fairbench.core.files import read_json, write_json
    from fairbench.run.store import write_manifest

    suite = tmp_path / "suite.toml"
    shutil.copytree(pilot.parent / "runs", tmp_path / "runs")
    suite.write_text(SUITE.format(runs=tmp_path / "runs"))
    idle = sorted((tmp_path / "runs" / "synthderm" / "resampling").glob("*/config.json"))
    for cfg in idle[:2]:  # 2 of 3 runs idle: mostly
        config = read_json(cfg)
        config["engagement"] = {**config["engagement"], "engaged": False}
        write_json(cfg, config)
        write_manifest(cfg.parent)
    board = leaderboard(suite, labels="observed")
    cells = [c for c in plan_cells(board) if c.method == "resampling"]
    assert cells and all(c.verdict == "not engaged (∅2/3)" and c.seeds_needed is None
                         for c in cells)
    (plan,) = plan_tables(board, plan_cells(board))
    assert plan.seeds == {} and plan.seconds == 0
    res = CliRunner().invoke(main, ["plan", str(suite), "--labels", "observed"])
    assert res.exit_code == 0, res.output
    assert "not engaged (∅2/3)" in res.output and "Decided 0 of" in res.output
