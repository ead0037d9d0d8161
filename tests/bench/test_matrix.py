"""The mechanism matrix: cells are the paired change against vanilla with the leaderboard's
marks, intervals from the paired two-stage bootstrap, true or observed labels, every format,
the CLI view and the heatmap."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_helpers import GROUPS, make_run
from click.testing import CliRunner

from fairbench import evaluate_classification
from fairbench.bench.leaderboard import Leaderboard, build_tables, read_run
from fairbench.bench.matrix import build_matrix, paired_interval, plot_matrix
from fairbench.bench.stats import RunPredictions
from fairbench.cli.main import main
from fairbench.core.files import read_json, write_json, write_manifest

SEEDS = (0, 1, 2, 3)


def _with_truth(run_dir: Path, flip_dark: float) -> None:
    """Give a hand-made run true labels: its observed test labels with a share ``flip_dark``
    of the dark rows replaced (as annotation noise would), and the ``test_true`` metrics."""
    preds = pd.read_csv(run_dir / "predictions.csv")
    rng = np.random.default_rng(7)  # the same truth for every run: one dataset
    n_classes = len([c for c in preds.columns if c.startswith("prob_")])
    flip = (preds["attr_skin_tone"].to_numpy() == 1) & (rng.random(len(preds)) < flip_dark)
    true = np.where(flip, (preds["label"] + 1) % n_classes, preds["label"])
    preds["true_label"] = true
    preds.to_csv(run_dir / "predictions.csv", index=False)
    test = preds[preds["part"] == "test"]
    probs = test[[f"prob_{c}" for c in range(n_classes)]].to_numpy()
    metrics = read_json(run_dir / "metrics.json")
    metrics["test_true"] = evaluate_classification(
        test["true_label"].to_numpy(), probs, test["attr_skin_tone"].to_numpy(), GROUPS,
        y_pred=test["pred"].to_numpy())
    cfg = read_json(run_dir / "config.json")
    base = {"fairer": 0.60}.get(cfg["method"], 0.95)  # "fairer" hides the attribute
    wobble = 0.02 * (cfg["seed"] % 2) if cfg["method"] == "fairer" else 0.01 * (cfg["seed"] % 3)
    metrics["leakage"] = {"balanced_accuracy": base + wobble,
                          "auc": 0.99, "representation": "pooled embedding"}
    write_json(run_dir / "metrics.json", metrics)


def _runs(root: Path) -> list:
    """Two scenarios ("a", "b", different splits), vanilla, a fairer and a worse method."""
    runs = []
    for scen, split in (("a", "a" * 64), ("b", "b" * 64)):
        for s in SEEDS:
            for method, acc, dark in (("vanilla", 0.80, 0.55), ("fairer", 0.80, 0.75),
                                      ("worse", 0.70, 0.25)):
                d = make_run(root / scen, method=method, seed=s, acc=acc, acc_dark=dark,
                             split=split, n=300)
                _with_truth(d, 0.2)
                write_manifest(d)  # the true labels are part of the run as written
                runs.append(read_run(d, dataset_label=scen))
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _runs(tmp_path_factory.mktemp("matrix"))


def _board(runs, part="test_true") -> Leaderboard:
    return Leaderboard(build_tables(runs, part=part, dataset_order=["a", "b"]), "x",
                       "fair_within_eps")


def test_cells_are_paired_differences_with_the_leaderboards_marks(runs):
    board = _board(runs)
    matrix = build_matrix(board, n_resamples=60)
    assert matrix.labels == "true" and matrix.scenarios == ["a", "b"]
    assert matrix.methods == ["fairer", "worse"]
    for t in board.tables:
        ref = next(r for r in t.rows if r.label == "vanilla")
        for row in t.rows:
            if row.label == "vanilla":
                continue
            for metric in ("EqOddsGap", "worst.F1"):
                cell = matrix.cells[(metric, row.label, t.dataset)]
                by_hand = np.mean([
                    read_json(m.path / "metrics.json")["test_true"]["worst"]["F1"]
                    - read_json(v.path / "metrics.json")["test_true"]["worst"]["F1"]
                    if metric == "worst.F1" else
                    read_json(m.path / "metrics.json")["test_true"][metric]
                    - read_json(v.path / "metrics.json")["test_true"][metric]
                    for m, v in zip(sorted(row.runs, key=lambda r: r.seed),
                                    sorted(ref.runs, key=lambda r: r.seed))])
                assert cell.delta == pytest.approx(by_hand)
                assert cell.n_pairs == 4 and not cell.short
                assert cell.low <= cell.delta <= cell.high
                comp = row.tests[metric]
                assert cell.direction == comp.direction and cell.p_holm == comp.p_holm
    # independent of the leaderboard's code: scipy's paired t-test of every method against
    # vanilla by seed, Holm-adjusted by statsmodels over the methods of the table (one family
    # per metric and table)
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests

    def value(run, metric: str) -> float:
        part = read_json(run.path / "metrics.json")["test_true"]
        return part["worst"]["F1"] if metric == "worst.F1" else part[metric]

    for t in board.tables:
        ref = sorted(next(r for r in t.rows if r.label == "vanilla").runs, key=lambda r: r.seed)
        rows = [r for r in t.rows if r.label != "vanilla"]
        for metric in ("EqOddsGap", "worst.F1"):
            raw = [ttest_rel([value(m, metric) for m in sorted(row.runs, key=lambda r: r.seed)],
                             [value(v, metric) for v in ref]).pvalue for row in rows]
            adjusted = multipletests(raw, method="holm")[1]
            for row, p_holm in zip(rows, adjusted):
                assert matrix.cells[(metric, row.label, t.dataset)].p_holm == pytest.approx(
                    p_holm), (metric, row.label, t.dataset)
    # the data built in: "fairer" raises the dark group, "worse" lowers it
    assert matrix.cells[("worst.F1", "fairer", "a")].direction == "better"
    assert matrix.cells[("worst.F1", "worse", "a")].direction == "worse"
    assert matrix.cells[("worst.F1", "fairer", "a")].low > 0


def test_observed_and_true_labels_differ(runs):
    true = build_matrix(_board(runs, "test_true"), ci=False)
    observed = build_matrix(_board(runs, "test"), ci=False)
    assert observed.labels == "observed" and math.isnan(true.cells[
        ("EqOddsGap", "fairer", "a")].low)
    assert true.vanilla[("worst.F1", "a")] != observed.vanilla[("worst.F1", "a")]


def test_paired_interval_of_a_run_against_itself_is_zero(runs):
    vanilla = [r for r in runs if r.label == "vanilla" and r.dataset_label == "a"]
    preds = [RunPredictions.read(r.path, label_column="true_label") for r in vanilla]
    assert paired_interval(preds, preds, "EqOddsGap", n_resamples=50) == (0.0, 0.0)


def test_paired_interval_is_narrower_than_the_unpaired_spread(runs):
    """Pairing the test draws cancels the shared test-set noise: the interval of the
    difference is narrower than the sum of the two one-sample half-widths."""
    from fairbench.bench.stats import bootstrap_runs

    pick = [r for r in runs if r.dataset_label == "a"]
    m = [RunPredictions.read(r.path) for r in pick if r.label == "fairer"]
    v = [RunPredictions.read(r.path) for r in pick if r.label == "vanilla"]
    lo, hi = paired_interval(m, v, "worst.F1", n_resamples=100)
    im, iv = (bootstrap_runs(x, "worst.F1", n_resamples=100) for x in (m, v))
    assert hi - lo < (im.high - im.low) / 2 + (iv.high - iv.low) / 2 + 1e-9


def test_leakage_panel(runs):
    matrix = build_matrix(_board(runs), ci=False)
    van, fairer, worse = (matrix.leakage[(m, "a")] for m in ("vanilla", "fairer", "worse"))
    assert van.n == 4 and van.mean == pytest.approx(0.95 + 0.01 * np.mean([0, 1, 2, 0]))
    assert fairer.mean == pytest.approx(0.61)
    assert fairer.differs and not worse.differs and not van.differs
    md = matrix.render("md")
    assert "### Leakage" in md and "0.610 ± 0.012†" in md
    frame = matrix.to_frame()
    leak = frame[frame["metric"] == "leakage.balanced_accuracy"]
    assert len(leak) == 3 * 2 and set(leak["vs_vanilla"]) == {"differs", ""}


def test_formats(runs):
    matrix = build_matrix(_board(runs), n_resamples=50)
    md = matrix.render("md")
    assert "EqOdds gap: change against vanilla (true labels, test part)" in md
    assert "| vanilla (value) |" in md and "▲" in md and "▼" in md
    frame = pd.read_csv(pd.io.common.StringIO(matrix.render("csv")))
    assert len(frame) == 2 * 2 * 2 + 3 * 2
    assert set(frame["vs_vanilla"].fillna("")) >= {"better"}
    tex = matrix.render("latex")
    assert "\\blacktriangle" in tex and tex.count("\\begin{table}") == 2


def test_short_cells_say_so(runs):
    fewer = [r for r in runs if not (r.label == "fairer" and r.seed == 3)]
    matrix = build_matrix(_board(fewer), ci=False)
    cell = matrix.cells[("EqOddsGap", "fairer", "a")]
    assert cell.n_pairs == 3 and cell.short and "(n=3)" in matrix.render("md")


def test_heatmap(runs, tmp_path):
    """The files, and the figure's data: per panel the image is the change in points
    oriented so that higher = better (EqOdds gap: lower is better, so negated), the texts
    are the cells' changes with their marks, the axes the methods and scenarios."""
    from fairbench.bench.matrix import matrix_figure

    matrix = build_matrix(_board(runs), n_resamples=20)
    paths = plot_matrix(matrix, tmp_path / "m")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size for p in paths)
    fig = matrix_figure(matrix)
    assert len(fig.axes) == len(matrix.metrics)
    for ax, metric in zip(fig.axes, matrix.metrics):
        assert [t.get_text() for t in ax.get_yticklabels()] == matrix.methods
        assert [t.get_text() for t in ax.get_xticklabels()] == matrix.scenarios
        assert ax.get_title().endswith("(true labels; blue = better)")
        image = np.asarray(ax.get_images()[0].get_array())
        sign = -1.0 if metric == "EqOddsGap" else 1.0
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
                 for t in ax.texts}
        for i, method in enumerate(matrix.methods):
            for j, scen in enumerate(matrix.scenarios):
                delta = matrix.cells[(metric, method, scen)].delta * 100
                assert image[i, j] == pytest.approx(sign * delta)
                assert texts[(i, j)].startswith(f"{delta:+.1f}")
    # "fairer" raises the dark group's F1: its worst-group cell is blue (positive)
    worst = fig.axes[matrix.metrics.index("worst.F1")]
    assert np.asarray(worst.get_images()[0].get_array())[matrix.methods.index("fairer"), 0] > 0


def test_no_vanilla_is_one_clear_error(runs):
    from fairbench.core.errors import FairbenchError

    with pytest.raises(FairbenchError, match="vanilla"):
        build_matrix(_board([r for r in runs if r.label != "vanilla"]))


def test_cli_matrix_view_and_plot_from_a_runs_directory(tmp_path, runs):
    """A runs directory of scenario runs: each scenario is its own table
    (``synthderm[<scenario>]``)."""
    root = tmp_path / "runs"
    for r in runs:
        dest = root / r.path.relative_to(r.path.parents[2])
        shutil.copytree(r.path, dest)
        cfg = json.loads((dest / "config.json").read_text())
        cfg["dataset_params"] = {"scenario": "annotation" if r.dataset_label == "a"
                                 else "shortcut"}
        (dest / "config.json").write_text(json.dumps(cfg))
        write_manifest(dest)  # the scenario is this test's edit, verified as the run's
    cli = CliRunner()
    res = cli.invoke(main, ["leaderboard", str(root), "--view", "matrix", "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    assert "synthderm[annotation]" in res.output and "true labels" in res.output
    res = cli.invoke(main, ["leaderboard", str(root), "--view", "matrix", "--labels",
                            "observed", "--format", "csv", "--n-boot", "20"])
    assert res.exit_code == 0 and "observed" in res.output
    page = tmp_path / "matrix.html"
    res = cli.invoke(main, ["leaderboard", str(root), "--view", "matrix", "--format", "html",
                            "--n-boot", "20", "--out", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "mechanism matrix" in text and text.count("<svg") >= 2 and "<table>" in text
    res = cli.invoke(main, ["leaderboard", str(root), "--view", "compact", "--labels", "true"])
    assert res.exit_code == 0 and "test_true" in res.output
    res = cli.invoke(main, ["leaderboard", str(root), "--labels", "true", "--part", "val"])
    assert res.exit_code == 2 and "test part only" in res.output
    res = cli.invoke(main, ["plot", "matrix", str(root), "--out", str(tmp_path / "fig")])
    assert res.exit_code == 0 and (tmp_path / "fig.png").is_file()


def _with_twins(run_dir: Path) -> None:
    """Give a hand-made run counterfactual twins: the twin's prediction differs from the
    image's on a share of the test rows that depends on the method ("fairer" flips least,
    "worse" most) and wobbles by seed, as a synthderm run writes them."""
    preds = pd.read_csv(run_dir / "predictions.csv")
    cfg = read_json(run_dir / "config.json")
    share = {"vanilla": 0.20, "fairer": 0.05, "worse": 0.35}[cfg["method"]]
    share += 0.01 * (cfg["seed"] % 3)
    n_classes = len([c for c in preds.columns if c.startswith("prob_")])
    rng = np.random.default_rng(cfg["seed"])
    test = preds["part"] == "test"
    flip = test & (rng.random(len(preds)) < share)
    preds["twin_pred"] = np.where(flip, (preds["pred"] + 1) % n_classes, preds["pred"])
    preds.loc[~test, "twin_pred"] = preds.loc[~test, "pred"]
    preds.to_csv(run_dir / "predictions.csv", index=False)
    metrics = read_json(run_dir / "metrics.json")
    rate = float((preds.loc[test, "twin_pred"] != preds.loc[test, "pred"]).mean())
    for part in ("test", "test_true"):
        metrics[part]["flip_rate"] = rate
    write_json(run_dir / "metrics.json", metrics)


def test_flip_rate_panel_where_the_runs_have_twins(tmp_path, runs):
    """Runs with counterfactual twins add the flip rate to the matrix (lower is better: the
    method that flips least is ▲), with its paired interval; runs without twins have no such
    panel."""
    assert "flip_rate" not in build_matrix(_board(runs), ci=False).metrics
    twinned = []
    for r in runs:
        d = tmp_path / r.path.relative_to(r.path.parents[3])
        shutil.copytree(r.path, d)
        _with_twins(d)
        write_manifest(d)
        twinned.append(read_run(d, dataset_label=r.path.parents[2].name))
    matrix = build_matrix(_board(twinned), n_resamples=60)
    assert matrix.metrics[-1] == "flip_rate"
    fairer = matrix.cells[("flip_rate", "fairer", "a")]
    assert fairer.delta == pytest.approx(-0.15, abs=0.03)
    assert fairer.direction == "better" and fairer.high < 0
    assert matrix.cells[("flip_rate", "worse", "b")].direction == "worse"
    assert "Skin flip rate" in matrix.render("md")
    # the leaderboard's compact view has the column too, with each row's mean flip rate
    # recomputed here from the twin predictions; runs without twins have none
    assert "flip_rate" not in _board(runs).to_frame("compact").columns
    frame = _board(twinned).to_frame("compact")
    by_method = frame.set_index(["dataset", "method"])["flip_rate"] if "dataset" in frame else None
    assert "flip_rate" in frame.columns and "Skin flip rate" in _board(twinned).render("md", "compact")
    rates = {}
    for r in twinned:
        preds = pd.read_csv(r.path / "predictions.csv")
        test = preds["part"] == "test"
        key = (r.path.parents[2].name, read_json(r.path / "config.json")["method"])
        rates.setdefault(key, []).append(float((preds.loc[test, "twin_pred"]
                                                != preds.loc[test, "pred"]).mean()))
    assert by_method is not None
    for (dataset, method), values in rates.items():
        assert by_method[(dataset, method)] == pytest.approx(np.mean(values), abs=1e-9)
