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

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.bench.selection import Candidate, Rule, Selection, parse_rule, rule_for_task, select
from fairbench.bench.stats import (
    CI_KINDS,
    MIN_PAIRS,
    Comparison,
    FriedmanResult,
    compare_to_reference,
    friedman,
)
from fairbench.core.errors import FairbenchError
from fairbench.core.files import config_hash
from fairbench.data.dataset import TRUE_LABEL_COLUMN
from fairbench.metrics import HEADLINE_FAIRNESS, flatten, higher_is_better, is_segmentation_metric
from fairbench.run.store import NOT_RUN_FOLDERS, check_run, read_run_files

UTILITY = ("precision", "recall", "F1")
#: the dermatology papers' definitions, shown beside the headline for comparison
PAPER_FAIRNESS = ("EOpp0", "EOpp1", "EOdd")
FAIRNESS = (HEADLINE_FAIRNESS, *PAPER_FAIRNESS)
PAPER_COLUMNS = UTILITY + FAIRNESS
COLUMN_TITLES = {"precision": "Precision", "recall": "Recall", "F1": "F1",
                 "EqOddsGap": "EqOdds gap", "EqOddsGap_maxclass": "EqOdds gap (worst class)",
                 "EOpp0": "EOpp0 (paper)", "EOpp1": "EOpp1 (paper)", "EOdd": "EOdd (paper)",
                 "AUC": "AUC", "worst.F1": "Worst-group F1", "gap.AUC": "AUC gap",
                 "gap.ECE": "ECE gap"}
COMPACT_KEYS = ("F1", "AUC", "worst.F1", "gap.AUC", "gap.ECE", HEADLINE_FAIRNESS, "EOdd")
SEG_UTILITY = ("Dice", "IoU")
SEG_FAIRNESS = ("ES_fairseg.Dice", "ES_fairmedfm.Dice")
SEG_COMPACT_KEYS = ("Dice", "IoU", "worst.Dice", "gap.Dice", "ES_fairseg.Dice",
                    "ES_fairmedfm.Dice")
COLUMN_TITLES.update({"worst.Dice": "Worst-group Dice", "gap.Dice": "Dice gap",
                      "ES_fairseg.Dice": "ES-Dice (FairSeg)",
                      "ES_fairmedfm.Dice": "ES-Dice (FairMedFM)"})
VIEWS = ("paper", "compact")
FORMATS = ("md", "csv", "latex")
DAGGER = "†"
#: significance marks: better / worse than vanilla; † for a metric without a direction
MARKS = {"better": "▲", "worse": "▼", "higher": DAGGER, "lower": DAGGER}


#: metrics.json parts a table can show: validation, test, test against true labels
PARTS = ("val", "test", "test_true")


def part_source(part: str) -> tuple[str, str]:
    """Where a table part's per-sample rows are: (predictions.csv part, label column)."""
    return ("test", TRUE_LABEL_COLUMN) if part == "test_true" else (part, "label")


# -- runs ---------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """A finished run directory, read."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    label: str = ""       # the method's label in the leaderboard (suite label or method name)
    dataset_label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.config["method"]
        if not self.dataset_label:  # a named scenario of a dataset is a table of its own
            scenario = (self.config.get("dataset_params") or {}).get("scenario")
            self.dataset_label = self.config["dataset"] + (
                f"[{scenario}]" if scenario not in (None, "custom") else "")

    @property
    def identity(self) -> dict[str, Any]:
        return self.config.get("identity", {})

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def split(self) -> str:
        return str(self.config["split_sha256"])

    @property
    def task(self) -> str:
        return str(self.config.get("task", "classification"))

    @property
    def groups(self) -> list[str]:
        return list(self.metrics.get("meta", {}).get("groups") or self.config["groups"])

    @property
    def setting_key(self) -> str:
        """The run's identity without its seed: one key per parameter setting."""
        ident = {k: v for k, v in self.identity.items() if k != "seed"}
        return config_hash(ident)[:12]

    def flat(self, part: str) -> dict[str, float]:
        return {k: (float("nan") if v is None else v)
                for k, v in flatten(self.metrics.get(part, {})).items()
                if v is None or isinstance(v, (int, float))}


def read_run(path: str | Path, *, verified: bool = False, **labels: str) -> RunRecord:
    """The run at ``path``, verified against its manifest first (unless the caller has just
    done so: ``verified``): a damaged run raises one line naming it and the way out
    (:func:`fairbench.run.store.read_run_files`)."""
    path = Path(path)
    config, metrics = read_run_files(path, verified=verified)
    return RunRecord(path, config, metrics, **labels)


def collect_runs(runs_dir: str | Path) -> list[RunRecord]:
    """Every finished run under ``runs_dir`` (``<dataset>/<method>/<run>``); temporary
    directories of interrupted runs, the vanilla cache and split files are skipped."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise FairbenchError(f"runs directory {str(root)!r} does not exist")
    out = []
    for run in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        parts = run.relative_to(root).parts
        if parts[0] in NOT_RUN_FOLDERS or any(part.startswith((".", "_")) for part in parts):
            continue  # MLflow's stores (--tracking mlflow) and split files are no runs
        state = check_run(run).state  # verified once; a damaged one is reported by read_run
        if state in ("finished", "damaged"):
            out.append(read_run(run, verified=state == "finished"))
    return out


# -- tables -------------------------------------------------------------------------------------
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
        return SEG_UTILITY if self.task == "segmentation" else UTILITY

    @property
    def _fairness(self) -> tuple[str, ...]:
        return SEG_FAIRNESS if self.task == "segmentation" else FAIRNESS

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
            return list(SEG_COMPACT_KEYS if view == "compact" else SEG_UTILITY + SEG_FAIRNESS)
        return list(COMPACT_KEYS) if view == "compact" else list(PAPER_COLUMNS)

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


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def _candidates(runs: Sequence[RunRecord]) -> list[tuple[Candidate, list[RunRecord]]]:
    by_setting: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_setting[r.setting_key].append(r)
    out = []
    for key in sorted(by_setting):
        rs = sorted(by_setting[key], key=lambda r: r.seed)
        flats = [r.flat("val") for r in rs]
        keys = set().union(*flats)
        val = {k: _mean_std(f.get(k, math.nan) for f in flats)[0] for k in keys}
        out.append((Candidate(key, dict(rs[0].config.get("method_params", {})), val,
                              rs[0].groups, len(rs), rs), rs))
    return out


def check_single_split(runs: Sequence[RunRecord], where: str) -> None:
    """Refuse runs of one table that use different splits, naming the hashes."""
    by_split: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_split[r.split].append(r)
    if len(by_split) > 1:
        parts = [f"{h[:12]} ({len(rs)} runs, e.g. {rs[0].path})"
                 for h, rs in sorted(by_split.items(), key=lambda kv: -len(kv[1]))]
        r0 = runs[0]
        raise FairbenchError(
            f"{where} holds runs of {len(by_split)} different splits for {r0.dataset_label} "
            f"({r0.config['attribute']}, {r0.config['backbone']}): {'; '.join(parts)}; a "
            "leaderboard never mixes splits: pick one with --split HASH or use separate runs "
            "directories")


def build_tables(runs: Sequence[RunRecord], *, rule: Rule | str | None = None,
                 part: str = "test", split: str | None = None, test: str = "ttest",
                 alpha: float = 0.05, where: str = "the runs",
                 method_order: Sequence[str] | None = None,
                 dataset_order: Sequence[str] | None = None,
                 expected_seeds: Sequence[int] | None = None,
                 missing_runs: dict[str, list[str]] | None = None) -> list[Table]:
    """Group ``runs`` into tables, select one setting per method, aggregate over seeds and
    test every method against vanilla (see the module docstring).

    ``expected_seeds``: the seeds every cell should average (a suite's); by default every seed
    that some run of the table has. ``missing_runs``: per dataset label, runs planned but not
    finished (listed under that dataset's tables)."""
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
        rows: list[MethodRow] = []
        ref_candidate = None
        if reference_label is not None:
            cands = _candidates(by_label[reference_label])
            sel = select([c for c, _ in cands], reference_rule)
            ref_candidate = sel.candidate
        for label in labels:
            cands = _candidates(by_label[label])
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
            row = MethodRow(label, chosen[0].config["method"], sel, chosen, len(cands), part=part,
                            all_runs=list(by_label[label]), varying=varying)
            rows.append(row)
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
        _aggregate(table, test=test, alpha=alpha)
        tables.append(table)
    return tables


def _aggregate(table: Table, *, test: str, alpha: float) -> None:
    keys = sorted({k for view in VIEWS for _, cols in table.row_keys(view) for k in cols.values()})
    for row in table.rows:
        for key in keys:
            row.stats[key] = _mean_std(row.values(key).values())
    if table.reference is None:
        return
    sig_keys = [k for k in keys if "." not in k or k.split(".", 1)[0] in (
        "Avg", "worst", "gap", "ES_fairseg", "ES_fairmedfm") or k.startswith("Diff.")]
    for key in sig_keys:
        values = {row.label: row.values(key) for row in table.rows}
        for comp in compare_to_reference(values, table.reference, key, test=test, alpha=alpha):
            next(r for r in table.rows if r.label == comp.method).tests[key] = comp


# -- the leaderboard ------------------------------------------------------------------------
@dataclass
class Leaderboard:
    tables: list[Table]
    source: str
    rule: str
    test: str = "ttest"
    alpha: float = 0.05
    missing: int = 0          # runs of the suite that are not finished
    ci_confidence: float | None = None
    ci_kind: str = "seeds+samples"

    # -- DataFrame API ----------------------------------------------------------------------
    def to_frame(self, view: str = "paper") -> pd.DataFrame:
        """Tidy numbers (fractions, not percent): one row per method × table row, ``<col>``
        (mean), ``<col>_std``, ``<col>_p_holm`` and, with CIs, ``<col>_ci_low/high``."""
        _check_view(view)
        records = []
        for t in self.tables:
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
                        if key in row.ci:
                            rec[f"{col}_ci_low"], rec[f"{col}_ci_high"] = row.ci[key]
                    rec.update(n_seeds=len(row.runs), seeds=" ".join(map(str, row.seeds)),
                               expected_seeds=len(row.expected_seeds),
                               n_settings=row.n_settings,
                               params=json.dumps(row.params, sort_keys=True),
                               chosen_in_run=json.dumps(row.chosen_in_run(), sort_keys=True),
                               rule=row.selection.rule, selected_because=row.selection.reason)
                    records.append(rec)
        return pd.DataFrame.from_records(records)

    # -- text formats ---------------------------------------------------------------------------
    def render(self, fmt: str = "md", view: str = "paper") -> str:
        _check_view(view)
        if fmt == "md":
            return self.to_markdown(view)
        if fmt == "csv":
            return self.to_frame(view).to_csv(index=False)
        if fmt == "latex":
            return self.to_latex(view)
        if fmt == "html":  # the page needs the figures, which build on this module
            raise FairbenchError("the html page is fairbench.bench.html.render_html(board)")
        raise FairbenchError(f"unknown format {fmt!r}; use md, csv or latex")

    def _cells(self, t: Table, view: str, bold: Any, sig: Any) -> list[tuple[str, str, list[str]]]:
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
                    text = _fmt(mean, std)
                    if key in row.ci:
                        lo, hi = row.ci[key]
                        text += f" [{lo * 100:.2f}, {hi * 100:.2f}]"
                    if (row.label, row_name, col) in best:
                        text = bold(text)
                    comp = row.tests.get(key)
                    if comp is not None and comp.direction is not None:
                        text = sig(text, MARKS[comp.direction])
                    if row.short(key) and math.isfinite(mean):
                        text += f" (n={row.n(key)})"
                    cells.append(text)
                out.append((row.label if i == 0 else "", row_name, cells))
        return out

    def to_markdown(self, view: str = "paper") -> str:
        out = []
        for t in self.tables:
            cols = [COLUMN_TITLES.get(c, c) for c in t.columns(view)]
            head = ["Method"] + (["Group"] if view == "paper" else []) + cols
            out.append(f"### {t.title}\n")
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join([":--"] * (2 if view == "paper" else 1)
                                      + ["--:"] * len(cols)) + "|")
            for label, row_name, cells in self._cells(t, view, lambda s: f"**{s}**",
                                                      lambda s, mark: s + mark):
                first = [_md_escape(label)] + ([row_name] if view == "paper" else [])
                out.append("| " + " | ".join(first + cells) + " |")
            out.append("")
            out.extend(self._notes(t))
            out.append("")
        out.extend(self._friedman_lines())
        return "\n".join(out).rstrip() + "\n"

    def _notes(self, t: Table) -> list[str]:
        n_seeds = len(t.rows[0].expected_seeds) if t.rows else 0
        lines = [f"Values in %, mean ± std over {n_seeds} seeds ({t.part}); best per column in "
                 "bold (cells short of seeds excluded)."]
        if t.reference:
            lines.append(
                f"{MARKS['better']} / {MARKS['worse']}: better / worse than vanilla (paired "
                f"{self.test} over seeds, Holm-corrected over the methods, p < {self.alpha:g}; "
                f"{DAGGER}: a metric without a direction); a comparison needs at least "
                f"{MIN_PAIRS} paired seeds whose differences vary, else it is not tested.")
            untested = sorted({f"{row.label} ({c.untestable})" for row in t.rows
                               for c in row.tests.values() if c.untestable})
            if untested:
                lines.append("Not tested against vanilla: " + "; ".join(untested) + ".")
        else:
            lines.append("No vanilla run, so no significance marks.")
        if self.ci_confidence:
            what = ("two-stage bootstrap: seeds, then test samples (patients where known) "
                    "within each seed" if self.ci_kind == "seeds+samples" else
                    "bootstrap over test samples (patients where known) only; the training "
                    "seed's variation is left out")
            lines.append(f"[low, high]: {self.ci_confidence:.0%} interval of the seed-mean, "
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

    def _friedman_lines(self) -> list[str]:
        res = self.friedman()
        if isinstance(res, str):
            return [f"Friedman test: {res}"] if len(self.tables) > 1 else []
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
            data[t.title] = {row.label: _mean_std(row.values(metric).values())[0]
                             for row in t.rows}
        df = pd.DataFrame.from_dict(data, orient="index")
        return df.dropna(axis=1)

    def to_latex(self, view: str = "paper", *, split_in_caption: bool = False) -> str:
        """booktabs tables: ↑/↓ after each column title (its direction), the columns grouped
        under "Utility" and "Fairness", bold covering the whole cell (± part included), the
        marks as superscripts, the selection of every row as table notes; the split hash is in
        the caption only with ``split_in_caption`` (it is always in the label's table of
        :meth:`to_frame`)."""
        out = ["% requires \\usepackage{booktabs,amssymb}"]
        for t in self.tables:
            columns = t.columns(view)
            n_lead = 2 if view == "paper" else 1
            utility = [c for c in columns if _is_utility(c)]
            head = (["Method"] + (["Group"] if view == "paper" else [])
                    + [_tex(COLUMN_TITLES.get(c, c)) + _tex_arrow(c) for c in columns])
            title = t.title if split_in_caption else t.title_without_split
            groups_row = (" & " * (n_lead - 1) + " & "
                          + f"\\multicolumn{{{len(utility)}}}{{c}}{{Utility}} & "
                          + f"\\multicolumn{{{len(columns) - len(utility)}}}{{c}}{{Fairness}}"
                          + " \\\\")
            first_u, last_u = n_lead + 1, n_lead + len(utility)
            rules = (f"\\cmidrule(lr){{{first_u}-{last_u}}}"
                     f"\\cmidrule(lr){{{last_u + 1}-{n_lead + len(columns)}}}")
            out += ["\\begin{table}[t]", "\\centering", "\\small",
                    (f"\\caption{{{_tex(title)}. Values in \\%, mean $\\pm$ std over seeds; "
                     f"best per column in bold; $^\\blacktriangle$/$^\\blacktriangledown$: "
                     f"better/worse than vanilla, paired {_tex(self.test)} over at least "
                     f"{MIN_PAIRS} seeds, Holm-corrected, $p<{self.alpha:g}$.}}"),
                    f"\\label{{tab:{_label(t)}-{view}}}",
                    f"\\begin{{tabular}}{{{'l' * n_lead}{'r' * len(columns)}}}", "\\toprule",
                    groups_row, rules,
                    " & ".join(head) + " \\\\", "\\midrule"]
            first = True
            for label, row_name, cells in self._cells(
                    t, view, lambda s: f"\\textbf{{{s}}}", lambda s, mark: s + _TEX_MARKS[mark]):
                if label and not first and view == "paper":
                    out.append("\\midrule")
                first = False
                cells = [c.replace(" ± ", " $\\pm$ ") for c in cells]
                lead_cells = [_tex(label)] + ([_tex(row_name)] if view == "paper" else [])
                out.append(" & ".join(lead_cells + cells) + " \\\\")
            out += ["\\bottomrule", "\\end{tabular}"]
            notes = [f"Selection on validation only, rule {_tex(t.rule)}."]
            notes += [f"{_tex(row.label)}: {_tex(row.params_text())}; "
                      f"{_tex(row.selection.reason)}." for row in t.rows]
            if t.missing:
                notes.append("Missing runs: " + "; ".join(_tex(m) for m in t.missing) + ".")
            out += ["\\par\\smallskip\\footnotesize\\raggedright",
                    " \\\\\n".join(notes), "\\end{table}", ""]
        return "\n".join(out)


def _is_utility(column: str) -> bool:
    """Utility columns (the rest are fairness columns) of both views and both tasks."""
    base = column.split(".", 1)[-1] if column.startswith(("worst.", "Avg.")) else column
    return base in (*UTILITY, *SEG_UTILITY, "AUC", "accuracy") and not column.startswith("gap.")


def _tex_arrow(column: str) -> str:
    direction = higher_is_better(column)
    return {True: " $\\uparrow$", False: " $\\downarrow$"}.get(direction, "")


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise FairbenchError(f"unknown view {view!r}; use paper or compact")


def _fmt(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(std):
        return f"{mean * 100:.2f}"
    return f"{mean * 100:.2f} ± {std * 100:.2f}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("_", "\\_")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


_TEX_MARKS = {MARKS["better"]: "$^\\blacktriangle$", MARKS["worse"]: "$^\\blacktriangledown$",
              DAGGER: "$^\\dagger$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text)).replace("±", "$\\pm$")


def _label(t: Table) -> str:
    raw = f"{t.dataset}-{t.attribute}-{t.backbone}"
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in raw)


# -- entry points ----------------------------------------------------------------------------
def leaderboard(source: str | Path, *, rule: str | None = None, part: str = "test",
                split: str | None = None, test: str = "ttest", alpha: float = 0.05,
                runs_dir: str | None = None, data_roots: dict[str, str] | None = None,
                ci: bool = False, n_resamples: int = 1000, confidence: float = 0.95,
                seed: int = 0, ci_kind: str = "seeds+samples",
                labels: str = "observed") -> Leaderboard:
    """The leaderboard of a suite file (only its runs; its rule unless ``rule``) or of every
    finished run under a runs directory. ``labels="true"`` shows the test metrics against
    the true labels of synthetic data (``test_true``; selection still reads validation
    metrics on observed labels only)."""
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
        tables = build_tables(runs, rule=chosen, part=part, split=split, test=test,
                              alpha=alpha, where=f"suite {str(src)!r}",
                              method_order=[m.label for m in suite.methods],
                              dataset_order=[d.label for d in suite.datasets],
                              expected_seeds=suite.seeds, missing_runs=not_finished)
        board = Leaderboard(tables, str(src), str(chosen), test, alpha, missing)
    elif src.is_dir():
        runs = collect_runs(src)
        if not runs:
            raise FairbenchError(f"no finished run under {str(src)!r}")
        chosen = parse_rule(rule)
        tables = build_tables(runs, rule=chosen, part=part, split=split, test=test,
                              alpha=alpha, where=f"runs directory {str(src)!r}")
        board = Leaderboard(tables, str(src), str(chosen), test, alpha)
    else:
        raise FairbenchError(f"{str(source)!r} is neither a suite file nor a runs directory")
    if ci:
        add_bootstrap(board, n_resamples=n_resamples, confidence=confidence, seed=seed,
                      kind=ci_kind)
    return board


#: what a bootstrap key of a classification table stands for in a segmentation table
SEGMENTATION_CI_KEYS = {"F1": "Dice", HEADLINE_FAIRNESS: "gap.Dice", "EOdd": "ES_fairseg.Dice",
                        "Avg.F1": "Avg.Dice", "worst.F1": "worst.Dice"}
#: the keys that get intervals by default: utility, the headline fairness, the worst group
CI_KEYS = ("F1", HEADLINE_FAIRNESS, "worst.F1")


def add_bootstrap(board: Leaderboard, *, keys: Sequence[str] = CI_KEYS,
                  n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                  kind: str = "seeds+samples") -> None:
    """Bootstrap intervals of the seed-mean of ``keys`` for every row (see
    :func:`fairbench.bench.stats.bootstrap_runs`; ``kind`` ``seeds+samples``, the default, or
    ``samples``); segmentation tables take the counterparts in :data:`SEGMENTATION_CI_KEYS`
    (Dice, gap.Dice, worst.Dice), resampling images."""
    from fairbench.bench.stats import RunPredictions, SegmentationPredictions, bootstrap_runs

    for t in board.tables:
        segmentation = t.task == "segmentation"
        reader = SegmentationPredictions if segmentation else RunPredictions
        table_keys = [SEGMENTATION_CI_KEYS.get(k, k) for k in keys] if segmentation else keys
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
