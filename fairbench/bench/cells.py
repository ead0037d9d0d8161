"""Formatting a leaderboard's cells: numbers in percent, the marks of a comparison with
vanilla, escapes for Markdown and LaTeX, the direction arrows and which columns are utility."""

from __future__ import annotations

import math
from collections.abc import Callable

from fairbench.bench.board import VIEWS, MethodRow, Table
from fairbench.bench.equivalence import MAX_SEEDS
from fairbench.bench.stats import Comparison
from fairbench.core.errors import FairbenchError
from fairbench.metrics import higher_is_better
from fairbench.metrics.catalog import PAPER_UTILITY, SEG_UTILITY

FORMATS = ("md", "csv", "latex")
DAGGER = "†"
#: a row whose runs mostly did not engage their mechanism (a no-op, not the method)
IDLE = "∅"
#: significance marks: better / worse than vanilla; † for a metric without a direction
MARKS = {"better": "▲", "worse": "▼", "higher": DAGGER, "lower": DAGGER,
         "equivalent": "≈", "undecided": "?"}


def idle_mark(row: MethodRow) -> str:
    """``∅k/n`` when k of the n runs of a row (with a record) did not engage and k > n/2;
    nothing otherwise."""
    if not row.mostly_idle:
        return ""
    idle, known = row.idle()
    return f"{IDLE}{idle}/{known}"


def verdict_mark(comp: Comparison | None) -> str:
    """The mark of a comparison with vanilla: ▲/▼ (or † without a direction), ≈ within the
    margin, ``?k`` undecided where k seeds would decide it at the observed variance (``?>N``
    where the planner's ceiling would not), nothing without a verdict."""
    verdict = comp.verdict if comp is not None else None
    if verdict is None:
        return ""
    if verdict == "undecided":
        return "?" + (str(comp.seeds_needed) if comp.seeds_needed is not None  # type: ignore[union-attr]
                      else f">{MAX_SEEDS}")
    return MARKS[verdict]


def is_utility_column(column: str) -> bool:
    """Utility columns (the rest are fairness columns) of both views and both tasks."""
    base = column.split(".", 1)[-1] if column.startswith(("worst.", "Avg.")) else column
    return base in (*PAPER_UTILITY, *SEG_UTILITY, "AUC", "accuracy") and not column.startswith("gap.")


def tex_arrow(column: str) -> str:
    """↑ or ↓ after a column title (its direction), in LaTeX; nothing without one."""
    direction = higher_is_better(column)
    return {True: " $\\uparrow$", False: " $\\downarrow$"}.get(direction, "")


def check_view(view: str) -> None:
    """Refuse an unknown view in one line."""
    if view not in VIEWS:
        raise FairbenchError(f"unknown view {view!r}; use paper or compact")


def mean_std_text(mean: float, std: float) -> str:
    """``mean ± std`` in percent with two decimals (the mean alone without a std; – without a
    mean)."""
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(std):
        return f"{mean * 100:.2f}"
    return f"{mean * 100:.2f} ± {std * 100:.2f}"


def md_escape(text: str) -> str:
    """``text`` with Markdown table specials (``|``, ``_``) escaped."""
    return text.replace("|", "\\|").replace("_", "\\_")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


TEX_MARKS = {MARKS["better"]: "$^\\blacktriangle$", MARKS["worse"]: "$^\\blacktriangledown$",
              DAGGER: "$^\\dagger$", MARKS["equivalent"]: "$^\\approx$"}
#: LaTeX of the idle mark's symbol
TEX_IDLE = "\\emptyset"


def tex_mark(mark: str) -> str:
    """A cell's mark as a LaTeX superscript (``?k`` as ``$^{?k}$``)."""
    if mark.startswith(IDLE):
        return f"$^{{{TEX_IDLE}{mark[len(IDLE):]}}}$"
    return TEX_MARKS.get(mark, f"$^{{{mark}}}$")


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (± as ``$\\pm$``)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text)).replace("±", "$\\pm$")


def table_label(t: Table) -> str:
    """A LaTeX label of a table: dataset, attribute and backbone, alphanumeric."""
    raw = f"{t.dataset}-{t.attribute}-{t.backbone}"
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in raw)


def table_cells(t: Table, view: str, bold: Callable[[str], str], sig: Callable[[str, str], str]
            ) -> list[tuple[str, str, list[str]]]:
    """(method label on a block's first row, row name, cell texts) of every row of ``t`` in
    ``view``: mean ± std, the interval when there is one, ``bold`` on the best of a column,
    ``sig`` adding the mark of a significant difference from vanilla, ``(n=k)`` on a cell
    short of seeds."""
    best = t.best(view)
    out = []
    for row in t.rows:
        for i, (row_name, cols) in enumerate(t.row_keys(view)):
            cells = []
            for col in t.columns(view):
                key = cols.get(col)
                if key is None:
                    cells.append("")
                    continue
                mean, std = row.stats.get(key, (math.nan, math.nan))
                text = mean_std_text(mean, std)
                if key in row.ci:
                    lo, hi = row.ci[key]
                    text += f" [{lo * 100:.2f}, {hi * 100:.2f}]"
                if (row.label, row_name, col) in best:
                    text = bold(text)
                mark = idle_mark(row) if row.tests.get(key) is not None else ""
                mark = mark or verdict_mark(row.tests.get(key))
                if mark:
                    text = sig(text, mark)
                if row.short(key) and math.isfinite(mean):
                    text += f" (n={row.n(key)})"
                cells.append(text)
            out.append((row.label if i == 0 else "", row_name, cells))
    return out
