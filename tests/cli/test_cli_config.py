"""``fairbench list train`` (every --train setting with type, default and help, aligned) and
``fairbench run --print-config`` (the resolved configuration as TOML that --config reads back to
the same run; nothing run, nothing written)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from click.testing import CliRunner

from fairbench.cli.main import main
from fairbench.cli.resolved import toml_value
from fairbench.testing import TINY_DATA, TINY_TRAIN
from fairbench.training.trainer import TrainConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

TINY = [*(a for k, v in TINY_DATA.items() for a in ("--data-param", f"{k}={v}")),
        *(a for k, v in TINY_TRAIN.items() for a in ("--train", f"{k}={v}")),
        "--image-size", "16", "-q"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_list_train_shows_every_setting_aligned():
    r = invoke("list", "train")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("--train KEY=VALUE")
    table = lines[1:]
    assert table[0].split() == ["setting", "type", "default", "help"]
    rows = {line.split()[0]: line for line in table[1:]}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(rows) == set(fields)
    for name, f in fields.items():
        default = f.default
        text = ("true" if default else "false") if isinstance(default, bool) else str(default)
        assert rows[name].split()[2] == text, rows[name]
    assert "learning rate" in rows["lr"] and "float" in rows["lr"]
    assert "sgd|adam|adamw" in rows["optimizer"]
    # columns aligned: each column starts at the same offset on every line
    starts = {len(re.match(r"(\S+\s+){3}", line).group(0)) for line in table}
    assert len(starts) == 1


def test_list_train_pattern():
    r = invoke("list", "train", "*batch*")
    assert r.exit_code == 0
    assert [line.split()[0] for line in r.output.splitlines()[2:]] == ["batch_size",
                                                                       "eval_batch_size"]
    r = invoke("list", "train", "nothing*")
    assert r.exit_code == 2 and "no training setting matches" in r.output


def test_print_config_runs_nothing_and_reads_back(tmp_path, tiny_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    cache = tmp_path / "cache"
    r = invoke("run", "--method", "groupdro", "-p", "eta=0.05", "--seed", "3", *TINY,
               "--backbone-param", "width=6", "--runs-dir", runs, "--cache-dir", cache,
               "--print-config")
    assert r.exit_code == 0, r.output
    assert not runs.exists() and not cache.exists()  # nothing run, nothing written
    data = tomllib.loads(r.output)
    assert data["method"] == "groupdro" and data["seed"] == 3
    assert data["dataset"] == "synthderm" and data["attribute"] == "skin_tone"
    assert data["backbone"] == "smallcnn" and data["image_size"] == 16  # resolved defaults
    assert data["task"] == "classification"
    assert data["method_params"]["eta"] == 0.05
    assert data["backbone_params"] == {"width": 6}  # typed, as the run uses it
    assert data["method_params"]["groups"] == "group"  # a default, filled in
    assert data["dataset_params"]["n_samples"] == TINY_DATA["n_samples"]
    assert set(data["train"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert data["train"]["epochs"] == 1 and data["train"]["lr"] == TrainConfig().lr
    assert "# run directory: " in r.output and "(not run yet)" in r.output
    assert re.search(r"# split sha256: [0-9a-f]{64}", r.output)
    # --config FILE reads it back to the same configuration
    file = tmp_path / "run.toml"
    file.write_text(r.output)
    again = invoke("run", "--config", file, "--print-config")
    assert again.exit_code == 0, again.output
    assert again.output == r.output
    # ... and to the same run: the run the flags make is the one the file names
    run_dir = re.search(r"# run directory: (\S+)", r.output).group(1)
    done = invoke("run", "--config", file, "--cache-dir", tiny_cache)
    assert done.exit_code == 0, done.output
    assert f"run directory: {run_dir}" in done.output
    flags = invoke("run", "--method", "groupdro", "-p", "eta=0.05", "--seed", "3", *TINY,
                   "--backbone-param", "width=6", "--runs-dir", runs, "--cache-dir", tiny_cache)
    assert "identical run already finished" in flags.output and run_dir in flags.output
    finished = invoke("run", "--config", file, "--print-config")
    assert "(finished: `fairbench run` reuses it unless --force)" in finished.output


def test_print_config_bad_input_is_one_line(tmp_path):
    r = invoke("run", "--method", "groupdro", "-p", "eta=-1", "--print-config",
               "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 2 and r.output.startswith("error: ") and "eta" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value,text", [
    (True, "true"), (3, "3"), (0.5, "0.5"), (1e-5, "1e-05"), (float("inf"), "inf"),
    ('a "b"\\c', '"a \\"b\\"\\\\c"'), ([1, "x"], '[1, "x"]'), ((), "[]"),
    ({"k": 1, "a b": "v"}, '{k = 1, "a b" = "v"}'),
])
def test_toml_values_parse_back(value, text):
    assert toml_value(value) == text
    parsed = tomllib.loads(f"x = {text}")["x"]
    expected = list(value) if isinstance(value, tuple) else value
    assert parsed == expected
