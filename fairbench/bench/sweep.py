"""Run a benchmark suite: expand it, resolve every run's identity, skip the finished ones,
run the rest through an executor, with one overall progress bar that names the current run and
the phase it is in (data, vanilla, train, curvature, evaluate) when the runs execute in this
process; no bar when nothing is left to run.

* **Resume**: a run's directory is named by the hash of its resolved identity (method and
  resolved parameters, dataset options, split hash, backbone, training settings, seed; see
  :func:`fairbench.run.runner.run_identity`). A sweep computes every identity up front (this reads
  the dataset's metadata and makes the split, but decodes no image and trains nothing), so a
  killed sweep resumes where it stopped and an edited suite only runs what changed. Runs are
  written atomically; a half-written temporary directory never reads as finished and is
  removed when its run is started again.
* **Shared baseline**: all runs of one (dataset, split, backbone, training settings, seed)
  share one vanilla model through ``ctx.vanilla()``'s cache under ``<runs_dir>/_vanilla``;
  runs are ordered so that each seed's baseline is trained by the first run that needs it.
* **Damaged and failed runs**: a run whose files do not match its manifest is computed again
  (with a warning line); a run whose training diverged is recorded as failed and skipped by
  later sweeps unless ``retry_failed``; a diverging run never stops the sweep.
* **Several sweeps on one runs folder** (processes, or machines on a shared folder) split the
  runs through claims (see :mod:`fairbench.bench.executors`): none is computed twice, and the
  run of a sweep that died is taken over.
* **Bad input** (unknown names, parameters out of range, empty grid axes, missing data) is
  reported as one :class:`FairbenchError` before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fairbench.bench.executors import Executor, LocalExecutor, RunTask, TaskOutcome
from fairbench.bench.suite import PlannedConfig, Suite
from fairbench.core.errors import DataError, FairbenchError
from fairbench.core.files import ensure_writable_dir
from fairbench.core.progress import progress_bar
from fairbench.run.runner import prepare, resolve_split, run_dir_for, run_identity
from fairbench.run.store import check_run

log = logging.getLogger("fairbench")


@dataclass
class PlannedRun:
    planned: PlannedConfig
    identity: dict[str, Any] | None
    run_dir: Path | None
    finished: bool
    problem: str = ""  # why the identity could not be resolved (dry runs only)
    #: the run directory's state (fairbench.run.store.check_run): finished, damaged, failed,
    #: unfinished or absent; "" when unresolved
    state: str = ""
    detail: str = ""   # what is damaged, or the recorded error of a failed run

    @property
    def damaged(self) -> bool:
        return self.state == "damaged"

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    @property
    def config(self):
        return self.planned.config

    @property
    def label(self) -> str:
        p = self.planned
        grid = ", ".join(f"{k}={v}" for k, v in p.grid_values.items())
        backbone = p.config.backbone or "default"
        return f"{p.dataset}/{backbone}/{p.method}" + (f"[{grid}]" if grid else "") + \
            f"/seed {p.config.seed}"

    @property
    def baseline_key(self) -> tuple[Any, ...]:
        i = self.identity or {}
        return (json.dumps(i.get("dataset"), sort_keys=True), i.get("split"), i.get("backbone"),
                json.dumps(i.get("train"), sort_keys=True), i.get("image_size"), i.get("seed"))


@dataclass
class SweepReport:
    runs: list[PlannedRun]
    ran: list[TaskOutcome] = field(default_factory=list)
    failed: list[TaskOutcome] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def n_finished_before(self) -> int:
        return sum(r.finished for r in self.runs)


def plan(suite: Suite, *, allow_missing_data: bool = False) -> list[PlannedRun]:
    """Every run of ``suite`` with its identity, run directory and whether it is finished.

    Reads each dataset's metadata once and makes its split (no images, no training). With
    ``allow_missing_data`` a dataset whose files are missing gives runs with ``problem`` set
    instead of an error (for ``--dry-run``)."""
    runs_dir = Path(suite.runs_dir).expanduser()
    splits: dict[str, Any] = {}
    out: list[PlannedRun] = []
    for planned in suite.expand():
        c = planned.config
        try:
            p = prepare(c)
        except DataError as exc:
            if not allow_missing_data:
                raise FairbenchError(f"dataset {planned.dataset!r}: {exc}") from None
            out.append(PlannedRun(planned, None, None, False, problem=str(exc)))
            continue
        key = json.dumps([p.adapter.config(), str(c.data_root), c.attribute, c.split_seed,
                          c.split_file, list(c.split_fractions)], sort_keys=True, default=str)
        if key not in splits:
            try:
                splits[key] = _resolve_split(p)
            except DataError as exc:
                if not allow_missing_data:
                    raise FairbenchError(f"dataset {planned.dataset!r}: {exc}") from None
                splits[key] = exc
        resolved = splits[key]
        if isinstance(resolved, Exception):
            out.append(PlannedRun(planned, None, None, False, problem=str(resolved)))
            continue
        identity = run_identity(p, resolved)
        run_dir = run_dir_for(runs_dir, identity)
        st = check_run(run_dir)
        out.append(PlannedRun(planned, identity, run_dir, st.finished, state=st.state,
                              detail=st.problem))
    return out


def _resolve_split(p: Any) -> SimpleNamespace:
    """What :func:`fairbench.run.runner.load_data` decides about the data, without the pixels."""
    table, attribute, split = resolve_split(p)
    return SimpleNamespace(table=table, attribute=attribute, split=split)


def order_pending(runs: list[PlannedRun], *, retry_failed: bool = True) -> list[PlannedRun]:
    """Pending runs in execution order: for each (dataset, backbone), the vanilla runs of all
    seeds first (so parallel workers train different baselines), then the others by seed.
    Runs recorded as failed are left out unless ``retry_failed``."""
    pending = [r for r in runs if not r.finished and (retry_failed or not r.failed)]
    position = {id(r): i for i, r in enumerate(pending)}

    def key(r: PlannedRun) -> tuple[Any, ...]:
        c = r.planned.config
        return (r.planned.dataset, str(c.backbone), c.method != "vanilla", c.seed, position[id(r)])

    return sorted(pending, key=key)


def format_plan(runs: list[PlannedRun]) -> str:
    """The ``--dry-run`` listing: one line per run, then a summary."""
    lines = []
    for r in runs:
        status = "done   " if r.finished else ("unknown" if r.problem else
                                                "damaged" if r.damaged else
                                                "failed " if r.failed else "pending")
        where = str(r.run_dir) if r.run_dir else f"(cannot resolve: {r.problem})"
        if r.damaged or r.failed:
            where += f"  ({r.detail})"
        lines.append(f"{status}  {r.label:60s}  {where}")
    n_done = sum(r.finished for r in runs)
    n_unknown = sum(bool(r.problem) for r in runs)
    n_damaged = sum(r.damaged for r in runs)
    n_failed = sum(r.failed for r in runs)
    baselines = {r.baseline_key for r in runs if not r.finished and not r.problem}
    done_baselines = {r.baseline_key for r in runs if r.finished}
    n_todo = len(runs) - n_done - n_unknown - n_failed  # a sweep skips failed runs
    summary = (f"{len(runs)} runs: {n_done} finished, {n_todo} to run"
               + (f", {n_unknown} unresolved (missing data)" if n_unknown else "")
               + (f" ({n_damaged} damaged, to redo)" if n_damaged else "")
               + (f"; {n_failed} recorded as failed and skipped (--retry-failed runs them "
                  "again)" if n_failed else "")
               + f"; vanilla baselines shared per (dataset, split, backbone, seed): "
                 f"{len(baselines - done_baselines)} needed by pending runs")
    return "\n".join(lines + [summary])


def run_suite(
    suite: Suite,
    *,
    executor: Executor | None = None,
    dry_run: bool = False,
    keep_going: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> SweepReport:
    """Run every unfinished run of ``suite``; see the module docstring.

    Stops at the first failing run unless ``keep_going`` (finished runs stay; the next sweep
    does the rest); a run whose training diverges is recorded as failed and never stops it.
    Runs recorded as failed by an earlier sweep are skipped unless ``retry_failed``.
    ``dry_run`` lists the runs and runs nothing.
    """
    started = time.perf_counter()
    runs = plan(suite, allow_missing_data=dry_run)
    report = SweepReport(runs)
    if dry_run:
        echo(format_plan(runs))
        return report
    ensure_writable_dir(Path(suite.runs_dir))
    pending = order_pending(runs, retry_failed=retry_failed)
    executor = executor or LocalExecutor()
    n_total = len(runs)
    n_damaged = sum(r.damaged for r in pending)
    skipped_failed = [] if retry_failed else [r for r in runs if r.failed]
    echo(f"suite {suite.name}: {n_total} runs, {report.n_finished_before} already finished, "
         f"{len(pending)} to run" + (f" ({n_damaged} damaged, redone)" if n_damaged else "")
         + (f", {len(skipped_failed)} recorded as failed and skipped (--retry-failed)"
            if skipped_failed else "") + f" ({executor.describe()} executor)")
    tasks = [RunTask(i, dataclasses.replace(r.planned.config, redo_damaged=True), r.label,
                     run_dir=r.run_dir)
             for i, r in enumerate(pending)]
    by_index = {t.index: r for t, r in zip(tasks, pending)}
    if not tasks:  # nothing left: no (empty) progress bar
        echo(f"sweep {suite.name}: nothing to run")
        report.seconds = time.perf_counter() - started
        return report
    with progress_bar(total=len(tasks), desc=f"sweep {suite.name}", unit="run",
                      enabled=progress, leave=True) as bar:

        def show_phase(task: RunTask, phase: str) -> None:
            """The current run (shortened) and the phase it is in, beside the overall bar."""
            where = "starting" if phase == "start" else phase
            bar.set_postfix_str(f"{task.label[-56:]}: {where}", refresh=True)

        outcomes = executor.run(tasks, on_phase=show_phase if progress else None)
        try:
            for outcome in outcomes:
                bar.update(1)
                planned = by_index[outcome.task.index]
                if outcome.ok:
                    report.ran.append(outcome)
                    bar.set_postfix_str(f"done: {outcome.task.label[-56:]}", refresh=False)
                    if planned.run_dir is not None and outcome.run_dir is not None and \
                            Path(outcome.run_dir).resolve() != planned.run_dir.resolve():
                        log.warning("run %s landed in %s, not in the planned %s",
                                    outcome.task.label, outcome.run_dir, planned.run_dir)
                    continue
                report.failed.append(outcome)
                echo(f"run failed: {outcome.task.label}: {outcome.error}")
                if not keep_going and not outcome.diverged:
                    report.stopped_early = True
                    break
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()
    report.seconds = time.perf_counter() - started
    n_left = len(pending) - len(report.ran)
    n_elsewhere = sum(o.reused for o in report.ran)
    echo(f"sweep {suite.name}: {len(report.ran)} runs done in {report.seconds:.1f} s"
         + (f" ({len(report.ran) - n_elsewhere} computed here, {n_elsewhere} finished by "
            "another process)" if n_elsewhere else "")
         + (f"; {len(report.failed)} failed" if report.failed else "")
         + (f"; {n_left} not finished (run the sweep again to resume)" if n_left else ""))
    return report
