"""Files that are never half-written, and what identifies them: canonical JSON hashes
(:func:`config_hash`), file checksums (:func:`file_sha256`), standard JSON without NaN
(:func:`write_json`, :func:`read_json`), hidden temporaries named after their host and process
(:func:`temporary_path`) that only dead processes' leftovers are removed of
(:func:`remove_stale_temporaries`), and an inter-process lock (:func:`file_lock`). Used by the
run store, the tensor cache and the cached vanilla and multi-exit models."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from fairbench.core.errors import FairbenchError


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


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` for the block (``filelock``; released
    when the holder dies, on POSIX and Windows alike)."""
    with FileLock(str(path)):
        yield
