"""Finished run folders, read for a leaderboard: :class:`RunRecord` (a run's config and
metrics, verified against its manifest), :func:`collect_runs` over a runs folder, the parts a
table can show, and the check that a table's runs share one split."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairbench.core.errors import FairbenchError
from fairbench.core.files import config_hash
from fairbench.data.dataset import TRUE_LABEL_COLUMN
from fairbench.metrics import flatten
from fairbench.run.store import NOT_RUN_FOLDERS, check_run, read_run_files

#: metrics.json parts a table can show: validation, test, test against true labels
PARTS = ("val", "test", "test_true")


def part_source(part: str) -> tuple[str, str]:
    """Where a table part's per-sample rows are: (predictions.csv part, label column)."""
    return ("test", TRUE_LABEL_COLUMN) if part == "test_true" else (part, "label")


@dataclass
class RunRecord:
    """A finished run directory, read."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    label: str = ""       # the method's label in the leaderboard (suite label or method name)
    dataset_label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.config["method"]
        if not self.dataset_label:  # a named scenario of a dataset is a table of its own
            scenario = (self.config.get("dataset_params") or {}).get("scenario")
            self.dataset_label = self.config["dataset"] + (
                f"[{scenario}]" if scenario not in (None, "custom") else "")

    @property
    def identity(self) -> dict[str, Any]:
        return self.config.get("identity", {})

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def split(self) -> str:
        return str(self.config["split_sha256"])

    @property
    def task(self) -> str:
        return str(self.config.get("task", "classification"))

    @property
    def groups(self) -> list[str]:
        return list(self.metrics.get("meta", {}).get("groups") or self.config["groups"])

    @property
    def setting_key(self) -> str:
        """The run's identity without its seed: one key per parameter setting."""
        ident = {k: v for k, v in self.identity.items() if k != "seed"}
        return config_hash(ident)[:12]

    def flat(self, part: str) -> dict[str, float]:
        return {k: (float("nan") if v is None else v)
                for k, v in flatten(self.metrics.get(part, {})).items()
                if v is None or isinstance(v, (int, float))}


def read_run(path: str | Path, *, verified: bool = False, **labels: str) -> RunRecord:
    """The run at ``path``, verified against its manifest first (unless the caller has just
    done so: ``verified``): a damaged run raises one line naming it and the way out
    (:func:`fairbench.run.store.read_run_files`)."""
    path = Path(path)
    config, metrics = read_run_files(path, verified=verified)
    return RunRecord(path, config, metrics, **labels)


def collect_runs(runs_dir: str | Path) -> list[RunRecord]:
    """Every finished run under ``runs_dir`` (``<dataset>/<method>/<run>``); temporary
    directories of interrupted runs, the vanilla cache and split files are skipped."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise FairbenchError(f"runs directory {str(root)!r} does not exist")
    out = []
    for run in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        parts = run.relative_to(root).parts
        if parts[0] in NOT_RUN_FOLDERS or any(part.startswith((".", "_")) for part in parts):
            continue  # MLflow's stores (--tracking mlflow) and split files are no runs
        state = check_run(run).state  # verified once; a damaged one is reported by read_run
        if state in ("finished", "damaged"):
            out.append(read_run(run, verified=state == "finished"))
    return out


def check_single_split(runs: Sequence[RunRecord], where: str) -> None:
    """Refuse runs of one table that use different splits, naming the hashes."""
    by_split: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_split[r.split].append(r)
    if len(by_split) > 1:
        parts = [f"{h[:12]} ({len(rs)} runs, e.g. {rs[0].path})"
                 for h, rs in sorted(by_split.items(), key=lambda kv: -len(kv[1]))]
        r0 = runs[0]
        raise FairbenchError(
            f"{where} holds runs of {len(by_split)} different splits for {r0.dataset_label} "
            f"({r0.config['attribute']}, {r0.config['backbone']}): {'; '.join(parts)}; a "
            "leaderboard never mixes splits: pick one with --split HASH or use separate runs "
            "directories")
