"""The run store: one directory per run, written atomically, in a documented format.

A run directory holds

* ``config.json``: the resolved configuration (method and parameters, dataset and options,
  attribute, privileged group, backbone, training settings, seed, split hash and file,
  package versions, device and torch thread count, host and process, wall time);
* ``metrics.json``: ``{part: {metric: value, <group name>: {metric: value}, "Diff": {...},
  "Diff_signed": {...}, "gap": {...}, "worst": {...}, "Avg": {...}}}`` for ``val`` and
  ``test``; ``test_true`` (the same, against the true labels, where the data has them:
  synthetic data); ``leakage`` (classification: the linear probe of the attribute on the
  returned model's representation, :mod:`fairbench.run.leakage`); and ``"meta"``
  (attribute, groups, privileged group, directions);
* ``predictions.csv``: ``sample_id, part, label, pred[, true_label][, patient_id],
  attr_<name>..., prob_<class>...``;
* ``train_log.csv``: one row per epoch of every training stage;
* ``weights.pt`` (optional): the fitted model's state dict, for ``torch.load(...,
  weights_only=True)``;
* ``manifest.json``, written last: the size and sha256 of every other file.

A run is written into a hidden temporary directory and renamed into place when complete,
so a directory that exists under its final name is a finished run; a killed run leaves only a
temporary directory, which the next attempt removes. Temporary names carry the host and the
process id (``.<name>.tmp-<host>-<pid>``), so on a runs directory shared between machines a
process only removes the temporaries of dead processes of its own host.

**Verification** (:func:`check_run`): whenever a run is read, its manifest is checked; a file
that is missing, truncated or changed makes the run *damaged*: it is reported with its path and
the way out (``--force``, ``fairbench runs repair``), never read as a result, and a sweep redoes
it. A run without ``manifest.json`` (written before manifests existed, or edited and its
manifest deleted) is checked by its structure (both JSON files parse, ``predictions.csv`` has
the split's rows), but its numbers cannot be verified: every reader refuses it in one line
unless the user passes ``--trust-unmanifested`` (then a warning on each read), and ``runs
repair`` adds a manifest only when metrics.json agrees with the metrics re-derived from
predictions.csv.

**Failed runs**: a run whose training diverged leaves ``failed.json`` (the error, the method,
the epoch) under its final name and nothing else; it is no result.

**Claims** (:func:`claim_run`): a process computing a run holds an exclusive lock on
``.<name>.claim`` beside the run directory, so processes (or machines on a shared folder)
that share a runs directory never compute one run twice; the operating system releases the
claim when its holder dies, and the next process takes the run over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fairbench.core.errors import FairbenchError
from fairbench.core.files import (
    HOST,
    MANIFEST,
    LockBusy,
    config_hash,
    discard_dir,
    file_lock,
    file_sha256,
    holder_note,
    lock_note,
    pid_alive,
    remove_stale_temporaries,
    temporary_path,
    verify_manifest,
    write_json,
    write_manifest,
)

RUN_FILES = ("config.json", "metrics.json", "predictions.csv")
#: the record of a run whose training diverged (the only file of its directory)
FAILED_FILE = "failed.json"
#: the states of :func:`check_run`
STATES = ("finished", "damaged", "failed", "unfinished", "absent")


class DamagedRunError(FairbenchError):
    """A run directory whose files do not match its manifest (or do not parse)."""


class UnverifiedRunError(FairbenchError):
    """A run directory without a manifest, read without ``--trust-unmanifested``."""


log = logging.getLogger(__name__)


class RunClaimed(Exception):
    """Another process holds the claim of this run (see :func:`claim_run`)."""

    def __init__(self, run_dir: Path, holder: str) -> None:
        super().__init__(f"run {str(run_dir)!r} is being computed by {holder or 'another process'}")
        self.run_dir = run_dir
        self.holder = holder


@dataclass(frozen=True)
class RunState:
    """What :func:`check_run` found in a run directory."""

    path: Path
    state: str           # one of STATES
    problem: str = ""    # damaged: what is wrong; failed: the recorded error
    legacy: bool = False  # finished, written before manifests (checked by structure only)

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def message(self) -> str:
        """One line naming the run, the problem and the way out."""
        return damaged_message(self.path, self.problem)


def damaged_message(path: Path, problem: str) -> str:
    return (f"run {str(path)!r} is damaged ({problem}); it is not read as a result: redo it "
            f"with --force (or a sweep), or run `fairbench runs repair "
            f"{str(runs_root_of(path))!r}`")


def runs_root_of(run_dir: Path) -> Path:
    """The runs directory of ``<runs>/<dataset>/<method>/<run>``."""
    return Path(run_dir).parents[2] if len(Path(run_dir).parts) >= 4 else Path(run_dir).parent


def check_run(run_dir: Path) -> RunState:
    """The state of ``run_dir``: ``finished`` (manifest verified, or a pre-manifest run whose
    structure checks out), ``damaged``, ``failed`` (diverged, recorded), ``unfinished`` (a
    directory without the run files and without a manifest: a copy cut short, files deleted by
    hand; replaced by the next run without ``--force``) or ``absent``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return RunState(run_dir, "absent")
    if (run_dir / MANIFEST).exists():
        # the files are byte for byte those written with the run: no need to parse them here
        problem = verify_manifest(run_dir, required=RUN_FILES)
        return RunState(run_dir, "damaged", problem) if problem else RunState(run_dir, "finished")
    present = [f for f in RUN_FILES if (run_dir / f).is_file()]
    if not present:
        failed = run_dir / FAILED_FILE
        if failed.is_file():
            try:
                error = str(json.loads(failed.read_text()).get("error", ""))
            except (OSError, ValueError, AttributeError):
                error = "unreadable failed.json"
            return RunState(run_dir, "failed", error)
        return RunState(run_dir, "unfinished")
    if len(present) < len(RUN_FILES):
        return RunState(run_dir, "unfinished")
    problem = _structure_problem(run_dir, count_rows=True)
    if problem:
        return RunState(run_dir, "damaged", problem + " (a run without a manifest)")
    return RunState(run_dir, "finished", legacy=True)


def _structure_problem(run_dir: Path, *, count_rows: bool) -> str | None:
    """Why the run files do not read as a run (``None`` when they do)."""
    parsed: dict[str, Any] = {}
    for name, keys in (("config.json", ("method", "seed", "split_sha256")),
                       ("metrics.json", ("val", "test"))):
        try:
            data = json.loads((run_dir / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return f"{name} is not valid JSON (truncated or garbled)"
        if not isinstance(data, dict) or any(k not in data for k in keys):
            return f"{name} lacks {', '.join(k for k in keys if not isinstance(data, dict) or k not in data)}"
        parsed[name] = data
    preds = run_dir / "predictions.csv"
    if preds.stat().st_size == 0:
        return "predictions.csv is empty"
    if count_rows:
        sizes = parsed["config.json"].get("split_sizes") or {}
        try:
            with preds.open("rb") as fh:
                header = fh.readline()
                rows = sum(1 for line in fh if line.strip())
        except OSError as exc:
            return f"predictions.csv cannot be read ({exc.strerror or exc})"
        if not header.strip():
            return "predictions.csv has no header"
        expected = sum(int(sizes.get(p, 0)) for p in ("val", "test"))
        if expected and rows != expected:
            return f"predictions.csv has {rows} rows, the split's val and test parts {expected}"
    return None


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished, verified run (see :func:`check_run`)."""
    return check_run(run_dir).finished


def read_run_files(run_dir: Path, *, verified: bool = False
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, metrics)`` of a finished run, after verifying it (``verified``: the caller
    has just found it finished with :func:`check_run`; the files are not hashed again); a
    damaged run raises :class:`DamagedRunError` (one line: the path, the problem, the way
    out)."""
    state = RunState(Path(run_dir), "finished") if verified else check_run(run_dir)
    if state.state == "damaged":
        raise DamagedRunError(state.message())
    if not state.finished:
        what = {"absent": "does not exist", "failed": f"is a failed run ({state.problem})"}.get(
            state.state, "is not a finished run directory (it lacks config.json, metrics.json "
                         "or predictions.csv)")
        raise FairbenchError(f"{str(run_dir)!r} {what}")
    if not (Path(run_dir) / MANIFEST).exists():
        _unverified(Path(run_dir))
    try:
        return (json.loads((Path(run_dir) / "config.json").read_text()),
                json.loads((Path(run_dir) / "metrics.json").read_text()))
    except (OSError, ValueError) as exc:  # changed between the check and the read
        raise DamagedRunError(damaged_message(Path(run_dir), f"unreadable: {exc}")) from None


#: environment variable that ``--trust-unmanifested`` sets: read runs without a manifest,
#: with a warning on every one
TRUST_UNMANIFESTED = "FAIRBENCH_TRUST_UNMANIFESTED"


def _unverified(run_dir: Path) -> None:
    """A run without ``manifest.json``: its files cannot be verified (written before
    manifests, or its manifest deleted after an edit). Refused in one line unless the user
    trusts such runs explicitly, then a warning each time one is read."""
    if os.environ.get(TRUST_UNMANIFESTED) == "1":
        import sys

        print(f"warning: reading {str(run_dir)!r} without a manifest: its files are not "
              "verified (it may have been edited)", file=sys.stderr)
        return
    raise UnverifiedRunError(
        f"run {str(run_dir)!r} has no manifest.json, so its files cannot be verified (written "
        "before manifests, or edited and its manifest deleted); run it again (--force, or a "
        "sweep after `fairbench runs repair`), or pass --trust-unmanifested to read it with a "
        "warning")


def write_failed(final_dir: Path, record: dict[str, Any]) -> Path:
    """Record a failed (diverged) run under its final name: ``failed.json`` alone, written
    atomically; a finished run there is never replaced by a failure."""
    if is_finished(final_dir):
        return final_dir
    writer = RunWriter(final_dir)
    write_json(writer.path / FAILED_FILE, record)
    return writer.commit(replace=True, manifest=False)


class RunWriter:
    """Collects a run's files in a temporary directory; :meth:`commit` writes the manifest and
    moves the directory into place."""

    def __init__(self, final_dir: Path) -> None:
        self.final_dir = final_dir
        self.tmp_dir = temporary_path(final_dir)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)

    @property
    def path(self) -> Path:
        return self.tmp_dir

    def commit(self, *, replace: bool = False, manifest: bool = True) -> Path:
        if manifest:
            write_manifest(self.tmp_dir)  # the last file of the run: sha256 of every other
        if self.final_dir.exists():
            if not replace:
                raise FairbenchError(f"run directory {str(self.final_dir)!r} already exists")
            trash = self.final_dir.with_name(f".{self.final_dir.name}.old-{os.getpid()}")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.final_dir, trash)
            os.replace(self.tmp_dir, self.final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp_dir, self.final_dir)
        return self.final_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


# -- claims ------------------------------------------------------------------------------------
def claim_path(final_dir: Path) -> Path:
    """The claim lock of a run: ``.<name>.claim`` beside its directory."""
    return Path(final_dir).with_name(f".{Path(final_dir).name}.claim")


_HELD: dict[str, int] = {}


@contextlib.contextmanager
def claim_run(final_dir: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the claim of the run at ``final_dir`` for the block (re-entrant in one process).

    ``wait=False`` raises :class:`RunClaimed` at once when another process holds it; with
    ``wait=True`` the call waits until the holder finishes or dies. The claim file records the
    host, process and start time of its holder and is removed on release."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    key = str(final_dir.parent.resolve() / final_dir.name)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    path = claim_path(final_dir)
    lock = file_lock(path, blocking=wait, note=lock_note())
    try:
        lock.__enter__()
    except LockBusy:
        try:
            holder = path.read_text().strip()
        except OSError:
            holder = ""
        raise RunClaimed(final_dir, holder) from None
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        lock.__exit__(None, None, None)


# -- the cached models (vanilla baselines, multi-exit models) ----------------------------------
def cached_model_problem(entry: Path, identity: dict[str, Any] | None = None) -> str | None:
    """Why the cached model at ``entry`` cannot be used (``None`` when it can, as far
    as its files tell): ``meta.json`` missing or not JSON, an identity other than
    ``identity`` (a swapped entry), ``model.pt`` missing or not matching the sha256 in
    ``meta.json`` (entries written before checksums are checked by loading only)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if not isinstance(meta, dict) or "identity" not in meta:
            return "meta.json lacks the model's identity"
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError):
        return "meta.json is not valid JSON (truncated or garbled)"
    if identity is not None and config_hash(meta["identity"]) != config_hash(identity):
        return "meta.json names another model (a swapped entry)"
    model = entry / "model.pt"
    if not model.is_file():
        return "model.pt is missing"
    digest = meta.get("model_sha256")
    if digest is not None and file_sha256(model) != digest:
        return "model.pt does not match the sha256 in meta.json (truncated or swapped)"
    return None


def cached_model(final: Path, identity: dict[str, Any], *,
                 train: Callable[[Path], dict[str, Any]], load: Callable[[Path], Any],
                 what: str, logger: logging.Logger) -> tuple[Any, dict[str, Any]]:
    """A model trained once and cached at ``final`` (the vanilla baselines, the multi-exit
    model), under ``final``'s lock (removed on release, also when training fails), so
    concurrent runs wait for one another.

    ``train(tmp)`` trains into the folder ``tmp`` (its ``model.pt`` and anything else) and
    returns more meta; ``meta.json`` gets ``identity``, the sha256 of ``model.pt`` and that
    meta, and ``tmp`` is renamed to ``final``. ``load(final)`` builds the model and loads
    ``model.pt`` (raising when it cannot). A cached entry is checked first
    (:func:`cached_model_problem`: meta parses, names ``identity``, ``model.pt`` matches its
    sha256) and must load; a damaged or swapped one is removed with one warning line and
    trained again; one damaged right after training is an error. Returns the model and the
    meta."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.with_suffix(".lock")):
        trained = False
        while True:
            if not final.exists():
                _train_into(final, identity, train)
                trained = True
            problem = cached_model_problem(final, identity)
            if problem is None:
                try:
                    model = load(final)
                except Exception as exc:  # noqa: BLE001 - truncated, garbled, other model
                    problem = f"model.pt does not load ({type(exc).__name__})"
                else:
                    return model, json.loads((final / "meta.json").read_text())
            if trained:
                raise FairbenchError(f"the cached {what} {str(final)!r} is damaged just after "
                                     f"training ({problem}); check the disk")
            logger.warning("the cached %s %s is damaged or not this model (%s); training it "
                           "again", what, final, problem)
            discard_dir(final)


def _train_into(final: Path, identity: dict[str, Any],
                train: Callable[[Path], dict[str, Any]]) -> None:
    remove_stale_temporaries(final)
    tmp = temporary_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        extra = train(tmp)
        write_json(tmp / "meta.json", {"identity": identity,
                                       "model_sha256": file_sha256(tmp / "model.pt"), **extra})
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- check and repair a runs folder ------------------------------------------------------------
@dataclass
class Finding:
    """One thing ``fairbench runs check`` reports: ``kind`` (run, baseline, temporary, claim,
    lock, leftover), its path, its state and what ``repair`` does (or did) about it."""

    kind: str
    path: Path
    state: str
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        text = f"{self.state:10s} {self.kind:9s} {self.path}"
        if self.detail:
            text += f"  ({self.detail})"
        if self.fix:
            text += f"  -> {self.fix}"
        return text


#: top-level folders of a runs folder that hold no runs: MLflow's stores (the SQLite store's
#: artifacts, the former file store) and the split files
NOT_RUN_FOLDERS = ("mlartifacts", "mlruns", "splits")

#: states that make ``runs check`` exit non-zero
PROBLEM_STATES = ("damaged", "stale", "unverified")


def _temporary_owner(name: str) -> tuple[str, int] | None:
    suffix = name.rpartition(".tmp-")[2]
    host, _, pid = suffix.rpartition("-")
    return ((host or HOST), int(pid)) if pid.isdigit() else None


def check_runs_dir(root: Path, *, repair: bool = False) -> list[Finding]:
    """Every run, cached baseline, temporary, claim and lock file under the runs folder
    ``root``, with its state; with ``repair``: damaged runs (and unfinished folders) are moved
    to ``<root>/_damaged/`` (kept for inspection; the next sweep computes them again), runs
    without a manifest get one only when their metrics.json agrees with the metrics re-derived
    from predictions.csv (:func:`rederive_problem`; otherwise they are moved aside too, and a
    segmentation run, which cannot be re-derived, is left unverified), damaged baselines are
    removed (trained again when
    needed), and temporaries of dead processes, claims and locks that nobody holds, and
    leftovers of interrupted replacements are removed. A run claimed by a live process is
    left alone."""
    root = Path(root)
    if not root.is_dir():
        raise FairbenchError(f"runs directory {str(root)!r} does not exist")
    out: list[Finding] = []
    for run in sorted(root.glob("*/*/*")):
        rel = run.relative_to(root).parts
        if rel[0] in NOT_RUN_FOLDERS or rel[0].startswith(("_", ".")) or \
                rel[1].startswith((".", "_")):
            continue
        if run.name.startswith("."):
            out.append(_check_hidden(run, repair))
            continue
        if not run.is_dir():
            continue
        out.append(_check_one_run(root, run, repair))
    for vanilla in (root / "_vanilla", root / "_me_vanilla"):
        if not vanilla.is_dir():
            continue
        for entry in sorted(vanilla.iterdir()):
            if entry.name.startswith("."):
                out.append(_check_hidden(entry, repair))
            elif entry.suffix == ".lock":
                out.append(_check_lock(entry, "lock", repair))
            elif entry.is_dir():
                problem = cached_model_problem(entry)
                if problem is None:
                    out.append(Finding("baseline", entry, "ok"))
                    continue
                fix = "removed; trained again when a run needs it" if repair else \
                    "repair removes it; it is trained again when needed"
                if repair:
                    try:
                        with file_lock(entry.with_suffix(".lock"), blocking=False):
                            discard_dir(entry)
                    except LockBusy:
                        fix = "left alone: a process is using it"
                out.append(Finding("baseline", entry, "damaged", problem, fix))
    return [f for f in out if f is not None]


def _check_one_run(root: Path, run: Path, repair: bool) -> Finding:
    state = check_run(run)
    if state.finished and not state.legacy:
        return Finding("run", run, "ok")
    if state.finished:  # legacy: structure checked, no manifest
        mismatch = rederive_problem(run)
        if mismatch is None:
            fix = ("repair adds a manifest (metrics.json agrees with the metrics re-derived "
                   "from predictions.csv)")
        elif mismatch.startswith("cannot"):
            fix = f"left as it is: {mismatch}; run it again, or read it with --trust-unmanifested"
        else:
            fix = f"repair moves it to _damaged/ ({mismatch}); a sweep computes it again"
        can_act = mismatch is None or not mismatch.startswith("cannot")
        if repair and can_act:
            try:
                with claim_run(run, wait=False):
                    if mismatch is None:
                        write_manifest(run)
                        fix = "manifest added (metrics.json agrees with predictions.csv)"
                    else:
                        dest = _aside(root, run)
                        fix = f"moved to {dest} ({mismatch}); a sweep computes it again"
            except RunClaimed as exc:
                fix = f"left alone: claimed by {exc.holder}"
        return Finding("run", run, "unverified", "no manifest (written before manifests, or "
                       "its manifest deleted)", fix)
    if state.state == "failed":
        return Finding("run", run, "failed", state.problem,
                       "kept as the record; sweep --retry-failed or run --force redoes it")
    if state.state in ("damaged", "unfinished"):
        fix = "repair moves it to _damaged/; a sweep computes it again"
        if repair:
            try:
                with claim_run(run, wait=False):
                    dest = _aside(root, run)
                fix = f"moved to {dest}; a sweep computes it again"
            except RunClaimed as exc:
                fix = f"left alone: claimed by {exc.holder}"
        detail = state.problem or "no run files and no manifest"
        return Finding("run", run, "damaged" if state.state == "damaged" else "stale",
                       detail, fix)
    return Finding("run", run, state.state)


def rederive_problem(run: Path, *, tolerance: float = 1e-9) -> str | None:
    """Why ``metrics.json`` of a run without a manifest cannot be trusted: its val and test
    metrics are computed again from ``predictions.csv`` (the hard predictions: accuracy,
    precision, recall, F1 and the equalized-odds family, overall and per group) and compared;
    ``None`` when every one agrees within ``tolerance``, ``"cannot ..."`` when the run's
    metrics cannot be re-derived (segmentation, no prediction column)."""
    import pandas as pd

    from fairbench.metrics import flatten
    from fairbench.metrics.catalog import COUNT_UTILITY, EQUALIZED_ODDS
    from fairbench.metrics.counts import GroupConfusion, count_metrics

    try:
        config = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        df = pd.read_csv(run / "predictions.csv")
    except (OSError, ValueError) as exc:
        return f"unreadable run files ({exc})"
    if config.get("task", "classification") != "classification" or "pred" not in df:
        return "cannot re-derive the metrics of a segmentation run from its files"
    names = list(config["groups"])
    column = f"attr_{config['attribute']}"
    n_classes = len(config.get("classes") or []) or int(df["label"].max()) + 1
    for part in ("val", "test"):
        rows = df[df["part"] == part]
        if column not in rows or part not in metrics:
            return f"cannot re-derive: predictions.csv lacks {column} or metrics.json {part}"
        cm = GroupConfusion.from_labels(rows["label"].to_numpy(np.int64),
                                        rows["pred"].to_numpy(np.int64),
                                        rows[column].to_numpy(np.int64),
                                        n_groups=len(names), n_classes=n_classes)
        derived = count_metrics(cm, names)
        stored = flatten(metrics[part])
        for key in (*COUNT_UTILITY, *EQUALIZED_ODDS, *(f"{g}.F1" for g in names)):
            a, b = derived.get(key), stored.get(key)
            if a is None or b is None:
                continue
            if not (abs(float(a) - float(b)) <= tolerance or (a != a and b != b)):
                return (f"metrics.json {part}.{key} = {float(b):.6g}, predictions.csv gives "
                        f"{float(a):.6g}")
    return None


def _check_hidden(path: Path, repair: bool) -> Finding:
    name = path.name
    if name.endswith(".claim"):
        return _check_lock(path, "claim", repair)
    if name.endswith(".lock"):
        return _check_lock(path, "lock", repair)
    if ".tmp-" in name:
        owner = _temporary_owner(name)
        if owner is None or owner[0] != HOST:
            where = f"host {owner[0]}" if owner else "an unknown process"
            return Finding("temporary", path, "busy", f"written by {where}; left alone")
        if pid_alive(owner[1]):
            return Finding("temporary", path, "busy", f"process {owner[1]} is writing it")
        if repair:
            shutil.rmtree(path, ignore_errors=True)
        return Finding("temporary", path, "stale", f"process {owner[1]} is gone",
                       "removed" if repair else "repair removes it")
    if ".old-" in name or ".damaged-" in name:
        if repair:
            shutil.rmtree(path, ignore_errors=True)
        return Finding("leftover", path, "stale", "of an interrupted replacement",
                       "removed" if repair else "repair removes it")
    return Finding("leftover", path, "unknown", "not written by fairbench")


def _check_lock(path: Path, kind: str, repair: bool) -> Finding:
    holder = holder_note(path, clean=repair)
    if holder is not None:
        return Finding(kind, path, "busy", f"held by {holder or 'a live process'}")
    return Finding(kind, path, "stale", "nobody holds it",
                   "removed" if repair else "repair removes it")


def _aside(root: Path, run: Path) -> Path:
    dest = root / "_damaged" / run.relative_to(root)
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{run.name}-{n}")
        n += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run, dest)
    return dest
