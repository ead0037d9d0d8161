"""The ``fairbench`` command line: a tiny run end to end (in a real subprocess), ``list``,
``show``, and every kind of bad input: exit code 2, one ``error:`` line, no traceback, and
nothing already written touched."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fairbench import Method, param
from fairbench.cli.main import main
from fairbench.run.method import METHODS

TINY = ["--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
        "--data-param", "n_samples=160", "--data-param", "n_classes=3",
        "--data-param", "images_per_patient=1.0", "--train", "batch_size=16",
        "--device", "cpu", "-q"]
TABLE_COLUMNS = ("precision", "recall", "F1", "EqOddsGap", "EOpp0", "EOpp1", "EOdd")


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[p] = (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def check_table(text: str) -> None:
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("group"))
    assert header.split() == ["group", *TABLE_COLUMNS]
    body = []
    for ln in lines[lines.index(header) + 2:]:  # the table ends at the first blank line
        if not ln.strip():
            break
        body.append(ln)
    rows = {ln.split()[0]: ln.split()[1:] for ln in body}
    assert list(rows) == ["light", "dark", "Avg", "Diff", "All"]
    assert len(rows["light"]) == 3 and len(rows["Avg"]) == 7  # fairness on the Avg row
    for value in rows["Avg"]:
        assert 0.0 <= float(value) <= 100.0  # percent
    avg_f1 = float(rows["Avg"][2])
    assert avg_f1 == pytest.approx((float(rows["light"][2]) + float(rows["dark"][2])) / 2,
                                   abs=0.011)
    assert float(rows["Diff"][2]) == pytest.approx(
        abs(float(rows["light"][2]) - float(rows["dark"][2])), abs=0.011)


# -- a real process, end to end ---------------------------------------------------------------
def _fairbench_exe() -> list[str]:
    exe = Path(sys.executable).with_name("fairbench")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "fairbench.cli"]


def test_subprocess_run_end_to_end(tmp_path, tiny_cache):
    env = {**os.environ, "FAIRBENCH_NO_PROGRESS": "1", "FAIRBENCH_CACHE": str(tiny_cache),
           "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    cfg = tmp_path / "small.toml"
    cfg.write_text("[backbone_params]\nwidth = 4\n")
    proc = subprocess.run(
        [*_fairbench_exe(), "run", "--method", "vanilla", *TINY, "--runs-dir", str(runs),
         "--config", str(cfg)],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    check_table(proc.stdout)
    assert "[test]" in proc.stdout and "privileged:" in proc.stdout
    run_dirs = list((runs / "synthderm" / "vanilla").iterdir())
    assert len(run_dirs) == 1 and str(run_dirs[0]) in proc.stdout
    assert (run_dirs[0] / "metrics.json").is_file()


def test_subprocess_bad_input_single_line(tmp_path):
    proc = subprocess.run(
        [*_fairbench_exe(), "run", "--method", "vanila", "--runs-dir", str(tmp_path / "r")],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120,
        env={**os.environ, "FAIRBENCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "vanilla" in lines[0]
    assert not (tmp_path / "r").exists()


# -- in-process --------------------------------------------------------------------------------
def test_show_and_list(tiny_run):
    runner = CliRunner()
    r = runner.invoke(main, ["show", str(tiny_run.run_dir)])
    assert r.exit_code == 0, r.output
    check_table(r.output)
    assert "[test]" in r.output and "[val]" not in r.output
    r = runner.invoke(main, ["show", str(tiny_run.run_dir), "--part", "both"])
    assert "[val]" in r.output and "[test]" in r.output

    r = runner.invoke(main, ["list", "methods", "fair*"])
    assert r.exit_code == 0
    names = [ln.split()[0] for ln in r.output.splitlines() if ln.strip()]
    assert names and all(n.startswith("fair") for n in names) and "vanilla" not in names
    r = runner.invoke(main, ["list", "methods", "-v"])
    assert "vanilla" in r.output and "(no parameters)" in r.output
    r = runner.invoke(main, ["list", "datasets"])
    assert r.exit_code == 0 and "synthderm" in r.output and "fitzpatrick17k" in r.output
    r = runner.invoke(main, ["list", "datasets", "synth*", "-v"])
    assert "dark_fraction" in r.output and "fitzpatrick17k" not in r.output
    r = runner.invoke(main, ["list", "backbones"])
    assert r.exit_code == 0
    for name in ("smallcnn", "resnet18", "vgg11", "timm:<name>", "tv:<name>"):
        assert name in r.output
    r = runner.invoke(main, ["list", "backbones", "small*"])
    assert "smallcnn" in r.output and "resnet18" not in r.output


def test_run_in_process_reuses_finished_run(tiny_run, tmp_path, tiny_cache):
    from fairbench.testing import TINY_DATA, TINY_TRAIN

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.run_dir.parents[2], runs)
    # the settings of the tiny run, through a config file and flags
    cfg = tmp_path / "same.toml"
    cfg.write_text("\n".join([
        'backbone = "smallcnn"', "image_size = 16", 'device = "cpu"', "save_weights = true",
        "[dataset_params]", *[f"{k} = {v}" for k, v in TINY_DATA.items()],
        "[backbone_params]", "width = 8",
        "[train]", *[f"{k} = {v}" for k, v in TINY_TRAIN.items()], ""]))
    before = snapshot(runs / "synthderm")
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--runs-dir", str(runs),
                                  "--cache-dir", str(tiny_cache), "-q"])
    assert r.exit_code == 0, r.output
    assert "already finished" in r.output and str(tiny_run.run_dir.name) in r.output
    check_table(r.output)
    assert snapshot(runs / "synthderm") == before


def test_config_file(tmp_path, tiny_cache):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
method = "vanilla"
seed = 3
image_size = 16
backbone = "smallcnn"
device = "cpu"
runs_dir = "{tmp_path / 'runs'}"
cache_dir = "{tiny_cache}"
epochs = 1
[dataset_params]
n_samples = 160
n_classes = 3
images_per_patient = 1.0
[backbone_params]
width = 4
[train]
batch_size = 16
""")
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--seed", "4", "-q"])
    assert r.exit_code == 0, r.output
    (run_dir,) = list((tmp_path / "runs" / "synthderm" / "vanilla").iterdir())
    import json

    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 4  # flags win over the file
    assert config["backbone_params"] == {"width": 4} and config["train"]["epochs"] == 1


# -- bad input ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def existing(tmp_path_factory, tiny_run):
    """A runs dir with a finished run in it, shared by the bad-input tests."""
    root = tmp_path_factory.mktemp("existing") / "runs"
    shutil.copytree(tiny_run.run_dir.parents[2], root)
    return root


class _Typed(Method):
    """A method with typed parameters, for the mistyped-parameter tests."""

    @staticmethod
    def _params():
        from dataclasses import dataclass

        @dataclass
        class TypedParams:
            alpha: float = param(0.5, min=0.0, max=1.0)
            rounds: int = param(2, min=1)

        return TypedParams


_Typed.Params = _Typed._params()


@pytest.fixture
def typed_method(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "typedmethod", _Typed)
    monkeypatch.setattr(_Typed, "registered_name", "typedmethod", raising=False)


def _assert_clean_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert isinstance(result.exception, SystemExit)


BAD = {
    "unknown method": (["--method", "nosuchmethod"], ["unknown method", "nosuchmethod"]),
    "close method": (["--method", "vanila"], ["did you mean", "vanilla"]),
    "unknown dataset": (["--dataset", "synthderma"], ["unknown dataset", "synthderm"]),
    "unknown backbone": (["--backbone", "resnet19"], ["unknown backbone", "resnet18"]),
    "unknown timm model": (["--backbone", "timm:nosuchnet"], ["unknown timm model"]),
    "unknown torchvision model": (["--backbone", "tv:nosuchnet"], ["unknown torchvision"]),
    "malformed param": (["--param", "epochs"], ["malformed --param", "key=value"]),
    "malformed param empty key": (["--param", "=3"], ["malformed --param"]),
    "unknown param": (["--param", "epochs=abc"], ["unknown parameter 'epochs'"]),
    "mistyped train": (["--train", "lr=abc"], ["lr", "not a valid float"]),
    "mistyped train int": (["--train", "batch_size=1.5"], ["batch_size", "not a valid int"]),
    "unknown train key": (["--train", "epoch=3"], ["did you mean epochs"]),
    "out of range train": (["--train", "lr=-1"], ["out of range"]),
    "epochs given twice": (["--train", "epochs=abc", "--epochs", "3"],
                           ["--epochs 3", "epochs=abc", "use one"]),
    "malformed data param": (["--data-param", "n_samples"], ["malformed --data-param"]),
    "data param range": (["--data-param", "dark_fraction=1.5"], ["dark_fraction", "out of range"]),
    "bad device": (["--device", "tpu"], ["unknown device 'tpu'"]),
    "bad select": (["--train", "select=F2"], ["select='F2'"]),
    "bad attribute": (["--attribute", "age"], ["unknown sensitive attribute 'age'"]),
    "bad privileged group": (["--privileged", "purple"], ["'purple'", "light, dark"]),
    "missing weights": (["--weights", "/nonexistent/w.pt"], ["/nonexistent/w.pt", "does not"]),
    "bad image size": (["--image-size", "4"], ["too small"]),
    "negative seed": (["--seed", "-1"], ["non-negative"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, existing, tmp_path):
    args, fragments = BAD[case]
    before = snapshot(existing)
    r = CliRunner().invoke(main, ["run", *TINY, "--runs-dir", str(existing),
                                  "--cache-dir", str(tmp_path / "cache"), *args])
    _assert_clean_error(r, *fragments)
    assert snapshot(existing) == before
    assert not (tmp_path / "cache").exists()


def test_mistyped_method_params(existing, typed_method, tmp_path):
    before = snapshot(existing)
    base = ["run", "--method", "typedmethod", *TINY, "--runs-dir", str(existing)]
    for extra, frags in (
        (["--param", "alpha=abc"], ["alpha", "not a valid float"]),
        (["--param", "rounds=1.5"], ["rounds", "not a valid int"]),
        (["--param", "alpha=2"], ["alpha", "out of range [0, 1]"]),
        (["--param", "alpah=0.1"], ["did you mean alpha"]),
    ):
        _assert_clean_error(CliRunner().invoke(main, base + extra), *frags)
    assert snapshot(existing) == before


def test_missing_and_nonexistent_data_root(existing, tmp_path):
    before = snapshot(existing)
    r = CliRunner().invoke(main, ["run", "--dataset", "fitzpatrick17k", "--runs-dir",
                                  str(existing)])
    _assert_clean_error(r, "fitzpatrick17k", "--data-root")
    r = CliRunner().invoke(main, ["run", "--dataset", "fitzpatrick17k", "--data-root",
                                  str(tmp_path / "no" / "such" / "dir"), "--runs-dir",
                                  str(existing)])
    _assert_clean_error(r, "does not exist", "no/such/dir")
    r = CliRunner().invoke(main, ["run", "--dataset", "isic2019", "--runs-dir", str(existing)])
    _assert_clean_error(r, "--data-root")
    assert snapshot(existing) == before


@pytest.mark.parametrize("content,fragment", [
    ("method = \n", "not valid TOML"),
    ("[train\nepochs = 1\n", "not valid TOML"),
    ("methd = 'vanilla'\n", "unknown key 'methd'"),
    ("train = 3\n", "must be a table"),
    ('seed = "abc"\n', "seed = 'abc' must be int"),
    ("seed = true\n", "must be int"),
    ('image_size = "big"\n', "image_size"),
    ('split_fractions = "x"\n', "list of three numbers"),
    ("split_fractions = [0.5, 0.5]\n", "three non-negative numbers summing to 1"),
    ("method = 3\n", "method = 3 must be str"),
    ('plugins = "x.py"\n', "must be a list of paths"),
    ('epochs = "two"\n', "not a valid int"),
    ("epochs = 2\n[train]\nepochs = 3\n", "sets epochs twice"),
])
def test_bad_config_file(existing, tmp_path, content, fragment):
    before = snapshot(existing)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    r = CliRunner().invoke(main, ["run", "--config", str(cfg), "--runs-dir", str(existing)])
    _assert_clean_error(r, fragment)
    assert "bad.toml" in r.output or "fractions" in r.output or "epochs" in r.output
    r = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "none.toml")])
    _assert_clean_error(r, "does not exist")
    assert snapshot(existing) == before


def test_bad_plugin_and_split_file(existing, tmp_path):
    before = snapshot(existing)
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("raise RuntimeError('cannot import me')\n")
    r = CliRunner().invoke(main, ["run", "--plugin", str(plugin), "--runs-dir", str(existing)])
    _assert_clean_error(r, "broken_plugin.py", "cannot import me")
    # a user split whose test part has no dark sample
    split_src = next((existing / "splits").glob("*.csv"))
    import pandas as pd

    from fairbench import create_dataset

    table = create_dataset("synthderm", n_samples=160, n_classes=3,
                           images_per_patient=1.0).build_table()
    dark = set(table.sample_ids[table.attr("skin_tone") == 1])
    df = pd.read_csv(split_src)
    df.loc[df["sample_id"].isin(dark) & (df["part"] == "test"), "part"] = "train"
    user = tmp_path / "user_split.csv"
    df.to_csv(user, index=False)
    r = CliRunner().invoke(main, ["run", *TINY, "--runs-dir", str(existing),
                                  "--split-file", str(user)])
    _assert_clean_error(r, "test part", "dark")
    r = CliRunner().invoke(main, ["run", *TINY, "--runs-dir", str(existing),
                                  "--split-file", str(tmp_path / "nosplit.csv")])
    _assert_clean_error(r, "nosplit.csv", "does not exist")
    assert snapshot(existing) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_device(existing):
    before = snapshot(existing)
    r = CliRunner().invoke(main, ["run", *TINY[:-3], "--device", "cuda", "--runs-dir",
                                  str(existing)])
    _assert_clean_error(r, "no CUDA device")
    assert snapshot(existing) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /proc")
def test_unwritable_runs_dir(tmp_path, monkeypatch):
    """A runs dir on a file system that refuses new entries to every user, root included
    (procfs: no process can create a folder or file in /proc, whatever its privileges, so
    this holds in CI, which runs as root and ignores permission bits): one ``error:`` line,
    exit 2, nothing written. Where the test does not run as root, a folder without write
    permission is checked too."""
    monkeypatch.chdir(tmp_path)  # anything written relative to the working folder lands here
    (tmp_path / "keep.txt").write_text("x")
    before = snapshot(tmp_path)
    cache = tmp_path / "cache"
    for target in (Path("/proc/self/fairbench-runs"), Path("/proc/fairbench-runs/runs")):
        r = CliRunner().invoke(main, ["run", *TINY, "--runs-dir", str(target),
                                      "--cache-dir", str(cache)])
        _assert_clean_error(r, "not writable", "--runs-dir", str(target))
        assert not target.exists()
    assert snapshot(tmp_path) == before and not cache.exists()  # nothing written anywhere
    if os.geteuid() == 0:
        return  # root ignores permission bits: the /proc checks above are the ones that hold
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("x")
    locked.chmod(0o500)
    try:
        r = CliRunner().invoke(main, ["run", *TINY, "--runs-dir", str(locked / "runs"),
                                      "--cache-dir", str(cache)])
        _assert_clean_error(r, "not writable", "--runs-dir")
        assert sorted(p.name for p in locked.iterdir()) == ["keep.txt"]
    finally:
        locked.chmod(0o700)


def test_unwritable_runs_dir_is_a_file(tmp_path):
    # works as root too: a runs dir that is a file cannot be created
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    r = CliRunner().invoke(main, ["run", *TINY, "--runs-dir", str(blocker / "runs")])
    _assert_clean_error(r, "not writable")
    assert blocker.read_text() == "keep me"


def test_show_bad_dirs(tmp_path):
    r = CliRunner().invoke(main, ["show", str(tmp_path / "nothing")])
    _assert_clean_error(r, "does not exist")
    r = CliRunner().invoke(main, ["show", str(tmp_path)])
    _assert_clean_error(r, "not a finished run")


def test_verbose_means_the_same_in_every_command_and_list_is_aligned():
    import click

    def leaves(group, prefix=()):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from leaves(cmd, (*prefix, name))
            else:
                yield (*prefix, name), cmd

    commands = list(leaves(main))
    assert len(commands) >= 15
    for path, cmd in commands:
        opts = {o for p in cmd.params for o in getattr(p, "opts", ())}
        assert {"-v", "--verbose"} <= opts, path
    runner = CliRunner()
    after = runner.invoke(main, ["list", "methods", "fairprune", "-v"])
    before = runner.invoke(main, ["-v", "list", "methods", "fairprune"])
    assert after.exit_code == before.exit_code == 0
    assert after.output == before.output
    lines = after.output.splitlines()[1:]
    header = lines[0]
    assert header.split() == ["parameter", "default", "type", "help"]
    col = header.index("default")
    for line in lines[1:]:  # every default starts in the header's column
        assert line[col - 1] == " " and line[col] != " ", line
