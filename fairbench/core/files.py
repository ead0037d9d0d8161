"""Files that are never half-written, and what identifies them: canonical JSON hashes
(:func:`config_hash`), file checksums (:func:`file_sha256`), standard JSON without NaN
(:func:`write_json`, :func:`read_json`), hidden temporaries named after their host and process
(:func:`temporary_path`) that only dead processes' leftovers are removed of
(:func:`remove_stale_temporaries`), manifests of a folder's files with their sha256
(:func:`write_manifest`, :func:`verify_manifest`), and an inter-process lock that is released
when its holder dies and leaves no file behind (:func:`file_lock`). Used by the run store,
the tensor cache and the cached vanilla and multi-exit models."""

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


def read_toml(path: str | Path, what: str = "file") -> dict[str, Any]:
    """The TOML file at ``path`` (``what`` names it in errors: ``suite file``, ``config
    file``); a missing file, a folder or invalid TOML is one line."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    file = Path(path).expanduser()
    if file.is_dir():
        raise FairbenchError(f"{what} {str(file)!r} is a folder; give the path of a .toml file")
    if not file.is_file():
        raise FairbenchError(f"{what} {str(file)!r} does not exist")
    try:
        return tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FairbenchError(f"{what} {str(file)!r} is not valid TOML: {exc}") from None


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def discard_dir(path: Path) -> None:
    """Remove a damaged folder (a run, a cache entry, a cached model): renamed aside first (one
    atomic step, so no reader sees it half removed), then deleted. A folder another process
    discarded first is left to it."""
    trash = path.with_name(f".{path.name}.damaged-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# -- manifests -----------------------------------------------------------------------------------
#: the manifest's file name: the last file written into a folder, listing every other one
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def write_manifest(folder: Path, name: str = MANIFEST) -> dict[str, Any]:
    """Write ``folder/name``: the size and sha256 of every other file under ``folder``
    (recursively; hidden temporaries excluded). Call it last, when every file is written."""
    folder = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel == name or p.name.startswith(".") or p.name.endswith(".tmp"):
            continue
        files[rel] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
    manifest = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": files}
    write_json(folder / name, manifest)
    return manifest


def verify_manifest(folder: Path, name: str = MANIFEST, *,
                    required: tuple[str, ...] = ()) -> str | None:
    """``None`` when every file listed in ``folder/name`` has its recorded size and sha256
    (and every ``required`` file is listed); otherwise one phrase saying what is wrong, e.g.
    ``"metrics.json has 130 bytes, its manifest says 2801 (truncated)"``."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / name).read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is no table")
    except FileNotFoundError:
        return f"{name} is missing"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"{name} is not a valid manifest (damaged or truncated)"
    for req in required:
        if req not in files:
            return f"{req} is not listed in {name}"
    for rel, entry in files.items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        try:
            size, digest = int(entry["bytes"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            return f"{name} is not a valid manifest (entry {rel!r})"
        actual = p.stat().st_size
        if actual != size:
            how = "truncated" if actual < size else "grown"
            return f"{rel} has {actual} bytes, {name} says {size} ({how})"
        if file_sha256(p) != digest:
            return f"{rel} does not match its sha256 in {name} (changed after it was written)"
    return None


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


def contained_path(root: Path, *parts: str, what: str = "run") -> Path:
    """``root/parts...``, checked to be a folder below ``root`` (each part one plain name:
    no ``/``, ``..`` or leading ``.``), so that no name can write outside ``root``."""
    root = Path(root)
    for part in parts:
        if (not part or part in (".", "..") or part.startswith(".") or "/" in part
                or "\\" in part or "\0" in part):
            raise FairbenchError(f"the {what} folder name {part!r} is not a plain folder name; "
                                 "registered names may hold letters, digits, '_', '-', '.', '+'")
    out = root.joinpath(*parts)
    try:
        out.resolve().relative_to(root.resolve())
    except ValueError:
        raise FairbenchError(f"the {what} folder {str(out)!r} would lie outside "
                             f"{str(root)!r}; refusing to write there") from None
    return out


#: this machine's name as used in temporary names ("-" would be ambiguous there)
HOST = socket.gethostname().replace("-", "_") or "host"


def temporary_path(final: Path) -> Path:
    """The hidden temporary sibling of ``final`` that this process writes before renaming."""
    return final.with_name(f".{final.name}.tmp-{HOST}-{os.getpid()}")


def remove_stale_temporaries(final: Path, *, any_host: bool = False) -> None:
    """Remove the temporaries of ``final`` left by killed processes of this host.

    A temporary of a live process, or of another host (whose processes this one cannot see on
    a shared filesystem), is left alone, unless ``any_host`` (the caller holds the claim of
    ``final``, so no other process can be writing it). Names without a host (``.tmp-<pid>``,
    written by earlier versions) count as this host's."""
    parent = final.parent
    if not parent.is_dir():
        return
    for p in parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        suffix = p.name.rpartition(".tmp-")[2]
        host, _, pid = suffix.rpartition("-")
        if not pid.isdigit():
            continue
        if int(pid) == os.getpid() and (host or HOST) == HOST:
            continue
        if not any_host and ((host or HOST) != HOST or pid_alive(int(pid))):
            continue
        shutil.rmtree(p, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


class LockBusy(Exception):
    """A non-blocking :func:`file_lock` found the lock held by another process."""


try:  # POSIX
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


def _acquire_posix(path: Path, blocking: bool) -> int:
    """``flock`` on ``path``, retried until the locked file is the one at ``path`` (a holder
    that removed it, or a remover, leaves the waiter with an unlinked file)."""
    assert _fcntl is not None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | (0 if blocking else _fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise LockBusy(str(path)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the file was removed (or replaced) meanwhile: lock the current one


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True, remove: bool = True,
              note: str = "") -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` for the block.

    The operating system releases it when the holder dies (``flock`` on POSIX, which Linux
    maps to NFS locks on a shared folder; ``filelock`` on Windows). ``blocking=False`` raises
    :class:`LockBusy` at once when another process holds it. With ``remove`` the lock file is
    removed while still held, so no empty lock file outlives its use; a process that waited on
    the removed file notices and locks the new one (the file's identity is checked after every
    acquisition). ``note`` (e.g. who holds it) is written into the lock file."""
    path = Path(path)
    if _fcntl is None:  # pragma: no cover - Windows: filelock removes its file on release
        from filelock import FileLock, Timeout

        lock = FileLock(str(path), timeout=-1 if blocking else 0)
        try:
            lock.acquire()
        except Timeout:
            raise LockBusy(str(path)) from None
        try:
            yield
        finally:
            lock.release()
        return
    fd = _acquire_posix(path, blocking)
    try:
        if note:
            os.ftruncate(fd, 0)
            os.write(fd, note.encode())
        yield
    finally:
        try:
            if remove:
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.fstat(fd), os.stat(path)):
                        os.unlink(path)
        finally:
            os.close(fd)  # releases the lock


def holder_note(path: Path, *, clean: bool = False) -> str | None:
    """The note of the process holding the lock at ``path`` (``""`` when it wrote none), or
    ``None`` when nobody holds it. The lock is tried, never waited for; with ``clean`` a lock
    file that nobody holds (left by an older version) is removed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with file_lock(path, blocking=False, remove=clean):
            return None
    except LockBusy:
        try:
            return path.read_text().strip()
        except OSError:
            return ""


def lock_note() -> str:
    """``host pid=N since=ISO-time``: who holds a lock, for messages."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return f"{socket.gethostname()} pid={os.getpid()} since={now}"
