"""Executors: where and how the runs of a sweep execute.

An :class:`Executor` takes a list of :class:`RunTask` (a :class:`~fairbench.run.runner.RunConfig`
with an index and a label) and yields one :class:`TaskOutcome` per task as tasks finish. The
sweep consumes the outcomes (progress, failures) and may stop early by closing the iterator;
an executor must then not start further tasks. Every task goes through
:func:`fairbench.run.runner.run_experiment`, so a finished identical run is reused, a run is
written atomically, and the vanilla baseline is shared through ``ctx.vanilla()``'s cache and
file lock whichever process gets there first.

* :class:`LocalExecutor` runs tasks one by one in this process; with several devices (e.g.
  every visible GPU) it runs one worker process per device; with ``jobs=N`` it runs N CPU
  runs side by side (one worker process each, ``threads`` torch threads per run), each
  group's baseline first.

**Claims**: a run is computed by the process holding its claim (:func:`fairbench.run.store.
claim_run`). The local executor first takes every run that no other process has claimed,
leaving the claimed ones for later; then it waits for each of those: finished by the other
process, it is reused; given up (the other process died or failed), it is computed here. So N
sweeps on one runs folder (N processes, or N machines on a shared folder) split the runs and
compute none twice.
* :class:`RayExecutor` (``--executor ray [--address ADDR]``) runs each task as a Ray task on a
  cluster (or a local one it starts), see its docstring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairbench.core.errors import FairbenchError, TrainingDiverged
from fairbench.core.files import holder_note
from fairbench.run.runner import RunConfig, run_experiment
from fairbench.run.store import RunClaimed, claim_path


@dataclass
class RunTask:
    index: int
    config: RunConfig
    label: str = ""
    #: the planned run directory (lets an executor see a claim before loading any data)
    run_dir: Path | None = None


@dataclass
class TaskOutcome:
    task: RunTask
    ok: bool
    run_dir: Path | None = None
    reused: bool = False
    seconds: float = 0.0
    error: str = ""          # one line: "<ExceptionType>: message"
    user_error: bool = False  # a FairbenchError (bad input or data), not a crash
    traceback: str = ""
    exception: BaseException | None = None  # only for in-process execution
    #: the run's training diverged; it is recorded as failed and the sweep goes on
    diverged: bool = False
    #: not run: another process holds the run's claim (who, from its claim file)
    claimed_by: str | None = None


def execute_task(task: RunTask, device: str | None = None, *, wait: bool = True) -> TaskOutcome:
    """Run one task (in whatever process calls it); never raises except on interrupt. With
    ``wait=False`` a run claimed by another process is not waited for: the outcome has
    ``claimed_by`` set and the task is to be tried again later."""
    config = task.config if device is None else dataclasses.replace(task.config, device=device)
    if not wait:
        if task.run_dir is not None:
            holder = holder_note(claim_path(task.run_dir))
            if holder is not None:  # claimed: not even the data is loaded
                return TaskOutcome(task, False, claimed_by=holder)
        config = dataclasses.replace(config, wait_for_claim=False)
    started = time.perf_counter()
    try:
        result = run_experiment(config)
    except KeyboardInterrupt:
        raise
    except RunClaimed as exc:
        return TaskOutcome(task, False, claimed_by=exc.holder)
    except Exception as exc:  # noqa: BLE001 - reported to the sweep, which decides
        return TaskOutcome(task, False, seconds=time.perf_counter() - started,
                           error=str(exc) if isinstance(exc, FairbenchError)
                           else f"{type(exc).__name__}: {exc}",
                           user_error=isinstance(exc, FairbenchError),
                           traceback=traceback.format_exc(), exception=exc,
                           diverged=isinstance(exc, TrainingDiverged))
    return TaskOutcome(task, True, result.run_dir, result.reused,
                       time.perf_counter() - started)


class Executor(ABC):
    """Runs tasks and yields their outcomes in completion order."""

    name = "base"

    @abstractmethod
    def run(self, tasks: Sequence[RunTask], *,
            on_phase: Callable[[RunTask, str], None] | None = None) -> Iterator[TaskOutcome]:
        """Yield one outcome per task; stop starting tasks when the iterator is closed.
        ``on_phase(task, phase)``: told when a task starts (``"start"``) and each phase it
        enters, where the executor can see it (runs in this process)."""

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    """Runs on this machine: one task at a time in this process, or one worker process per
    device when ``devices`` lists several (``None``: every visible GPU when the runs' device is
    ``auto`` or ``cuda`` and there is more than one, else in-process).

    ``jobs=N`` (N > 1) runs N CPU runs side by side, one worker process each, with
    ``threads`` torch threads per run (default: the cores divided among the jobs, at least
    one). Tasks are grouped by the vanilla baseline they share (:func:`baseline_groups`):
    every group's first task (its vanilla run) is queued before any other, and the rest of a
    group only once its first has finished, so no worker waits on another's baseline. A run
    computes the same numbers whichever worker runs it: with ``threads`` equal to the thread
    count of a serial sweep the results are identical to that sweep's. ``threads`` also sets
    the thread count of in-process runs (``jobs=1``), restored afterwards."""

    name = "local"

    def __init__(self, devices: Sequence[str] | None = None, *, jobs: int = 1,
                 threads: int | None = None) -> None:
        if jobs < 1:
            raise FairbenchError(f"--jobs must be at least 1, not {jobs}")
        if threads is not None and threads < 1:
            raise FairbenchError(f"--threads-per-job must be at least 1, not {threads}")
        if jobs > 1 and devices is not None:
            raise FairbenchError("--jobs runs CPU runs side by side; it cannot be combined "
                                 "with --devices")
        self.devices = list(devices) if devices is not None else None
        self.jobs = jobs
        self.threads = threads if threads is not None else (
            max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)

    def _devices_for(self, tasks: Sequence[RunTask]) -> list[str] | None:
        if self.devices is not None:
            return self.devices if len(self.devices) > 1 else None
        wants_gpu = any(t.config.device in ("auto", "cuda") for t in tasks)
        if not wants_gpu:
            return None
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] if n > 1 else None

    def describe(self) -> str:
        if self.jobs > 1:
            return f"local ({self.jobs} jobs side by side, {self.threads} thread(s) each)"
        threads = f", {self.threads} thread(s)" if self.threads else ""
        return ("local" + threads) if not self.devices or len(self.devices) < 2 else \
            f"local ({len(self.devices)} workers: {', '.join(self.devices)})"

    def run(self, tasks: Sequence[RunTask], *,
            on_phase: Callable[[RunTask, str], None] | None = None) -> Iterator[TaskOutcome]:
        if self.jobs > 1:
            yield from _run_pool(tasks, ["cpu"] * self.jobs, threads=self.threads,
                                 ordered_by_baseline=True)
            return
        devices = self._devices_for(tasks)
        if not devices:
            single = self.devices[0] if self.devices else None
            if on_phase is not None:  # in this process: the phases can be shown
                tasks = [dataclasses.replace(t, config=dataclasses.replace(
                    t.config, on_phase=functools.partial(on_phase, t))) for t in tasks]
            later: list[RunTask] = []
            with _torch_threads(self.threads):
                for task in tasks:  # first the runs that no other process computes
                    if on_phase is not None:
                        on_phase(task, "start")
                    outcome = execute_task(task, single, wait=False)
                    if outcome.claimed_by is not None:
                        later.append(task)
                        continue
                    yield outcome
                for task in later:  # then wait for the others: reused, or taken over
                    yield execute_task(task, single)
            return
        yield from _run_pool(tasks, devices, threads=self.threads)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: unchanged), restored afterwards."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_init(queue: Any, threads: int | None = None) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = queue.get()
    if _WORKER_DEVICE == "cpu":
        import torch

        torch.set_num_threads(threads or 1)


_WORKER_DEVICE: str | None = None


def _worker_run(task: RunTask, wait: bool = True) -> TaskOutcome:
    outcome = execute_task(task, _WORKER_DEVICE, wait=wait)
    outcome.exception = None  # exceptions may not pickle; the text and traceback travel
    return outcome


def _run_pool(tasks: Sequence[RunTask], devices: list[str], *, threads: int | None = None,
              ordered_by_baseline: bool = False) -> Iterator[TaskOutcome]:
    """One worker process per entry of ``devices``. With ``ordered_by_baseline``, each
    baseline group's first task is queued before every other task and the group's other
    tasks only once it has finished (see :class:`LocalExecutor`)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    for d in devices:
        queue.put(d)
    pool = ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx,
                               initializer=_worker_init, initargs=(queue, threads))
    waiting: dict[int, list[RunTask]] = {}
    if ordered_by_baseline:
        groups = baseline_groups(tasks)
        first_tasks = [first for first, _ in groups if first is not None]
        waiting = {first.index: rest for first, rest in groups if first is not None}
    else:
        first_tasks = list(tasks)
    todo = [(t, False) for t in first_tasks]  # (task, wait for its claim)
    running: dict[Any, RunTask] = {}
    try:
        while todo or running:
            while todo and len(running) < len(devices):
                task, patient = todo.pop(0)
                running[pool.submit(_worker_run, task, patient)] = task
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: running[f].index):
                task = running.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (e.g. killed)
                    outcome = TaskOutcome(task, False, error=f"worker failed: {exc}")
                if outcome.claimed_by is not None:  # another process has it: wait at the end
                    todo.append((task, True))
                    continue
                # the group's baseline exists now (or failed: its runs report it)
                todo.extend((t, False) for t in waiting.pop(task.index, []))
                yield outcome
    finally:
        for fut in running:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        manager.shutdown()


# -- Ray ---------------------------------------------------------------------------------------
def baseline_groups(tasks: Sequence[RunTask],
                    key: Any = None) -> list[tuple[RunTask | None, list[RunTask]]]:
    """Tasks grouped by the vanilla baseline they share: ``(first, rest)`` per group, where
    ``first`` trains the baseline (the group's vanilla run if it has one, else its first task)
    and ``rest`` may start once it is done. ``key(task)`` gives the group (default: the
    dataset, its options, data root, attribute, split settings, backbone, weights, image size,
    training settings and seed of the task's config, which together decide the baseline)."""
    import json

    def default_key(t: RunTask) -> str:
        c = t.config
        return json.dumps([c.dataset, c.dataset_params, c.data_root, c.attribute, c.split_seed,
                           list(c.split_fractions), c.split_file, c.backbone, c.backbone_params,
                           c.weights, c.image_size, c.train, c.seed], sort_keys=True, default=str)

    key = key or default_key
    groups: dict[str, list[RunTask]] = {}
    for t in tasks:
        groups.setdefault(key(t), []).append(t)
    out: list[tuple[RunTask | None, list[RunTask]]] = []
    for members in groups.values():
        first = next((t for t in members if t.config.method == "vanilla"), members[0])
        out.append((first, [t for t in members if t is not first]))
    return out


def _ray_run(task: RunTask, device: str, threads: int, *after: Any) -> TaskOutcome:
    """The body of one Ray task (``after``: outcomes of the tasks it waited for, unused)."""
    import torch

    torch.set_num_threads(max(1, threads))
    outcome = execute_task(task, device)
    outcome.exception = None  # exceptions may not pickle; the text and traceback travel
    return outcome


class RayExecutor(Executor):
    """Runs each task as a Ray task: on the cluster at ``address`` (``auto``: the one this
    machine belongs to; ``ray://host:10001``: Ray Client) or, without an address, on a local
    Ray instance started here (``num_cpus``, default: every core).

    * **Resources**: a run whose device is ``cuda`` (or ``auto`` on a cluster that has GPUs)
      asks for ``num_gpus=1`` and runs on its GPU; otherwise ``cpus_per_run`` CPUs (default 1)
      and as many torch threads.
    * **Shared baseline**: tasks are grouped by the vanilla baseline they share; the group's
      vanilla run (or its first run) is submitted first and the others of the group only once
      it has finished, so a baseline is trained once, before the runs that need it, even when
      many workers are free (``ctx.vanilla()``'s file lock also guards it).
    * **Failures**: a worker process that dies mid-run (killed, out of memory) leaves only a
      temporary directory, which never reads as finished; Ray retries the task up to
      ``max_retries`` times and the retry removes the dead attempt's temporary directory. A
      run that raises (bad input, a bug) is not retried: its error comes back as the outcome.
    * **Results** land in the runs directory of each config, which must be one path that
      every node sees (a shared filesystem) for the leaderboard and resume to work as locally.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 cpus_per_run: int = 1, max_retries: int = 2,
                 runtime_env: dict[str, Any] | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise FairbenchError('the Ray executor needs Ray: pip install -e ".[ray]" '
                                 '(or pip install "ray[default]"), then run the sweep again'
                                 ) from None
        if cpus_per_run < 1:
            raise FairbenchError("--cpus-per-run must be at least 1")
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_run = cpus_per_run
        self.max_retries = max_retries
        self.runtime_env = runtime_env
        self._started_here = False

    def describe(self) -> str:
        return f"ray ({self.address or 'local instance'})"

    def _init(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                      "include_dashboard": False}
            if self.runtime_env:
                kwargs["runtime_env"] = self.runtime_env
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.num_cpus, **kwargs)
                    self._started_here = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local instance"
                raise FairbenchError(f"could not connect to Ray at {where} ({exc}); start the "
                                     "cluster with 'ray start --head' or fix --address") from None
        return ray

    def _resources(self, task: RunTask, cluster_gpus: float) -> tuple[dict[str, Any], str]:
        device = task.config.device
        if device.startswith("cuda") or (device == "auto" and cluster_gpus >= 1):
            return {"num_gpus": 1, "num_cpus": self.cpus_per_run}, "cuda"
        return {"num_gpus": 0, "num_cpus": self.cpus_per_run}, "cpu"

    def run(self, tasks: Sequence[RunTask], *,
            on_phase: Callable[[RunTask, str], None] | None = None) -> Iterator[TaskOutcome]:
        if not tasks:
            return
        ray = self._init()
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        remote = ray.remote(_ray_run)
        pending: dict[Any, RunTask] = {}

        def submit(task: RunTask, after: Sequence[Any] = ()) -> Any:
            resources, device = self._resources(task, cluster_gpus)
            ref = remote.options(max_retries=self.max_retries, **resources).remote(
                task, device, self.cpus_per_run, *after)
            pending[ref] = task
            return ref

        waiting: dict[Any, list[RunTask]] = {}
        for first, rest in baseline_groups(tasks):
            assert first is not None
            ref = submit(first)
            if rest:
                waiting[ref] = rest
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - retries exhausted, worker lost
                        outcome = TaskOutcome(task, False, error=f"Ray task failed: "
                                              f"{type(exc).__name__}: {str(exc)[:300]}")
                    for other in waiting.pop(ref, []):
                        submit(other)  # the baseline exists now (or failed: they report it)
                    yield outcome
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if self._started_here:
                ray.shutdown()
                self._started_here = False


#: executor name -> factory(**options)
EXECUTORS: dict[str, Any] = {"local": LocalExecutor, "ray": RayExecutor}


def get_executor(name: str, **options: Any) -> Executor:
    if name not in EXECUTORS:
        raise FairbenchError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**options)
