"""Every plot writes a non-empty PNG and PDF (API and CLI), from hand-made runs and the
FairQuantize ablation file format (methods/fairquantize.py: ablation.csv / steps.csv), and
draws the right data: each figure is taken as it is handed to ``save`` and its plotted values,
error bars, axis labels and titles are compared with numbers the test computes itself from
the runs' own files (metrics.json, predictions.csv with scikit-learn, the ablation rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_helpers import make_board, make_run
from click.testing import CliRunner
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

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
GROUP_METRICS = ("precision", "recall", "F1", "accuracy", "AUC")  # plot_groups' default


def _check(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000, p
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions hand to ``save`` (still inspectable after it closes
    them), in order; the files are written as before."""
    from fairbench.bench import plots

    captured: list = []
    real = plots.save

    def save(fig, out):
        captured.append(fig)
        return real(fig, out)

    monkeypatch.setattr(plots, "save", save)
    return captured


def disk_runs(runs: Path, dataset: str = "synthderm") -> dict[tuple[str, str], list[dict]]:
    """{(method, its parameters as JSON): [the runs' files, by seed]} read straight from each
    run's config.json and metrics.json (no fairbench reader)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for cfg_path in sorted((runs / dataset).glob("*/*/config.json")):
        cfg = json.loads(cfg_path.read_text())
        metrics = json.loads((cfg_path.parent / "metrics.json").read_text())
        key = (cfg["method"], json.dumps(cfg["method_params"], sort_keys=True))
        out.setdefault(key, []).append({"seed": cfg["seed"], "metrics": metrics,
                                        "dir": cfg_path.parent})
    for v in out.values():
        v.sort(key=lambda r: r["seed"])
    return out


def seed_stats(runs: list[dict], key: str, part: str = "test") -> tuple[float, float]:
    """Mean and sample std (ddof 1) over the runs of ``part``'s ``key`` (``g.metric`` for a
    group's value), in percent."""
    vals = []
    for r in runs:
        m = r["metrics"][part]
        for k in key.split("."):
            m = m[k]
        vals.append(float(m) * 100)
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def errorbar_point(c: ErrorbarContainer) -> tuple[float, float, list[np.ndarray]]:
    """The (x, y) of a one-point errorbar and the segments of its error bars."""
    data_line, _caps, bar_cols = c.lines
    (x, y), = data_line.get_xydata()
    return float(x), float(y), [s for col in bar_cols for s in col.get_segments()]


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
                    row[f"{part}_{m}"] = ablation_value(m, r, beta)
            rows.append(row)
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run_dir / name, index=False)
    return run_dir


def ablation_value(metric: str, ratio: float, beta: float) -> float:
    """The value :func:`write_ablation` writes for ``metric`` (both parts)."""
    if metric in ("EOpp0", "EOpp1", "EOdd"):
        return 0.1 - 0.2 * ratio * beta
    return 0.6 - 0.3 * ratio * beta


def check_ablation_lines(fig, betas, ratios, *, x_shift=0.0, start=None,
                         metrics=("precision", "EOdd")):
    """One line per β on each metric's axis, at the ratios (percent, + ``x_shift``) with the
    written values, preceded by ``start`` (metric → value at ratio 0) when given."""
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == len(metrics)
    for ax, m in zip(axes, metrics):
        assert ax.get_ylabel() == f"{m} (%, test)"
        lines = {c.get_label(): c.lines[0] for c in ax.containers
                 if isinstance(c, ErrorbarContainer)}
        assert sorted(lines) == sorted(f"β = {b:g}" for b in betas)
        for b in betas:
            xs = [(r + x_shift) * 100 for r in ratios]
            ys = [ablation_value(m, r, b) * 100 for r in ratios]
            if start is not None:
                xs, ys = [0.0, *xs], [start[m] * 100, *ys]
            line = lines[f"β = {b:g}"]
            np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), xs, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), ys, rtol=1e-9, atol=1e-9)
    return axes


def test_tradeoff_and_pareto(tmp_path, figures):
    runs = tmp_path / "runs"
    make_board(runs)
    (table,) = leaderboard(runs).tables
    _check(plot_tradeoff(table, tmp_path / "out" / "tradeoff"))
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_xlabel() == "EqOddsGap (%, lower is fairer)"
    assert ax.get_ylabel() == "F1 (%, macro)"
    assert ax.get_title() == ("synthderm (skin tone), smallcnn: test\n"
                              "error bars: ± std over 3 seeds (sample std)")
    on_disk = disk_runs(runs)
    settings: dict[str, dict[str, list[dict]]] = {}
    for (method, params), rs in on_disk.items():
        settings.setdefault(method, {})[params] = rs
    chosen = {row.label: json.dumps(row.selection.candidate.params, sort_keys=True)
              for row in table.rows}
    points = {c.get_label(): errorbar_point(c) for c in ax.containers
              if isinstance(c, ErrorbarContainer)}
    assert sorted(points) == ["fairprune", "fairquantize", "vanilla"]
    means = {}
    for label, (x, y, segments) in points.items():
        rs = settings[label][chosen[label]]
        assert len(rs) == 3
        (mx, sx), (my, sy) = seed_stats(rs, "EqOddsGap"), seed_stats(rs, "F1")
        assert (x, y) == (pytest.approx(mx, abs=1e-9), pytest.approx(my, abs=1e-9))
        # the error bars span mean ± sample std on each axis
        (x0, _), (x1, _) = segments[0]
        (_, y0), (_, y1) = segments[1]
        assert (x0, x1) == (pytest.approx(mx - sx, abs=1e-9), pytest.approx(mx + sx, abs=1e-9))
        assert (y0, y1) == (pytest.approx(my - sy, abs=1e-9), pytest.approx(my + sy, abs=1e-9))
        means[label] = (mx, my)
    scatters = {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}
    # the faint points: the settings that were not chosen (fairquantize's other β), seed means
    (other,) = [k for k in settings["fairquantize"] if k != chosen["fairquantize"]]
    faint = scatters["other settings (faint)"].get_offsets()
    want = [seed_stats(settings["fairquantize"][other], k)[0] for k in ("EqOddsGap", "F1")]
    np.testing.assert_allclose(np.asarray(faint, dtype=float), [want], atol=1e-9)
    # the Pareto front, found here by brute force over the plotted method means
    front = [a for a, (xa, ya) in means.items()
             if not any(xb <= xa and yb >= ya and (xb, yb) != (xa, ya)
                        for b, (xb, yb) in means.items() if b != a)]
    ringed = np.asarray(scatters["Pareto front (methods)"].get_offsets(), dtype=float)
    np.testing.assert_allclose(sorted(map(tuple, ringed)),
                               sorted(means[a] for a in front), atol=1e-9)
    xs = np.array([1.0, 2.0, 3.0, 2.5])
    ys = np.array([0.5, 0.7, 0.9, 0.6])   # (2.5, 0.6) is dominated by (2.0, 0.7)
    assert list(_pareto_min_x_max_y(xs, ys)) == [0, 1, 2]


def test_ablation_from_ablation_csv_and_steps_csv(tmp_path, figures):
    ratios = (0.05, 0.1, 0.15, 0.2)
    run = write_ablation(tmp_path / "run")
    df = read_ablation([run])
    assert sorted(df["beta"].unique()) == [0.5, 0.75, 1.0]
    _check(plot_ablation([run], tmp_path / "abl"))
    axes = check_ablation_lines(figures[-1], (0.5, 0.75, 1.0), ratios)
    assert all(ax.get_xlabel() == "quantization ratio (%)" for ax in axes)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["5", "10", "15", "20"]
    # a folder that is no run (no config.json) names neither a dataset nor seeds
    title = figures[-1]._suptitle.get_text()
    assert title == "FairQuantize ablation; one seed: no error bars"
    _check(plot_ablation([run], tmp_path / "abl_real", x="realized_ratio"))
    axes = check_ablation_lines(figures[-1], (0.5, 0.75, 1.0), ratios, x_shift=0.001)
    assert all(ax.get_xlabel() == "realized quantized share (%)" for ax in axes)
    # runs without ablation.csv: steps.csv (with save_every_step=true), one line per run's beta
    a = write_ablation(tmp_path / "a", betas=(0.5,), name="steps.csv")
    b = write_ablation(tmp_path / "b", betas=(1.0,), name="steps.csv")
    _check(plot_ablation([a, b], tmp_path / "steps"))
    check_ablation_lines(figures[-1], (0.5, 1.0), ratios)
    steps_no_test = tmp_path / "c"
    steps_no_test.mkdir()
    pd.read_csv(a / "steps.csv").filter(regex="^(?!test_)").to_csv(steps_no_test / "steps.csv",
                                                                    index=False)
    with pytest.raises(FairbenchError, match="save_every_step"):
        plot_ablation([steps_no_test], tmp_path / "x")
    with pytest.raises(FairbenchError, match="neither ablation.csv nor steps.csv"):
        plot_ablation([tmp_path / "out"], tmp_path / "x")


def group_scores(run: Path, part: str = "test") -> dict[str, dict[str, float]]:
    """Per group: macro precision, recall, F1 (over the labels present, zero_division 0),
    accuracy and one-vs-rest macro AUC of ``part``, computed with scikit-learn from the run's
    predictions.csv, and the number of samples."""
    df = pd.read_csv(run / "predictions.csv")
    df = df[df["part"] == part]
    probs = [c for c in df.columns if c.startswith("prob_")]
    out = {}
    for code, g in enumerate(("light", "dark")):
        d = df[df["attr_skin_tone"] == code]
        p, r, f, _ = precision_recall_fscore_support(d["label"], d["pred"], average="macro",
                                                     zero_division=0)
        auc = roc_auc_score(d["label"], d[probs].to_numpy(), multi_class="ovr",
                            average="macro", labels=list(range(len(probs))))
        out[g] = {"precision": p, "recall": r, "F1": f, "n": len(d),
                  "accuracy": accuracy_score(d["label"], d["pred"]), "AUC": auc}
    return out


def bars_of(ax) -> dict[str, BarContainer]:
    return {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}


def test_groups_and_cd(tmp_path, figures):
    run = make_run(tmp_path / "runs")
    _check(plot_groups(run, tmp_path / "groups"))
    (ax,) = figures[-1].axes
    truth = group_scores(run)
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    bars = bars_of(ax)
    assert list(bars) == [f"vanilla: {g} (n = {truth[g]['n']})" for g in ("light", "dark")]
    for (g, scores), c in zip(truth.items(), bars.values()):
        heights = [p.get_height() for p in c.patches]
        np.testing.assert_allclose(heights, [scores[k] * 100 for k in GROUP_METRICS],
                                   atol=1e-9)
        np.testing.assert_allclose(heights, [metrics[g][k] * 100 for k in GROUP_METRICS],
                                   atol=1e-9)
        assert c.errorbar is None  # one seed: no error bars
    assert [t.get_text() for t in ax.get_xticklabels()] == list(GROUP_METRICS)
    assert ax.get_ylabel() == "% (test)"
    assert ax.get_title() == (
        f"vanilla on synthderm by skin tone (seed 0); EqOdds gap "
        f"{metrics['EqOddsGap'] * 100:.2f}%\none seed: no error bars; dots: single seeds")

    _check(plot_cd({"vanilla": 1.4, "A": 2.2, "B": 3.2, "C": 3.2}, 2.1, tmp_path / "cd",
                   title="F1"))
    (ax,) = figures[-1].axes
    texts = {t.get_text() for t in ax.texts}
    assert {"vanilla (1.40)", "A (2.20)", "B (3.20)", "C (3.20)", "CD = 2.10"} <= texts
    assert {"1", "2", "3", "4"} <= texts and ax.get_title() == "F1"
    # each method's leader line starts at its rank on the axis
    starts = sorted(float(line.get_xdata()[0]) for line in ax.get_lines())
    assert starts == pytest.approx([1.4, 2.2, 3.2, 3.2])
    thick = [s for col in ax.collections if isinstance(col, LineCollection)
             and col.get_linewidth()[0] == 3 for s in col.get_segments()]
    # every rank lies within CD = 2.1 of the best (3.2 − 1.4 = 1.8): one clique over all
    (((x0, _), (x1, _)),) = thick
    assert (x0, x1) == (pytest.approx(1.4 - 0.03), pytest.approx(3.2 + 0.03))
    # not significant: neither the CD nor a clique, the gate said instead
    plot_cd({"vanilla": 1.4, "A": 2.2, "B": 3.2}, 2.1, tmp_path / "cd2", significant=False,
            gate_text="Friedman p = 0.3")
    (ax,) = figures[-1].axes
    texts = [t.get_text() for t in ax.texts]
    assert not any(t.startswith("CD =") for t in texts)
    assert "Friedman p = 0.3: ranks not compared pairwise" in texts
    assert not [col for col in ax.collections if isinstance(col, LineCollection)
                and col.get_linewidth()[0] == 3]


def test_cli_plots(tmp_path, figures):
    runs = tmp_path / "runs"
    for i, name in enumerate(["synthderm", "derm2", "derm3"]):
        make_board(runs, seeds=(0, 1), split=str(i) * 64, dataset=name)
    run = next((runs / "synthderm" / "vanilla").iterdir())
    abl = write_ablation(tmp_path / "fq")
    cli = CliRunner()
    drawn = {}
    for args, stem in ((["tradeoff", str(runs)], "trade"), (["groups", str(run)], "groups"),
                       (["ablation", str(abl)], "abl"), (["cd", str(runs)], "cd")):
        out = tmp_path / "plots" / stem
        before = len(figures)
        res = cli.invoke(main, ["plot", *args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        drawn[stem] = figures[before:]
        if stem == "trade":   # one pair per table, named after it
            for name in ("synthderm", "derm2", "derm3"):
                _check([out.with_name(f"trade-{name}-skin-tone-smallcnn.png"),
                        out.with_name(f"trade-{name}-skin-tone-smallcnn.pdf")])
        else:
            _check([out.with_suffix(".png"), out.with_suffix(".pdf")])
    # tradeoff: one figure per table, titled by its dataset
    assert sorted(f.axes[0].get_title().split(" ")[0] for f in drawn["trade"]) == [
        "derm2", "derm3", "synthderm"]
    # groups: the run's per-group values from its predictions, vanilla has no vanilla beside it
    (ax,) = drawn["groups"][0].axes
    truth = group_scores(run)
    for g, c in zip(("light", "dark"), bars_of(ax).values()):
        np.testing.assert_allclose([p.get_height() for p in c.patches],
                                   [truth[g][k] * 100 for k in GROUP_METRICS], atol=1e-9)
    check_ablation_lines(drawn["abl"][0], (0.5, 0.75, 1.0), (0.05, 0.1, 0.15, 0.2))
    # cd: average ranks of the seed-mean test F1 over the 3 datasets, ranked here
    board = leaderboard(runs)
    ranks = {}
    for name in ("synthderm", "derm2", "derm3"):
        (table,) = [t for t in board.tables if t.dataset == name]
        on_disk = disk_runs(runs, name)
        f1 = {row.label: seed_stats(on_disk[(row.method, json.dumps(
            row.selection.candidate.params, sort_keys=True))], "F1")[0] for row in table.rows}
        labels = sorted(f1)
        for label, rank in zip(labels, rankdata([-f1[k] for k in labels])):
            ranks.setdefault(label, []).append(rank)
    (ax,) = drawn["cd"][0].axes
    texts = {t.get_text() for t in ax.texts}
    for label, rs in ranks.items():
        assert f"{label} ({np.mean(rs):.2f})" in texts, (label, rs, texts)
    assert ax.get_title().startswith("F1, 3 datasets: Friedman chi2 = ")
    single = tmp_path / "single"
    make_board(single, seeds=(0,))
    res = cli.invoke(main, ["plot", "cd", str(single), "--out", str(tmp_path / "n")])
    assert res.exit_code == 2 and "needs at least 2 datasets" in res.output
    res = cli.invoke(main, ["plot", "tradeoff", str(runs), "--x", "nope", "--out",
                            str(tmp_path / "n")])
    assert res.exit_code == 2 and res.output.startswith("error: unknown metric")


def test_colours_are_stable_and_groups_show_seeds_and_vanilla(tmp_path, figures):
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
    (ax,) = figures[-1].axes
    on_disk = disk_runs(runs)
    series = {"fairquantize": on_disk[("fairquantize", json.dumps({"beta": 0.5}))],
              "vanilla": on_disk[("vanilla", "{}")]}
    bars = bars_of(ax)
    n = {g: int(series["fairquantize"][0]["metrics"]["test"][g]["n"]) for g in ("light", "dark")}
    assert list(bars) == [f"{m}: {g} (n = {n[g]})" for m in series for g in ("light", "dark")]
    dots = [np.asarray(c.get_offsets(), dtype=float)[:, 1] for c in ax.collections
            if isinstance(c, PathCollection)]
    dot = iter(dots)
    for (method, rs), g in ((s, g) for s in series.items() for g in ("light", "dark")):
        c = bars[f"{method}: {g} (n = {n[g]})"]
        stats = [seed_stats(rs, f"{g}.{k}") for k in GROUP_METRICS]
        np.testing.assert_allclose([p.get_height() for p in c.patches],
                                   [m for m, _ in stats], atol=1e-9)
        # error bars: ± the sample std over the 3 seeds
        (col,) = c.errorbar.lines[2]
        np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in col.get_segments()],
                                   [2 * sd for _, sd in stats], atol=1e-9)
        assert all(p.get_hatch() == ("//" if method == "vanilla" else None) for p in c.patches)
        for r in rs:  # every seed as a dot, in order
            np.testing.assert_allclose(next(dot), [r["metrics"]["test"][g][k] * 100
                                                   for k in GROUP_METRICS], atol=1e-9)
    gap = seed_stats(series["fairquantize"], "EqOddsGap")[0]
    assert ax.get_title() == (
        f"fairquantize on synthderm by skin tone (seeds 0, 1, 2); EqOdds gap {gap:.2f}%\n"
        "error bars: ± std over 3 seeds (sample std); dots: single seeds; hatched: vanilla, "
        "same split and seeds")
    with pytest.raises(FairbenchError, match="one method"):
        plot_groups([seeds_of_one_setting[0], vanilla], tmp_path / "bad")


def test_ablation_starts_at_the_unquantized_model(tmp_path, figures):
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
    # every β's line starts at ratio 0 on the vanilla run's own test values
    axes = check_ablation_lines(figures[-1], (0.5, 0.75, 1.0), (0.05, 0.1, 0.15, 0.2),
                                start={m: vanilla[m] for m in ("precision", "EOdd")})
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["0", "5", "10", "15", "20"]
    seed = json.loads((fq / "config.json").read_text())["seed"]
    assert figures[-1]._suptitle.get_text() == (
        f"FairQuantize ablation, synthderm, seed {seed}; ratio 0: the unquantized (vanilla) "
        "model; one seed: no error bars")
