"""Sweeps with real (tiny) runs: dry run, resume after a crash (half-written temporary
directory; an exception mid-sweep), an edited suite running only what changed, the shared
vanilla baseline, the worker-pool executor, and leaderboard/plots from a suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fairbench import load_suite, run_suite
from fairbench.bench.executors import LocalExecutor
from fairbench.bench.sweep import plan
from fairbench.cli.main import main

SUITE = """
name = "tiny"
seeds = [0, 1]
runs_dir = "{runs}"

[train]
epochs = 1
batch_size = 32

[[datasets]]
name = "synthderm"
image_size = 16
backbones = ["smallcnn"]
params = {{ n_samples = 240 }}

[[methods]]
name = "vanilla"

[[methods]]
name = "fairquantize"
params = {{ retrain_epochs = 0, target_ratio = 0.1, step = 0.1, estimator = "fisher", score_samples = 16, save_every_step = true }}
grid = {{ beta = [1.0] }}
"""


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("FAIRBENCH_NO_PROGRESS", "1")
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def write_suite(dir_: Path, runs: Path, text: str = SUITE) -> Path:
    path = dir_ / "suite.toml"
    path.write_text(text.format(runs=runs))
    return path


def snapshot(runs: Path) -> dict[str, int]:
    """mtime (ns) of every file of every run and of the vanilla cache (the split files,
    rewritten identically by every run, are not run state)."""
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in runs.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")
            and p.relative_to(runs).parts[0] != "splits"}


def finished_dirs(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.glob("synthderm/*/*/config.json"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny suite, swept once (4 runs: vanilla and fairquantize, seeds 0 and 1)."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("swept")
    mp.setenv("FAIRBENCH_NO_PROGRESS", "1")
    mp.setenv("FAIRBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    suite_file = write_suite(base, base / "runs")
    report = run_suite(load_suite(suite_file), progress=False, echo=lambda s: None)
    mp.undo()
    assert not report.failed and len(report.ran) == 4
    return base


def copy_runs(swept: Path, tmp_path: Path) -> tuple[Path, Path]:
    runs = tmp_path / "runs"
    shutil.copytree(swept / "runs", runs)
    return runs, write_suite(tmp_path, runs)


def test_dry_run_lists_and_runs_nothing(tmp_path):
    suite_file = write_suite(tmp_path, tmp_path / "runs")
    res = CliRunner().invoke(main, ["sweep", str(suite_file), "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert sum(x.startswith("pending") for x in lines) == 4
    assert "fairquantize[beta=1.0]/seed 1" in res.output
    assert lines[-1].startswith("4 runs: 0 finished, 4 to run")
    assert not (tmp_path / "runs" / "synthderm").exists()
    assert not (tmp_path / "runs" / "_vanilla").exists()


def test_sweep_shares_vanilla_and_rerun_does_nothing(swept, tmp_path):
    runs, suite_file = copy_runs(swept, tmp_path)
    assert len(finished_dirs(runs)) == 4
    # one vanilla model per (dataset, split, backbone, seed), used by both methods
    assert len([p for p in (runs / "_vanilla").iterdir() if p.is_dir()]) == 2
    before = snapshot(runs)
    report = run_suite(load_suite(suite_file), progress=False, echo=lambda s: None)
    assert report.ran == [] and report.n_finished_before == 4
    assert snapshot(runs) == before
    res = CliRunner().invoke(main, ["sweep", str(suite_file), "--dry-run"])
    assert res.output.count("done ") == 4 and "4 finished, 0 to run" in res.output


def test_edited_suite_only_runs_what_changed(swept, tmp_path):
    runs, _ = copy_runs(swept, tmp_path)
    before = snapshot(runs)
    edited = write_suite(tmp_path, runs, SUITE.replace("beta = [1.0]", "beta = [1.0, 0.5]"))
    planned = plan(load_suite(edited))
    assert sum(not p.finished for p in planned) == 2
    report = run_suite(load_suite(edited), progress=False, echo=lambda s: None)
    assert len(report.ran) == 2
    assert {o.task.config.method_params["beta"] for o in report.ran} == {0.5}
    after = snapshot(runs)
    assert {k: after[k] for k in before} == before      # finished runs and baselines untouched
    assert len(finished_dirs(runs)) == 6
    assert len([p for p in (runs / "_vanilla").iterdir() if p.is_dir()]) == 2  # reused


def test_resume_after_killed_run(swept, tmp_path):
    """A kill -9 mid-run leaves only a hidden temporary directory: it never reads as
    finished, and the next sweep redoes that run alone and removes the leftover."""
    runs, suite_file = copy_runs(swept, tmp_path)
    victim = next(p for p in finished_dirs(runs) if "fairquantize" in str(p) and "-s1-" in p.name)
    shutil.rmtree(victim)
    leftover = victim.with_name(f".{victim.name}.tmp-999999999")   # a dead writer's pid
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    (leftover / "train_log.csv").write_text("partial")
    before = snapshot(runs)
    planned = plan(load_suite(suite_file))
    assert [p.run_dir for p in planned if not p.finished] == [victim]
    report = run_suite(load_suite(suite_file), progress=False, echo=lambda s: None)
    assert [o.run_dir for o in report.ran] == [victim]
    assert victim.is_dir() and not leftover.exists()
    after = snapshot(runs)
    untouched = {k: v for k, v in before.items() if not k.startswith(str(leftover.relative_to(runs)))}
    assert {k: after[k] for k in untouched} == untouched


def test_exception_mid_sweep_then_resume(swept, tmp_path, monkeypatch):
    runs, suite_file = copy_runs(swept, tmp_path)
    for d in finished_dirs(runs):
        if "fairquantize" in str(d):
            shutil.rmtree(d)
    before = snapshot(runs)
    from fairbench import get_method_class

    cls = get_method_class("fairquantize")
    original = cls.run

    def flaky(self, ctx, params):
        if ctx.seed == 1:
            raise RuntimeError("simulated crash")
        return original(self, ctx, params)

    monkeypatch.setattr(cls, "run", flaky)
    res = CliRunner().invoke(main, ["sweep", str(suite_file), "-q"])
    assert res.exit_code == 1
    assert "simulated crash" in res.output and "run the sweep again to resume" in res.output
    done = [d for d in finished_dirs(runs) if "fairquantize" in str(d)]
    assert len(done) == 1 and "-s0-" in done[0].name
    assert not list(runs.glob("synthderm/*/.*tmp*"))     # the failed run left nothing
    s0 = snapshot(runs)
    monkeypatch.setattr(cls, "run", original)
    report = run_suite(load_suite(suite_file), progress=False, echo=lambda s: None)
    assert len(report.ran) == 1 and report.ran[0].task.config.seed == 1
    after = snapshot(runs)
    assert {k: after[k] for k in s0} == s0             # the seed-0 run and vanilla untouched
    assert {k: after[k] for k in before} == before


def test_keep_going_runs_the_others(swept, tmp_path, monkeypatch):
    runs, suite_file = copy_runs(swept, tmp_path)
    for d in finished_dirs(runs):
        if "fairquantize" in str(d):
            shutil.rmtree(d)
    from fairbench import get_method_class

    cls = get_method_class("fairquantize")
    original = cls.run
    monkeypatch.setattr(cls, "run", lambda self, ctx, p: (_ for _ in ()).throw(
        RuntimeError("boom")) if ctx.seed == 0 else original(self, ctx, p))
    report = run_suite(load_suite(suite_file), keep_going=True, progress=False,
                       echo=lambda s: None)
    assert len(report.failed) == 1 and len(report.ran) == 1 and not report.stopped_early


def test_leaderboard_and_plots_from_suite(swept, tmp_path):
    suite_file = write_suite(tmp_path, swept / "runs")
    cli = CliRunner()
    res = cli.invoke(main, ["leaderboard", str(suite_file)])
    assert res.exit_code == 0, res.output
    assert "| vanilla | light |" in res.output and "| fairquantize | light |" in res.output
    assert "seeds 0, 1" in res.output
    res = cli.invoke(main, ["leaderboard", str(suite_file), "--view", "compact", "--ci",
                            "--n-boot", "50"])
    assert res.exit_code == 0 and "[" in res.output
    fq = [d for d in finished_dirs(swept / "runs") if "fairquantize" in str(d)]
    # steps.csv as FairQuantize writes it (save_every_step=true) feeds the ablation plot
    res = cli.invoke(main, ["plot", "ablation", *map(str, fq), "--out", str(tmp_path / "abl")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "abl.png").stat().st_size > 1000
    res = cli.invoke(main, ["plot", "tradeoff", str(suite_file), "--out", str(tmp_path / "tr")])
    assert res.exit_code == 0, res.output
    (pdf,) = tmp_path.glob("tr-*.pdf")   # named after its table
    assert pdf.name.startswith("tr-") and pdf.stat().st_size > 1000
    # a suite whose runs are not there yet: a clear error
    (tmp_path / "e").mkdir()
    empty = write_suite(tmp_path / "e", tmp_path / "no-runs")
    res = cli.invoke(main, ["leaderboard", str(empty)])
    assert res.exit_code == 2 and "fairbench sweep" in res.output


def test_worker_pool_executor(swept, tmp_path):
    """Two worker processes (as one per GPU), here on the CPU; reuses finished runs too."""
    runs, suite_file = copy_runs(swept, tmp_path)
    victims = [d for d in finished_dirs(runs) if "fairquantize" in str(d)]
    for d in victims:
        shutil.rmtree(d)
    ex = LocalExecutor(devices=["cpu", "cpu"])
    assert "2 workers" in ex.describe()
    report = run_suite(load_suite(suite_file), executor=ex, progress=False, echo=lambda s: None)
    assert not report.failed, [o.error for o in report.failed]
    assert sorted(o.run_dir for o in report.ran) == sorted(victims)


def test_in_process_runs_report_their_phases_and_a_finished_sweep_shows_no_bar(tmp_path):
    from fairbench.bench.executors import LocalExecutor, RunTask
    from fairbench.bench.sweep import run_suite
    from fairbench.testing import tiny_run_config

    seen: list[tuple[str, str]] = []
    task = RunTask(0, tiny_run_config("vanilla", tmp_path / "runs"), "tiny vanilla")
    (outcome,) = list(LocalExecutor().run([task], on_phase=lambda t, ph: seen.append(
        (t.label, ph))))
    assert outcome.ok
    phases = [ph for _, ph in seen]
    assert phases[0] == "start" and {"data", "vanilla", "evaluate"} <= set(phases)
    assert {label for label, _ in seen} == {"tiny vanilla"}
    # the callback never reaches the run's identity or its files
    assert "on_phase" not in (outcome.run_dir / "config.json").read_text()
    # a suite whose runs are all finished: one line, no progress bar
    suite_file = write_suite(tmp_path, tmp_path / "sruns")
    lines: list[str] = []
    run_suite(load_suite(suite_file), echo=lines.append, progress=False)
    lines.clear()
    report = run_suite(load_suite(suite_file), echo=lines.append, progress=True)
    assert not report.ran and lines[-1].endswith("nothing to run")
