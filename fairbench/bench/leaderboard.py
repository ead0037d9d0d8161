"""Leaderboards from run directories: the paper layout and a compact view, as a DataFrame,
Markdown, CSV, LaTeX (booktabs) or one self-contained HTML page (:mod:`fairbench.bench.html`).

* **Tables**: one per (dataset, attribute, backbone). All runs of a table must share one split
  hash; a runs directory mixing splits is refused with an error naming them (pick one with
  ``split=``/``--split``).
* **Rows**: for each method, the parameter setting picked by a validation-only selection rule
  (:mod:`fairbench.bench.selection`; default ``fair_within_eps``); the rule and its reason are
  recorded with the row. Values are the *test* metrics of that setting, mean ± std (sample
  std, ddof 1) over its seeds, in percent.
* **Paper view** (FairQuantize Table 1): per method, one row per group, ``Avg`` (mean over
  groups) and ``Diff`` (|group 1 − group 0|; max − min with more groups); columns precision,
  recall, F1 (macro), the equalized-odds gap (``EqOddsGap``, the headline) and the papers'
  EOpp0, EOpp1, EOdd (labelled "(paper)"; between-group quantities, on the Avg row).
* **Compact view**: one row per method: F1, AUC, worst-group F1, AUC gap, ECE gap, the
  equalized-odds gap (headline) and the papers' EOdd beside it.
* **Segmentation tables** (runs with ``task = segmentation``, never mixed with
  classification): columns Dice and IoU per group, ``Avg`` and ``Diff``, with the equity-scaled
  Dice of FairSeg (``ES_fairseg``) and of FairMedFM (``ES_fairmedfm``) on the Avg row; the
  compact view shows Dice, IoU, worst-group Dice, Dice gap and both ES-Dice. Selection rules
  use Dice for F1 and the Dice gap for EOdd (:func:`fairbench.bench.selection.rule_for_task`).
* **Marks**: the best value per column in bold (Avg rows and Diff rows ranked separately in
  the paper view; a cell short of the table's seeds is never bold), and ▲ (better) or ▼
  (worse than vanilla, by the metric's direction; † for a metric without one) where a paired
  test against vanilla over at least 3 seeds (Holm-corrected over the methods) gives
  p < alpha. Fewer paired seeds or a zero-variance difference are not tested (no mark; the
  footnote says so).
* **Seeds per cell**: a cell averaged over fewer seeds than the table's (a missing, failed or
  unfinished run, or a ``null`` metric) shows ``(n=k)``; the runs missing are listed under
  the table.
* **Intervals** (``ci=True``): bootstrap intervals of the seed-mean, by default two-stage
  (seeds, then patients/samples within each seed: :func:`fairbench.bench.stats.bootstrap_runs`);
  ``ci_kind="samples"`` keeps the training seed out (test-sample variation only). The
  footnote names the kind.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fairbench.bench.board import (
    VIEWS,
    Board,
    MethodRow,
    Table,
    add_bootstrap,
    build_tables,
)
from fairbench.bench.cells import DAGGER, FORMATS, MARKS
from fairbench.bench.render import board_frame, board_latex, board_markdown, render_board
from fairbench.bench.runs import (
    PARTS,
    RunRecord,
    check_single_split,
    collect_runs,
    part_source,
    read_run,
)
from fairbench.bench.selection import parse_rule
from fairbench.bench.stats import CI_KINDS
from fairbench.core.errors import FairbenchError
from fairbench.metrics.catalog import EQUIVALENCE_MARGINS

__all__ = ["DAGGER", "FORMATS", "MARKS", "PARTS", "VIEWS", "Board", "Leaderboard", "MethodRow",
           "RunRecord", "Table", "add_bootstrap", "build_tables", "check_single_split",
           "collect_runs", "leaderboard", "part_source", "read_run"]


@dataclass
class Leaderboard(Board):
    """The tables of a suite or runs folder (:class:`fairbench.bench.board.Board`) with their
    renderings."""

    def to_frame(self, view: str = "paper") -> pd.DataFrame:
        """Tidy numbers (fractions, not percent): one row per method × table row, ``<col>``
        (mean), ``<col>_std``, ``<col>_p_holm`` and, with CIs, ``<col>_ci_low/high``."""
        return board_frame(self, view)

    def render(self, fmt: str = "md", view: str = "paper") -> str:
        """Markdown, CSV or LaTeX (:mod:`fairbench.bench.render`)."""
        return render_board(self, fmt, view)

    def to_markdown(self, view: str = "paper") -> str:
        return board_markdown(self, view)

    def to_latex(self, view: str = "paper", *, split_in_caption: bool = False) -> str:
        """booktabs tables (:func:`fairbench.bench.render.board_latex`)."""
        return board_latex(self, view, split_in_caption=split_in_caption)


def leaderboard(source: str | Path, *, rule: str | None = None, part: str = "test",
                split: str | None = None, test: str = "ttest", alpha: float = 0.05,
                runs_dir: str | None = None, data_roots: dict[str, str] | None = None,
                ci: bool = False, n_resamples: int = 1000, confidence: float = 0.95,
                seed: int = 0, ci_kind: str = "seeds+samples",
                labels: str = "observed",
                margins: Mapping[str, float] | None = None) -> Leaderboard:
    """The leaderboard of a suite file (only its runs; its rule unless ``rule``) or of every
    finished run under a runs directory. ``labels="true"`` shows the test metrics against
    the true labels of synthetic data (``test_true``; selection still reads validation
    metrics on observed labels only). ``margins``: the equivalence test's ±δ per metric
    (fractions; default the suite's ``equivalence_margin``, else
    :data:`fairbench.metrics.catalog.EQUIVALENCE_MARGINS`)."""
    if labels not in ("observed", "true"):
        raise FairbenchError(f"unknown labels {labels!r}; use observed or true")
    if labels == "true":
        if part != "test":
            raise FairbenchError("true labels are reported for the test part only; use "
                                 "--part test with --labels true")
        part = "test_true"
    if test not in ("ttest", "wilcoxon"):
        raise FairbenchError(f"unknown paired test {test!r}; use ttest or wilcoxon")
    if not 0 < alpha < 1:
        raise FairbenchError(f"alpha must be between 0 and 1, not {alpha}")
    if ci_kind not in CI_KINDS:
        raise FairbenchError(f"unknown interval kind {ci_kind!r}; use {' or '.join(CI_KINDS)}")
    src = Path(source).expanduser()
    if src.is_file():
        from fairbench.bench.suite import load_suite
        from fairbench.bench.sweep import plan

        suite = load_suite(src, runs_dir=runs_dir, data_roots=data_roots)
        planned = plan(suite)
        runs = [read_run(p.run_dir, verified=p.finished, label=p.planned.method,
                         dataset_label=p.planned.dataset)
                for p in planned if (p.finished or p.damaged) and p.run_dir is not None]
        missing = sum(not p.finished for p in planned)
        not_finished: dict[str, list[str]] = defaultdict(list)
        for p in planned:
            if not p.finished:
                not_finished[p.planned.dataset].append(f"not finished: {p.label}")
        if not runs:
            raise FairbenchError(f"no finished run of suite {str(src)!r} in "
                                 f"{suite.runs_dir!r}; run `fairbench sweep {source}` first")
        chosen = parse_rule(rule) if rule else suite.rule
        used = dict(margins if margins is not None else suite.margins or EQUIVALENCE_MARGINS)
        tables = build_tables(runs, rule=chosen, part=part, split=split, test=test,
                              alpha=alpha, where=f"suite {str(src)!r}",
                              method_order=[m.label for m in suite.methods],
                              dataset_order=[d.label for d in suite.datasets],
                              expected_seeds=suite.seeds, missing_runs=not_finished,
                              margins=used)
        board = Leaderboard(tables, str(src), str(chosen), test, alpha, missing, margins=used)
    elif src.is_dir():
        runs = collect_runs(src)
        if not runs:
            raise FairbenchError(f"no finished run under {str(src)!r}")
        chosen = parse_rule(rule)
        used = dict(margins if margins is not None else EQUIVALENCE_MARGINS)
        tables = build_tables(runs, rule=chosen, part=part, split=split, test=test,
                              alpha=alpha, where=f"runs directory {str(src)!r}", margins=used)
        board = Leaderboard(tables, str(src), str(chosen), test, alpha, margins=used)
    else:
        raise FairbenchError(f"{str(source)!r} is neither a suite file nor a runs directory")
    if ci:
        add_bootstrap(board, n_resamples=n_resamples, confidence=confidence, seed=seed,
                      kind=ci_kind)
    return board
