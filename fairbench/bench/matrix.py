r"""The mechanism matrix: which method changes which bias, against vanilla, per scenario.

A suite with one dataset entry per scenario (``benchmarks/mechanisms.toml``: synthderm's
isolated bias mechanisms) gives one leaderboard table per scenario. The matrix puts them
side by side: **rows** methods, **columns** scenarios, one **panel** per metric (by default
the headline equalized-odds gap ``EqOddsGap`` and the worst-group F1 ``worst.F1``, and on
data with counterfactual twins their prediction flip rate ``flip_rate``), each cell
the paired change of the method's selected setting against vanilla on the test part,

.. math:: \Delta = \frac1S \sum_{s=1}^{S} \big(\theta_{m,s} - \theta_{v,s}\big),

over the :math:`S` seeds both have (``labels="true"``: against the true labels of synthetic
data, ``test_true``; ``"observed"``: the observed labels a user of real data sees), with

* **interval**: a two-stage *paired* percentile bootstrap of :math:`\Delta`: each resample
  draws :math:`S` seeds with replacement (a method's run and vanilla's run of a seed go
  together), then for each drawn seed the test patients (images where there are no patient
  ids) with replacement, one draw shared by the method's and vanilla's run of that seed, and
  records :math:`\frac1S\sum_j \theta_{m,s_j}(I_j) - \theta_{v,s_j}(I_j)`
  (:func:`fairbench.metrics.two_stage_bootstrap_ci`); so the interval holds seed-to-seed
  and test-set variation, and the test-set part cancels where both models err alike;
* **mark**: ▲ (better than vanilla, by the metric's direction) or ▼ (worse) from the
  leaderboard's paired test over seeds (t-test by default), Holm-corrected over the methods of
  the scenario, p < alpha, only from at least 3 paired seeds whose differences vary; a cell
  with fewer paired seeds than the suite's shows ``(n=k)``.

Every setting choice stays the leaderboard's: validation metrics on observed labels only.
:func:`plot_matrix` draws the panels as annotated heatmaps (diverging colours centred on 0,
blue where the method is better than vanilla, red where worse, bold text and a mark where the
cell is significant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.bench.board import Table
from fairbench.bench.cells import IDLE, MARKS, tex_escape, tex_mark, verdict_mark
from fairbench.bench.leaderboard import Leaderboard
from fairbench.bench.runs import part_source
from fairbench.bench.stats import Comparison
from fairbench.core.errors import FairbenchError
from fairbench.metrics import higher_is_better
from fairbench.metrics.catalog import COUNTERFACTUAL_METRIC, MATRIX_COLUMNS
from fairbench.metrics.catalog import title as column_title

#: the matrix's default panels: the headline fairness measure and the worst group's F1
MATRIX_METRICS = MATRIX_COLUMNS
LABELS = ("true", "observed")


@dataclass
class Cell:
    """One method × scenario × metric: the paired change against vanilla."""

    delta: float
    low: float = math.nan
    high: float = math.nan
    n_pairs: int = 0
    expected: int = 0
    p_holm: float = math.nan
    direction: str | None = None
    untestable: str | None = None
    #: the comparison's verdict (better, worse, equivalent, undecided; None: no margin or
    #: not testable), its equivalence p-value, minimal detectable effect and seeds needed
    comparison: Comparison | None = None
    #: (runs that did not engage, runs with an engagement record) of the method's setting
    idle: tuple[int, int] = (0, 0)

    @property
    def mostly_idle(self) -> bool:
        return self.idle[1] > 0 and 2 * self.idle[0] > self.idle[1]

    @property
    def short(self) -> bool:
        return self.n_pairs < self.expected

    @property
    def verdict(self) -> str | None:
        return self.comparison.verdict if self.comparison is not None else None

    @property
    def decided(self) -> bool:
        return not self.mostly_idle and self.verdict in ("better", "worse", "higher", "lower",
                                                         "equivalent")


@dataclass
class LeakageCell:
    """The leakage probe's balanced accuracy of one method on one scenario, over seeds, and
    its paired test against vanilla (no direction: less leakage is not better by itself)."""

    mean: float
    std: float
    n: int
    p_holm: float = math.nan
    differs: bool = False
    representation: str = ""


@dataclass
class Matrix:
    """The matrix of one leaderboard (see the module docstring)."""

    source: str
    labels: str
    part: str
    metrics: list[str]
    scenarios: list[str]
    methods: list[str]
    cells: dict[tuple[str, str, str], Cell]              # (metric, method, scenario)
    vanilla: dict[tuple[str, str], tuple[float, float]]  # (metric, scenario) -> mean, std
    alpha: float = 0.05
    test: str = "ttest"
    confidence: float | None = None
    n_resamples: int = 0
    missing: list[str] = field(default_factory=list)
    #: (method or "vanilla", scenario) -> the leakage probe's balanced accuracy over seeds
    leakage: dict[tuple[str, str], LeakageCell] = field(default_factory=dict)

    # -- frames -------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per metric × method × scenario (fractions, not percent)."""
        rows = []
        for metric in self.metrics:
            for method in self.methods:
                for scen in self.scenarios:
                    cell = self.cells.get((metric, method, scen))
                    v_mean, v_std = self.vanilla.get((metric, scen), (math.nan, math.nan))
                    rows.append({
                        "metric": metric, "labels": self.labels, "method": method,
                        "scenario": scen, "vanilla_mean": v_mean, "vanilla_std": v_std,
                        "delta": cell.delta if cell else math.nan,
                        "ci_low": cell.low if cell else math.nan,
                        "ci_high": cell.high if cell else math.nan,
                        "n_pairs": cell.n_pairs if cell else 0,
                        "p_holm": cell.p_holm if cell else math.nan,
                        "vs_vanilla": (cell.direction or "") if cell else "",
                        "verdict": ("not engaged" if cell and cell.mostly_idle else
                                    (cell.verdict or "") if cell else ""),
                        "runs_not_engaged": cell.idle[0] if cell else 0,
                        "p_equivalence": _attr(cell, "p_equivalence"),
                        "mde": _attr(cell, "mde"),
                        "seeds_needed": (cell.comparison.seeds_needed
                                         if cell and cell.comparison else None),
                        "untestable": (cell.untestable or "") if cell else "missing"})
        for (method, scen), leak in self.leakage.items():
            ref = self.leakage.get(("vanilla", scen))
            rows.append({"metric": "leakage.balanced_accuracy", "labels": "", "method": method,
                         "scenario": scen, "vanilla_mean": ref.mean if ref else math.nan,
                         "vanilla_std": ref.std if ref else math.nan, "value": leak.mean,
                         "value_std": leak.std, "n_pairs": leak.n, "p_holm": leak.p_holm,
                         "vs_vanilla": "differs" if leak.differs else "",
                         "representation": leak.representation})
        return pd.DataFrame.from_records(rows)

    # -- text -----------------------------------------------------------------------------------
    def render(self, fmt: str = "md") -> str:
        if fmt == "md":
            return self.to_markdown()
        if fmt == "csv":
            return self.to_frame().to_csv(index=False)
        if fmt == "latex":
            return self.to_latex()
        raise FairbenchError(f"unknown format {fmt!r}; use md, csv or latex")

    def _cell_text(self, cell: Cell | None, *, mark: Any = lambda s, m: s + m) -> str:
        if cell is None or not math.isfinite(cell.delta):
            return "–"
        text = f"{cell.delta * 100:+.2f}"
        if math.isfinite(cell.low):
            text += f" [{cell.low * 100:+.2f}, {cell.high * 100:+.2f}]"
        symbol = _symbol(cell)
        if symbol:
            text = mark(text, symbol)
        if cell.short:
            text += f" (n={cell.n_pairs})"
        return text

    def _vanilla_text(self, metric: str, scen: str) -> str:
        mean, std = self.vanilla.get((metric, scen), (math.nan, math.nan))
        if not math.isfinite(mean):
            return "–"
        return f"{mean * 100:.2f}" + (f" ± {std * 100:.2f}" if math.isfinite(std) else "")

    def title(self, metric: str) -> str:
        name = column_title(metric)
        labels = "true labels" if self.labels == "true" else "observed labels"
        return f"{name}: change against vanilla ({labels}, test part)"

    def to_markdown(self) -> str:
        out = []
        for metric in self.metrics:
            out.append(f"### {self.title(metric)}\n")
            out.append("| Method | " + " | ".join(self.scenarios) + " |")
            out.append("|:--|" + "|".join(["--:"] * len(self.scenarios)) + "|")
            out.append("| vanilla (value) | " + " | ".join(
                self._vanilla_text(metric, s) for s in self.scenarios) + " |")
            for method in self.methods:
                cells = [self._cell_text(self.cells.get((metric, method, s)))
                         for s in self.scenarios]
                out.append(f"| {method.replace('_', chr(92) + '_')} | " + " | ".join(cells)
                           + " |")
            out.append("")
        if self.leakage:
            out.extend(self.leakage_markdown())
        out.extend(self.notes())
        return "\n".join(out).rstrip() + "\n"

    def _leak_text(self, cell: LeakageCell | None) -> str:
        if cell is None or not math.isfinite(cell.mean):
            return "–"
        text = f"{cell.mean:.3f}" + (f" ± {cell.std:.3f}" if math.isfinite(cell.std) else "")
        return text + ("†" if cell.differs else "")

    def leakage_markdown(self) -> list[str]:
        out = [("### Leakage: balanced accuracy of a linear probe of the attribute (chance "
                "0.5)\n"), "| Method | " + " | ".join(self.scenarios) + " | probed |",
               "|:--|" + "|".join(["--:"] * len(self.scenarios)) + "|:--|"]
        for method in ["vanilla", *self.methods]:
            cells = [self._leak_text(self.leakage.get((method, s))) for s in self.scenarios]
            rep = next((c.representation for s in self.scenarios
                        if (c := self.leakage.get((method, s))) is not None), "")
            out.append(f"| {method.replace('_', chr(92) + '_')} | " + " | ".join(cells)
                       + f" | {rep} |")
        out += ["", ("Leakage: probe fit on the train part's representations, scored on the "
                     f"test part, mean ± std over seeds; †: differs from vanilla (paired "
                     f"{self.test} over seeds, Holm-corrected over the methods of the "
                     f"scenario, p < {self.alpha:g})."), ""]
        return out

    def notes(self) -> list[str]:
        directions = ", ".join(
            f"{column_title(m)} {'higher' if higher_is_better(m) else 'lower'} is "
            "better" for m in self.metrics if higher_is_better(m) is not None)
        lines = [
            ("Cells: method − vanilla in points, mean over the seeds both have "
             f"({directions}); the vanilla row gives vanilla's value, mean ± std over seeds.")]
        if self.confidence:
            lines.append(
                f"[low, high]: {self.confidence:.0%} two-stage paired bootstrap ({self.n_resamples} "
                "resamples: seeds, then test patients/images within each seed, one draw shared "
                "by the method's and vanilla's run of the seed).")
        lines.append(
            f"{MARKS['better']} / {MARKS['worse']}: better / worse than vanilla (paired "
            f"{self.test} over seeds, Holm-corrected over the methods of the scenario, "
            f"p < {self.alpha:g}); a comparison needs at least 3 paired seeds whose "
            "differences vary. (n=k): k paired seeds only. The mark tests the seeds only; "
            "the interval also holds test-set variation, so the two can disagree.")
        lines.extend(self.decision_notes())
        lines.append("Settings chosen on validation with observed labels only.")
        if self.missing:
            lines.append("Missing runs:")
            lines.extend(f"- {m}" for m in self.missing)
        return lines

    def decided(self, metric: str) -> tuple[int, int]:
        """(decided cells, cells with a verdict) of one panel: ▲, ▼ or ≈ against all."""
        cells = [c for (m, _, _), c in self.cells.items() if m == metric and c.verdict]
        return sum(c.decided for c in cells), len(cells)

    def decision_notes(self) -> list[str]:
        """What ≈ and ?k mean, and how many cells of each panel are decided, with the range
        of minimal detectable effects of the undecided ones."""
        if not any(c.verdict for c in self.cells.values()):
            return []
        margins = sorted({(m, c.comparison.margin) for (m, _, _), c in self.cells.items()
                          if c.comparison is not None and c.comparison.margin is not None})
        out = [(f"{MARKS['equivalent']}: within ±δ of vanilla (paired two one-sided t-tests, "
                "Holm-corrected over the methods, p < " f"{self.alpha:g}; δ in points: "
                + ", ".join(f"{column_title(m)} {d * 100:g}" for m, d in margins)
                + "); ?k: undecided, k seeds would decide the cell at its observed mean and "
                  "variance (80 % power at the Holm level; ?>N: not within N).")]
        idle = sorted({m for (_, m, _), c in self.cells.items() if c.mostly_idle})
        if idle:
            out.append(f"{IDLE}k/n: k of the n runs did not engage the method's mechanism "
                       "(config.json engagement): the cell measures a no-op and gets no "
                       "verdict; methods with such cells: " + ", ".join(idle) + ".")
        for metric in self.metrics:
            decided, total = self.decided(metric)
            if not total:
                continue
            mdes = [c.comparison.mde for (m, _, _), c in self.cells.items()
                    if m == metric and c.verdict == "undecided" and c.comparison is not None
                    and math.isfinite(c.comparison.mde)]
            line = f"{column_title(metric)}: {decided} of {total} cells decided"
            if mdes:
                line += (f"; the undecided cells' minimal detectable effects "
                         f"{min(mdes) * 100:.2f} to {max(mdes) * 100:.2f} points")
            out.append(line + ".")
        return out

    def to_latex(self) -> str:
        out = ["% requires \\usepackage{booktabs,amssymb}"]
        for metric in self.metrics:
            out += ["\\begin{table}[t]", "\\centering", "\\small",
                    (f"\\caption{{{tex_escape(self.title(metric))}. Method $-$ vanilla in points, "
                     "mean over paired seeds"
                     + (f", with the {self.confidence:.0%} two-stage paired bootstrap "
                        "interval".replace("%", "\\%") if self.confidence else "")
                     + "; $^\\blacktriangle$/$^\\blacktriangledown$: better/worse than "
                     f"vanilla (paired {tex_escape(self.test)}, Holm, $p<{self.alpha:g}$).}}"),
                    f"\\begin{{tabular}}{{l{'r' * len(self.scenarios)}}}", "\\toprule",
                    " & ".join(["Method"] + [tex_escape(s) for s in self.scenarios]) + " \\\\",
                    "\\midrule",
                    " & ".join(["vanilla (value)"] + [
                        self._vanilla_text(metric, s).replace(" ± ", " $\\pm$ ")
                        for s in self.scenarios]) + " \\\\", "\\midrule"]
            for method in self.methods:
                cells = [self._cell_text(self.cells.get((metric, method, s)),
                                         mark=lambda t, m: t + tex_mark(m))
                         for s in self.scenarios]
                out.append(" & ".join([tex_escape(method)] + cells) + " \\\\")
            out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        return "\n".join(out)


# -- building -----------------------------------------------------------------------------
def paired_interval(method_preds: Sequence[Any], vanilla_preds: Sequence[Any], key: str, *,
                    n_resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> tuple[float, float]:
    """The two-stage paired bootstrap interval of the mean difference of ``key`` (see the
    module docstring); ``*_preds[i]`` are the runs of the i-th paired seed
    (:class:`fairbench.bench.stats.RunPredictions`), all on the same test samples."""
    from fairbench.metrics import two_stage_bootstrap_ci

    if len(method_preds) != len(vanilla_preds) or not method_preds:
        raise FairbenchError("a paired interval needs one vanilla run per method run")
    ids = vanilla_preds[0].sample_id
    for r in (*method_preds, *vanilla_preds):
        if not np.array_equal(r.sample_id, ids):
            raise FairbenchError("runs compared with vanilla must share their test samples")

    def diff(unit: int, idx: np.ndarray) -> float:
        return method_preds[unit].metric(key, idx) - vanilla_preds[unit].metric(key, idx)

    iv = two_stage_bootstrap_ci(diff, len(method_preds), len(ids), n_resamples=n_resamples,
                                confidence=confidence, seed=seed,
                                clusters=vanilla_preds[0].clusters)
    return iv.low, iv.high


def _reader(table: Table) -> Any:
    from fairbench.bench.stats import RunPredictions

    part, column = part_source(table.part)

    def read(run: Any) -> Any:
        return RunPredictions.read(run.path, part=part, config=run.config, label_column=column)

    return read


def _symbol(cell: Cell) -> str:
    """A cell's mark: ``∅k/n`` when its runs mostly did not engage (no verdict), else the
    verdict's (▲/▼/≈/?k) or the difference test's direction."""
    if cell.mostly_idle:
        return f"{IDLE}{cell.idle[0]}/{cell.idle[1]}"
    return verdict_mark(cell.comparison) or (MARKS[cell.direction] if cell.direction else "")


def _attr(cell: Cell | None, name: str) -> float:
    comp = cell.comparison if cell is not None else None
    return getattr(comp, name) if comp is not None else math.nan


def build_matrix(board: Leaderboard, *, metrics: Sequence[str] | None = None,
                 ci: bool = True, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> Matrix:
    """The matrix of ``board``'s classification tables (one per scenario; see the module
    docstring). Its tests and selections are the leaderboard's; intervals are added here.
    ``metrics``: the panels, by default :data:`MATRIX_METRICS` and, where every scenario's
    runs carry it, the counterfactual twins' flip rate."""
    tables = [t for t in board.tables if t.task == "classification"]
    if metrics is None:
        metrics = MATRIX_METRICS + ((COUNTERFACTUAL_METRIC,) if tables and all(
            COUNTERFACTUAL_METRIC in r.tests for t in tables for r in t.rows
            if r.label != t.reference) else ())
    if not tables:
        raise FairbenchError("the mechanism matrix needs classification runs")
    if any(t.reference is None for t in tables):
        lacking = [t.dataset for t in tables if t.reference is None]
        raise FairbenchError(f"the mechanism matrix compares with vanilla, which has no "
                             f"finished run on {', '.join(lacking)}; run the suite's vanilla "
                             "runs first")
    scenarios = [t.dataset for t in tables]
    if len(set(scenarios)) != len(scenarios):
        raise FairbenchError("the mechanism matrix needs one table per scenario (one "
                             "attribute and backbone per dataset entry)")
    methods: list[str] = []
    for t in tables:
        for row in t.rows:
            if row.label != t.reference and row.label not in methods:
                methods.append(row.label)
    part = tables[0].part
    cells: dict[tuple[str, str, str], Cell] = {}
    vanilla: dict[tuple[str, str], tuple[float, float]] = {}
    missing: list[str] = []
    for t in tables:
        ref = next(r for r in t.rows if r.label == t.reference)
        read = _reader(t) if ci else None
        cache: dict[str, Any] = {}

        def preds(run: Any, cache: dict[str, Any] = cache, read: Any = read) -> Any:
            key = str(run.path)
            if key not in cache:
                cache[key] = read(run)
            return cache[key]

        for metric in metrics:
            vanilla[(metric, t.dataset)] = ref.stats.get(metric, (math.nan, math.nan))
            ref_values = ref.values(metric)
            for row in t.rows:
                if row.label == t.reference:
                    continue
                values = row.values(metric)
                seeds = sorted(s for s in set(values) & set(ref_values)
                               if math.isfinite(values[s]) and math.isfinite(ref_values[s]))
                comp = row.tests.get(metric)
                cell = Cell(float(np.mean([values[s] - ref_values[s] for s in seeds]))
                            if seeds else math.nan, n_pairs=len(seeds),
                            expected=len(row.expected_seeds),
                            p_holm=comp.p_holm if comp else math.nan,
                            direction=comp.direction if comp else None,
                            untestable=comp.untestable if comp else None, comparison=comp,
                            idle=row.idle())
                if ci and seeds:
                    by_seed_m = {r.seed: r for r in row.runs}
                    by_seed_v = {r.seed: r for r in ref.runs}
                    cell.low, cell.high = paired_interval(
                        [preds(by_seed_m[s]) for s in seeds],
                        [preds(by_seed_v[s]) for s in seeds], metric,
                        n_resamples=n_resamples, confidence=confidence, seed=seed)
                cells[(metric, row.label, t.dataset)] = cell
        missing.extend(f"{t.dataset}: {m}" for m in t.missing)
    matrix = Matrix(board.source, "true" if part == "test_true" else "observed", part,
                    list(metrics), scenarios, methods, cells, vanilla, board.alpha, board.test,
                    confidence if ci else None, n_resamples if ci else 0, missing)
    for t in tables:
        matrix.leakage.update(_leakage_cells(t, board.test, board.alpha))
    return matrix


def _leakage_cells(table: Table, test: str, alpha: float
                   ) -> dict[tuple[str, str], LeakageCell]:
    """The probe's balanced accuracy per method of ``table`` (``metrics.json`` ``leakage``),
    with a paired test of each method against vanilla, Holm-corrected over the methods."""
    from fairbench.bench.stats import compare_to_reference

    values: dict[str, dict[int, float]] = {}
    reps: dict[str, str] = {}
    for row in table.rows:
        values[row.label] = {}
        for r in row.runs:
            leak = r.metrics.get("leakage") or {}
            if "balanced_accuracy" in leak:
                values[row.label][r.seed] = float(leak["balanced_accuracy"])
                reps[row.label] = str(leak.get("representation", ""))
    if not any(values.values()):
        return {}
    comps = {c.method: c for c in compare_to_reference(values, str(table.reference),
                                                         "leakage", test=test, alpha=alpha)}
    out = {}
    for row in table.rows:
        v = [x for x in values[row.label].values() if math.isfinite(x)]
        if not v:
            continue
        comp = comps.get(row.label)
        out[("vanilla" if row.label == table.reference else row.label, table.dataset)] = \
            LeakageCell(float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                        len(v), comp.p_holm if comp else math.nan,
                        bool(comp and comp.significant), reps.get(row.label, ""))
    return out


# -- the figure -----------------------------------------------------------------------------
def plot_matrix(matrix: Matrix, out: str | Path) -> list[Path]:
    """Annotated heatmaps, one panel per metric: colour = the change against vanilla oriented
    so that blue is better and red worse (diverging, centred on 0, symmetric range per panel),
    text = the change in points with its mark; significant cells in bold. PNG and PDF."""
    from fairbench.bench.plots import save

    return save(matrix_figure(matrix), out)


def matrix_figure(matrix: Matrix) -> Any:
    """The figure of :func:`plot_matrix` (not saved)."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(matrix.methods), len(matrix.scenarios)
    fig, axes = plt.subplots(1, len(matrix.metrics),
                             figsize=(1.2 + 1.25 * n_cols * len(matrix.metrics),
                                      1.2 + 0.42 * n_rows), squeeze=False)
    for ax, metric in zip(axes[0], matrix.metrics):
        sign = 1.0 if higher_is_better(metric) else -1.0
        delta = np.full((n_rows, n_cols), np.nan)
        for i, method in enumerate(matrix.methods):
            for j, scen in enumerate(matrix.scenarios):
                cell = matrix.cells.get((metric, method, scen))
                if cell is not None:
                    delta[i, j] = cell.delta * 100
        finite = np.abs(delta[np.isfinite(delta)])
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        ax.imshow(sign * delta, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        for i, method in enumerate(matrix.methods):
            for j, scen in enumerate(matrix.scenarios):
                cell = matrix.cells.get((metric, method, scen))
                if cell is None or not math.isfinite(cell.delta):
                    ax.text(j, i, "–", ha="center", va="center", fontsize=7)
                    continue
                text = f"{cell.delta * 100:+.1f}" + _symbol(cell)
                strong = abs(cell.delta * 100) > 0.6 * vmax
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        fontweight="bold" if cell.direction and not cell.mostly_idle
                        else "normal",
                        color="white" if strong else "black")
        ax.set_xticks(range(n_cols), matrix.scenarios, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(n_rows), matrix.methods, fontsize=8)
        labels = "true" if matrix.labels == "true" else "observed"
        ax.set_title(f"Δ {column_title(metric)} vs vanilla\n({labels} labels; "
                     "blue = better)", fontsize=9)
    fig.tight_layout()
    return fig
