"""``fairbench show``: the run beside the vanilla run of the same split and seed, the
difference, per-group values with n, and the four formats (checked against metrics.json)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from bench_helpers import make_board
from click.testing import CliRunner

from fairbench.cli.main import main
from fairbench.metrics import flatten
from fairbench.run.report import comparison_frame, find_vanilla_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("show")
    make_board(d, seeds=(0, 1))
    return d


def _fq(runs, seed):
    for d in sorted((runs / "synthderm" / "fairquantize").iterdir()):
        if json.loads((d / "config.json").read_text())["seed"] == seed:
            return d
    raise AssertionError


def test_vanilla_of_the_same_seed_is_found_and_compared(runs):
    run = _fq(runs, 1)
    vanilla = find_vanilla_run(run)
    assert json.loads((vanilla / "config.json").read_text())["seed"] == 1
    mine = flatten(json.loads((run / "metrics.json").read_text())["test"])
    theirs = flatten(json.loads((vanilla / "metrics.json").read_text())["test"])
    frame = comparison_frame(json.loads((run / "metrics.json").read_text()),
                             json.loads((vanilla / "metrics.json").read_text()))
    rows = frame.set_index("metric")
    for key in ("F1", "AUC", "worst.F1", "EqOddsGap", "dark.F1", "light.n"):
        assert rows.loc[key, "run"] == pytest.approx(mine[key])
        assert rows.loc[key, "vanilla"] == pytest.approx(theirs[key])
        assert rows.loc[key, "difference"] == pytest.approx(mine[key] - theirs[key])
    assert rows.loc["EOdd (paper)", "direction"] == "lower is better"


@pytest.mark.parametrize("fmt", ["text", "md", "csv", "latex"])
def test_show_formats(runs, fmt):
    run = _fq(runs, 0)
    res = CliRunner().invoke(main, ["show", str(run), "--format", fmt])
    assert res.exit_code == 0, res.output
    mine = flatten(json.loads((run / "metrics.json").read_text())["test"])
    if fmt == "csv":
        frame = pd.read_csv(io.StringIO(res.output))
        assert frame.set_index("metric").loc["F1", "run"] == pytest.approx(mine["F1"])
        assert not frame["vanilla"].isna().any()
        return
    assert f"{mine['F1'] * 100:.2f}" in res.output
    assert "vanilla" in res.output and "dark.n" in res.output.replace("\\_", "_")
    if fmt == "text":
        assert "EqOddsGap" in res.output and "EOdd (paper)" in res.output
    if fmt == "latex":
        assert "\\begin{tabular}" in res.output and "$\\downarrow$" in res.output


def test_show_without_a_vanilla_run_says_how_to_get_one(runs, tmp_path):
    import shutil

    lone = tmp_path / "synthderm" / "fairquantize" / "x"
    shutil.copytree(_fq(runs, 0), lone)
    res = CliRunner().invoke(main, ["show", str(lone)])
    assert res.exit_code == 0 and "run `fairbench run --method vanilla`" in res.output


def test_a_run_leaves_the_vanilla_run_folder_of_its_baseline(tmp_path):
    """A method run that used the shared vanilla model leaves the run folder `--method vanilla`
    would write (same identity, same numbers), so `show` and leaderboards have the baseline."""
    from fairbench import run_experiment
    from fairbench.testing import tiny_run_config

    runs = tmp_path / "runs"
    res = run_experiment(tiny_run_config("fairprune", runs, params={
        "estimator": "ggn_mc", "beta_grid": "1.0", "ratio_grid": "0.01", "score_samples": 8}))
    vanilla_dirs = list((runs / "synthderm" / "vanilla").iterdir())
    assert len(vanilla_dirs) == 1
    again = run_experiment(tiny_run_config("vanilla", runs))
    assert again.reused and again.run_dir == vanilla_dirs[0]
    assert find_vanilla_run(res.run_dir) == vanilla_dirs[0]
    out = CliRunner().invoke(main, ["show", str(res.run_dir), "--format", "csv"])
    frame = pd.read_csv(io.StringIO(out.output)).set_index("metric")
    assert frame.loc["F1", "vanilla"] == pytest.approx(again.metrics["test"]["F1"])
