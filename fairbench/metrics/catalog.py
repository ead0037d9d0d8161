"""The one declared list of metrics: every base metric with its direction, family and title,
and the named views (which metrics a candidate log, an epoch log, a leaderboard view or a
report shows) that methods, the trainer, the report and the leaderboard read. No other module
spells out a list of metric names (a test reads the sources and checks it).

A *base* metric (``F1``, ``EqOddsGap``) is a number of one part; a *flat key* adds a prefix
(``worst.F1``, ``gap.AUC``, ``dark.F1``); :func:`fairbench.metrics.higher_is_better` gives the
direction of any flat key from the bases declared here and the prefixes'
:data:`PREFIX_DIRECTION`. Values of every metric except the count ``n`` are fractions, shown
in percent with two decimals (``percent``), as torchmetrics' ``higher_is_better`` and
fairlearn's metric definitions each sit with their metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["utility", "calibration", "fairness", "paper_fairness", "paper_signed",
                 "segmentation", "count", "counterfactual"]


@dataclass(frozen=True)
class MetricSpec:
    """One base metric.

    ``from_counts``: computed from the group-wise confusion counts alone
    (:mod:`fairbench.metrics.counts`), so a bootstrap can resample it quickly; the rest need
    the scores (AUC, ECE) or are segmentation overlaps.
    """

    name: str
    higher_is_better: bool | None
    family: Family
    title: str
    from_counts: bool = False
    percent: bool = True


#: every base metric, in the order ``metrics.json`` records their directions
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("accuracy", True, "utility", "Accuracy", from_counts=True),
    MetricSpec("precision", True, "utility", "Precision", from_counts=True),
    MetricSpec("recall", True, "utility", "Recall", from_counts=True),
    MetricSpec("F1", True, "utility", "F1", from_counts=True),
    MetricSpec("AUC", True, "utility", "AUC"),
    MetricSpec("ECE", False, "calibration", "ECE"),
    MetricSpec("EqOddsGap", False, "fairness", "EqOdds gap", from_counts=True),
    MetricSpec("EqOddsGap_maxclass", False, "fairness", "EqOdds gap (worst class)",
               from_counts=True),
    MetricSpec("EOpp0", False, "paper_fairness", "EOpp0 (paper)", from_counts=True),
    MetricSpec("EOpp1", False, "paper_fairness", "EOpp1 (paper)", from_counts=True),
    MetricSpec("EOdd", False, "paper_fairness", "EOdd (paper)", from_counts=True),
    MetricSpec("EOpp0_signed", None, "paper_signed", "EOpp0 signed (paper)", from_counts=True),
    MetricSpec("EOpp1_signed", None, "paper_signed", "EOpp1 signed (paper)", from_counts=True),
    MetricSpec("EOdd_signed", None, "paper_signed", "EOdd signed (paper)", from_counts=True),
    MetricSpec("Dice", True, "segmentation", "Dice"),
    MetricSpec("IoU", True, "segmentation", "IoU"),
    MetricSpec("n", None, "count", "n", percent=False),
    MetricSpec("flip_rate", False, "counterfactual", "Skin flip rate"),
)
SPECS: dict[str, MetricSpec] = {m.name: m for m in METRICS}
#: direction of every base metric (None: signed or a count, no direction)
HIGHER_IS_BETTER: dict[str, bool | None] = {m.name: m.higher_is_better for m in METRICS}


def names(*families: Family, from_counts: bool | None = None) -> tuple[str, ...]:
    """The base metrics of ``families`` (all with none), in declaration order; with
    ``from_counts``, only those computed (or not) from confusion counts alone."""
    return tuple(m.name for m in METRICS
                 if (not families or m.family in families)
                 and (from_counts is None or m.from_counts == from_counts))


#: the fairness criterion of every choice (selection rules, methods' candidate and checkpoint
#: choice) and the headline fairness column: the standard equalized-odds gap (see
#: :mod:`fairbench.metrics.fairness`). The papers' EOpp0/EOpp1/EOdd are computed beside it.
HEADLINE_FAIRNESS = "EqOddsGap"
#: the headline utility and the worst group's value of it
HEADLINE_UTILITY = "F1"
WORST_UTILITY = f"worst.{HEADLINE_UTILITY}"

#: the standard equalized-odds gap, macro over classes and of the worst class
EQODDS_GAP = names("fairness")
#: the utility metrics computed from confusion counts (hard predictions)
COUNT_UTILITY = names("utility", from_counts=True)
#: the papers' definitions (EOpp0, EOpp1, EOdd), shown beside the headline, labelled theirs
PAPER_FAIRNESS = names("paper_fairness")
#: the papers' signed variants
PAPER_SIGNED = names("paper_signed")
#: the equalized-odds family as :mod:`fairbench.metrics.counts` computes it at once
EQUALIZED_ODDS = names("fairness", "paper_fairness")
#: the fairness columns of a classification table: the headline, then the papers'
FAIRNESS_COLUMNS = (HEADLINE_FAIRNESS, *PAPER_FAIRNESS)
#: the utility columns of the paper layout (per group, Avg and Diff rows)
PAPER_UTILITY = ("precision", "recall", "F1")

#: the columns of a post-hoc method's candidate log (``prune.csv``, ``steps.csv``): utility,
#: the equalized-odds family and the worst group's F1, on validation
CANDIDATE_COLUMNS = ("F1", "precision", "recall", "accuracy", HEADLINE_FAIRNESS, *PAPER_FAIRNESS,
                     WORST_UTILITY)
#: SNNL's pruning log: the same without precision and recall, with the F1 gap
SNNL_COLUMNS = ("F1", "accuracy", HEADLINE_FAIRNESS, *PAPER_FAIRNESS, WORST_UTILITY, "gap.F1")
#: the validation metrics of each τ in a multi-exit run's notes (``tau_sweep_val``)
TAU_SWEEP_COLUMNS = ("F1", HEADLINE_FAIRNESS, "EOdd")
#: the validation metrics an epoch of the shared trainer logs (those the task has)
EPOCH_LOG_COLUMNS = ("F1", "accuracy", "AUC", "EOdd", WORST_UTILITY, "Dice", "IoU",
                     "worst.Dice", "gap.Dice", "ES_fairseg.Dice")

#: the leaderboard's compact view (one row per method)
COMPACT_COLUMNS = ("F1", "AUC", WORST_UTILITY, "gap.AUC", "gap.ECE", HEADLINE_FAIRNESS, "EOdd")
SEG_UTILITY = ("Dice", "IoU")
SEG_FAIRNESS = ("ES_fairseg.Dice", "ES_fairmedfm.Dice")
SEG_COMPACT_COLUMNS = ("Dice", "IoU", "worst.Dice", "gap.Dice", *SEG_FAIRNESS)
#: keys with a bootstrap interval by default: utility, the headline fairness, the worst group
CI_COLUMNS = ("F1", HEADLINE_FAIRNESS, WORST_UTILITY)
#: what a classification key stands for in a segmentation table (selection, intervals)
SEGMENTATION_COUNTERPART = {"F1": "Dice", "AUC": "Dice", HEADLINE_FAIRNESS: "gap.Dice",
                            "EOdd": "gap.Dice", "Avg.F1": "Avg.Dice", WORST_UTILITY: "worst.Dice"}
#: the metrics of a run's per-group plot (classification)
GROUP_PLOT_COLUMNS = (*PAPER_UTILITY, "accuracy", "AUC")
#: the default ±δ of the equivalence test against vanilla (fractions: 2 points), per metric; a
#: suite's ``equivalence_margin`` (in points) replaces it
EQUIVALENCE_MARGINS = {"F1": 0.02, WORST_UTILITY: 0.02, HEADLINE_FAIRNESS: 0.02,
                       "flip_rate": 0.02}
#: the mechanism matrix's default panels
MATRIX_COLUMNS = (HEADLINE_FAIRNESS, WORST_UTILITY)
#: the counterfactual twins' headline (synthetic data only): compared with vanilla in every
#: table whose runs carry it, and a panel of the matrix beside the leakage probe
COUNTERFACTUAL_METRIC = "flip_rate"

#: the overall rows of a run's comparison with vanilla (classification), then per group
COMPARE_OVERALL = ("F1", "AUC", "accuracy", WORST_UTILITY, "worst.AUC", "gap.F1", *EQUALIZED_ODDS)
COMPARE_GROUP = ("n", "F1", "AUC", "precision", "recall")
COMPARE_SEGMENTATION = SEG_COMPACT_COLUMNS
COMPARE_SEGMENTATION_GROUP = ("n", "Dice", "IoU")

#: column titles of flat keys (a key not here is shown as it is)
TITLES: dict[str, str] = {
    **{k: SPECS[k].title for k in (*PAPER_UTILITY, *EQUALIZED_ODDS[:2], *PAPER_FAIRNESS, "AUC")},
    WORST_UTILITY: "Worst-group F1", "gap.AUC": "AUC gap", "gap.ECE": "ECE gap",
    "worst.Dice": "Worst-group Dice", "gap.Dice": "Dice gap",
    "ES_fairseg.Dice": "ES-Dice (FairSeg)", "ES_fairmedfm.Dice": "ES-Dice (FairMedFM)",
    COUNTERFACTUAL_METRIC: SPECS[COUNTERFACTUAL_METRIC].title,
}


def title(key: str) -> str:
    """The column title of a flat key (the key itself when none is declared)."""
    return TITLES.get(key, key)


#: direction of ``<prefix>.<metric>`` keys whatever the base metric (equity-scaled families)
PREFIX_DIRECTION: dict[str, bool | None] = {
    "gap": False,
    "Diff": False,
    "Diff_signed": None,
    "ES_fairseg": True,
    "ES_fairmedfm": True,
    "skew": False,
}

#: base-metric name prefixes whose metrics are all higher-is-better (per-class Dice_cup, IoU_rim)
HIGHER_IS_BETTER_PREFIXES: tuple[str, ...] = ("Dice_", "IoU_")

SUMMARY_KEYS = ("Avg", "gap", "worst", "Diff", "Diff_signed")


def _base_direction(base: str) -> bool | None:
    if base in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[base]
    if base.startswith(HIGHER_IS_BETTER_PREFIXES):
        return True
    raise KeyError(f"unknown metric {base!r}")


def is_segmentation_metric(key: str) -> bool:
    """Whether a flat key is a segmentation metric: its base (after any ``prefix.``) is
    ``Dice``, ``IoU``, ``Dice_<class>`` or ``IoU_<class>``."""
    base = key.split(".", 1)[1] if "." in key else key
    return base in ("Dice", "IoU") or base.startswith(HIGHER_IS_BETTER_PREFIXES)


def higher_is_better(key: str) -> bool | None:
    """Direction of a flat metric key: ``F1``, ``gap.F1``, ``worst.AUC``, ``dark.F1``,
    ``Dice_cup``, ``ES_fairseg.Dice``...

    ``gap.*``, ``Diff.*`` and ``skew.*`` are lower-is-better, ``Diff_signed.*`` has no
    direction, ``ES_fairseg.*`` and ``ES_fairmedfm.*`` are higher-is-better, and ``worst.*``,
    ``Avg.*`` and ``<group>.*`` follow their base metric (``None`` for an unknown one).
    ``Dice_<class>`` and ``IoU_<class>`` are higher-is-better.
    """
    if "." in key:
        prefix, base = key.split(".", 1)
        if prefix in PREFIX_DIRECTION:
            return PREFIX_DIRECTION[prefix]
        try:
            return _base_direction(base)
        except KeyError:
            return None
    return _base_direction(key)


def check_directed_metric(key: str, what: str) -> None:
    """Raise :class:`~fairbench.core.errors.ParamError` (one line naming ``what``, e.g.
    ``parameter select_metric``) unless ``key`` is a metric with a direction, as every choice
    (checkpoint, candidate, leaderboard row) needs."""
    from fairbench.core.errors import ParamError

    try:
        direction = higher_is_better(key)
    except KeyError:
        raise ParamError(f"{what}={key!r} is not a metric; use e.g. {HEADLINE_FAIRNESS}, EOdd, "
                         "F1, worst.F1 or gap.F1") from None
    if direction is None:
        raise ParamError(f"{what}={key!r} has no direction; pick another metric")
