"""Experiment tracking: a finished run copied to MLflow (``--tracking mlflow``).

The run directory stays the record of truth; tracking is a copy for users who browse results in
MLflow. For each finished run (not for one that is reused as already finished) it logs

* **parameters**: method, method parameters (``method.<name>``), dataset and its options
  (``dataset.<name>``), attribute, backbone, seed, split hash, every training setting
  (``train.<name>``), the config hash and the run directory;
* **per-epoch metrics** from ``train_log.csv``: ``<stage>.<column>`` (``vanilla.val_F1``,
  ``train.train_loss``, ...) with the epoch as the step;
* **final metrics**: every numeric value of ``metrics.json`` for ``val`` and ``test``, flattened
  (``test.F1``, ``test.EOdd``, ``test.light.F1``, ``test.worst.F1``; MLflow's key rules:
  letters, digits, ``_ - . /`` and spaces only);
* **artifacts**: ``metrics.json`` and ``config.json``.

The experiment is named after the dataset (``fairbench-<dataset>``), the MLflow run after the
method, the dataset and the run folder's name, which holds the backbone, the seed and the
config hash (``fairquantize-synthderm-smallcnn-s0-1a2b3c4d5e``); tags repeat them one by one
(``fairbench.method``, ``fairbench.backbone``, ``fairbench.seed``, ``fairbench.config_hash``...).
A ``--force`` re-run replaces the earlier MLflow run of the same configuration: the new run
is logged first, then the old one is tagged ``fairbench.replaced_by`` and deleted (MLflow's
soft delete: the UI lists it under "Deleted", ``mlflow gc`` removes it for good), and the new
one carries ``fairbench.replaces``.

The default store is a SQLite file in the runs folder, ``<runs_dir>/mlflow.db``, with the
artifacts in ``<runs_dir>/mlartifacts``; it needs no server and no special setting, and MLflow's
own tools open it: ``mlflow ui --backend-store-uri sqlite:///<runs_dir>/mlflow.db``. Processes
sharing a runs folder take turns on it (a file lock beside it). ``--tracking-uri`` points
anywhere MLflow accepts (a server ``http://host:5000``, another ``sqlite:///...`` file, a file
store ``file:///...``, for which fairbench sets ``MLFLOW_ALLOW_FILE_STORE=true`` since MLflow 3
refuses file stores otherwise). MLflow is an optional extra: ``pip install -e ".[mlflow]"``
(the full ``mlflow`` package, whose UI and server need Flask and SQLAlchemy).
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

from fairbench.core.errors import FairbenchError

TRACKERS = ("mlflow",)
_BAD_KEY_CHARS = re.compile(r"[^0-9A-Za-z_\-. /]")


def check_tracking(name: str) -> None:
    """Raise one clear error for an unknown tracker or a missing optional extra."""
    if name not in TRACKERS:
        raise FairbenchError(f"unknown tracking {name!r}; use --tracking mlflow (or leave it out)")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise FairbenchError('--tracking mlflow needs MLflow: pip install -e ".[mlflow]" '
                             '(or pip install mlflow)') from None


def mlflow_key(key: str) -> str:
    """``key`` with the characters MLflow rejects replaced by ``_``."""
    return _BAD_KEY_CHARS.sub("_", key)


def flatten_numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a nested dict, keyed by its dotted path."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        if math.isfinite(float(tree)):
            out[prefix] = float(tree)
    return out


def run_params(record: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """The parameters logged for a run (values as strings, MLflow-safe keys)."""
    identity = record.get("identity", {})
    params: dict[str, Any] = {
        "method": record.get("method"),
        "dataset": record.get("dataset"),
        "attribute": record.get("attribute"),
        "backbone": record.get("backbone"),
        "seed": identity.get("seed"),
        "split_sha256": identity.get("split"),
        "config_hash": record.get("config_hash"),
        "privileged": record.get("privileged"),
        "run_dir": str(run_dir),
    }
    for k, v in (record.get("method_params") or {}).items():
        params[f"method.{k}"] = v
    for k, v in (record.get("dataset_params") or {}).items():
        params[f"dataset.{k}"] = v
    for k, v in (identity.get("train") or {}).items():
        params[f"train.{k}"] = v
    # MLflow caps a parameter value at 6,000 characters
    return {mlflow_key(k): str(v)[:6000] for k, v in params.items() if v is not None}


def epoch_metrics(train_log: Path) -> list[tuple[str, float, int]]:
    """(key, value, step) for every numeric column of every row of ``train_log.csv``."""
    if not train_log.is_file():
        return []
    out: list[tuple[str, float, int]] = []
    with train_log.open() as fh:
        for row in csv.DictReader(fh):
            stage = row.get("stage") or "train"
            try:
                step = int(float(row.get("epoch") or 0))
            except ValueError:
                continue
            for col, raw in row.items():
                if col in ("stage", "epoch") or raw in (None, ""):
                    continue
                try:
                    value = float(raw)
                except ValueError:
                    continue
                if math.isfinite(value):
                    out.append((mlflow_key(f"{stage}.{col}"), value, step))
    return out


DB_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"


def default_tracking_uri(runs_dir: str | Path) -> str:
    """``sqlite:///<runs_dir>/mlflow.db`` (absolute), the store used without ``--tracking-uri``."""
    return "sqlite:///" + (Path(runs_dir).expanduser().resolve() / DB_NAME).as_posix()


def run_name(record: dict[str, Any], run_dir: Path) -> str:
    """``<method>-<dataset>-<run folder>``: method, dataset, backbone, seed and config hash."""
    return f"{record.get('method', 'run')}-{record.get('dataset', 'data')}-{run_dir.name}"


def _quiet_migrations() -> None:
    """MLflow's SQL store prints its own and alembic's INFO lines while it creates the tables."""
    import logging

    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_run_mlflow(run_dir: Path, record: dict[str, Any], metrics: dict[str, Any], *,
                   tracking_uri: str | None, runs_dir: Path) -> str:
    """Log one finished run to MLflow; returns the MLflow run id."""
    if tracking_uri:
        return _log(run_dir, record, metrics, tracking_uri, artifact_location=None)
    from fairbench.core.files import file_lock

    root = Path(runs_dir).expanduser().resolve()
    with file_lock(root / f".{DB_NAME}.lock"):  # one writer at a time on the SQLite file
        return _log(run_dir, record, metrics, default_tracking_uri(root),
                    artifact_location=(root / ARTIFACTS_NAME).as_uri())


def _log(run_dir: Path, record: dict[str, Any], metrics: dict[str, Any], uri: str, *,
         artifact_location: str | None) -> str:
    import time

    import mlflow
    from mlflow.entities import Metric, Param, RunTag, ViewType

    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store in maintenance mode and refuses it unless told; a user
        # who points --tracking-uri at one has chosen it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if uri.startswith("sqlite:"):
        _quiet_migrations()
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = f"fairbench-{record.get('dataset', 'runs')}"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    elif artifact_location is not None:
        experiment_id = client.create_experiment(
            name, artifact_location=f"{artifact_location}/{_safe_folder(name)}")
    else:
        experiment_id = client.create_experiment(name)
    config_hash = str(record.get("config_hash"))
    earlier = [r.info.run_id for r in client.search_runs(
        [experiment_id], filter_string=f"tags.`fairbench.config_hash` = '{config_hash}'",
        run_view_type=ViewType.ACTIVE_ONLY)]
    identity = record.get("identity", {})
    tags = {"fairbench.method": record.get("method"), "fairbench.dataset": record.get("dataset"),
            "fairbench.backbone": record.get("backbone"),
            "fairbench.seed": identity.get("seed", record.get("seed")),
            "fairbench.config_hash": config_hash, "fairbench.run_dir": str(run_dir)}
    if earlier:
        tags["fairbench.replaces"] = ",".join(earlier)
    run = client.create_run(experiment_id, run_name=run_name(record, run_dir),
                            tags={k: str(v) for k, v in tags.items() if v is not None})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in run_params(record, run_dir).items()]
        series = [Metric(k, v, now, step) for k, v, step in epoch_metrics(run_dir / "train_log.csv")]
        final = [Metric(mlflow_key(k), v, now, 0) for k, v in
                 flatten_numbers({part: metrics.get(part, {}) for part in ("val", "test")}).items()]
        batch = params + series + final
        for start in range(0, len(batch), 900):  # MLflow takes at most 1,000 entities a batch
            chunk = batch[start:start + 900]
            client.log_batch(run_id, metrics=[m for m in chunk if isinstance(m, Metric)],
                             params=[p for p in chunk if isinstance(p, Param)])
        for file in ("metrics.json", "config.json"):
            if (run_dir / file).is_file():
                client.log_artifact(run_id, str(run_dir / file))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    for old in earlier:  # a --force re-run: the new run replaces the earlier ones
        client.log_batch(old, tags=[RunTag("fairbench.replaced_by", run_id)])
        client.delete_run(old)
    return run_id


def _safe_folder(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]", "_", name)
