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
                                       " EqOdds gap ", " EOpp0 (paper) ", " EOpp1 (paper) ",
                                       " EOdd (paper) "]
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
    assert "▼" in line.split("|")[2]   # significantly worse than vanilla
    assert comp.direction == "worse"
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
    for col in ("F1", "AUC", "worst.F1", "gap.AUC", "gap.ECE", "EqOddsGap", "EOdd"):
        assert col in compact.columns


def _strip_escaped(text: str) -> str:
    return text.replace("\\{", "").replace("\\}", "")


def test_latex_sanity(board_dir):
    board = leaderboard(board_dir)
    for view, n_rows, n_cols in (("paper", len(METHODS) * (len(GROUPS) + 2), 9),
                                 ("compact", len(METHODS), 8)):
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
        # the column groups, then the titles with their directions
        assert "\\multicolumn{3}{c}{Utility}" in lines[top + 1]
        assert "\\cmidrule" in lines[top + 2]
        assert lines[top + 3].startswith("Method") and "F1 $\\uparrow$" in lines[top + 3]
        assert "EqOdds gap $\\downarrow$" in lines[top + 3]
        body = [x for x in lines[top + 4:bottom] if x.endswith("\\\\")]
        assert len(body) == n_rows
        for x in body:
            assert x.count(" & ") == n_cols - 1
        assert "\\textbf{" in tex and "$\\pm$" in tex
        # bold covers the ± part; the split hash stays out of the caption; notes under it
        assert re.search(r"\\textbf\{[0-9.]+ \$\\pm\$ [0-9.]+\}", tex)
        assert "a" * 12 not in tex.split("\\label")[0]
        assert "Selection on validation only" in tex.split("\\end{tabular}")[1]
        assert "a" * 12 in board.to_latex(view, split_in_caption=True).split("\\label")[0]
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


# -- every rendered cell against numbers the test computes itself ------------------------------
CELL_SEEDS = (0, 1, 2, 3)
FLAT_KEYS = ("F1", "AUC", "EqOddsGap", "EOpp0", "EOpp1", "EOdd", "worst.F1", "gap.AUC",
             "gap.ECE", *(f"{g}.{m}" for g in ("light", "dark", "Avg", "Diff")
                          for m in ("precision", "recall", "F1")))
#: per method, the level every metric sits at; "fairer" is clearly lower on the fairness gaps
LEVELS = {"vanilla": 0.50, "fairer": 0.40, "shorty": 0.45}


def _known_value(method: str, seed: int, key: str) -> float | None:
    if method == "shorty" and seed == 1 and key == "EqOddsGap":
        return None                            # a null metric: that cell averages 3 seeds
    rng = np.random.default_rng([CELL_SEEDS.index(seed), len(key), sum(map(ord, key)),
                                 sum(map(ord, method))])
    return round(LEVELS[method] + 0.03 * rng.standard_normal(), 6)


def _nested(flat: dict[str, float | None]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in flat.items():
        if "." in key:
            head, tail = key.split(".", 1)
            out.setdefault(head, {})[tail] = value  # type: ignore[index]
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def known_board(tmp_path_factory):
    from bench_helpers import make_run_with_metrics

    d = tmp_path_factory.mktemp("known")
    values: dict[str, dict[int, dict[str, float | None]]] = {}
    for method in LEVELS:
        for seed in CELL_SEEDS:
            if method == "shorty" and seed == 3:
                continue                       # a missing run
            flat = {k: _known_value(method, seed, k) for k in FLAT_KEYS}
            values.setdefault(method, {})[seed] = flat
            make_run_with_metrics(d, method=method, seed=seed, test=_nested(flat))
    return d, values


def _expected_cells(values, key):
    """Per method: (mean, std, n) over the finite seeds, bold and the significance mark, all
    computed here with numpy, scipy and a Holm loop of this test's own."""
    from scipy import stats as sps

    from fairbench import higher_is_better

    stats = {}
    for method, by_seed in values.items():
        v = np.array([x[key] for x in by_seed.values() if x[key] is not None], dtype=float)
        stats[method] = (v.mean(), v.std(ddof=1), len(v))
    full = {m: s for m, s in stats.items() if s[2] == len(CELL_SEEDS)}
    hib = higher_is_better(key)
    best = set()
    if hib is not None and len(full) >= 2:
        target = (max if hib else min)(s[0] for s in full.values())
        best = {m for m, s in full.items() if abs(s[0] - target) <= 1e-12}
    # paired t-tests against vanilla over common finite seeds (>= 3, non-constant), Holm
    pvals = {}
    for method, by_seed in values.items():
        if method == "vanilla":
            continue
        seeds = [s for s in by_seed if s in values["vanilla"] and by_seed[s][key] is not None
                 and values["vanilla"][s][key] is not None]
        a = np.array([by_seed[s][key] for s in seeds])
        b = np.array([values["vanilla"][s][key] for s in seeds])
        if len(seeds) >= 3 and np.ptp(a - b) > 1e-12:
            pvals[method] = sps.ttest_rel(a, b).pvalue
    order = sorted(pvals, key=pvals.get)
    adjusted, running = {}, 0.0
    for rank, method in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvals[method]))
        adjusted[method] = running
    marks = {}
    for method, p in adjusted.items():
        if p < 0.05:
            better = (stats[method][0] > stats["vanilla"][0]) == hib
            marks[method] = "▲" if better else "▼"
    return stats, best, marks


def _text(mean, std, n):
    out = f"{mean * 100:.2f} ± {std * 100:.2f}"
    return out + (f" (n={n})" if n < len(CELL_SEEDS) else "")


def test_every_rendered_cell_matches_numbers_computed_by_the_test(known_board):
    d, values = known_board
    board = leaderboard(d, rule="best_f1")
    (t,) = board.tables
    md = board.render("md", "compact")
    csv = pd.read_csv(io.StringIO(board.render("csv", "compact")))
    tex = board.render("latex", "compact")
    cols = list(t.columns("compact"))
    assert cols == ["F1", "AUC", "worst.F1", "gap.AUC", "gap.ECE", "EqOddsGap", "EOdd"]
    md_rows = {line.split("|")[1].strip().replace("\\_", "_"): [c.strip() for c in
                                                               line.split("|")[2:-1]]
               for line in md.splitlines() if line.startswith("| ") and "Method" not in line}
    tex_rows = {line.split(" & ")[0]: line.rstrip("\\ ").split(" & ")[1:]
                for line in tex.splitlines() if line.split(" & ")[0] in LEVELS}
    checked = 0
    for j, key in enumerate(cols):
        stats, best, marks = _expected_cells(values, key)
        for method, (mean, std, n) in stats.items():
            text = _text(mean, std, n)
            cell = md_rows[method][j]
            bare = re.sub(r"≈|\?>?\d+", "", cell.replace("**", "").replace("▲", "")
                          .replace("▼", ""))  # the verdicts: tests/test_equivalence.py
            assert bare == text, (method, key, cell)
            assert cell.startswith("**") == (method in best), (method, key, cell)
            assert ("▲" in cell, "▼" in cell) == (marks.get(method) == "▲",
                                                  marks.get(method) == "▼"), (method, key, cell)
            row = csv[csv.method == method].iloc[0]
            assert row[key] == pytest.approx(mean, abs=1e-12)
            assert row[f"{key}_std"] == pytest.approx(std, abs=1e-12)
            assert row[f"{key}_n"] == n
            assert row[f"{key}_vs_vanilla"] == {"▲": "better", "▼": "worse"}.get(
                marks.get(method), "") or (pd.isna(row[f"{key}_vs_vanilla"])
                                           and method not in marks)
            tex_cell = re.sub(r"\$\^(\\approx|\{\?>?\d+\})\$", "", tex_rows[method][j])
            tex_text = text.replace(" ± ", " $\\pm$ ")
            assert tex_text in tex_cell
            assert ("\\textbf{" in tex_cell) == (method in best)
            assert ("blacktriangle$" in tex_cell) == (marks.get(method) == "▲")
            assert ("blacktriangledown" in tex_cell) == (marks.get(method) == "▼")
            checked += 1
    assert checked == len(cols) * len(LEVELS)
    # the fairer method is marked better on the headline, and the short cell is said so
    assert _expected_cells(values, "EqOddsGap")[2].get("fairer") == "▲"
    assert "(n=3)" in md and "Missing runs:" in md and "shorty (chosen setting): no finished " \
        "run for seed 3" in md


def test_paper_view_cells_match_too(known_board):
    d, values = known_board
    board = leaderboard(d, rule="best_f1")
    frame = board.to_frame("paper")
    for method in LEVELS:
        for group in ("light", "dark", "Avg", "Diff"):
            row = frame[(frame.method == method) & (frame.row == group)].iloc[0]
            for m in ("precision", "recall", "F1"):
                stats = _expected_cells(values, f"{group}.{m}")[0][method]
                assert row[m] == pytest.approx(stats[0], abs=1e-12)
                assert row[f"{m}_std"] == pytest.approx(stats[1], abs=1e-12)
        avg = frame[(frame.method == method) & (frame.row == "Avg")].iloc[0]
        for key in ("EqOddsGap", "EOpp0", "EOpp1", "EOdd"):
            assert avg[key] == pytest.approx(_expected_cells(values, key)[0][method][0])


def test_cli_interval_kinds_are_named_in_the_footnote(board_dir):
    runner = CliRunner()
    two = runner.invoke(main, ["leaderboard", str(board_dir), "--view", "compact", "--ci",
                               "--n-boot", "50"])
    assert two.exit_code == 0, two.output
    assert "two-stage bootstrap: seeds, then test samples" in two.output
    one = runner.invoke(main, ["leaderboard", str(board_dir), "--view", "compact", "--ci",
                               "--n-boot", "50", "--ci-kind", "samples"])
    assert one.exit_code == 0 and "training seed's variation is left out" in one.output
    # the two-stage interval is never narrower here (3 seeds that differ)
    board2 = leaderboard(board_dir, ci=True, n_resamples=200)
    board1 = leaderboard(board_dir, ci=True, n_resamples=200, ci_kind="samples")
    widths = [(r2.ci["F1"][1] - r2.ci["F1"][0]) - (r1.ci["F1"][1] - r1.ci["F1"][0])
              for r2, r1 in zip(board2.tables[0].rows, board1.tables[0].rows)]
    assert sum(w > 0 for w in widths) >= 2, widths


def test_html_page_is_self_contained_with_tables_notes_and_figures(board_dir, tmp_path):
    from html.parser import HTMLParser

    from fairbench.bench.html import render_html

    page = render_html(leaderboard(board_dir), "compact")

    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.srcs: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.srcs += [v for k, v in attrs if k in ("src", "href") and v]

    c = Collect()
    c.feed(page)
    assert c.tags.count("table") == 1 and c.tags.count("svg") == 1
    assert c.tags.count("tr") == 1 + len(METHODS)
    assert not c.srcs and "<script" not in page       # nothing loaded from elsewhere
    assert "EqOdds gap ↓" in page and "<strong>" in page and "▼" in page
    assert "Selection (validation only)" in page
    out = tmp_path / "board.html"
    res = CliRunner().invoke(main, ["leaderboard", str(board_dir), "--format", "html",
                                    "--out", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>")


def test_html_page_renders_in_headless_chromium(board_dir, tmp_path):
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium installed (apt install chromium)")
    out = tmp_path / "board.html"
    from fairbench.bench.html import render_html

    out.write_text(render_html(leaderboard(board_dir), "paper"))
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<table") == 1 and dom.count("<svg") >= 1
    assert "Selection (validation only)" in dom and "EqOdds gap" in dom
