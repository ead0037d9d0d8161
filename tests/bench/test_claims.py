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
        seeds = os.environ.get("FB_TEST_HOLD_SEEDS")  # unset: every seed waits
        if hold.exists() and (seeds is None or str(ctx.seed) in seeds.split(",")):
            # the process to be killed (or held): tell the test, then wait
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


def _computed(tmp_path: Path) -> list[tuple[int, int]]:
    """(pid, seed) of every run the plugin computed, in order."""
    log = tmp_path / "computed.log"
    words = log.read_text().split() if log.exists() else []
    return [(int(p), int(s)) for p, s in zip(words[0::2], words[1::2])]


def _wait_for(cond, procs, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, (what, p.communicate())
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _files(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(f.relative_to(run)): (f.read_bytes(), f.stat().st_mtime_ns)
            for f in sorted(run.rglob("*")) if f.is_file()}


def _results(runs: Path) -> dict[int, tuple[bytes, bytes]]:
    """seed → (metrics.json, predictions.csv) of every finished run."""
    out = {}
    for run in _finished_runs(runs):
        seed = json.loads((run / "config.json").read_text())["seed"]
        out[seed] = ((run / "metrics.json").read_bytes(), (run / "predictions.csv").read_bytes())
    return out


def test_a_sweep_killed_mid_way_resumes_to_the_same_result(tmp_path, tiny_cache):
    """Small and in the default suite: a sweep of 3 runs is killed with SIGKILL inside its
    second run; the run it had finished is left as it was (same bytes and times, not computed
    again), a new sweep computes the other two and removes the dead one's leftovers, and the
    result equals an uninterrupted sweep's (its metrics and predictions, byte for byte)."""
    suite, runs, env = _setup(tmp_path, 3, tiny_cache)
    env["FB_TEST_HOLD_SEEDS"] = "1"
    (tmp_path / "hold").write_text("")
    ref_root = tmp_path / "reference"
    ref_root.mkdir()
    ref_suite, ref_runs, ref_env = _setup(ref_root, 3, tiny_cache)  # no hold file: no pause
    first = _sweep(suite, env, tmp_path)
    reference = _sweep(ref_suite, ref_env, ref_root)  # meanwhile, on the second core
    _wait_for((tmp_path / "started").exists, [first], "the sweep to reach its second run")
    assert _computed(tmp_path) == [(first.pid, 0)]
    (done,) = _finished_runs(runs)
    before = _files(done)
    os.kill(first.pid, signal.SIGKILL)  # no handler, no cleanup: the run is cut mid-way
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert list(runs.rglob(".*tmp*")), "the killed run left its temporary folder"
    (tmp_path / "hold").unlink()
    second = _sweep(suite, env, tmp_path)
    for p in (second, reference):
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert _computed(tmp_path) == [(first.pid, 0), (second.pid, 1), (second.pid, 2)]
    assert _files(done) == before  # the finished run intact, untouched by the resume
    assert len(_finished_runs(runs)) == 3
    assert not list(runs.rglob(".*tmp*")) and not list(runs.rglob(".*.claim"))
    ours, theirs = _results(runs), _results(ref_runs)
    assert sorted(ours) == [0, 1, 2] and ours == theirs


def test_two_sweeps_share_one_suite_without_computing_a_run_twice(tmp_path, tiny_cache):
    """Small and in the default suite: while one sweep is inside its first run, a second
    sweep on the same suite and runs folder leaves that claimed run alone, computes the other
    two, then waits; once the first finishes, each run was computed exactly once, each by the
    process that claimed it, and both processes exit 0."""
    suite, runs, env = _setup(tmp_path, 3, tiny_cache)
    env["FB_TEST_HOLD_SEEDS"] = "0"
    (tmp_path / "hold").write_text("")
    first = _sweep(suite, env, tmp_path)
    _wait_for((tmp_path / "started").exists, [first], "the first sweep to claim seed 0")
    second = _sweep(suite, env, tmp_path)
    _wait_for(lambda: len(_computed(tmp_path)) == 2, [first, second],
              "the second sweep to compute the two unclaimed runs")
    assert _computed(tmp_path) == [(second.pid, 1), (second.pid, 2)]
    assert first.poll() is None and second.poll() is None  # one held, one waiting for it
    (tmp_path / "hold").unlink()
    outs = [p.communicate(timeout=120) for p in (first, second)]
    for p, (_out, err) in zip((first, second), outs):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    computed = _computed(tmp_path)
    assert sorted(s for _, s in computed) == [0, 1, 2]  # every run once, none twice
    assert {s: pid for pid, s in computed} == {0: first.pid, 1: second.pid, 2: second.pid}
    for run in _finished_runs(runs):  # each run records the process that computed it
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["pid"] == (first.pid if cfg["seed"] == 0 else second.pid)
    assert len(_finished_runs(runs)) == 3
    assert not list(runs.rglob(".*.claim")) and not list(runs.rglob(".*tmp*"))
    assert "finished by another process" in outs[0][0] + outs[1][0], outs


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
