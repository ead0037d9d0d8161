"""A leaderboard as one self-contained HTML page: every table (with its notes: the marks, the
seeds, the missing runs and the selection of every row), per table the accuracy–fairness
trade-off figure, and with ``--view matrix`` the mechanism matrix and its heatmap, figures
embedded as inline SVG, so the page can be sent to a colleague as one file (no scripts, no
external files)."""

from __future__ import annotations

import html
import math
from typing import Any

from fairbench.bench.board import Table
from fairbench.bench.cells import table_cells
from fairbench.bench.leaderboard import Leaderboard
from fairbench.bench.render import friedman_lines, table_notes
from fairbench.metrics import HEADLINE_FAIRNESS, higher_is_better
from fairbench.metrics.catalog import title as column_title

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.8em; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th { border-bottom: 2px solid #444; }
td.label, th.label { text-align: left; }
tr.block td { border-top: 2px solid #999; }
.notes { font-size: 0.85em; color: #444; }
figure { margin: 0.5em 0 2em; }
figure svg { max-width: 560px; height: auto; }
"""


def _arrow(column: str) -> str:
    return {True: " ↑", False: " ↓"}.get(higher_is_better(column), "")


def _table_html(board: Leaderboard, t: Table, view: str) -> list[str]:
    columns = t.columns(view)
    lead = ["Method"] + (["Group"] if view == "paper" else [])
    out = [f"<h2>{html.escape(t.title)}</h2>", "<table>", "<thead><tr>"]
    out += [f'<th class="label">{h}</th>' for h in lead]
    out += [f"<th>{html.escape(column_title(c) + _arrow(c))}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for label, row_name, cells in table_cells(
            t, view, lambda s: f"<strong>{s}</strong>", lambda s, mark: s + mark):
        cls = ' class="block"' if label and view == "paper" else ""
        out.append(f"<tr{cls}>" + f'<td class="label">{html.escape(label)}</td>'
                   + (f'<td class="label">{html.escape(row_name)}</td>' if view == "paper"
                      else "")
                   + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    out.append('<div class="notes"><ul>')
    out += [f"<li>{html.escape(line.lstrip('- '))}</li>" for line in table_notes(board, t)]
    out.append("</ul></div>")
    return out


def _figure_html(t: Table) -> list[str]:
    from fairbench.bench.plots import svg_text, tradeoff_figure

    segmentation = t.task == "segmentation"
    x = "gap.Dice" if segmentation else HEADLINE_FAIRNESS
    y = "Dice" if segmentation else "F1"
    if not any(math.isfinite(r.stats.get(x, (math.nan,))[0]) for r in t.rows):
        return []
    caption = f"{y} against {column_title(x)} per method, Pareto front dashed."
    return [f'<figure class="tradeoff">{svg_text(tradeoff_figure(t, x=x, y=y))}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"]


def render_html(board: Leaderboard, view: str = "compact", *, figures: bool = True,
                extra_sections: list[str] | None = None) -> str:
    """The page (a string). ``extra_sections``: further HTML blocks appended at the end (e.g.
    other views)."""
    body: list[str] = []
    for t in board.tables:
        body += _table_html(board, t, view)
        if figures:
            body += _figure_html(t)
    friedman = friedman_lines(board)
    if friedman:
        body.append(f'<p class="notes">{html.escape(friedman[0])}</p>')
    body += extra_sections or []
    title = f"fairbench leaderboard: {board.source}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            f'<p class="notes">Rule: {html.escape(board.rule)}; paired {board.test}, alpha '
            f"{board.alpha:g}.</p>\n" + "\n".join(body) + "\n</body></html>\n")


def markdown_table_html(lines: list[str]) -> list[str]:
    """A Markdown table (``| a | b |`` lines, the second the alignment row) as HTML rows;
    ``**bold**`` becomes ``<strong>``."""
    import re

    def cells(line: str) -> list[str]:
        parts = [c.strip().replace("\\_", "_") for c in line.strip().strip("|").split("|")]
        return [re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(c).replace(
            "&lt;strong&gt;", "<strong>")) for c in parts]

    out = ["<table>", "<thead><tr>" + "".join(f"<th>{c}</th>" for c in cells(lines[0]))
           + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f'<td class="{"label" if i == 0 else ""}">{c}</td>'
                             for i, c in enumerate(cells(line))) + "</tr>" for line in lines[2:]]
    return out + ["</tbody></table>"]


def matrix_section(matrix: Any) -> list[str]:
    """The mechanism matrix (its tables, notes and heatmap) as HTML blocks."""
    from fairbench.bench.matrix import matrix_figure
    from fairbench.bench.plots import svg_text

    out = ["<h2>Which method fixes which bias: the mechanism matrix</h2>"]
    table: list[str] = []
    for line in matrix.to_markdown().splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out += markdown_table_html(table)
            table = []
        if line.startswith("#"):
            out.append(f"<h3>{html.escape(line.lstrip('# '))}</h3>")
        elif line.strip():
            out.append(f'<p class="notes">{html.escape(line.lstrip("- "))}</p>')
    out.append(f'<figure class="matrix">{svg_text(matrix_figure(matrix))}'
               "<figcaption>Change against vanilla per method and scenario.</figcaption>"
               "</figure>")
    return out
