"""Bad input as a user (or a hostile one) types it: one ``error:`` line, exit code 2, no
traceback, nothing written. One regression test per case that used to give a traceback, be
accepted, or print several lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from dataset_helpers import make_jpegs

from fairbench.cli.main import main


def _one_line_error(args: list[str], fragment: str, cwd: Path) -> None:
    before = sorted(p.name for p in cwd.iterdir())
    res = CliRunner().invoke(main, args)
    out = res.output.strip()
    assert res.exit_code == 2, (args, res.output)
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert out.startswith("error: ") and fragment in out, out
    assert sorted(p.name for p in cwd.iterdir()) == before  # nothing written


@pytest.mark.parametrize("args,fragment", [
    (["run", "--seed", "abc"], "'abc' is not a valid integer"),
    (["list", "widgets"], "'widgets' is not one of"),
    (["show", "--part", "all", "."], "'all' is not one of"),
    (["sweep", "."], "is a directory"),
    (["run", "--nonsense"], "No such option"),
    (["data", "prepare", "synthderm", "--image-size", "0"], "--image-size 0 is too small"),
    (["run", "--image-size", "100000"], "at most 1024 px (one image would take 27.9 GiB"),
    (["run", "--seed", "100000000000000000000"], "is too large: at most 2^63 - 1"),
    (["run", "--data-param", "n_samples=1000000000000"], "at most 2,000,000"),
    (["run", "--runs-dir", ""], "--runs-dir is empty"),
    (["run", "--weights", "."], "is a folder; give the .pt file"),
    (["run", "--split-file", "."], "is a folder; give the CSV file"),
    (["run", "--config", "."], "is a folder; give the path of a .toml file"),
])
def test_one_line_and_exit_2(args: list[str], fragment: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / ".." / f"{tmp_path.name}-cache"))
    (tmp_path / "sub").mkdir()  # a folder to hand where a file is expected
    args = [str(tmp_path / "sub") if a == "." else a for a in args]
    _one_line_error(args, fragment, tmp_path)


def test_a_garbage_weights_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    _one_line_error(["run", "--weights", str(garbage), "--runs-dir", "runs"],
                    "is not a torch state dict", tmp_path)


def test_a_dataset_with_one_class_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Every metric of a one-class dataset is trivially perfect (F1 1.0 was reported)."""
    root = tmp_path / "one"
    names = [f"c{i:03d}" for i in range(40)]
    make_jpegs(root / "imgs", names, size=(20, 20))
    pd.DataFrame({"file": [f"{n}.jpg" for n in names], "diagnosis": "benign",
                  "sex": np.where(np.arange(40) % 2 == 0, "F", "M")}
                 ).to_csv(root / "labels.csv", index=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    args = ["run", "--dataset", "csv", "--data-root", str(root), "--runs-dir", "runs",
            "--image-size", "16"]
    for k, v in {"csv": "labels.csv", "path_col": "file", "label_col": "diagnosis",
                 "image_dir": "imgs", "attr_col": "sex"}.items():
        args += ["--data-param", f"{k}={v}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "class" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (work / "runs" / "csv").exists()
