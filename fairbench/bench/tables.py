"""Run results as pandas tables, before any aggregation.

* :func:`runs_table`: one row per finished run (of a runs folder, a suite file or a
  :class:`~fairbench.bench.suite.Suite`, or a list of run folders): what identifies it (method,
  its parameters, dataset, attribute, backbone, seed, split hash, config hash) and every metric
  of every part, flattened (``test.F1``, ``test.EqOddsGap``, ``test.dark.F1``,
  ``test.worst.F1``, ``val.F1``...). Filter it, group it, plot it: the leaderboard's choices
  (selection rules, means over seeds) are not applied.
* :func:`group_table`: one run's per-group metrics as a frame indexed by group, the shape of
  fairlearn's ``MetricFrame.by_group`` (index named after the attribute, one column per metric).
* :func:`metric_frame`: a real ``fairlearn.metrics.MetricFrame`` of one run's stored
  predictions (classification), for fairlearn users (``pip install fairlearn``); by default
  accuracy and macro precision, recall and F1 computed as fairbench computes them, so its
  ``by_group`` equals :func:`group_table`'s columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fairbench.bench.runs import RunRecord, collect_runs, read_run
from fairbench.core.errors import FairbenchError
from fairbench.data.dataset import ATTR_PREFIX, TRUE_LABEL_COLUMN
from fairbench.metrics import flatten
from fairbench.run.store import is_finished, read_run_files

#: the parts of ``metrics.json`` :func:`runs_table` reads (``test_true`` and ``leakage`` only
#: where a run has them: synthetic data, classification)
PARTS = ("val", "test", "test_true", "leakage")
#: the parts with per-group metrics (:func:`group_table`, :func:`metric_frame`)
GROUP_PARTS = ("val", "test", "test_true")
#: identification columns of :func:`runs_table`, in order (then ``param.<name>``, then metrics)
ID_COLUMNS = ("method", "label", "params", "dataset", "task", "attribute", "backbone", "seed",
              "split", "config_hash", "privileged", "seconds", "run_dir")


def _param_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in sorted(params.items()))


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _records(source: Any, *, runs_dir: str | None,
             data_roots: dict[str, str] | None) -> list[RunRecord]:
    from fairbench.bench.suite import Suite, load_suite
    from fairbench.bench.sweep import plan

    if isinstance(source, (str, Path)):
        src = Path(source).expanduser()
        if src.is_dir():
            if is_finished(src):  # one run folder
                return [read_run(src, verified=True)]
            return collect_runs(src)
        if not src.is_file():
            raise FairbenchError(f"{str(source)!r} is neither a suite file, a runs directory "
                                 "nor a run directory")
        source = load_suite(src, runs_dir=runs_dir, data_roots=data_roots)
    if isinstance(source, Suite):
        return [read_run(p.run_dir, verified=p.finished, label=p.planned.method,
                         dataset_label=p.planned.dataset)
                for p in plan(source) if p.finished and p.run_dir is not None]
    if isinstance(source, Iterable):
        out = []
        for item in source:
            path = Path(item).expanduser()
            out.append(read_run(path))  # verifies it: one line when not a finished run
        return out
    raise FairbenchError(f"cannot read runs from {source!r}; pass a runs directory, a suite "
                         "file or a list of run directories")


def runs_table(source: str | Path | Any, *, parts: Sequence[str] = PARTS,
               runs_dir: str | None = None,
               data_roots: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per finished run of ``source``, with its identity and its metrics per part.

    ``source``: a runs directory (every finished run under it), one run directory, a suite file
    or :class:`~fairbench.bench.suite.Suite` (only the suite's finished runs; ``runs_dir`` and
    ``data_roots`` as for ``fairbench leaderboard``), or a list of run directories.

    Columns: ``method``; ``label`` (the suite's label of the method, else the method);
    ``params`` (the method's parameters as ``k=v, ...``, every default included) and one
    ``param.<name>`` column per parameter (empty for methods without it); ``dataset``,
    ``task``, ``attribute``, ``backbone``, ``seed``, ``split`` (the split's sha256),
    ``config_hash`` (the run's identity), ``privileged``, ``seconds`` (wall time), ``run_dir``;
    then ``<part>.<metric>`` for every number of ``metrics.json`` (fractions, not percent), e.g.
    ``test.F1``, ``test.EqOddsGap``, ``test.light.F1``, ``test.worst.F1``, ``test.gap.AUC``;
    for runs on data with true labels (``synthderm``) the same against them
    (``test_true.EqOddsGap``...), and for classification runs the attribute probe
    (``leakage.balanced_accuracy``, ``leakage.auc``...); missing values are NaN. ``parts``
    picks among ``val``, ``test``, ``test_true`` and ``leakage``.
    Rows are sorted by dataset, method, backbone, parameters and seed.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise FairbenchError(f"unknown part {unknown[0]!r}; use {', '.join(PARTS)}")
    records = _records(source, runs_dir=runs_dir, data_roots=data_roots)
    rows: list[dict[str, Any]] = []
    param_names: list[str] = []
    for r in records:
        params = r.config.get("method_params") or {}
        for name in params:
            if name not in param_names:
                param_names.append(name)
        row: dict[str, Any] = {
            "method": r.config.get("method"),
            "label": r.label,
            "params": _param_text(params),
            "dataset": r.config.get("dataset"),
            "task": r.task,
            "attribute": r.config.get("attribute"),
            "backbone": r.config.get("backbone"),
            "seed": r.seed,
            "split": r.split,
            "config_hash": r.config.get("config_hash"),
            "privileged": r.config.get("privileged"),
            "seconds": (r.config.get("seconds") or {}).get("total"),
            "run_dir": str(r.path),
        }
        for name, value in params.items():
            row[f"param.{name}"] = _value_text(value) if isinstance(value, (list, tuple)) \
                else value
        for part in parts:
            for key, value in flatten(r.metrics.get(part, {})).items():
                if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
                    continue
                row[f"{part}.{key}"] = math.nan if value is None else value
        rows.append(row)
    columns = [*ID_COLUMNS, *(f"param.{n}" for n in param_names)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    metric_columns = [c for c in frame.columns if c not in columns]
    frame = frame[columns + metric_columns]
    frame = frame.sort_values(["dataset", "method", "backbone", "params", "seed"],
                              kind="stable").reset_index(drop=True)
    return frame


def _run(run_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A finished run's folder, config and metrics, verified against its manifest (a damaged
    run raises one line naming it and the way out)."""
    path = Path(run_dir).expanduser()
    return (path, *read_run_files(path))


def group_table(run_dir: str | Path, part: str = "test") -> pd.DataFrame:
    """One run's per-group metrics of ``part``: rows = the attribute's groups (the index is
    named after the attribute), columns = the per-group metrics as stored in
    ``metrics.json`` (``n``, ``accuracy``, ``precision``, ``recall``, ``F1``, ``AUC``, ``ECE``
    for classification; ``Dice``, ``IoU``... for segmentation), fractions. The shape of
    fairlearn's ``MetricFrame.by_group``. ``part``: ``val``, ``test`` or ``test_true`` (the test
    predictions against the true labels, for data that has them)."""
    _check_group_part(part)
    _, config, metrics = _run(run_dir)
    groups = list(metrics.get("meta", {}).get("groups") or config["groups"])
    if part not in metrics:
        raise FairbenchError(f"{str(run_dir)!r} has no {part} metrics (only data with true "
                             "labels, such as synthderm, has test_true)")
    values = metrics.get(part, {})
    frame = pd.DataFrame({g: values.get(g, {}) for g in groups}).T
    frame.index = pd.Index(groups, name=config.get("attribute"))
    if "n" in frame.columns:
        frame["n"] = frame["n"].astype(int)
    return frame


def _macro(fn: Callable[..., Any]) -> Callable[[Any, Any], float]:
    def metric(y_true: Any, y_pred: Any) -> float:
        return float(fn(y_true, y_pred, average="macro", zero_division=0))

    metric.__name__ = fn.__name__
    return metric


def default_fairlearn_metrics() -> dict[str, Callable[[Any, Any], float]]:
    """accuracy and macro precision, recall, F1 (scikit-learn, ``zero_division=0``), the
    definitions of :func:`fairbench.metrics.classification.macro_prf`."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    return {"accuracy": accuracy_score, "precision": _macro(precision_score),
            "recall": _macro(recall_score), "F1": _macro(f1_score)}


def metric_frame(run_dir: str | Path, part: str = "test", *,
                 metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None) -> Any:
    """A ``fairlearn.metrics.MetricFrame`` over the stored predictions of one classification
    run: ``y_true`` = the labels, ``y_pred`` = the run's predictions (its validation-chosen
    threshold applied), ``sensitive_features`` = the group names of the run's attribute,
    samples with a missing group left out; with ``part="test_true"`` the test predictions
    against the true labels (data that has them). ``metrics`` maps names to
    ``f(y_true, y_pred)`` (default :func:`default_fairlearn_metrics`). Needs fairlearn."""
    try:
        from fairlearn.metrics import MetricFrame
    except ImportError:
        raise FairbenchError("metric_frame needs fairlearn: pip install fairlearn "
                             "(or use group_table, the same by-group frame without it)") from None
    _check_group_part(part)
    path, config, _ = _run(run_dir)
    if config.get("task", "classification") != "classification":
        raise FairbenchError(f"{str(run_dir)!r} is a {config.get('task')} run; metric_frame "
                             "reads classification predictions (use group_table)")
    attribute = config["attribute"]
    preds = pd.read_csv(path / "predictions.csv")
    column = ATTR_PREFIX + attribute
    names = list(config["groups"])
    truth = "label"
    if part == "test_true":
        if TRUE_LABEL_COLUMN not in preds.columns:
            raise FairbenchError(f"{str(run_dir)!r} has no true labels (only data such as "
                                 "synthderm has them); use part='test'")
        part, truth = "test", TRUE_LABEL_COLUMN
    rows = preds[(preds["part"] == part) & (preds[column] >= 0)]
    groups = pd.Series([names[c] for c in rows[column].to_numpy(dtype=int)], name=attribute)
    return MetricFrame(metrics=dict(metrics or default_fairlearn_metrics()),
                       y_true=rows[truth].to_numpy(), y_pred=rows["pred"].to_numpy(),
                       sensitive_features=groups)


def _check_group_part(part: str) -> None:
    if part not in GROUP_PARTS:
        raise FairbenchError(f"unknown part {part!r}; use {', '.join(GROUP_PARTS)}")


__all__ = ["default_fairlearn_metrics", "group_table", "metric_frame", "runs_table"]

