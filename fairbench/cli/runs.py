"""``fairbench runs check`` and ``fairbench runs repair``: verify every run of a runs folder
against its manifest, and put a damaged folder back in order. Neither imports plugin code."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from fairbench.cli.options import ErrorLineGroup


@click.group("runs", cls=ErrorLineGroup)
def runs_group() -> None:
    """Check a runs folder against the manifests of its runs, and repair it.

    \b
      fairbench runs check runs          (lists what is damaged, stale or in progress)
      fairbench runs repair runs         (moves damaged runs aside, removes leftovers)
    """


def _summary(findings: list[Any]) -> str:
    counts = Counter((f.kind, f.state) for f in findings)
    parts = []
    for kind in ("run", "baseline", "temporary", "claim", "lock", "leftover"):
        states = {s: n for (k, s), n in counts.items() if k == kind}
        if states:
            total = sum(states.values())
            detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            parts.append(f"{total} {kind}{'s' if total > 1 else ''} ({detail})")
    return "; ".join(parts) if parts else "nothing found"


@runs_group.command("check")
@click.argument("runs_dir", type=click.Path(file_okay=False))
@click.option("--all", "show_all", is_flag=True, help="Also list the runs that are fine.")
def check_cmd(runs_dir: str, show_all: bool) -> None:
    """Verify every run of RUNS_DIR (the sha256 of each file against the run's manifest), the
    cached vanilla baselines, and the temporaries, claims and locks of interrupted or running
    processes. Changes nothing. Exit code 1 when something is damaged or stale."""
    from fairbench.run.store import PROBLEM_STATES, check_runs_dir

    findings = check_runs_dir(Path(runs_dir).expanduser())
    for f in findings:
        if show_all or f.state != "ok" or f.fix:
            click.echo(f.line())
    click.echo(_summary(findings))
    if any(f.state in PROBLEM_STATES for f in findings):
        click.echo(f"run `fairbench runs repair {runs_dir}` to put it in order "
                   "(damaged runs are moved to _damaged/, a sweep computes them again)",
                   err=True)
        raise SystemExit(1)


@runs_group.command("repair")
@click.argument("runs_dir", type=click.Path(file_okay=False))
def repair_cmd(runs_dir: str) -> None:
    """Put RUNS_DIR in order: damaged runs are moved to RUNS_DIR/_damaged/ (kept for
    inspection; the next sweep or run computes them again), runs written before manifests
    get one, damaged cached baselines are removed (trained again when needed), temporaries of
    dead processes and locks or claims that nobody holds are removed. What a live process is
    working on is left alone."""
    from fairbench.run.store import check_runs_dir

    findings = check_runs_dir(Path(runs_dir).expanduser(), repair=True)
    for f in findings:
        if f.state != "ok" or f.fix:
            click.echo(f.line())
    click.echo(_summary(findings))
