"""Reliability and security, as a hostile user would try them: every bad input is one line,
exit code 2, and leaves finished runs byte for byte as they were; no data file runs code; no
name escapes the runs folder; plugin code runs only where methods do; diverging training is
one line and a recorded failure that a sweep goes past; SIGTERM cleans up like Ctrl-C."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_helpers import assert_cli_error, cli

from fairbench import create_backbone, run_experiment
from fairbench.core.errors import FairbenchError, ParamError, TrainingDiverged
from fairbench.core.params import build_params
from fairbench.core.registry import Registry
from fairbench.run.store import check_run, is_finished
from fairbench.training.trainer import TrainConfig, Trainer, TrainHooks

TINY = ["--image-size", "16", "--backbone-param", "width=8", "--epochs", "1", "-q",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--data-param", "dark_fraction=0.4",
        "--train", "batch_size=16", "--train", "eval_batch_size=64", "--device", "cpu"]


def sha_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_run):
    """A runs folder holding a finished run (a copy of the tiny run), never changed here."""
    src = tiny_run.run_dir.parents[2]
    root = tmp_path_factory.mktemp("finished") / "runs"
    shutil.copytree(src, root)
    return root, root / tiny_run.run_dir.relative_to(src)


class Evil:
    """Pickled into a data file: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fairseg_root(tmp_path: Path) -> tuple[Path, Path]:
    from dataset_helpers import datasets_test_module

    make_root = datasets_test_module("test_datasets_fairseg").make_root

    root = make_root(tmp_path, n=5)
    marker = tmp_path / "pwned"
    evil = root / "Training" / "data_00002.npz"
    with np.load(evil, allow_pickle=True) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["race"] = np.array(Evil(marker), dtype=object)
    np.savez(evil, **arrays)
    return root, marker


SUITE = """
name = "bad"
seeds = [0]
runs_dir = "{runs}"
[[datasets]]
name = "synthderm"
{extra}
[[methods]]
name = "vanilla"
"""


def _bad_inputs(tmp_path: Path, root: Path, run: Path, tiny_cache: Path):
    """Every bad input of the reliability review: name -> (args, fragments of the one line,
    a check run afterwards or None)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cache = ["--cache-dir", str(tiny_cache)]
    run_args = ["run", *TINY, "--runs-dir", str(root), *cache]
    cases: dict[str, tuple[list[str], list[str], object]] = {}

    # a data file that would run code
    fs_root, marker = _fairseg_root(tmp_path)
    cases["pickled npz member"] = (
        ["data", "info", "fairseg", "--data-root", str(fs_root), "--cache-dir",
         str(tmp_path / "fscache")],
        ["member 'race' is refused", "data_00002.npz", "never pickled"],
        lambda: not marker.exists())
    # a registered name that would climb out of the runs folder
    evil_plugin = tmp_path / "evil_plugin.py"
    evil_plugin.write_text("from fairbench import register_method\n"
                           "from fairbench.methods.vanilla import Vanilla\n"
                           "register_method('../../../x')(type('X', (Vanilla,), {}))\n")
    cases["name outside the runs folder"] = (
        [*run_args, "--plugin", str(evil_plugin), "--method", "../../../x"],
        ["invalid method name '../../../x'", "evil_plugin.py"],
        lambda: not (root.parents[2] / "x").exists())
    # a plugin taking a built-in name is blamed, not the built-ins
    dup = tmp_path / "dup_plugin.py"
    dup.write_text("from fairbench import register_method\n"
                   "from fairbench.methods.vanilla import Vanilla\n"
                   "register_method('vanilla')(type('Mine', (Vanilla,), {}))\n")
    cases["plugin takes a built-in name"] = (
        [*run_args, "--plugin", str(dup)], ["dup_plugin.py", "already registered by a built-in"],
        None)
    # a config whose plugin would run before the unknown method is noticed
    marker_plugin = tmp_path / "marker_plugin.py"
    ran = tmp_path / "plugin_ran"
    marker_plugin.write_text(f"from pathlib import Path\nPath({str(ran)!r}).write_text('x')\n"
                             "from fairbench import register_method\n")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'method = "nosuchmethod"\nplugins = ["{marker_plugin}"]\n')
    cases["unknown method in a config with plugins"] = (
        [*run_args, "--config", str(cfg)], ["unknown method 'nosuchmethod'"],
        lambda: not ran.exists())
    # a --weights file missing a whole stage
    partial = tmp_path / "partial.pt"
    torch.manual_seed(0)
    state = create_backbone("smallcnn", num_classes=3, image_size=16, width=8).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("body.12.")}, partial)
    cases["partial weights"] = ([*run_args, "--weights", str(partial)],
                                ["covers only", "body.12", "--allow-partial-weights"], None)
    # training settings
    cases["diverging training"] = ([*run_args, "--train", "optimizer=sgd", "--train", "lr=1e6"],
                                   ["method 'vanilla'", "diverged", "epoch 1", "lr=1e+06",
                                    "recorded in"], None)
    cases["infinite lr"] = ([*run_args, "--train", "lr=inf"], ["lr='inf'", "not a finite"], None)
    cases["infinite weight decay"] = ([*run_args, "--train", "weight_decay=inf"],
                                      ["weight_decay='inf'", "not a finite"], None)
    cases["image size 0"] = ([*run_args, "--image-size", "0"], ["--image-size 0", "too small"],
                             None)
    cases["backbone param mistyped"] = ([*run_args, "--backbone-param", "width=wide"],
                                        ["width='wide'", "not a valid int"], None)
    cases["backbone param unknown"] = ([*run_args, "--backbone-param", "widht=16"],
                                       ["unknown --backbone-param 'widht'", "did you mean width"],
                                       None)
    # suites with mistyped values
    for label, extra, frags in (
            ("suite split_seed", 'split_seed = "one"', ["split_seed = 'one'", "integer"]),
            ("suite split_seed float", "split_seed = 1.5", ["split_seed = 1.5", "integer"]),
            ("suite split_fractions", 'split_fractions = ["a", "b", "c"]',
             ["split_fractions", "three numbers"]),
            ("suite image_size", 'image_size = "big"', ["image_size = 'big'", "integer"])):
        suite = tmp_path / f"{label.replace(' ', '_')}.toml"
        suite.write_text(SUITE.format(runs=root, extra=extra))
        cases[label] = (["sweep", str(suite), "--dry-run"], frags, None)
        cases[label + " (leaderboard)"] = (["leaderboard", str(suite)], frags, None)
    # outputs under a file
    cases["leaderboard --out under a file"] = (
        ["leaderboard", str(root), "--out", str(a_file / "board.md")],
        ["--out", "cannot create its folder"], None)
    cases["plot --out under a file"] = (
        ["plot", "groups", str(run), "--out", str(a_file / "g")],
        ["--out", "cannot create its folder"], None)
    # split import: a binary file, an unwritable output
    binary = tmp_path / "val.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    ids = tmp_path / "ids.txt"
    ids.write_text("x\n")
    syn = ["data", "import-split", "synthderm", "--data-param", "n_samples=160"]
    cases["import-split binary file"] = (
        [*syn, "--val", str(binary), "--test", str(ids), "--out", str(tmp_path / "s.csv")],
        ["val.txt", "not a text file"], None)
    good_val = tmp_path / "good_val.txt"
    good_test = tmp_path / "good_test.txt"
    good_val.write_text("sd0-000000\n")
    good_test.write_text("sd0-000001\n")
    cases["import-split unwritable --out"] = (
        [*syn, "--val", str(good_val), "--test", str(good_test), "--out",
         str(a_file / "s.csv")], ["cannot write the split file", "--out"], None)
    # damaged runs are reported, never read: truncated metrics, an empty predictions.csv
    damaged = tmp_path / "damaged_runs"
    shutil.copytree(root, damaged)
    d_run = damaged / run.relative_to(root)
    (d_run / "metrics.json").write_text((d_run / "metrics.json").read_text()[:40])
    cases["truncated metrics.json"] = (["show", str(d_run)], ["damaged", "metrics.json",
                                                              "--force", "runs repair"], None)
    empty = tmp_path / "empty_preds"
    shutil.copytree(root, empty)
    e_run = empty / run.relative_to(root)
    (e_run / "predictions.csv").write_text("")
    cases["empty predictions.csv with --ci"] = (["leaderboard", str(empty), "--ci"],
                                                ["damaged", "predictions.csv"], None)
    return cases


def test_every_bad_input_is_one_line_and_touches_nothing(finished, tmp_path, tiny_cache,
                                                         monkeypatch):
    """The bad inputs of the reliability review, each through the command line: one
    ``error:`` line, exit code 2, no traceback, and every file of the finished runs folder
    byte for byte as before (sha256)."""
    from fairbench.core.registry import REGISTER_CALL  # noqa: F401 - the early check's reader
    from fairbench.data.dataset import DATASETS
    from fairbench.models.backbones import BACKBONES
    from fairbench.run.method import METHODS

    root, run = finished
    snapshot = {r: (dict(r._entries), dict(r.plugin_errors)) for r in (METHODS, DATASETS,
                                                                      BACKBONES)}
    before = sha_tree(root)
    failures = []
    cases = _bad_inputs(tmp_path, root, run, tiny_cache)
    assert len(cases) >= 25
    for name, (args, fragments, check) in cases.items():
        result = cli(*args)
        try:
            assert_cli_error(result, *fragments)
            assert check is None or check(), "its check failed"
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
        after = sha_tree(root)
        changed = [k for k, v in before.items() if after.get(k) != v]
        if changed:
            failures.append(f"{name}: changed {changed}")
        for reg, (entries, errors) in snapshot.items():  # plugins of one case stay out of the next
            reg._entries.clear()
            reg._entries.update(entries)
            reg.plugin_errors.clear()
            reg.plugin_errors.update(errors)
    assert not failures, "\n".join(failures)
    assert is_finished(run)
    # the count docs/reliability.md states (pytest -s ... | grep "bad inputs")
    print(f"\n{len(cases)} bad inputs: each one error line, exit 2, the runs folder unchanged")


# -- items one by one ------------------------------------------------------------------------
def test_object_members_of_plain_values_still_read(tmp_path):
    """Numbers and strings stored as 0-d object arrays (as the release may hold its scalars)
    are read without running anything; the Evil member is refused by name."""
    from fairbench.datasets.fairseg import read_header

    from fairbench.core.errors import DataError

    root, marker = _fairseg_root(tmp_path)
    ok = root / "Training" / "data_00003.npz"  # written with object scalars by make_root
    assert read_header(ok, "data_00003.npz")["race"] in (0, 1, 2, -1)
    with pytest.raises(DataError, match="member 'race' is refused: its pickle refers to"):
        read_header(root / "Training" / "data_00002.npz", "data_00002.npz")
    assert not marker.exists()


def test_registry_names_are_checked():
    reg: Registry = Registry("widget", "fairbench.test_widgets_none")
    for bad in ("../x", "a/b", "..", ".hidden", "x" * 65, "a b", "", "-x"):
        with pytest.raises(ValueError, match="invalid widget name"):
            reg.register(bad)
    for good in ("vanilla", "me_fairprune", "Net-2.1", "a+b"):
        reg.register(good)(type(good, (), {}))


def test_no_run_path_outside_the_runs_folder(tmp_path, make_tiny_config, monkeypatch):
    """A method placed in the registry under a path-like name (bypassing the decorator) still
    cannot write outside --runs-dir."""
    from fairbench.methods.vanilla import Vanilla

    from fairbench.run.method import METHODS

    monkeypatch.setitem(METHODS._entries, "../../escape", Vanilla)
    runs = tmp_path / "a" / "b" / "runs"
    with pytest.raises(FairbenchError, match="not a plain folder name"):
        run_experiment(make_tiny_config("../../escape", runs))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "a" / "escape").exists()
    assert not list(tmp_path.rglob("*escape*"))


def test_partial_weights_are_reported_and_loaded_when_allowed(tmp_path, caplog):
    import logging

    from fairbench.models.backbones import load_weights

    torch.manual_seed(0)
    model = create_backbone("smallcnn", num_classes=3, image_size=16, width=8)
    path = tmp_path / "w.pt"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("body.12.")},
               path)
    fresh = create_backbone("smallcnn", num_classes=3, image_size=16, width=8)
    with pytest.raises(FairbenchError, match="covers only"):
        load_weights(fresh, path)
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        match = load_weights(fresh, path, allow_partial=True)
    assert 0 < match.coverage < 0.9 and any("body.12" in m for m in caplog.messages)
    assert torch.equal(fresh.body[0].weight, model.body[0].weight)
    # a body-only checkpoint (no classifier) loads fully, without a warning
    caplog.clear()
    torch.save({k[5:]: v for k, v in model.state_dict().items() if k.startswith("body.")}, path)
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        assert load_weights(fresh, path).coverage == 1.0
    assert not caplog.messages


def test_backbone_params_are_typed_like_method_params(tmp_path, make_tiny_config):
    config = dataclasses.replace(make_tiny_config("vanilla", tmp_path / "runs"),
                                 backbone_params={"width": "8"})
    from fairbench.run.runner import prepare

    assert prepare(config).config.backbone_params == {"width": 8}
    with pytest.raises(ParamError, match="unexpected keyword argument 'foo'"):
        prepare(dataclasses.replace(config, backbone="resnet18",
                                    backbone_params={"foo": "1"}))


def test_train_config_rejects_non_finite():
    for key in ("lr", "weight_decay", "momentum", "grad_clip"):
        for value in ("inf", "-inf", "nan", float("inf")):
            with pytest.raises(ParamError):
                build_params(TrainConfig, {key: value})


def test_non_finite_loss_and_outputs_are_one_error(tiny_run):
    ctx = tiny_run.context
    model = ctx.new_model()
    cfg = dataclasses.replace(ctx.train_config, epochs=2)

    def nan_loss(m, batch, state):
        return m(batch.x).sum() * float("nan")

    with pytest.raises(TrainingDiverged, match=r"stage 'probe', epoch 1: the training loss is "
                                               r"nan .*lr="):
        Trainer(ctx.device).fit(model, ctx.loader("train"), ctx.loader("val"), config=cfg,
                                hooks=TrainHooks(loss=nan_loss), stage="probe")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="outputs are not finite"):
        Trainer(ctx.device).predict(model, ctx.loader("val"), cfg)


SWEEP = """
name = "diverge"
seeds = [0]
runs_dir = "{runs}"
[train]
epochs = 1
batch_size = 16
eval_batch_size = 64
[[datasets]]
name = "synthderm"
label = "{first}"
image_size = 16
backbones = ["smallcnn"]
backbone_params = {{ width = 4 }}
params = {{ n_samples = 160, n_classes = 3, images_per_patient = 1.0, dark_fraction = 0.4 }}
train = {{ lr = {lr_first}, optimizer = "sgd" }}
[[datasets]]
name = "synthderm"
label = "{second}"
image_size = 16
backbones = ["smallcnn"]
backbone_params = {{ width = 4 }}
params = {{ n_samples = 160, n_classes = 3, images_per_patient = 1.0, dark_fraction = 0.4 }}
train = {{ lr = {lr_second}, optimizer = "sgd" }}
[[methods]]
name = "vanilla"
"""


def test_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_cache, monkeypatch):
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tiny_cache))
    runs = tmp_path / "runs"
    suite = tmp_path / "suite.toml"
    suite.write_text(SWEEP.format(runs=runs, first="wild", second="calm", lr_first="1e6",
                                  lr_second="0.01"))
    r = cli("sweep", str(suite), "-q")  # no --keep-going: divergence does not stop it
    assert r.exit_code == 1
    assert "diverged" in r.output and "1 runs done" in r.output, r.output
    states = sorted(check_run(d).state for d in (runs / "synthderm" / "vanilla").iterdir())
    assert states == ["failed", "finished"]
    (failed,) = [d for d in (runs / "synthderm" / "vanilla").iterdir()
                 if check_run(d).state == "failed"]
    record = json.loads((failed / "failed.json").read_text())
    assert record["epoch"] == 1 and "lr=1e+06" in record["error"]
    r = cli("sweep", str(suite), "--dry-run")
    assert "failed " in r.output and "recorded as failed" in r.output, r.output
    assert "1 finished, 0 to run" in r.output, r.output  # as the sweep below: it skips it
    r = cli("sweep", str(suite), "-q")
    assert r.exit_code == 0 and "recorded as failed and skipped" in r.output, r.output
    r = cli("sweep", str(suite), "-q", "--retry-failed")
    assert r.exit_code == 1 and "1 to run" in r.output
    assert cli("leaderboard", str(runs)).exit_code == 0  # the failed run is no result


def test_unreadable_file_is_one_line(monkeypatch, tmp_path):
    from fairbench.datasets.synthderm import SynthDerm

    def unreadable(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data" / "meta.csv"))

    monkeypatch.setattr(SynthDerm, "build_table", unreadable)
    assert_cli_error(cli("data", "info", "synthderm"), "Permission denied", "meta.csv")
    assert_cli_error(cli("run", *TINY, "--runs-dir", str(tmp_path / "r")), "Permission denied",
                     "meta.csv")


# -- processes -----------------------------------------------------------------------------------
def test_unknown_method_fails_before_torch_is_imported(tmp_path):
    code = ("import sys\nfrom fairbench.cli.main import main\n"
            "try:\n    main(['run', '--method', 'vanila', '--runs-dir', 'r'])\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, check=False)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "did you mean vanilla" in proc.stderr and not (tmp_path / "r").exists()


SLEEPER = '''
import os
import time
from pathlib import Path

from fairbench import Method, register_method


@register_method("sleeper")
class Sleeper(Method):
    """Writes a file into its run folder, then waits to be terminated."""

    kind = "post-hoc"

    def run(self, ctx, params):
        (ctx.run_dir / "partial.txt").write_text("half")
        Path(os.environ["FB_TEST_STARTED"]).write_text("")
        time.sleep(300)
'''


@pytest.mark.slow
def test_sigterm_cleans_up_like_ctrl_c(tmp_path, tiny_cache):
    plugin = tmp_path / "sleeper.py"
    plugin.write_text(SLEEPER)
    started = tmp_path / "started"
    env = {**os.environ, "FAIRBENCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "FB_TEST_STARTED": str(started)}
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fairbench.cli", "run", "--method", "sleeper", "--plugin",
         str(plugin), *TINY, "--privileged", "light", "--runs-dir", str(runs), "--cache-dir",
         str(tiny_cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not started.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    assert list(runs.rglob(".*.tmp-*"))  # the run's temporary folder exists
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        "terminated; finished runs are kept, the unfinished one was discarded"]
    assert not list(runs.rglob(".*tmp*")) and not list(runs.rglob(".*.claim"))
    assert not list(runs.rglob("*.lock"))
