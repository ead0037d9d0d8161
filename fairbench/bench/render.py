"""Rendering a leaderboard: the tidy DataFrame (fractions), Markdown with its notes, LaTeX
(booktabs) and CSV; the HTML page is :mod:`fairbench.bench.html`."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from fairbench.bench.board import Board, Table
from fairbench.bench.cells import (
    DAGGER,
    IDLE,
    MARKS,
    check_view,
    is_utility_column,
    md_escape,
    table_cells,
    table_label,
    tex_arrow,
    tex_escape,
    tex_mark,
)
from fairbench.bench.stats import MIN_PAIRS
from fairbench.core.errors import FairbenchError
from fairbench.metrics.catalog import title as column_title


def board_frame(board: Board, view: str = "paper") -> pd.DataFrame:
    """Tidy numbers (fractions, not percent): one row per method × table row, ``<col>``
    (mean), ``<col>_std``, ``<col>_p_holm`` and, with CIs, ``<col>_ci_low/high``."""
    check_view(view)
    records = []
    for t in board.tables:
        for row in t.rows:
            for row_name, cols in t.row_keys(view):
                rec: dict[str, Any] = {
                    "dataset": t.dataset, "attribute": t.attribute, "backbone": t.backbone,
                    "split": t.split, "part": t.part, "method": row.label}
                if view == "paper":
                    rec["row"] = row_name
                for col in t.columns(view):
                    key = cols.get(col)
                    mean, std = row.stats.get(key, (math.nan, math.nan)) if key else \
                        (math.nan, math.nan)
                    rec[col], rec[f"{col}_std"] = mean, std
                    rec[f"{col}_n"] = row.n(key) if key else 0
                    comp = row.tests.get(key) if key else None
                    rec[f"{col}_p_holm"] = comp.p_holm if comp else math.nan
                    rec[f"{col}_vs_vanilla"] = (comp.direction or "") if comp else ""
                    if comp is not None and comp.margin is not None:
                        rec[f"{col}_verdict"] = comp.verdict or ""
                        rec[f"{col}_p_equivalence"] = comp.p_equivalence
                        rec[f"{col}_mde"] = comp.mde
                        rec[f"{col}_seeds_needed"] = comp.seeds_needed
                    if key in row.ci:
                        rec[f"{col}_ci_low"], rec[f"{col}_ci_high"] = row.ci[key]
                idle, known = row.idle()
                rec.update(runs_not_engaged=idle, runs_with_engagement_record=known)
                rec.update(n_seeds=len(row.runs), seeds=" ".join(map(str, row.seeds)),
                           expected_seeds=len(row.expected_seeds),
                           n_settings=row.n_settings,
                           params=json.dumps(row.params, sort_keys=True),
                           chosen_in_run=json.dumps(row.chosen_in_run(), sort_keys=True),
                           rule=row.selection.rule, selected_because=row.selection.reason)
                records.append(rec)
    return pd.DataFrame.from_records(records)


def render_board(board: Board, fmt: str = "md", view: str = "paper") -> str:
    check_view(view)
    if fmt == "md":
        return board_markdown(board, view)
    if fmt == "csv":
        return board_frame(board, view).to_csv(index=False)
    if fmt == "latex":
        return board_latex(board, view)
    if fmt == "html":  # the page needs the figures, which build on this module
        raise FairbenchError("the html page is fairbench.bench.html.render_html(board)")
    raise FairbenchError(f"unknown format {fmt!r}; use md, csv or latex")


def board_markdown(board: Board, view: str = "paper") -> str:
    out = []
    for t in board.tables:
        cols = [column_title(c) for c in t.columns(view)]
        head = ["Method"] + (["Group"] if view == "paper" else []) + cols
        out.append(f"### {t.title}\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join([":--"] * (2 if view == "paper" else 1)
                                  + ["--:"] * len(cols)) + "|")
        for label, row_name, cells in table_cells(t, view, lambda s: f"**{s}**",
                                                  lambda s, mark: s + mark):
            first = [md_escape(label)] + ([row_name] if view == "paper" else [])
            out.append("| " + " | ".join(first + cells) + " |")
        out.append("")
        out.extend(table_notes(board, t))
        out.append("")
    out.extend(friedman_lines(board))
    return "\n".join(out).rstrip() + "\n"


def table_notes(board: Board, t: Table) -> list[str]:
    n_seeds = len(t.rows[0].expected_seeds) if t.rows else 0
    lines = [f"Values in %, mean ± std over {n_seeds} seeds ({t.part}); best per column in "
             "bold (cells short of seeds excluded)."]
    if t.reference:
        lines.append(
            f"{MARKS['better']} / {MARKS['worse']}: better / worse than vanilla (paired "
            f"{board.test} over seeds, Holm-corrected over the methods, p < {board.alpha:g}; "
            f"{DAGGER}: a metric without a direction); a comparison needs at least "
            f"{MIN_PAIRS} paired seeds whose differences vary, else it is not tested.")
        lines.extend(verdict_notes(board, t))
        untested = sorted({f"{row.label} ({c.untestable})" for row in t.rows
                           for c in row.tests.values() if c.untestable})
        if untested:
            lines.append("Not tested against vanilla: " + "; ".join(untested) + ".")
    else:
        lines.append("No vanilla run, so no significance marks.")
    if board.ci_confidence:
        what = ("two-stage bootstrap: seeds, then test samples (patients where known) "
                "within each seed" if board.ci_kind == "seeds+samples" else
                "bootstrap over test samples (patients where known) only; the training "
                "seed's variation is left out")
        lines.append(f"[low, high]: {board.ci_confidence:.0%} interval of the seed-mean, "
                     f"{what}.")
    if any(row.short(k) for row in t.rows for k in row.stats):
        lines.append("(n=k): the cell averages k seeds only.")
    if t.missing:
        lines.append("Missing runs:")
        lines.extend(f"- {m}" for m in t.missing)
    lines.append(f"Selection (validation only), rule {t.rule}:")
    for row in t.rows:
        lines.append(f"- {row.label}: {row.params_text()}; seeds "
                     f"{', '.join(map(str, row.seeds))}; {row.selection.reason}")
    return lines


def verdict_notes(board: Board, t: Table) -> list[str]:
    """What ≈ and ?k mean, the margins, and how many of the table's comparisons with a
    margin were decided, with the largest minimal detectable effect among the rest."""
    idle_rows = [row.label for row in t.rows if row.mostly_idle]
    idle_line = ([f"{IDLE}k/n: k of the row's n runs did not engage its mechanism (the "
                  "engagement record in config.json; `fairbench show` prints it): the row "
                  "measures a no-op, so it gets no verdict; rows: " + ", ".join(idle_rows)
                  + "."] if idle_rows else [])
    comps = [c for row in t.rows if not row.mostly_idle for c in row.tests.values()
             if c.margin is not None]
    if not comps:
        return idle_line
    margins = ", ".join(f"{column_title(k)} ±{v * 100:g}" for k, v in board.margins.items())
    decided = sum(c.verdict in ("better", "worse", "higher", "lower", "equivalent")
                  for c in comps)
    mdes = [c.mde for c in comps if c.verdict == "undecided" and math.isfinite(c.mde)]
    line = (f"{MARKS['equivalent']}: within the margin of vanilla (paired two one-sided "
            f"t-tests, Holm-corrected over the methods, p < {board.alpha:g}; margins in "
            f"points: {margins}); ?k: undecided, k seeds would decide it at the observed mean "
            f"and variance (80 % power at the Holm level); decided {decided} of {len(comps)} "
            "comparisons with a margin")
    if mdes:
        line += (f"; the undecided ones could have detected differences of "
                 f"{min(mdes) * 100:.2f} to {max(mdes) * 100:.2f} points (their minimal "
                 "detectable effects)")
    return [line + "."] + idle_line


def friedman_lines(board: Board) -> list[str]:
    """The Friedman test over the tables in one line (none with a single table)."""
    res = board.friedman()
    if isinstance(res, str):
        return [f"Friedman test: {res}"] if len(board.tables) > 1 else []
    ranks = ", ".join(f"{m} {r:.2f}" for m, r in sorted(res.avg_ranks.items(),
                                                        key=lambda kv: kv[1]))
    line = (f"Friedman test over {res.n_datasets} tables ({res.metric}): "
            f"chi2 = {res.statistic:.3f}, p = {res.pvalue:.4f}; Iman-Davenport F = "
            f"{res.f_statistic:.3f}, p = {res.f_pvalue:.4f}; average ranks (1 = best): "
            f"{ranks}; ")
    if res.significant:
        line += f"Nemenyi CD (alpha {res.alpha:g}) = {res.cd:.3f}."
    else:
        line += ("not significant, so the ranks are not compared pairwise (no critical "
                 "difference).")
    return [line]


def board_latex(board: Board, view: str = "paper", *, split_in_caption: bool = False) -> str:
    """booktabs tables: ↑/↓ after each column title (its direction), the columns grouped
    under "Utility" and "Fairness", bold covering the whole cell (± part included), the
    marks as superscripts, the selection of every row as table notes; the split hash is in
    the caption only with ``split_in_caption`` (it is always in the label's table of
    :func:`board_frame`)."""
    out = ["% requires \\usepackage{booktabs,amssymb}"]
    for t in board.tables:
        columns = t.columns(view)
        n_lead = 2 if view == "paper" else 1
        utility = [c for c in columns if is_utility_column(c)]
        head = (["Method"] + (["Group"] if view == "paper" else [])
                + [tex_escape(column_title(c)) + tex_arrow(c) for c in columns])
        title = t.title if split_in_caption else t.title_without_split
        groups_row = (" & " * (n_lead - 1) + " & "
                      + f"\\multicolumn{{{len(utility)}}}{{c}}{{Utility}} & "
                      + f"\\multicolumn{{{len(columns) - len(utility)}}}{{c}}{{Fairness}}"
                      + " \\\\")
        first_u, last_u = n_lead + 1, n_lead + len(utility)
        rules = (f"\\cmidrule(lr){{{first_u}-{last_u}}}"
                 f"\\cmidrule(lr){{{last_u + 1}-{n_lead + len(columns)}}}")
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                (f"\\caption{{{tex_escape(title)}. Values in \\%, mean $\\pm$ std over seeds; "
                 f"best per column in bold; $^\\blacktriangle$/$^\\blacktriangledown$: "
                 f"better/worse than vanilla, paired {tex_escape(board.test)} over at least "
                 f"{MIN_PAIRS} seeds, Holm-corrected, $p<{board.alpha:g}$.}}"),
                f"\\label{{tab:{table_label(t)}-{view}}}",
                f"\\begin{{tabular}}{{{'l' * n_lead}{'r' * len(columns)}}}", "\\toprule",
                groups_row, rules,
                " & ".join(head) + " \\\\", "\\midrule"]
        first = True
        for label, row_name, cells in table_cells(
                t, view, lambda s: f"\\textbf{{{s}}}", lambda s, mark: s + tex_mark(mark)):
            if label and not first and view == "paper":
                out.append("\\midrule")
            first = False
            cells = [c.replace(" ± ", " $\\pm$ ") for c in cells]
            lead_cells = [tex_escape(label)] + ([tex_escape(row_name)] if view == "paper" else [])
            out.append(" & ".join(lead_cells + cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        notes = [f"Selection on validation only, rule {tex_escape(t.rule)}."]
        notes += [f"{tex_escape(row.label)}: {tex_escape(row.params_text())}; "
                  f"{tex_escape(row.selection.reason)}." for row in t.rows]
        if t.missing:
            notes.append("Missing runs: " + "; ".join(tex_escape(m) for m in t.missing) + ".")
        out += ["\\par\\smallskip\\footnotesize\\raggedright",
                " \\\\\n".join(notes), "\\end{table}", ""]
    return "\n".join(out)
