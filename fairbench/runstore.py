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

import glob
import hashlib
import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from .errors import FairbenchError

RUN_FILES = ("config.json", "metrics.json", "predictions.csv")


def config_hash(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``identity`` (what defines a run's result)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _clean(obj: Any) -> Any:
    """NaN/inf → None so that the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def ensure_writable_dir(path: Path, what: str = "runs directory") -> Path:
    """Create ``path`` if needed and check that it accepts files; one clear error if not."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise FairbenchError(
            f"{what} {str(path)!r} is not writable ({exc.strerror or exc}); "
            f"choose another with --runs-dir"
        ) from None
    return path


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


#: this machine's name as used in temporary names ("-" would be ambiguous there)
HOST = socket.gethostname().replace("-", "_") or "host"


def temporary_path(final: Path) -> Path:
    """The hidden temporary sibling of ``final`` that this process writes before renaming."""
    return final.with_name(f".{final.name}.tmp-{HOST}-{os.getpid()}")


def remove_stale_temporaries(final: Path) -> None:
    """Remove the temporaries of ``final`` left by killed processes of this host.

    A temporary of a live process, or of another host (whose processes this one cannot see on
    a shared filesystem), is left alone. Names without a host (``.tmp-<pid>``, written by
    earlier versions) count as this host's."""
    parent = final.parent
    if not parent.is_dir():
        return
    for p in parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        suffix = p.name.rpartition(".tmp-")[2]
        host, _, pid = suffix.rpartition("-")
        if not pid.isdigit():
            continue
        if (host or HOST) != HOST or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True
