"""Executors: where and how the runs of a sweep execute.

An :class:`Executor` takes a list of :class:`RunTask` (a :class:`~fairbench.runner.RunConfig`
with an index and a label) and yields one :class:`TaskOutcome` per task as tasks finish. The
sweep consumes the outcomes (progress, failures) and may stop early by closing the iterator;
an executor must then not start further tasks. Every task goes through
:func:`fairbench.runner.run_experiment`, so a finished identical run is reused, a run is
written atomically, and the vanilla baseline is shared through ``ctx.vanilla()``'s cache and
file lock whichever process gets there first.

* :class:`LocalExecutor` runs tasks one by one in this process; with several devices (e.g.
  every visible GPU) it runs one worker process per device.
* A Ray executor (``--executor ray``) is planned: implement :class:`Executor.run` with
  ``ray.remote(num_gpus=1)(execute_task)`` and register it in :data:`EXECUTORS`; nothing else
  in the sweep needs to change.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FairbenchError
from .runner import RunConfig, run_experiment


@dataclass
class RunTask:
    index: int
    config: RunConfig
    label: str = ""


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


def execute_task(task: RunTask, device: str | None = None) -> TaskOutcome:
    """Run one task (in whatever process calls it); never raises except on interrupt."""
    config = task.config if device is None else dataclasses.replace(task.config, device=device)
    started = time.perf_counter()
    try:
        result = run_experiment(config)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the sweep, which decides
        return TaskOutcome(task, False, seconds=time.perf_counter() - started,
                           error=str(exc) if isinstance(exc, FairbenchError)
                           else f"{type(exc).__name__}: {exc}",
                           user_error=isinstance(exc, FairbenchError),
                           traceback=traceback.format_exc(), exception=exc)
    return TaskOutcome(task, True, result.run_dir, result.reused,
                       time.perf_counter() - started)


class Executor(ABC):
    """Runs tasks and yields their outcomes in completion order."""

    name = "base"

    @abstractmethod
    def run(self, tasks: Sequence[RunTask]) -> Iterator[TaskOutcome]:
        """Yield one outcome per task; stop starting tasks when the iterator is closed."""

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    """Runs on this machine: one task at a time in this process, or one worker process per
    device when ``devices`` lists several (``None``: every visible GPU when the runs' device is
    ``auto`` or ``cuda`` and there is more than one, else in-process)."""

    name = "local"

    def __init__(self, devices: Sequence[str] | None = None) -> None:
        self.devices = list(devices) if devices is not None else None

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
        return "local" if not self.devices or len(self.devices) < 2 else \
            f"local ({len(self.devices)} workers: {', '.join(self.devices)})"

    def run(self, tasks: Sequence[RunTask]) -> Iterator[TaskOutcome]:
        devices = self._devices_for(tasks)
        if not devices:
            single = self.devices[0] if self.devices else None
            for task in tasks:
                yield execute_task(task, single)
            return
        yield from _run_pool(tasks, devices)


def _worker_init(queue: Any) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = queue.get()
    if _WORKER_DEVICE == "cpu":
        import torch

        torch.set_num_threads(1)


_WORKER_DEVICE: str | None = None


def _worker_run(task: RunTask) -> TaskOutcome:
    outcome = execute_task(task, _WORKER_DEVICE)
    outcome.exception = None  # exceptions may not pickle; the text and traceback travel
    return outcome


def _run_pool(tasks: Sequence[RunTask], devices: list[str]) -> Iterator[TaskOutcome]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    for d in devices:
        queue.put(d)
    pool = ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx,
                               initializer=_worker_init, initargs=(queue,))
    todo = list(tasks)
    running: dict[Any, RunTask] = {}
    try:
        while todo or running:
            while todo and len(running) < len(devices):
                task = todo.pop(0)
                running[pool.submit(_worker_run, task)] = task
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (e.g. killed)
                    outcome = TaskOutcome(task, False, error=f"worker failed: {exc}")
                yield outcome
    finally:
        for fut in running:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        manager.shutdown()


#: executor name -> factory(**options)
EXECUTORS: dict[str, Any] = {"local": LocalExecutor}


def get_executor(name: str, **options: Any) -> Executor:
    if name == "ray":
        raise FairbenchError("the Ray executor is not available yet (planned for a later "
                             "release); use --executor local")
    if name not in EXECUTORS:
        raise FairbenchError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**options)
