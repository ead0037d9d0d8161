"""Wall time of a run, split by phase.

:class:`PhaseTimer` adds up **exclusive** wall time per phase name: time spent in a phase
nested inside another counts for the inner one only, so the phases of a run add up to its
total. On CUDA the device is synchronised when a phase starts and ends, so queued GPU work is
charged to the phase that launched it.

A run records (``config.json``, ``seconds.phases``):

* ``data``: reading the table, the split and the tensor cache (building it on first use),
  and copying it to the device;
* ``vanilla``: training the shared vanilla baseline, or loading it from the runs folder;
* ``train``: every :meth:`~fairbench.run.context.RunContext.fit` of the method (with its
  per-epoch validation);
* ``curvature``: second-order saliency passes (:func:`fairbench.run.posthoc.group_curvature`);
* ``other``: the rest of the method's own work (selection, quantisation, candidate
  evaluation...);
* ``evaluate``: the final predictions on validation and test and their metrics;
* ``leakage``: the leakage probe of a classification run (:mod:`fairbench.run.leakage`).

A method can name more phases with ``with ctx.phase("name"):``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for the work queued on a CUDA ``device`` (nothing to wait for elsewhere), so a
    wall-clock reading covers it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Exclusive wall time per phase (see the module docstring)."""

    def __init__(self, device: torch.device | None = None, *,
                 on_phase: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []  # per open phase: [start, time in nested phases]
        self._names: list[str] = []
        #: told the name of the phase the run is in whenever it changes (progress displays)
        self.on_phase = on_phase

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        self._names.append(name)
        if self.on_phase is not None:
            self.on_phase(name)
        try:
            yield
        finally:
            synchronize(self.device)
            self._stack.pop()
            self._names.pop()
            if self.on_phase is not None and self._names:
                self.on_phase(self._names[-1])
            elapsed = time.perf_counter() - frame[0]
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - frame[1]
            if self._stack:
                self._stack[-1][1] += elapsed

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}
