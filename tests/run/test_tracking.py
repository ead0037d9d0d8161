"""``--tracking mlflow``: a finished run's parameters, per-epoch metrics, final metrics and
metrics JSON land in the SQLite store of the runs folder (``RUNS/mlflow.db``), under a run name
that says method, dataset, backbone and seed; a ``--force`` re-run replaces the earlier MLflow
run; a missing extra is one clear line. (A real ``mlflow ui`` server reading that store back:
``test_mlflow_server.py``.)"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os

import pytest
from click.testing import CliRunner
from repo_paths import ROOT

from fairbench import run_experiment
from fairbench.cli.main import main
from fairbench.run.tracking import (
    default_tracking_uri,
    epoch_metrics,
    flatten_numbers,
    mlflow_key,
)


def test_flatten_and_keys():
    tree = {"test": {"F1": 0.5, "light": {"F1": 0.7}, "n": 3, "ok": True, "bad": float("nan"),
                     "name": "x", "worst": {"F1": None}}}
    assert flatten_numbers(tree) == {"test.F1": 0.5, "test.light.F1": 0.7, "test.n": 3.0}
    assert mlflow_key("test.I-III (light).F1") == "test.I-III _light_.F1"  # MLflow: no ()
    assert mlflow_key("a:b|c") == "a_b_c"


def test_epoch_metrics_reads_the_training_log(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("stage,epoch,train_loss,val_F1,lr\nvanilla,1,0.9,0.5,0.01\n"
                   "vanilla,2,0.7,,0.005\nretrain,1,0.6,0.55,nan\n")
    got = epoch_metrics(log)
    assert ("vanilla.train_loss", 0.9, 1) in got and ("vanilla.train_loss", 0.7, 2) in got
    assert ("retrain.val_F1", 0.55, 1) in got
    assert not [k for k, _, s in got if k == "vanilla.val_F1" and s == 2]  # empty cell skipped
    assert not [k for k, _, _ in got if k == "retrain.lr"]  # NaN skipped
    assert epoch_metrics(tmp_path / "missing.csv") == []


def test_run_logged_to_the_sqlite_store_of_the_runs_folder(tmp_path, make_tiny_config,
                                                           monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # not needed any more
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    runs = tmp_path / "runs"
    config = dataclasses.replace(make_tiny_config("vanilla", runs), tracking="mlflow")
    result = run_experiment(config)
    assert default_tracking_uri(runs) == f"sqlite:///{(runs / 'mlflow.db').resolve()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(runs))
    experiment = client.get_experiment_by_name("fairbench-synthderm")
    assert experiment is not None
    assert experiment.artifact_location.startswith((runs / "mlartifacts").resolve().as_uri())
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"vanilla-synthderm-{result.run_dir.name}"
    assert result.run_dir.name.startswith("smallcnn-s0-")
    assert run.data.tags["fairbench.backbone"] == "smallcnn"
    assert run.data.tags["fairbench.seed"] == "0"
    params = run.data.params
    assert params["method"] == "vanilla" and params["seed"] == "0"
    assert params["train.epochs"] == "1" and params["dataset.n_samples"] == "160"
    assert params["split_sha256"] == result.config["identity"]["split"]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert run.data.metrics["test.F1"] == pytest.approx(metrics["test"]["F1"])
    assert run.data.metrics["test.EOdd"] == pytest.approx(metrics["test"]["EOdd"])
    assert run.data.metrics["val.light.F1"] == pytest.approx(metrics["val"]["light"]["F1"])
    history = client.get_metric_history(run.info.run_id, "vanilla.train_loss")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.json"} <= artifacts
    # a reused run is not logged twice
    again = run_experiment(config)
    assert again.reused
    assert len(client.search_runs([experiment.experiment_id])) == 1
    # a forced re-run replaces it: one active run under the name, the old one deleted and
    # pointing at its successor
    forced = run_experiment(dataclasses.replace(config, force=True))
    assert not forced.reused
    (new,) = client.search_runs([experiment.experiment_id])
    assert new.info.run_id != run.info.run_id and new.info.run_name == run.info.run_name
    assert new.data.tags["fairbench.replaces"] == run.info.run_id
    old = client.get_run(run.info.run_id)
    assert old.info.lifecycle_stage == "deleted"
    assert old.data.tags["fairbench.replaced_by"] == new.info.run_id
    # the leaderboard's run discovery ignores the store, its artifacts and its lock
    from fairbench.bench.leaderboard import collect_runs

    assert {r.path for r in collect_runs(runs)} == {result.run_dir}


def test_tracking_failure_keeps_the_run(tmp_path, make_tiny_config, caplog):
    pytest.importorskip("mlflow")
    runs = tmp_path / "runs"
    config = dataclasses.replace(make_tiny_config("vanilla", runs), tracking="mlflow",
                                 tracking_uri="http://127.0.0.1:9")  # nothing listens there
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    try:
        result = run_experiment(config)
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert (result.run_dir / "metrics.json").is_file()
    assert "logging it to MLflow failed" in caplog.text


def test_missing_mlflow_is_one_clear_line(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    r = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path / "runs"), "--tracking",
                                  "mlflow", "-q"])
    assert r.exit_code == 2, r.output
    assert "pip install" in r.output and "mlflow" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "runs").exists()
    r = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path / "runs"),
                                  "--tracking-uri", "file:///x", "-q"])
    assert r.exit_code == 2 and "--tracking-uri needs --tracking mlflow" in r.output


def test_docs_mlflow_commands_are_the_tested_ones():
    """The MLflow commands of docs/scale-out.md are the ones tests/run/test_mlflow_server.py runs."""

    root = ROOT
    page = (root / "docs" / "scale-out.md").read_text()
    section = page[page.index("\n## MLflow tracking\n"):]
    end = section.find("\n## ", 1)
    section = section[:end if end != -1 else None]
    assert 'pip install -e ".[mlflow]"' in section
    assert "--tracking mlflow" in section
    assert "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db" in section
    server_test = (root / "tests" / "run" / "test_mlflow_server.py").read_text()
    assert 'mlflow_ui("sqlite:///runs/mlflow.db", tmp_path)' in server_test
