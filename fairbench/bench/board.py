"""Leaderboard tables built from runs: one :class:`Table` per (dataset, attribute, backbone),
one :class:`MethodRow` per method with the setting the validation-only rule chose
(:mod:`fairbench.bench.selection`), its seed-mean ± std, its paired tests against vanilla and,
on request, its bootstrap intervals. The layout of the two views (which metric in which row
and column) is read from :mod:`fairbench.metrics.catalog`; formatting and rendering are
:mod:`fairbench.bench.cells` and :mod:`fairbench.bench.render`."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fairbench.bench.runs import PARTS, RunRecord, check_single_split, part_source
from fairbench.bench.selection import Candidate, Rule, Selection, parse_rule, rule_for_task, select
from fairbench.bench.stats import Comparison, FriedmanResult, compare_to_reference, friedman
from fairbench.core.errors import FairbenchError
from fairbench.metrics import higher_is_better, is_segmentation_metric
from fairbench.metrics.catalog import (
    CI_COLUMNS,
    COMPACT_COLUMNS,
    COUNTERFACTUAL_METRIC,
    EQUIVALENCE_MARGINS,
    FAIRNESS_COLUMNS,
    PAPER_UTILITY,
    SEG_COMPACT_COLUMNS,
    SEG_FAIRNESS,
    SEG_UTILITY,
    SEGMENTATION_COUNTERPART,
)
from fairbench.run.engagement import engaged_counts

#: the two layouts of a table: a block of group, Avg and Diff rows per method, or one row
VIEWS = ("paper", "compact")


@dataclass
class MethodRow:
    label: str
    method: str
    selection: Selection
    runs: list[RunRecord]                      # the selected setting, one run per seed
    n_settings: int
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)   # key -> (mean, std)
    tests: dict[str, Comparison] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    all_runs: list[RunRecord] = field(default_factory=list)   # every setting of the method
    varying: list[str] = field(default_factory=list)  # parameters that differ between settings
    #: the seeds every cell of the table should average (the suite's, else all the table's)
    expected_seeds: list[int] = field(default_factory=list)

    def params_text(self) -> str:
        """The chosen values of the parameters that vary over the method's grid, and the
        fixed ones that differ from the method's defaults."""
        params = self.params
        shown = {k: params[k] for k in self.varying if k in params}
        try:
            from fairbench.core.params import build_params, params_to_dict
            from fairbench.run.method import get_method_class

            defaults = params_to_dict(build_params(get_method_class(self.method).Params, {}))
            fixed = {k: v for k, v in params.items()
                     if k not in shown and k in defaults and defaults[k] != v}
        except Exception:  # noqa: BLE001 - a method no longer registered: show everything
            fixed = {k: v for k, v in params.items() if k not in shown}
        text = ", ".join(f"{k}={v}" for k, v in shown.items())
        if self.n_settings > 1:
            text = (text or "settings") + f" (chosen of {self.n_settings} settings)"
        if fixed:
            text += ("; " if text else "") + "fixed " + ", ".join(f"{k}={v}" for k, v in fixed.items())
        chosen = self.chosen_in_run()
        if chosen:  # settings a method chose on validation inside each run, seed by seed
            text += ("; " if text else "") + "chosen in run (seeds " + "/".join(
                map(str, self.seeds)) + "): " + ", ".join(
                f"{k}=" + "/".join("–" if v is None else f"{v:g}" if isinstance(v, float)
                                   else str(v) for v in vals) for k, vals in chosen.items())
        return text or "defaults"

    def chosen_in_run(self) -> dict[str, list[Any]]:
        """``notes.chosen`` of each run's config.json (seed order): the values a method chose
        on validation inside the run (FairPrune's β and ratio, for example)."""
        runs = sorted(self.runs, key=lambda r: r.seed)
        per_run = [r.config.get("notes", {}).get("chosen") or {} for r in runs]
        keys = list(dict.fromkeys(k for c in per_run for k in c))
        return {k: [c.get(k) for c in per_run] for k in keys}

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.runs[0].config.get("method_params", {}))

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)

    def values(self, key: str) -> dict[int, float]:
        return {r.seed: float(r.flat(self.part).get(key, float("nan"))) for r in self.runs}

    def n(self, key: str) -> int:
        """Seeds with a finite value of ``key``."""
        return sum(math.isfinite(v) for v in self.values(key).values())

    def idle(self) -> tuple[int, int]:
        """(runs whose engagement record says the mechanism did not act, runs with a record)
        of the chosen setting (:mod:`fairbench.run.engagement`)."""
        return engaged_counts([r.config for r in self.runs])

    @property
    def mostly_idle(self) -> bool:
        """More than half of the chosen setting's runs did not engage: its numbers measure
        a no-op, and the tables say so instead of giving a verdict."""
        idle, known = self.idle()
        return known > 0 and 2 * idle > known

    def short(self, key: str) -> bool:
        """Whether ``key`` is averaged over fewer seeds than the table expects."""
        return self.n(key) < len(self.expected_seeds)

    part: str = "test"


@dataclass
class Table:
    dataset: str
    dataset_name: str
    attribute: str
    backbone: str
    split: str
    groups: list[str]
    rows: list[MethodRow]
    rule: str
    part: str
    reference: str | None
    task: str = "classification"
    #: runs of the table's methods and seeds that are not there (unfinished, failed, absent)
    missing: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        kind = " segmentation," if self.task == "segmentation" else ""
        return (f"{self.dataset} ({self.attribute}),{kind} {self.backbone}, split "
                f"{self.split[:12]}, {self.part}")

    @property
    def title_without_split(self) -> str:
        kind = " segmentation," if self.task == "segmentation" else ""
        return f"{self.dataset} ({self.attribute}),{kind} {self.backbone}, {self.part}"

    @property
    def _utility(self) -> tuple[str, ...]:
        return SEG_UTILITY if self.task == "segmentation" else PAPER_UTILITY

    @property
    def _fairness(self) -> tuple[str, ...]:
        return SEG_FAIRNESS if self.task == "segmentation" else FAIRNESS_COLUMNS

    def row_keys(self, view: str) -> list[tuple[str, dict[str, str]]]:
        """(row name, {column: metric key}) of one method block in ``view``."""
        if view == "compact":
            return [("", {k: k for k in self.columns(view)})]
        utility, fairness = self._utility, self._fairness
        out = [(g, {m: f"{g}.{m}" for m in utility}) for g in self.groups]
        out.append(("Avg", {**{m: f"Avg.{m}" for m in utility}, **{m: m for m in fairness}}))
        out.append(("Diff", {m: f"Diff.{m}" for m in utility}))
        return out

    def columns(self, view: str) -> list[str]:
        if self.task == "segmentation":
            return list(SEG_COMPACT_COLUMNS if view == "compact" else SEG_UTILITY + SEG_FAIRNESS)
        if view != "compact":
            return list(PAPER_UTILITY + FAIRNESS_COLUMNS)
        # the counterfactual flip rate beside the fairness columns where the runs carry it
        return [*COMPACT_COLUMNS, *sorted(_counterfactual_keys(self))]

    def best(self, view: str) -> set[tuple[str, str, str]]:
        """(method label, row name, column) of the best mean per column (ties: all)."""
        out = set()
        for row_name, cols in self.row_keys(view):
            if row_name in self.groups:
                continue
            for col, key in cols.items():
                direction = higher_is_better(key)
                if direction is None:
                    continue
                means = {r.label: r.stats.get(key, (math.nan, math.nan))[0] for r in self.rows
                         if not r.short(key)}
                finite = {k: v for k, v in means.items() if math.isfinite(v)}
                if len(finite) < 2:
                    continue
                target = max(finite.values()) if direction else min(finite.values())
                out.update((k, row_name, col) for k, v in finite.items()
                           if abs(v - target) <= 1e-12)
        return out


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; nan with one value) of the finite ``values``; (nan, nan)
    with none."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def setting_candidates(runs: Sequence[RunRecord]) -> list[tuple[Candidate, list[RunRecord]]]:
    """One selection candidate per parameter setting of ``runs`` (its validation metrics
    averaged over the seeds), with the setting's runs in seed order."""
    by_setting: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_setting[r.setting_key].append(r)
    out = []
    for key in sorted(by_setting):
        rs = sorted(by_setting[key], key=lambda r: r.seed)
        flats = [r.flat("val") for r in rs]
        keys = set().union(*flats)
        val = {k: mean_std(f.get(k, math.nan) for f in flats)[0] for k in keys}
        out.append((Candidate(key, dict(rs[0].config.get("method_params", {})), val,
                              rs[0].groups, len(rs), rs), rs))
    return out


def build_tables(runs: Sequence[RunRecord], *, rule: Rule | str | None = None,
                 part: str = "test", split: str | None = None, test: str = "ttest",
                 alpha: float = 0.05, where: str = "the runs",
                 method_order: Sequence[str] | None = None,
                 dataset_order: Sequence[str] | None = None,
                 expected_seeds: Sequence[int] | None = None,
                 missing_runs: dict[str, list[str]] | None = None,
                 margins: Mapping[str, float] | None = None) -> list[Table]:
    """Group ``runs`` into tables, select one setting per method, aggregate over seeds and
    test every method against vanilla (see the module docstring).

    ``expected_seeds``: the seeds every cell should average (a suite's); by default every seed
    that some run of the table has. ``missing_runs``: per dataset label, runs planned but not
    finished (listed under that dataset's tables). ``margins``: the ±δ of the equivalence
    test per metric key (fractions; default
    :data:`fairbench.metrics.catalog.EQUIVALENCE_MARGINS`; a segmentation table maps them to
    their counterparts)."""
    rule = parse_rule(rule)
    if part not in PARTS:
        raise FairbenchError(f"part must be val, test or test_true, not {part!r}")
    if split:
        runs = [r for r in runs if r.split.startswith(split)]
        if not runs:
            raise FairbenchError(f"no finished run in {where} uses a split starting with "
                                 f"{split!r}")
    groups: dict[tuple[str, str, str, str], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.dataset_label, r.task, r.config["attribute"], r.config["backbone"])].append(r)
    dorder = {d: i for i, d in enumerate(dataset_order or [])}
    tables = []
    for (dataset, task, attribute, backbone) in sorted(
            groups, key=lambda k: (dorder.get(k[0], len(dorder)), k)):
        truns = groups[(dataset, task, attribute, backbone)]
        table_rule = rule_for_task(rule, task)
        reference_rule = "best:metric=Dice" if task == "segmentation" else "best_f1"
        check_single_split(truns, where)
        by_label: dict[str, list[RunRecord]] = defaultdict(list)
        for r in truns:
            by_label[r.label].append(r)
        order = list(method_order or [])
        labels = sorted(by_label, key=lambda m: (order.index(m) if m in order else len(order),
                                                 m != "vanilla", m))
        reference_label = next((m for m in labels if by_label[m][0].config["method"] ==
                                "vanilla"), None)
        rows = _chosen_rows(by_label, labels, reference_label, table_rule, reference_rule,
                            part)
        table_seeds = sorted(set(expected_seeds) if expected_seeds is not None
                             else {r.seed for r in truns})
        missing = list((missing_runs or {}).get(dataset, []))
        for row in rows:
            row.expected_seeds = table_seeds
            absent = [s for s in table_seeds if s not in row.seeds]
            if absent:
                missing.append(f"{row.label} (chosen setting): no finished run for seed"
                               f"{'s' if len(absent) > 1 else ''} "
                               f"{', '.join(map(str, absent))}")
        table = Table(dataset, truns[0].config["dataset"], attribute, backbone, truns[0].split,
                      truns[0].groups, rows, str(table_rule), part, reference_label, task,
                      missing)
        aggregate(table, test=test, alpha=alpha, margins=_task_margins(
            EQUIVALENCE_MARGINS if margins is None else margins, task))
        tables.append(table)
    return tables


def _chosen_rows(by_label: Mapping[str, list[RunRecord]], labels: Sequence[str],
                 reference_label: str | None, table_rule: Rule, reference_rule: str,
                 part: str) -> list[MethodRow]:
    """One row per method label of a table: its setting chosen by ``table_rule`` on
    validation (vanilla's by ``reference_rule``, and the others against it)."""
    rows: list[MethodRow] = []
    ref_candidate = None
    if reference_label is not None:
        cands = setting_candidates(by_label[reference_label])
        ref_candidate = select([c for c, _ in cands], reference_rule).candidate
    for label in labels:
        cands = setting_candidates(by_label[label])
        if label == reference_label:
            sel = select([c for c, _ in cands], reference_rule)
            if len(cands) > 1:
                sel.reason = f"reference: {sel.reason}"
        else:
            sel = select([c for c, _ in cands], table_rule, reference=ref_candidate)
        chosen = sel.candidate.payload
        settings = [c.params for c, _ in cands]
        varying = [k for k in settings[0] if any(json.dumps(p.get(k), sort_keys=True) !=
                                                 json.dumps(settings[0].get(k), sort_keys=True)
                                                 for p in settings[1:])]
        rows.append(MethodRow(label, chosen[0].config["method"], sel, chosen, len(cands),
                              part=part, all_runs=list(by_label[label]), varying=varying))
    return rows


def _task_margins(margins: Mapping[str, float], task: str) -> dict[str, float]:
    if task != "segmentation":
        return dict(margins)
    return {SEGMENTATION_COUNTERPART.get(k, k): v for k, v in margins.items()}


def _counterfactual_keys(table: Table) -> set[str]:
    """The counterfactual flip rate where the table's runs carry it (synthetic data)."""
    has = any(math.isfinite(v) for row in table.rows
              for v in row.values(COUNTERFACTUAL_METRIC).values())
    return {COUNTERFACTUAL_METRIC} if has else set()


def aggregate(table: Table, *, test: str, alpha: float,
              margins: Mapping[str, float] | None = None) -> None:
    """Mean ± std of every key of both views per row, and the paired test of each summary key
    against the table's vanilla row (Holm over the methods); keys with a margin in
    ``margins`` also get the equivalence test and the seeds that would decide them."""
    keys = sorted({k for view in VIEWS for _, cols in table.row_keys(view) for k in cols.values()}
                  | _counterfactual_keys(table))
    for row in table.rows:
        for key in keys:
            row.stats[key] = mean_std(row.values(key).values())
    if table.reference is None:
        return
    sig_keys = [k for k in keys if "." not in k or k.split(".", 1)[0] in (
        "Avg", "worst", "gap", "ES_fairseg", "ES_fairmedfm") or k.startswith("Diff.")]
    for key in sig_keys:
        values = {row.label: row.values(key) for row in table.rows}
        for comp in compare_to_reference(values, table.reference, key, test=test, alpha=alpha,
                                         margin=(margins or {}).get(key)):
            next(r for r in table.rows if r.label == comp.method).tests[key] = comp


@dataclass
class Board:
    """Tables and how their rows were chosen and tested: the data a leaderboard renders."""

    tables: list[Table]
    source: str
    rule: str
    test: str = "ttest"
    alpha: float = 0.05
    missing: int = 0          # runs of the suite that are not finished
    ci_confidence: float | None = None
    ci_kind: str = "seeds+samples"
    #: ±δ of the equivalence test per metric key (fractions)
    margins: dict[str, float] = field(default_factory=lambda: dict(EQUIVALENCE_MARGINS))

    def friedman(self, metric: str = "F1", alpha: float = 0.05,
                 gate: str = "chi2") -> FriedmanResult | str:
        """Friedman test across tables (datasets) on the seed-mean ``metric`` (``gate``: the
        omnibus test that must reject before a pairwise reading, ``chi2`` or
        ``iman_davenport``); a string saying why when it cannot run (fewer than 2 tables or 3
        common methods)."""
        scores = self.scores(metric)
        if scores.shape[0] < 2:
            return "needs at least 2 datasets"
        if scores.shape[1] < 3:
            return "needs at least 3 methods present on every dataset"
        return friedman(scores, metric=metric, alpha=alpha, gate=gate)

    def scores(self, metric: str = "F1") -> pd.DataFrame:
        """Seed-mean ``metric`` per table (rows) and method (columns) common to all tables."""
        data = {}
        for t in self.tables:
            if (t.task == "segmentation") != is_segmentation_metric(metric):
                continue  # a classification metric is not ranked over segmentation tables
            data[t.title] = {row.label: mean_std(row.values(metric).values())[0]
                             for row in t.rows}
        df = pd.DataFrame.from_dict(data, orient="index")
        return df.dropna(axis=1)


def add_bootstrap(board: Board, *, keys: Sequence[str] = CI_COLUMNS,
                  n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                  kind: str = "seeds+samples") -> None:
    """Bootstrap intervals of the seed-mean of ``keys`` for every row (see
    :func:`fairbench.bench.stats.bootstrap_runs`; ``kind`` ``seeds+samples``, the default, or
    ``samples``); segmentation tables take the counterparts in :data:`fairbench.metrics.catalog.SEGMENTATION_COUNTERPART`
    (Dice, gap.Dice, worst.Dice), resampling images."""
    from fairbench.bench.stats import RunPredictions, SegmentationPredictions, bootstrap_runs

    for t in board.tables:
        segmentation = t.task == "segmentation"
        reader = SegmentationPredictions if segmentation else RunPredictions
        table_keys = [SEGMENTATION_COUNTERPART.get(k, k) for k in keys] if segmentation else keys
        source, column = part_source(t.part)
        for row in t.rows:
            preds = [reader.read(r.path, part=source, config=r.config,
                                 **({"label_column": column} if not segmentation else {}))
                     for r in row.runs]
            for key in table_keys:
                iv = bootstrap_runs(preds, key, n_resamples=n_resamples, confidence=confidence,
                                    seed=seed, kind=kind)
                row.ci[key] = (iv.low, iv.high)
    board.ci_confidence = confidence
    board.ci_kind = kind
