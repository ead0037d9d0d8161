"""The seeds a suite needs to decide its cells, from its finished pilot runs.

For every method × table (dataset or scenario) × metric with an equivalence margin, the
leaderboard's comparison with vanilla (:func:`fairbench.bench.stats.compare_to_reference`)
gives its verdict at the seeds run so far and, when undecided, the seeds at which the observed
mean and sd of the paired differences would decide it
(:func:`fairbench.bench.equivalence.seeds_to_decide`). The projected wall time of the extra
seeds is read from the runs' own records (``config.json`` ``seconds.total``, the mean over a
method's finished runs): a table's plan runs vanilla and each method up to the most seeds any
of its cells needs (cells no number of seeds up to the ceiling decides are left out of it, and
so are the cells of a method whose runs mostly did not engage its mechanism: more seeds of a
no-op decide nothing about the method; they read "not engaged" with the ∅k/n count).
The projection assumes the pilot's machine and load; it is a plan, not a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fairbench.bench.board import Board, MethodRow, Table
from fairbench.bench.cells import idle_mark
from fairbench.bench.equivalence import MAX_SEEDS
from fairbench.metrics.catalog import MATRIX_COLUMNS
from fairbench.metrics.catalog import title as column_title


@dataclass
class PlanCell:
    """One method × table × metric: where it stands and what deciding it would take."""

    table: str
    method: str
    metric: str
    n_seeds: int
    mean_diff: float
    sd_diff: float
    verdict: str
    seeds_needed: int | None


@dataclass
class TablePlan:
    """A table's extra seeds: per method (vanilla included) the seeds to reach and the
    projected seconds."""

    table: str
    seeds: dict[str, int]
    extra_seconds: dict[str, float]

    @property
    def seconds(self) -> float:
        return sum(self.extra_seconds.values())


def _seconds_per_run(row: MethodRow) -> float:
    times = [float((r.config.get("seconds") or {}).get("total", math.nan)) for r in row.runs]
    finite = [t for t in times if math.isfinite(t)]
    return sum(finite) / len(finite) if finite else math.nan


def plan_cells(board: Board, metrics: Sequence[str] = MATRIX_COLUMNS) -> list[PlanCell]:
    """Every comparison with a margin of ``metrics`` in ``board``."""
    out = []
    for t in board.tables:
        for row in t.rows:
            for metric in metrics:
                comp = row.tests.get(metric)
                if comp is None or comp.margin is None:
                    continue
                if row.mostly_idle:  # a no-op's cell: no seeds would decide the method
                    out.append(PlanCell(t.dataset, row.label, metric, comp.n_pairs,
                                        comp.mean_diff, comp.sd_diff,
                                        f"not engaged ({idle_mark(row)})", None))
                    continue
                out.append(PlanCell(t.dataset, row.label, metric, comp.n_pairs, comp.mean_diff,
                                    comp.sd_diff, comp.verdict or "not testable",
                                    comp.seeds_needed))
    return out


def plan_tables(board: Board, cells: Sequence[PlanCell]) -> list[TablePlan]:
    """Per table, the seeds vanilla and each method need to decide every decidable cell."""
    plans = []
    for t in board.tables:
        rows = {r.label: r for r in t.rows}
        need: dict[str, int] = {}
        for c in cells:
            if c.table == t.dataset and c.verdict == "undecided" and c.seeds_needed:
                need[c.method] = max(need.get(c.method, 0), c.seeds_needed)
        if need and t.reference is not None:
            need[t.reference] = max(need.values())
        extra = {m: max(0, k - len(rows[m].runs)) * _seconds_per_run(rows[m])
                 for m, k in need.items() if m in rows}
        plans.append(TablePlan(t.dataset, need, extra))
    return plans


def render_plan(board: Board, metrics: Sequence[str] = MATRIX_COLUMNS) -> str:
    """The plan as Markdown: one table of cells per board table, then its projected time."""
    cells = plan_cells(board, metrics)
    if not cells:
        return ("No comparison with vanilla has a margin: the suite needs vanilla and at "
                "least 3 finished seeds per method.\n")
    out = []
    for t, plan in zip(board.tables, plan_tables(board, cells)):
        mine = [c for c in cells if c.table == t.dataset]
        if not mine:
            continue
        out += [f"### {_title(t)}", "",
                "| Method | Metric | seeds | Δ (points) | sd (points) | verdict | seeds to decide |",
                "|:--|:--|--:|--:|--:|:--|--:|"]
        for c in mine:
            need = ("–" if c.verdict != "undecided" else
                    str(c.seeds_needed) if c.seeds_needed else f">{MAX_SEEDS}")
            out.append(f"| {c.method} | {column_title(c.metric)} | {c.n_seeds} | "
                       f"{c.mean_diff * 100:+.2f} | {c.sd_diff * 100:.2f} | {c.verdict} | "
                       f"{need} |")
        decided = sum(c.verdict not in ("undecided", "not testable")
                      and not c.verdict.startswith("not engaged") for c in mine)
        out += ["", f"Decided {decided} of {len(mine)} cells."]
        if plan.seeds:
            parts = ", ".join(f"{m} to {k} seeds" for m, k in plan.seeds.items())
            secs = plan.seconds
            when = (f"about {secs / 60:.1f} min of run time more" if math.isfinite(secs)
                    else "run time unknown (runs without recorded seconds)")
            out.append(f"To decide the decidable rest: {parts}; {when} (the runs' recorded "
                       "mean wall time per seed, same machine and load).")
        out.append("")
    total = sum(p.seconds for p in plan_tables(board, cells) if math.isfinite(p.seconds))
    out.append("Margins (points): " + ", ".join(
        f"{column_title(k)} ±{v * 100:g}" for k, v in board.margins.items())
        + f". Projected extra run time over all tables: {total / 60:.1f} min.")
    return "\n".join(out).rstrip() + "\n"


def _title(t: Table) -> str:
    return t.title_without_split
