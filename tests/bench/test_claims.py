"""Processes sharing a runs folder: the lock (released on death, leaving no file), run claims,
two sweeps splitting one suite with no run computed twice, and a killed sweep's run taken over
by another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fairbench.core.files import LockBusy, file_lock, holder_note
from fairbench.run.store import RunClaimed, claim_path, claim_run, is_finished


# -- the lock ----------------------------------------------------------------------------------
def test_lock_is_exclusive_and_leaves_no_file(tmp_path):
    path = tmp_path / "x.lock"
    with file_lock(path, note="me"):
        assert path.read_text() == "me"
        # another open file description (as another process would have) cannot take it
        with pytest.raises(LockBusy), file_lock(path, blocking=False):
            pass
        assert holder_note(path) == "me"
    assert not path.exists() and holder_note(path) is None
    with file_lock(path, remove=False):
        pass
    assert path.exists() and holder_note(path) is None  # a file nobody holds
    assert holder_note(path, clean=True) is None and not path.exists()


def test_waiter_on_a_removed_lock_file_takes_the_new_one(tmp_path):
    """A holder removes the lock file when it releases; a process that was waiting on the
    removed file must not believe it holds the lock while a newcomer holds the new file."""
    path = tmp_path / "x.lock"
    order: list[str] = []
    first_in = threading.Event()

    def waiter():
        first_in.wait()
        with file_lock(path):
            order.append("waiter in")
            # while the waiter holds it, nobody else can take it
            with pytest.raises(LockBusy), file_lock(path, blocking=False):
                pass
            time.sleep(0.2)
            order.append("waiter out")

    t = threading.Thread(target=waiter)
    t.start()
    with file_lock(path):
        first_in.set()
        time.sleep(0.3)  # the waiter blocks on this file, which is removed on release
    with file_lock(path):  # competes with the waiter for the new file: one at a time
        order.append("newcomer")
    t.join()
    assert order in (["waiter in", "waiter out", "newcomer"],
                     ["newcomer", "waiter in", "waiter out"])
    assert not path.exists()


def test_claims_are_reentrant_and_exclusive(tmp_path):
    run = tmp_path / "ds" / "m" / "run"
    with claim_run(run):
        with claim_run(run, wait=False):  # the same process: re-entrant
            pass
        assert claim_path(run).exists()
        assert "pid=" in holder_note(claim_path(run))
    assert not claim_path(run).exists()
    # held as another process would hold it
    with file_lock(claim_path(run), note="elsewhere pid=1"), \
            pytest.raises(RunClaimed, match="elsewhere pid=1"), claim_run(run, wait=False):
        pass


# -- processes ---------------------------------------------------------------------------------
PLUGIN = '''
import os
import time
from pathlib import Path

from fairbench import Method, register_method


@register_method("slowrun")
class SlowRun(Method):
    """Returns an untrained model after a pause; logs who computed which seed."""

    kind = "post-hoc"

    def run(self, ctx, params):
        hold = Path(os.environ["FB_TEST_HOLD"])
        if hold.exists():  # the process to be killed: tell the test, then wait
            Path(os.environ["FB_TEST_STARTED"]).write_text(str(os.getpid()))
            while hold.exists():
                time.sleep(0.05)
        time.sleep(float(os.environ.get("FB_TEST_SLEEP", "0")))
        with open(os.environ["FB_TEST_LOG"], "a") as fh:
            fh.write(f"{os.getpid()} {ctx.seed}\\n")
        return ctx.new_model()
'''

SUITE = """
name = "claims"
seeds = {seeds}
runs_dir = "{runs}"
plugins = ["{plugin}"]
[train]
epochs = 1
batch_size = 16
eval_batch_size = 64
[[datasets]]
name = "synthderm"
image_size = 16
privileged = "light"
backbones = ["smallcnn"]
backbone_params = {{ width = 4 }}
params = {{ n_samples = 160, n_classes = 3, images_per_patient = 1.0, dark_fraction = 0.4 }}
[[methods]]
name = "slowrun"
"""


def _setup(tmp_path: Path, seeds: int, tiny_cache: Path, sleep: float = 0.0):
    plugin = tmp_path / "slow_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    runs = tmp_path / "runs"
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(seeds=seeds, runs=runs, plugin=plugin))
    env = {**os.environ, "FAIRBENCH_NO_PROGRESS": "1", "FAIRBENCH_CACHE": str(tiny_cache),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "FB_TEST_LOG": str(tmp_path / "computed.log"), "FB_TEST_SLEEP": str(sleep),
           "FB_TEST_HOLD": str(tmp_path / "hold"), "FB_TEST_STARTED": str(tmp_path / "started")}
    return suite, runs, env


def _sweep(suite: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fairbench.cli", "sweep", str(suite), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)


def _finished_runs(runs: Path) -> list[Path]:
    return [d for d in (runs / "synthderm" / "slowrun").iterdir() if is_finished(d)]


@pytest.mark.slow
def test_two_sweeps_split_the_runs_and_compute_none_twice(tmp_path, tiny_cache):
    seeds = 6
    suite, runs, env = _setup(tmp_path, seeds, tiny_cache, sleep=1.5)
    procs = [_sweep(suite, env, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    log = (tmp_path / "computed.log").read_text().split()
    pids, computed = log[0::2], [int(s) for s in log[1::2]]
    assert sorted(computed) == list(range(seeds))  # every run computed, none twice
    assert len(set(pids)) == 2, log  # both processes did some of the work
    assert len(_finished_runs(runs)) == seeds
    for run in _finished_runs(runs):  # each run records the process that computed it
        pid = json.loads((run / "config.json").read_text())["pid"]
        assert str(pid) in pids
    assert not list(runs.rglob(".*.claim")) and not list(runs.rglob(".*tmp*"))
    # each sweep says how much the other did
    assert any("finished by another process" in out for out, _ in outs), outs


@pytest.mark.slow
def test_a_killed_sweeps_run_is_taken_over(tmp_path, tiny_cache):
    suite, runs, env = _setup(tmp_path, 1, tiny_cache)
    (tmp_path / "hold").write_text("")
    first = _sweep(suite, env, tmp_path)
    started = tmp_path / "started"
    deadline = time.time() + 120
    while not started.exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    second = _sweep(suite, env, tmp_path)  # finds the run claimed, waits for it
    time.sleep(3)
    assert second.poll() is None
    os.kill(first.pid, signal.SIGKILL)  # the claimant dies mid-run: its claim is released
    first.wait(timeout=30)
    (tmp_path / "hold").unlink()
    _out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    (run,) = _finished_runs(runs)
    assert json.loads((run / "config.json").read_text())["pid"] == second.pid
    log = (tmp_path / "computed.log").read_text().split()
    assert log == [str(second.pid), "0"]
    # the dead process's temporary folder was removed by the process that took over
    assert not list(runs.rglob(".*tmp*")) and not list(runs.rglob(".*.claim"))


def test_claimed_run_is_deferred_then_reused(tmp_path, tiny_run, make_tiny_config, monkeypatch):
    """In one process: a run claimed elsewhere is left for later (no data loaded for it), and
    reused once the other process finished it."""
    import shutil

    from fairbench.bench.executors import LocalExecutor, RunTask

    src = tiny_run.run_dir.parents[2]
    root = tmp_path / "runs"
    shutil.copytree(src, root)
    run = root / tiny_run.run_dir.relative_to(src)
    cfg = make_tiny_config("vanilla", root)
    calls: list[str] = []
    import fairbench.bench.executors as ex

    real = ex.run_experiment

    def spy(c):
        calls.append(c.wait_for_claim)
        return real(c)

    monkeypatch.setattr(ex, "run_experiment", spy)
    task = RunTask(0, cfg, "vanilla", run_dir=run)
    held = threading.Event()
    release = threading.Event()

    def other_process():
        with file_lock(claim_path(run), note="other pid=2"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=other_process)
    t.start()
    held.wait(5)
    outcomes = LocalExecutor().run([task])
    threading.Timer(0.5, release.set).start()
    (outcome,) = list(outcomes)
    t.join()
    assert outcome.ok and outcome.reused and calls == [True]  # skipped once, then waited
    assert is_finished(run)
