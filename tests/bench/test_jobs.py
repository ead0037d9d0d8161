"""The local executor's ``--jobs N``: runs side by side in worker processes, each baseline
first, with results identical to a serial sweep at the same thread count."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fairbench import load_suite, run_suite
from fairbench.bench.executors import LocalExecutor, RunTask, baseline_groups
from fairbench.cli.main import main

SUITE = """
name = "jobs"
seeds = [0, 1]
runs_dir = "{runs}"

[train]
epochs = 1
batch_size = 32

[[datasets]]
name = "synthderm"
image_size = 16
backbones = ["smallcnn"]
params = {{ n_samples = 240, scenario = "annotation" }}
backbone_params = {{ width = 8 }}

[[methods]]
name = "vanilla"

[[methods]]
name = "resampling"

"""


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("FAIRBENCH_NO_PROGRESS", "1")
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _suite(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SUITE.format(runs=tmp_path / name))
    return path


def _results(runs: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for cfg in sorted(runs.glob("synthderm/*/*/config.json")):
        run = cfg.parent
        out[str(run.relative_to(runs))] = ((run / "metrics.json").read_text(),
                                           (run / "predictions.csv").read_text())
    return out


@pytest.mark.slow
def test_jobs_side_by_side_equal_the_serial_sweep(tmp_path):
    serial = run_suite(load_suite(_suite(tmp_path, "serial")),
                       executor=LocalExecutor(threads=1), progress=False, echo=lambda s: None)
    executor = LocalExecutor(jobs=2, threads=1)
    assert "2 jobs" in executor.describe()
    parallel = run_suite(load_suite(_suite(tmp_path, "parallel")), executor=executor,
                         progress=False, echo=lambda s: None)
    assert not serial.failed and not parallel.failed, [o.error for o in parallel.failed]
    assert len(serial.ran) == len(parallel.ran) == 4
    a, b = _results(tmp_path / "serial"), _results(tmp_path / "parallel")
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:  # same run folders (identities), byte-identical metrics and predictions
        assert a[key] == b[key], key
    # both vanilla runs finished before any run that needs their baseline
    order = [o.task.config.method for o in parallel.ran]
    assert order[:2] == ["vanilla", "vanilla"]


def test_baseline_groups_put_vanilla_first(tmp_path):
    suite = load_suite(_suite(tmp_path, "plan"))
    tasks = [RunTask(i, c.config) for i, c in enumerate(reversed(suite.expand()))]
    groups = baseline_groups(tasks)
    assert len(groups) == 2
    for first, rest in groups:
        assert first is not None and first.config.method == "vanilla" and len(rest) == 1
        assert {t.config.seed for t in rest} == {first.config.seed}


def test_jobs_options_are_checked(tmp_path):
    from fairbench.core.errors import FairbenchError

    with pytest.raises(FairbenchError, match="--jobs"):
        LocalExecutor(jobs=0)
    with pytest.raises(FairbenchError, match="--devices"):
        LocalExecutor(["cpu", "cpu"], jobs=2)
    res = CliRunner().invoke(main, ["sweep", str(_suite(tmp_path, "x")), "--jobs", "2",
                                    "--executor", "ray"])
    assert res.exit_code == 2 and "local executor only" in res.output


def test_threads_apply_to_in_process_runs_and_are_restored(monkeypatch):
    import torch

    import fairbench.bench.executors as ex
    from fairbench import RunConfig

    seen = []
    monkeypatch.setattr(ex, "execute_task", lambda task, device=None, wait=True: seen.append(
        torch.get_num_threads()) or ex.TaskOutcome(task, True))
    before = torch.get_num_threads()
    target = 2 if before != 2 else 3
    outcomes = list(LocalExecutor(threads=target).run([RunTask(0, RunConfig(device="cpu")), RunTask(1, RunConfig(device="cpu"))]))
    assert len(outcomes) == 2 and seen == [target, target]
    assert torch.get_num_threads() == before
