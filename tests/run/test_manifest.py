"""A damaged file is never read as a result: run manifests (sha256 of every file, written last)
verified on every read, each kind of file truncated, garbled or deleted and detected; damaged
tensor-cache entries and cached vanilla models rebuilt; ``runs check``/``repair``; a sweep
redoing a damaged run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import assert_cli_error, cli, count_fits

from fairbench import Method, run_experiment
from fairbench.core.files import MANIFEST, verify_manifest, write_manifest
from fairbench.run.method import METHODS
from fairbench.run.store import (
    DamagedRunError,
    check_run,
    claim_path,
    is_finished,
    read_run_files,
)
from fairbench.training.trainer import Trainer

RUN_FILES = ("config.json", "metrics.json", "predictions.csv", "train_log.csv", "weights.pt",
             MANIFEST)


def damage(path: Path, how: str) -> None:
    """truncate: keep the first half; garble: overwrite 8 bytes in the middle (same size);
    delete: remove the file."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garble":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + b"\x00#garbl" + data[mid + 8:])
    elif how == "delete":
        path.unlink()
    else:  # pragma: no cover
        raise ValueError(how)


def sha_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def runs(tmp_path, tiny_run):
    """A copy of the finished tiny run's runs folder: (runs root, the run's directory)."""
    src = tiny_run.run_dir.parents[2]
    dst = tmp_path / "runs"
    shutil.copytree(src, dst)
    return dst, dst / tiny_run.run_dir.relative_to(src)


class _Posthoc(Method):
    """Starts from the shared baseline and changes nothing."""

    kind = "post-hoc"

    def run(self, ctx, params):
        return ctx.vanilla()


@pytest.fixture
def posthoc(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "posthoc_noop", _Posthoc)
    monkeypatch.setattr(_Posthoc, "registered_name", "posthoc_noop", raising=False)


# -- the manifest ------------------------------------------------------------------------------
def test_manifest_lists_every_file_with_its_sha256(tiny_run):
    run = tiny_run.run_dir
    manifest = json.loads((run / MANIFEST).read_text())
    files = {p.name for p in run.iterdir() if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == files >= {"config.json", "metrics.json", "predictions.csv",
                                               "train_log.csv", "weights.pt"}
    for name, entry in manifest["files"].items():
        data = (run / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    state = check_run(run)
    assert state.state == "finished" and not state.legacy and is_finished(run)


def test_config_records_threads_device_and_host(tiny_run):
    import torch

    config, _ = read_run_files(tiny_run.run_dir)
    assert config["torch_threads"] == torch.get_num_threads() == 1  # tests run one thread
    assert config["device"] == "cpu" and config["device_name"]
    assert config["host"] and isinstance(config["pid"], int)


def test_verify_manifest_names_the_problem(tmp_path):
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("a,b\n1,2\n")
    write_manifest(tmp_path)
    assert verify_manifest(tmp_path, required=("a.json",)) is None
    assert "c.json is not listed" in verify_manifest(tmp_path, required=("c.json",))
    (tmp_path / "sub" / "b.csv").write_text("a,b\n")
    assert "sub/b.csv has 4 bytes" in verify_manifest(tmp_path) and "truncated" in \
        verify_manifest(tmp_path)
    (tmp_path / "sub" / "b.csv").write_text("a,b\n1,3\n")  # same size, other bytes
    assert "does not match its sha256" in verify_manifest(tmp_path)


# -- every kind of run file, damaged, is detected by every reader -------------------------------
@pytest.mark.parametrize("how", ["truncate", "garble", "delete"])
@pytest.mark.parametrize("name", RUN_FILES)
def test_damaged_run_file_is_detected_everywhere(runs, name, how, tmp_path):
    root, run = runs
    damage(run / name, how)
    state = check_run(run)
    if name == MANIFEST and how == "delete":
        # without its manifest a run reads as one written before manifests: its structure is
        # checked (and passes: the other files are intact); `runs check` reports it
        assert state.state == "finished" and state.legacy
        return
    assert state.state == "damaged" and not is_finished(run), state
    assert name in state.problem or MANIFEST in state.problem
    with pytest.raises(DamagedRunError, match="runs repair"):
        read_run_files(run)
    # every command that reads it: one line naming the run and the way out, nothing written
    before = sha_tree(root)
    for args in (["show", str(run)], ["leaderboard", str(root)],
                 ["plot", "groups", str(run), "--out", str(tmp_path / "plots" / "g")]):
        line = assert_cli_error(cli(*args), str(run), "--force", "fairbench runs repair")
        assert "damaged" in line
    assert sha_tree(root) == before and not (tmp_path / "plots" / "g.png").exists()


def test_python_readers_verify_the_run_too(runs, tmp_path):
    """The Python API reads a run as the commands do: ``group_table``, ``metric_frame``,
    ``plot_groups`` and ``plot_ablation`` refuse a damaged run with the same one line, and
    write nothing."""
    from fairbench import group_table, metric_frame, plot_groups
    from fairbench.bench.plots import plot_ablation

    root, run = runs
    assert len(group_table(run)) == 2  # intact: read
    damage(run / "metrics.json", "garble")
    before = sha_tree(root)
    calls = [lambda: group_table(run), lambda: plot_groups(run, tmp_path / "plots" / "g"),
             lambda: plot_ablation([run], tmp_path / "plots" / "a")]
    if __import__("importlib").util.find_spec("fairlearn") is not None:
        calls.append(lambda: metric_frame(run))
    for call in calls:
        with pytest.raises(DamagedRunError, match="runs repair"):
            call()
    assert sha_tree(root) == before
    assert not (tmp_path / "plots").exists()


def test_null_metric_is_damage_not_a_missing_seed(runs):
    """An edited metrics.json (a value replaced by null, same file otherwise) no longer
    matches the manifest: the run is reported, not averaged without that seed."""
    root, run = runs
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["F1"] = None
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    assert check_run(run).state == "damaged"
    assert_cli_error(cli("leaderboard", str(root)), "metrics.json", "damaged")


def test_legacy_runs_are_checked_by_structure(runs):
    """A run written before manifests: accepted when its files parse and predictions.csv has
    the split's val and test rows; otherwise damaged."""
    _root, run = runs
    (run / MANIFEST).unlink()
    assert check_run(run).legacy and is_finished(run)
    lines = (run / "predictions.csv").read_text().splitlines()
    (run / "predictions.csv").write_text("\n".join(lines[:-3]) + "\n")
    state = check_run(run)
    assert state.state == "damaged" and "rows" in state.problem
    (run / "predictions.csv").write_text("\n".join(lines) + "\n")
    (run / "metrics.json").write_text('{"val": {')
    assert "metrics.json is not valid JSON" in check_run(run).problem
    (run / "predictions.csv").write_text("")
    (run / "metrics.json").write_text('{"val": {}, "test": {}}')
    assert "predictions.csv is empty" in check_run(run).problem


# -- a damaged run is redone: --force, redo_damaged, sweeps -----------------------------------
def test_run_reports_damage_and_force_redoes_it(runs, make_tiny_config, tmp_path):
    root, run = runs
    damage(run / "metrics.json", "truncate")
    config = make_tiny_config("vanilla", root)
    with pytest.raises(DamagedRunError, match="--force"):
        run_experiment(config)
    assert check_run(run).state == "damaged"  # untouched
    redone = run_experiment(dataclasses.replace(config, redo_damaged=True))
    assert not redone.reused and redone.run_dir == run and is_finished(run)
    damage(run / "predictions.csv", "garble")
    assert run_experiment(dataclasses.replace(config, force=True)).run_dir == run
    assert is_finished(run)


SUITE = """
name = "redo"
seeds = [0]
runs_dir = "{runs}"
[train]
epochs = 1
batch_size = 16
eval_batch_size = 64
[[datasets]]
name = "synthderm"
image_size = 16
backbones = ["smallcnn"]
backbone_params = {{ width = 8 }}
params = {{ n_samples = 160, n_classes = 3, images_per_patient = 1.0, dark_fraction = 0.4 }}
[[methods]]
name = "vanilla"
"""


def test_sweep_redoes_a_damaged_run(runs, tmp_path, monkeypatch, tiny_cache):
    root, run = runs
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tiny_cache))
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(runs=root))
    r = cli("sweep", str(suite), "--dry-run")
    assert r.exit_code == 0 and "1 finished" in r.output, r.output
    damage(run / "config.json", "garble")
    r = cli("sweep", str(suite), "--dry-run")
    assert "damaged" in r.output and "1 damaged, to redo" in r.output, r.output
    r = cli("sweep", str(suite), "-q")
    assert r.exit_code == 0, r.output
    assert "1 damaged, redone" in r.output and is_finished(run)


# -- tensor cache: each file damaged, rebuilt with one line ------------------------------------
@pytest.mark.parametrize("name,how", [("images.npy", "truncate"), ("images.npy", "delete"),
                                      ("images.npy", "garble"), ("meta.json", "truncate"),
                                      ("meta.json", "garble"), ("meta.json", "delete")])
def test_damaged_cache_entry_is_rebuilt(tmp_path, name, how, caplog):
    from fairbench.data.cache import load_or_build
    from fairbench.data.dataset import get_dataset_class
    from fairbench.testing import TINY_DATA

    adapter = get_dataset_class("synthderm")(params=dict(TINY_DATA))
    table = adapter.build_table()
    first = load_or_build(adapter, table, 16, tmp_path, progress=False)
    pixels = np.array(first.images)
    target = first.path / name
    if name == "images.npy" and how == "garble":
        # the header is the part a garbled array can be told by (pixels carry no checksum)
        data = bytearray(target.read_bytes())
        data[:6] = b"garble"
        target.write_bytes(bytes(data))
    else:
        damage(target, how)
    del first
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        again = load_or_build(adapter, table, 16, tmp_path, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "building it again" in warnings[0]
    assert np.array_equal(np.array(again.images), pixels)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [again.path.name]


def test_data_info_reports_a_damaged_cache(tmp_path):
    from fairbench.testing import TINY_DATA

    args = ["--cache-dir", str(tmp_path), "--image-size", "16",
            *[f"--data-param={k}={v}" for k, v in TINY_DATA.items()]]
    assert cli("data", "prepare", "synthderm", "-q", *args).exit_code == 0
    (entry,) = (tmp_path / "images").iterdir()
    damage(entry / "meta.json", "garble")
    r = cli("data", "info", "synthderm", *args)
    assert r.exit_code == 0 and "damaged" in r.output and "builds it again" in r.output


# -- cached vanilla models: damaged or swapped, trained again ----------------------------------
@pytest.mark.parametrize("name,how", [("model.pt", "truncate"), ("model.pt", "garble"),
                                      ("model.pt", "delete"), ("meta.json", "truncate"),
                                      ("meta.json", "garble"), ("meta.json", "swap")])
def test_damaged_or_swapped_vanilla_is_trained_again(runs, posthoc, make_tiny_config,
                                                      monkeypatch, caplog, name, how):
    root, _ = runs
    (entry,) = [d for d in (root / "_vanilla").iterdir() if d.is_dir()]
    if how == "swap":  # another baseline's identity (another seed), files consistent
        meta = json.loads((entry / "meta.json").read_text())
        meta["identity"]["seed"] = 7
        (entry / "meta.json").write_text(json.dumps(meta))
    else:
        damage(entry / name, how)
    calls = count_fits(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        result = run_experiment(make_tiny_config("posthoc_noop", root))
    assert calls == ["vanilla"] and is_finished(result.run_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cached vanilla model" in warnings[0] and \
        "training it again" in warnings[0]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256((entry / "model.pt").read_bytes()).hexdigest()
    assert not list((root / "_vanilla").glob("*.lock"))  # no lock file outlives its use


@pytest.mark.parametrize("name,how", [("model.pt", "garble"), ("meta.json", "swap")])
def test_damaged_or_swapped_multi_exit_model_is_trained_again(tmp_path, make_tiny_config,
                                                              monkeypatch, caplog, name, how):
    """The multi-exit model cached for me_vanilla and ME-FairPrune carries its identity and
    checksum like the vanilla baseline: a damaged or swapped entry is trained again (one
    warning line), and ``runs check`` reports a damaged one (a swapped one is consistent by
    itself: only a run, which knows the identity it needs, sees it)."""
    root = tmp_path / "runs"
    config = make_tiny_config("me_vanilla", root, params={"tau_grid": "0.5,0.9"})
    run_experiment(config)
    (entry,) = [d for d in (root / "_me_vanilla").iterdir() if d.is_dir()]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256((entry / "model.pt").read_bytes()).hexdigest()
    if how == "swap":
        meta["identity"]["seed"] = 7
        (entry / "meta.json").write_text(json.dumps(meta))
    else:
        damage(entry / name, how)
    if how != "swap":  # a swap is only seen by a run that knows the identity it needs
        r = cli("runs", "check", str(root))
        assert r.exit_code == 1 and str(entry) in r.output and "damaged" in r.output, r.output
    calls = count_fits(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        run_experiment(dataclasses.replace(config, force=True))
    assert calls == ["multi-exit"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cached multi-exit model" in warnings[0], warnings
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256((entry / "model.pt").read_bytes()).hexdigest()
    assert not list((root / "_me_vanilla").glob("*.lock"))
    assert cli("runs", "check", str(root)).exit_code == 0


def test_failed_baseline_leaves_no_lock_or_claim(tmp_path, make_tiny_config, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("killed during training")

    monkeypatch.setattr(Trainer, "fit", boom)
    root = tmp_path / "runs"
    with pytest.raises(RuntimeError):
        run_experiment(make_tiny_config("vanilla", root))
    assert not list((root / "_vanilla").glob("*.lock"))
    assert not list(root.rglob(".*.claim")) and not list(root.rglob(".*tmp*"))


# -- runs check / repair -----------------------------------------------------------------------
def test_runs_check_and_repair(runs, tmp_path, make_tiny_config, posthoc):
    from fairbench.core.files import HOST

    root, run = runs
    legacy = run_experiment(make_tiny_config("posthoc_noop", root)).run_dir
    (legacy / MANIFEST).unlink()
    damage(run / "predictions.csv", "truncate")
    stale_tmp = run.parent / f".{run.name}.tmp-{HOST}-99999999"
    stale_tmp.mkdir()
    claim_path(run).write_text("")  # nobody holds it
    (root / "_vanilla" / "deadbeef.lock").write_text("")
    bad_vanilla = root / "_vanilla" / "0123456789abcdef"
    bad_vanilla.mkdir()
    (bad_vanilla / "meta.json").write_text("{")
    # MLflow's artifacts sit at a run's depth: no run, never reported or moved
    from fairbench.run.tracking import ARTIFACTS_NAME

    artifacts = root / ARTIFACTS_NAME / "fairbench-synthderm" / "0a1b2c"
    (artifacts / "artifacts").mkdir(parents=True)
    (artifacts / "artifacts" / "metrics.json").write_text("{}")
    r = cli("runs", "check", str(root))
    assert ARTIFACTS_NAME not in r.output, r.output
    assert r.exit_code == 1, r.output
    for frag in ("damaged", "written before manifests", "stale", str(stale_tmp),
                 "baseline", "runs repair"):
        assert frag in r.output, frag
    r = cli("runs", "repair", str(root))
    assert r.exit_code == 0, r.output
    assert not run.exists() and (root / "_damaged" / run.relative_to(root)).is_dir()
    assert (legacy / MANIFEST).is_file() and not check_run(legacy).legacy
    assert not stale_tmp.exists() and not claim_path(run).exists()
    assert not (root / "_vanilla" / "deadbeef.lock").exists() and not bad_vanilla.exists()
    assert (artifacts / "artifacts" / "metrics.json").is_file()
    r = cli("runs", "check", str(root))
    assert r.exit_code == 0 and "damaged" not in r.output, r.output
    # the leaderboard reads again (the damaged run is out of the way), the run is redone
    assert cli("leaderboard", str(root)).exit_code == 0
    assert run_experiment(make_tiny_config("vanilla", root)).run_dir == run


def test_runs_check_on_a_missing_folder(tmp_path):
    assert_cli_error(cli("runs", "check", str(tmp_path / "nope")), "does not exist")
