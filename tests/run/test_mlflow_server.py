"""The MLflow commands of docs/scale-out.md, as a user runs them: ``fairbench run --tracking mlflow`` logs to
the SQLite store in the runs folder, ``mlflow ui --backend-store-uri sqlite:///RUNS/mlflow.db``
serves it, and everything comes back through MLflow's REST API (parameters, metrics, tags,
artifacts); a ``--force`` re-run logged through that server replaces the earlier MLflow run.

The server is a real ``mlflow ui`` process on 127.0.0.1 (a free port), started in its own
process group, waited for at most 120 s, and stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("mlflow")
pytest.importorskip("flask", reason="the mlflow extra's full package (mlflow ui) is needed")
pytest.importorskip("sqlalchemy", reason="the mlflow extra's full package is needed")

from fairbench.cli.main import main

pytestmark = pytest.mark.slow  # a real server: about 10-20 s on 2 cores

START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_ui(store: str, cwd: Path) -> Iterator[str]:
    """``mlflow ui --backend-store-uri STORE`` on 127.0.0.1; yields its base URL."""
    port = _free_port()
    log = (cwd / "mlflow-ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                log.flush()
                raise AssertionError("mlflow ui exited: "
                                     + (cwd / "mlflow-ui.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow ui did not answer within {START_TIMEOUT_S} s: "
                                     + (cwd / "mlflow-ui.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers (our group)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def _get(base: str, path: str, **query: Any) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as r:
        body = r.read()
    return json.loads(body)


def _post(base: str, path: str, payload: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
        return json.loads(r.read())


def _search(base: str, experiment_id: str, view: str = "ACTIVE_ONLY") -> list[dict[str, Any]]:
    out = _post(base, "/api/2.0/mlflow/runs/search",
                {"experiment_ids": [experiment_id], "run_view_type": view})
    return out.get("runs", [])


def _as_dict(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["key"]: e["value"] for e in entries}


TINY = ["--data-param", "n_samples=160", "--data-param", "n_classes=3", "--image-size", "16",
        "--backbone", "smallcnn", "--train", "epochs=1", "--train", "batch_size=16", "-q"]


def test_readme_commands_against_a_real_mlflow_ui(tmp_path, tiny_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    # docs/scale-out.md: fairbench run ... --tracking mlflow   (runs folder ./runs)
    r = cli.invoke(main, ["run", "--tracking", "mlflow", "--cache-dir", str(tiny_cache), *TINY])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    assert "mlflow ui --backend-store-uri sqlite:///" in r.output  # where to look
    (run_dir,) = (tmp_path / "runs" / "synthderm" / "vanilla").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())

    # docs/scale-out.md: mlflow ui --backend-store-uri sqlite:///runs/mlflow.db
    with mlflow_ui("sqlite:///runs/mlflow.db", tmp_path) as base:
        exp = _get(base, "/api/2.0/mlflow/experiments/get-by-name",
                   experiment_name="fairbench-synthderm")["experiment"]
        (run,) = _search(base, exp["experiment_id"])
        info, data = run["info"], run["data"]
        assert info["status"] == "FINISHED"
        assert info["run_name"] == f"vanilla-synthderm-{run_dir.name}"
        assert run_dir.name.startswith("smallcnn-s0-")
        params = _as_dict(data["params"])
        assert params["method"] == "vanilla" and params["seed"] == "0"
        assert params["backbone"] == "smallcnn" and params["dataset.n_samples"] == "160"
        assert params["split_sha256"] == config["split_sha256"]
        tags = _as_dict(data["tags"])
        assert tags["fairbench.config_hash"] == config["config_hash"]
        assert "fairbench.replaces" not in tags
        values = _as_dict(data["metrics"])
        assert values["test.F1"] == pytest.approx(metrics["test"]["F1"])
        assert values["test.EqOddsGap"] == pytest.approx(metrics["test"]["EqOddsGap"])
        assert values["val.light.F1"] == pytest.approx(metrics["val"]["light"]["F1"])
        history = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=info["run_id"],
                       metric_key="vanilla.train_loss")["metrics"]
        assert [m["step"] for m in history] == [1]
        listed = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=info["run_id"])
        assert {f["path"] for f in listed["files"]} == {"metrics.json", "config.json"}
        # the file as the UI downloads it
        with urllib.request.urlopen(
                f"{base}/get-artifact?{urllib.parse.urlencode({'path': 'metrics.json', 'run_uuid': info['run_id']})}",
                timeout=REQUEST_TIMEOUT_S) as resp:
            assert json.loads(resp.read()) == metrics

        # a --force re-run logged through the server replaces the earlier MLflow run
        r = cli.invoke(main, ["run", "--tracking", "mlflow", "--tracking-uri", base, "--force",
                              "--cache-dir", str(tiny_cache), *TINY])
        assert r.exit_code == 0, r.output
        (new,) = _search(base, exp["experiment_id"])
        assert new["info"]["run_id"] != info["run_id"]
        assert new["info"]["run_name"] == info["run_name"]
        assert _as_dict(new["data"]["tags"])["fairbench.replaces"] == info["run_id"]
        (old,) = _search(base, exp["experiment_id"], view="DELETED_ONLY")
        assert old["info"]["run_id"] == info["run_id"]
        assert _as_dict(old["data"]["tags"])["fairbench.replaced_by"] == new["info"]["run_id"]
        listed = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=new["info"]["run_id"])
        assert {f["path"] for f in listed["files"]} == {"metrics.json", "config.json"}
