"""Every plot writes a non-empty PNG and PDF (API and CLI), from hand-made runs and the
FairQuantize ablation file format (methods/fairquantize.py: ablation.csv / steps.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_helpers import make_board, make_run
from click.testing import CliRunner

from fairbench import FairbenchError, leaderboard
from fairbench.bench.plots import (
    _pareto_min_x_max_y,
    plot_ablation,
    plot_cd,
    plot_groups,
    plot_tradeoff,
    read_ablation,
)
from fairbench.cli.main import main

STEP_METRICS = ("F1", "precision", "recall", "accuracy", "EOpp0", "EOpp1", "EOdd", "worst.F1")


def _check(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000, p
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def write_ablation(run_dir: Path, betas=(0.5, 0.75, 1.0), ratios=(0.05, 0.1, 0.15, 0.2),
                   name="ablation.csv"):
    """Rows as FairQuantize writes them (beta, step, target_ratio, realized_ratio,
    selected_epoch, val_<metric>..., test_<metric>...)."""
    rows = []
    for beta in betas:
        for t, r in enumerate(ratios, start=1):
            row = {"beta": beta, "step": t, "target_ratio": r, "realized_ratio": r + 0.001,
                   "selected_epoch": 0}
            for part in ("val", "test"):
                for m in STEP_METRICS:
                    base = 0.6 - 0.3 * r * beta if m not in ("EOpp0", "EOpp1", "EOdd") \
                        else 0.1 - 0.2 * r * beta
                    row[f"{part}_{m}"] = base
            rows.append(row)
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run_dir / name, index=False)
    return run_dir


def test_tradeoff_and_pareto(tmp_path):
    make_board(tmp_path / "runs")
    (table,) = leaderboard(tmp_path / "runs").tables
    _check(plot_tradeoff(table, tmp_path / "out" / "tradeoff"))
    xs = np.array([1.0, 2.0, 3.0, 2.5])
    ys = np.array([0.5, 0.7, 0.9, 0.6])   # (2.5, 0.6) is dominated by (2.0, 0.7)
    assert list(_pareto_min_x_max_y(xs, ys)) == [0, 1, 2]


def test_ablation_from_ablation_csv_and_steps_csv(tmp_path):
    run = write_ablation(tmp_path / "run")
    df = read_ablation([run])
    assert sorted(df["beta"].unique()) == [0.5, 0.75, 1.0]
    _check(plot_ablation([run], tmp_path / "abl"))
    _check(plot_ablation([run], tmp_path / "abl_real", x="realized_ratio"))
    # runs without ablation.csv: steps.csv (with save_every_step=true), one line per run's beta
    a = write_ablation(tmp_path / "a", betas=(0.5,), name="steps.csv")
    b = write_ablation(tmp_path / "b", betas=(1.0,), name="steps.csv")
    _check(plot_ablation([a, b], tmp_path / "steps"))
    steps_no_test = tmp_path / "c"
    steps_no_test.mkdir()
    pd.read_csv(a / "steps.csv").filter(regex="^(?!test_)").to_csv(steps_no_test / "steps.csv",
                                                                    index=False)
    with pytest.raises(FairbenchError, match="save_every_step"):
        plot_ablation([steps_no_test], tmp_path / "x")
    with pytest.raises(FairbenchError, match="neither ablation.csv nor steps.csv"):
        plot_ablation([tmp_path / "out"], tmp_path / "x")


def test_groups_and_cd(tmp_path):
    run = make_run(tmp_path / "runs")
    _check(plot_groups(run, tmp_path / "groups"))
    _check(plot_cd({"vanilla": 1.4, "A": 2.2, "B": 3.2, "C": 3.2}, 2.1, tmp_path / "cd",
                   title="F1"))


def test_cli_plots(tmp_path):
    runs = tmp_path / "runs"
    for i, name in enumerate(["synthderm", "derm2", "derm3"]):
        make_board(runs, seeds=(0, 1), split=str(i) * 64, dataset=name)
    run = next((runs / "synthderm" / "vanilla").iterdir())
    abl = write_ablation(tmp_path / "fq")
    cli = CliRunner()
    for args, stem in ((["tradeoff", str(runs)], "trade"), (["groups", str(run)], "groups"),
                       (["ablation", str(abl)], "abl"), (["cd", str(runs)], "cd")):
        out = tmp_path / "plots" / stem
        res = cli.invoke(main, ["plot", *args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        if stem == "trade":   # one pair per table, named after it
            for name in ("synthderm", "derm2", "derm3"):
                _check([out.with_name(f"trade-{name}-skin-tone-smallcnn.png"),
                        out.with_name(f"trade-{name}-skin-tone-smallcnn.pdf")])
        else:
            _check([out.with_suffix(".png"), out.with_suffix(".pdf")])
    single = tmp_path / "single"
    make_board(single, seeds=(0,))
    res = cli.invoke(main, ["plot", "cd", str(single), "--out", str(tmp_path / "n")])
    assert res.exit_code == 2 and "needs at least 2 datasets" in res.output
    res = cli.invoke(main, ["plot", "tradeoff", str(runs), "--x", "nope", "--out",
                            str(tmp_path / "n")])
    assert res.exit_code == 2 and res.output.startswith("error: unknown metric")


def test_colours_are_stable_and_groups_show_seeds_and_vanilla(tmp_path):
    from fairbench.bench.plots import find_vanilla_run, method_color, spread_note

    assert method_color("vanilla") == method_color("vanilla", "vanilla") == "#333333"
    assert method_color("fairquantize") != method_color("fairprune")
    # a suite label falls back to its method's colour, an unknown label to a fixed hash
    assert method_color("fq-beta1", "fairquantize") == method_color("fairquantize")
    assert method_color("my_plugin") == method_color("my_plugin")
    assert spread_note([5]) == "error bars: ± std over 5 seeds (sample std)"
    assert spread_note([1]) == "one seed: no error bars"
    runs = tmp_path / "runs"
    make_board(runs, seeds=(0, 1, 2))
    fq = sorted((runs / "synthderm" / "fairquantize").iterdir())
    seeds_of_one_setting = [d for d in fq if '"beta": 0.5' in (d / "config.json").read_text()
                            or '"beta":0.5' in (d / "config.json").read_text()]
    assert len(seeds_of_one_setting) == 3
    vanilla = find_vanilla_run(seeds_of_one_setting[0])
    assert vanilla is not None and vanilla.parent.name == "vanilla"
    assert find_vanilla_run(vanilla) is None
    _check(plot_groups(seeds_of_one_setting, tmp_path / "g3"))
    with pytest.raises(FairbenchError, match="one method"):
        plot_groups([seeds_of_one_setting[0], vanilla], tmp_path / "bad")


def test_ablation_starts_at_the_unquantized_model(tmp_path):
    runs = tmp_path / "runs"
    make_board(runs, seeds=(0,))
    fq = next((runs / "synthderm" / "fairquantize").iterdir())
    write_ablation(fq)  # the ablation file inside a real run folder with a vanilla beside it
    from fairbench.bench.plots import _unquantized

    start = _unquantized([fq], "test", ("precision", "EOdd"))
    vanilla = json.loads((next((runs / "synthderm" / "vanilla").iterdir()) / "metrics.json")
                         .read_text())["test"]
    assert start["precision"][0] == pytest.approx(vanilla["precision"])
    _check(plot_ablation([fq], tmp_path / "abl0"))
