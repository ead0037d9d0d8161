"""Leaderboards from hand-made run directories: selection on validation, mean ± std over
seeds, bold and significance marks, Markdown/CSV/LaTeX/DataFrame output, and the refusal to
mix splits (API and CLI)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from bench_helpers import GROUPS, make_board, make_run
from click.testing import CliRunner

from fairbench import FairbenchError, leaderboard
from fairbench.bench.leaderboard import collect_runs
from fairbench.cli.main import main
from fairbench.metrics import flatten

METHODS = ["vanilla", "fairprune", "fairquantize"]  # vanilla first, then by name


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("board")
    make_board(d)
    return d


def _metrics(run_dir, part):
    return flatten(json.loads((run_dir / "metrics.json").read_text())[part])


def test_rows_selection_and_aggregates(board_dir):
    board = leaderboard(board_dir, rule="best_f1")
    (t,) = board.tables
    assert [r.label for r in t.rows] == METHODS
    assert t.split == "a" * 64 and t.groups == GROUPS and t.reference == "vanilla"
    fq = t.rows[2]
    # by hand: the fairquantize setting with the higher mean validation F1 over seeds
    runs = [r for r in collect_runs(board_dir) if r.config["method"] == "fairquantize"]
    val = {}
    for r in runs:
        val.setdefault(r.config["method_params"]["beta"], []).append(_metrics(r.path, "val")["F1"])
    best_beta = max(val, key=lambda b: np.mean(val[b]))
    assert fq.params == {"beta": best_beta}
    assert fq.n_settings == 2 and fq.seeds == [0, 1, 2]
    assert fq.selection.rule == "best_f1" and "highest validation F1" in fq.selection.reason
    # mean ± std (ddof 1) of the test metric over the seeds of the chosen setting
    chosen = [r for r in runs if r.config["method_params"]["beta"] == best_beta]
    for key in ("F1", "Avg.F1", "dark.precision", "Diff.recall", "EOdd", "gap.AUC"):
        vals = [_metrics(r.path, "test")[key] for r in chosen]
        assert fq.stats[key][0] == pytest.approx(np.mean(vals))
        assert fq.stats[key][1] == pytest.approx(np.std(vals, ddof=1))


def test_default_rule_is_recorded(board_dir):
    board = leaderboard(board_dir)
    (t,) = board.tables
    assert t.rule == "fair_within_eps"
    for row in t.rows:
        assert row.selection.reason
    frame = board.to_frame("compact")
    assert set(frame["rule"]) == {"fair_within_eps", "best_f1"}  # vanilla: its reference rule
    assert frame.loc[frame.method == "fairquantize", "selected_because"].str.contains(
        "within 0.02 of vanilla").all()


def test_markdown_paper_view(board_dir):
    text = leaderboard(board_dir).render("md", "paper")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert header.split("|")[1:-1] == [" Method ", " Group ", " Precision ", " Recall ", " F1 ",
                                       " EOpp0 ", " EOpp1 ", " EOdd "]
    assert len(body) == len(METHODS) * (len(GROUPS) + 2)
    assert [r.split("|")[2].strip() for r in body[:4]] == ["light", "dark", "Avg", "Diff"]
    assert "**" in text and "± " in text
    assert "Selection (validation only), rule fair_within_eps" in text
    # the fairness columns are filled on the Avg rows only
    for r in body:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert bool(cells[5]) == (cells[1] == "Avg")


def test_bold_is_best_per_column(board_dir):
    board = leaderboard(board_dir)
    (t,) = board.tables
    best = t.best("compact")
    f1 = {r.label: r.stats["F1"][0] for r in t.rows}
    eodd = {r.label: r.stats["EOdd"][0] for r in t.rows}
    assert (max(f1, key=f1.get), "", "F1") in best
    assert (min(eodd, key=eodd.get), "", "EOdd") in best
    md = board.render("md", "compact")
    line = next(x for x in md.splitlines() if x.startswith(f"| {max(f1, key=f1.get)} "))
    assert line.split("|")[2].strip().startswith("**")


def test_significance_marks(board_dir):
    board = leaderboard(board_dir)
    (t,) = board.tables
    fp = next(r for r in t.rows if r.label == "fairprune")
    comp = fp.tests["F1"]
    assert comp.reference == "vanilla" and comp.n_pairs == 3
    assert comp.significant and comp.p_holm < 0.05   # much worse than vanilla on every seed
    md = board.render("md", "compact")
    line = next(x for x in md.splitlines() if x.startswith("| fairprune "))
    assert "†" in line.split("|")[2]
    frame = board.to_frame("compact")
    assert frame.loc[frame.method == "fairprune", "F1_p_holm"].iloc[0] == pytest.approx(comp.p_holm)
    assert np.isnan(frame.loc[frame.method == "vanilla", "F1_p_holm"].iloc[0])


def test_csv_and_dataframe(board_dir):
    board = leaderboard(board_dir)
    df = pd.read_csv(io.StringIO(board.render("csv", "paper")))
    assert len(df) == len(METHODS) * (len(GROUPS) + 2)
    for col in ("dataset", "split", "method", "row", "F1", "F1_std", "EOdd", "n_seeds", "rule",
                "params"):
        assert col in df.columns
    frame = board.to_frame("paper")
    avg = frame[(frame.method == "vanilla") & (frame.row == "Avg")].iloc[0]
    assert avg["F1"] == pytest.approx(board.tables[0].rows[0].stats["Avg.F1"][0])
    compact = board.to_frame("compact")
    assert list(compact.method) == METHODS
    for col in ("F1", "AUC", "worst.F1", "gap.AUC", "gap.ECE", "EOdd"):
        assert col in compact.columns


def _strip_escaped(text: str) -> str:
    return text.replace("\\{", "").replace("\\}", "")


def test_latex_sanity(board_dir):
    board = leaderboard(board_dir)
    for view, n_rows, n_cols in (("paper", len(METHODS) * (len(GROUPS) + 2), 8),
                                 ("compact", len(METHODS), 7)):
        tex = board.render("latex", view)
        plain = _strip_escaped(tex)
        depth = 0
        for ch in plain:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0
        assert depth == 0
        assert plain.count("$") % 2 == 0
        for env in ("table", "tabular"):
            assert tex.count(f"\\begin{{{env}}}") == tex.count(f"\\end{{{env}}}") == 1
        lines = tex.splitlines()
        top, bottom = lines.index("\\toprule"), lines.index("\\bottomrule")
        assert "\\midrule" in lines[top:bottom]
        body = [x for x in lines[top + 2:bottom] if x.endswith("\\\\")]
        assert len(body) == n_rows
        for x in body:
            assert x.count(" & ") == n_cols - 1
        assert "\\textbf{" in tex and "$\\pm$" in tex
        assert "_" not in re.sub(r"\\_", "", re.sub(r"\\label\{[^}]*\}", "", tex))


def test_refuses_to_mix_splits(tmp_path):
    make_board(tmp_path, seeds=(0, 1))
    make_run(tmp_path, method="vanilla", seed=5, split="b" * 64)
    with pytest.raises(FairbenchError) as info:
        leaderboard(tmp_path)
    msg = str(info.value)
    assert "a" * 12 in msg and "b" * 12 in msg and "--split" in msg
    # pick one split explicitly
    board = leaderboard(tmp_path, split="bbbb")
    assert board.tables[0].split == "b" * 64 and [r.label for r in board.tables[0].rows] == ["vanilla"]
    # the CLI: one error line, exit 2
    res = CliRunner().invoke(main, ["leaderboard", str(tmp_path)])
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "b" * 12 in lines[0]


def test_several_datasets_and_friedman(tmp_path):
    for i, name in enumerate(["synthderm", "derm2", "derm3"]):
        make_board(tmp_path, seeds=(0, 1), split=str(i) * 64, dataset=name)
    board = leaderboard(tmp_path)
    assert len(board.tables) == 3
    res = board.friedman("F1")
    assert not isinstance(res, str) and res.n_datasets == 3
    assert set(res.avg_ranks) == set(METHODS)
    assert "Friedman test over 3 tables" in board.render("md", "compact")


def test_cli_formats_and_out(board_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.tex"
    res = runner.invoke(main, ["leaderboard", str(board_dir), "--format", "latex", "--view",
                               "compact", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().count("\\toprule") == 1
    res = runner.invoke(main, ["leaderboard", str(board_dir), "--format", "csv", "--rule", "dto"])
    assert res.exit_code == 0 and "dto" in res.output
    res = runner.invoke(main, ["leaderboard", str(board_dir), "--rule", "nope"])
    assert res.exit_code == 2 and res.output.startswith("error: unknown selection rule")
    res = runner.invoke(main, ["leaderboard", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "neither a suite file nor a runs directory" in res.output
