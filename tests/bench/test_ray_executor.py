"""The Ray executor against a real local Ray cluster (2 CPUs, loopback only): a small suite
runs through it, a worker killed mid-run is retried, nothing half-written reads as finished,
and every result matches the local executor's run for run. Skipped when Ray is not installed
(CI installs the ``ray`` extra)."""

from __future__ import annotations

import builtins
import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fairbench import RunConfig, load_suite, run_suite
from fairbench.bench.executors import LocalExecutor, RayExecutor, RunTask, baseline_groups
from fairbench.cli.main import main
from fairbench.run.store import is_finished

PLUGIN = '''
"""Test plugin: a post-hoc method whose first attempt kills its own worker process."""
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from fairbench import Method, param, register_method


@dataclass
class KillOnceParams:
    marker: str = param("", help="file that records the first attempt")


@register_method("killonce")
class KillOnce(Method):
    """Kills its worker on the first attempt (after the run's temporary folder exists)."""

    Params = KillOnceParams
    kind = "post-hoc"

    def run(self, ctx, params):
        model = ctx.vanilla()
        marker = Path(params.marker)
        if params.marker and not marker.exists():
            marker.write_text(str(os.getpid()))
            (ctx.run_dir / "half-written.txt").write_text("the worker dies now")
            os.kill(os.getpid(), signal.SIGKILL)
        return model
'''


def _suite(tmp_path: Path, runs: Path, marker: Path) -> Path:
    plugin = tmp_path / "killonce_plugin.py"
    plugin.write_text(PLUGIN)
    suite = tmp_path / "suite.toml"
    suite.write_text(textwrap.dedent(f"""
        name = "ray-check"
        seeds = 2
        runs_dir = "{runs}"
        cache_dir = "{tmp_path / 'cache'}"
        device = "cpu"
        plugins = ["{plugin}"]
        [train]
        epochs = 1
        batch_size = 16
        [[datasets]]
        name = "synthderm"
        image_size = 16
        backbones = ["smallcnn"]
        backbone_params = {{ width = 8 }}
        params = {{ n_samples = 160, n_classes = 3, images_per_patient = 1.0 }}
        [[methods]]
        name = "vanilla"
        [[methods]]
        name = "killonce"
        params = {{ marker = "{marker}" }}
    """))
    return suite


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", object_store_memory=100 * 1024**2)
    yield ray
    ray.shutdown()


def _test_metrics(runs: Path) -> dict[str, dict]:
    out = {}
    for metrics in runs.glob("synthderm/*/*/metrics.json"):
        out[str(metrics.parent.relative_to(runs))] = json.loads(metrics.read_text())["test"]
    return out


def test_suite_on_ray_retries_a_killed_worker_and_matches_local(tmp_path, ray_cluster,
                                                               fresh_registries):
    marker = tmp_path / "killed-once"
    ray_runs, local_runs = tmp_path / "ray_runs", tmp_path / "local_runs"
    suite = load_suite(str(_suite(tmp_path, ray_runs, marker)))
    executor = RayExecutor(cpus_per_run=1, max_retries=2)
    report = run_suite(suite, executor=executor, progress=False, echo=lambda s: None)
    assert not report.failed and len(report.ran) == 4
    assert marker.exists()  # the first killonce attempt died...
    finished = [p.parent for p in ray_runs.glob("synthderm/*/*/metrics.json")]
    assert len(finished) == 4 and all(is_finished(p) for p in finished)
    # ...and left nothing behind: no temporary folder, no half-written file in a result
    assert not list(ray_runs.glob("synthderm/*/.*"))
    assert not list(ray_runs.glob("synthderm/*/*/half-written.txt"))
    # one baseline per seed, trained once (the vanilla runs went first)
    assert len([d for d in (ray_runs / "_vanilla").iterdir() if d.is_dir()]) == 2
    # a second sweep finds everything finished
    again = run_suite(load_suite(str(_suite(tmp_path, ray_runs, marker))),
                      executor=executor, progress=False, echo=lambda s: None)
    assert again.ran == [] and again.n_finished_before == 4

    # the local executor, same thread count as a Ray CPU run, gives the same numbers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = load_suite(str(_suite(tmp_path, local_runs, marker)))
        run_suite(local, executor=LocalExecutor(), progress=False, echo=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    ray_metrics, local_metrics = _test_metrics(ray_runs), _test_metrics(local_runs)
    assert ray_metrics.keys() == local_metrics.keys() and len(ray_metrics) == 4
    for key in ray_metrics:
        assert ray_metrics[key]["F1"] == pytest.approx(local_metrics[key]["F1"], abs=1e-12), key
        assert ray_metrics[key]["EOdd"] == pytest.approx(local_metrics[key]["EOdd"], abs=1e-12)


def test_a_run_that_raises_is_reported_not_retried(tmp_path, ray_cluster):
    config = RunConfig(method="vanilla", dataset_params={"n_samples": 160, "n_classes": 3},
                       train={"epochs": 1, "lr": -1.0}, device="cpu",
                       runs_dir=str(tmp_path / "runs"), progress=False)
    (outcome,) = list(RayExecutor().run([RunTask(0, config, "bad lr")]))
    assert not outcome.ok and outcome.user_error and "lr" in outcome.error
    assert not (tmp_path / "runs" / "synthderm").exists()


def test_baseline_groups_put_the_vanilla_run_first():
    def task(i, method, seed, lr=0.01):
        return RunTask(i, RunConfig(method=method, seed=seed, train={"lr": lr}), f"{method}{seed}")

    tasks = [task(0, "fairquantize", 0), task(1, "vanilla", 0), task(2, "fairprune", 0),
             task(3, "fairprune", 1), task(4, "fairquantize", 0, lr=0.1)]
    groups = baseline_groups(tasks)
    firsts = {g[0].label: [t.label for t in g[1]] for g in groups}
    assert firsts == {"vanilla0": ["fairquantize0", "fairprune0"], "fairprune1": [],
                      "fairquantize0": []}  # another lr is another baseline


def test_missing_ray_is_one_clear_line(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from repo_paths import BENCHMARKS  # here: Ray workers import this module without tests/

    suite = str(BENCHMARKS / "quick.toml")
    r = CliRunner().invoke(main, ["sweep", suite, "--executor", "ray", "-q",
                                  "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 2, r.output
    assert 'pip install -e ".[ray]"' in r.output and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()
    r = CliRunner().invoke(main, ["sweep", suite, "--address", "auto", "-q",
                                  "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "--executor ray only" in r.output
