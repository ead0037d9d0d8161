"""The run store: one directory per run, written atomically, in a documented format.

A run directory holds

* ``config.json``: the resolved configuration (method and parameters, dataset and options,
  attribute, privileged group, backbone, training settings, seed, split hash and file,
  package versions, device, wall time);
* ``metrics.json``: ``{part: {metric: value, <group name>: {metric: value}, "Diff": {...},
  "Diff_signed": {...}, "gap": {...}, "worst": {...}, "Avg": {...}}}`` for ``val`` and
  ``test``, plus ``"meta"`` (attribute, groups, privileged group, directions);
* ``predictions.csv``: ``sample_id, part, label, pred, attr_<name>..., prob_<class>...``;
* ``train_log.csv``: one row per epoch of every training stage;
* ``weights.pt`` (optional): the fitted model's state dict, for ``torch.load(...,
  weights_only=True)``.

A run is written into a hidden temporary directory and renamed into place when complete,
so a directory that exists under its final name is a finished run; a killed run leaves only a
temporary directory, which the next attempt removes. Temporary names carry the host and the
process id (``.<name>.tmp-<host>-<pid>``), so on a runs directory shared between machines a
process only removes the temporaries of dead processes of its own host.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fairbench.core.errors import FairbenchError
from fairbench.core.files import temporary_path

RUN_FILES = ("config.json", "metrics.json", "predictions.csv")


def is_finished(run_dir: Path) -> bool:
    return all((run_dir / f).is_file() for f in RUN_FILES)


class RunWriter:
    """Collects a run's files in a temporary directory; :meth:`commit` moves it into place."""

    def __init__(self, final_dir: Path) -> None:
        self.final_dir = final_dir
        self.tmp_dir = temporary_path(final_dir)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)

    @property
    def path(self) -> Path:
        return self.tmp_dir

    def commit(self, *, replace: bool = False) -> Path:
        if self.final_dir.exists():
            if not replace:
                raise FairbenchError(f"run directory {str(self.final_dir)!r} already exists")
            trash = self.final_dir.with_name(f".{self.final_dir.name}.old-{os.getpid()}")
            os.replace(self.final_dir, trash)
            os.replace(self.tmp_dir, self.final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp_dir, self.final_dir)
        return self.final_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
