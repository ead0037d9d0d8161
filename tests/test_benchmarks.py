"""The speed scripts in benchmarks/ run end to end on tiny settings and print their tables
(their figures are measured by hand, README and benchmarks/README.md; this only keeps the
scripts working)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, tmp_path: Path) -> str:
    env = {**os.environ, "FAIRBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_curvature_reports_passes_and_ratios(tmp_path):
    out = run_script("bench_curvature.py", "--backbones", "smallcnn", "--estimators", "ggn_mc",
                     "ggn_exact", "--image-size", "16", "--batch-size", "8", "--n", "16",
                     "--repeats", "1", "--threads", "1", "--json", str(tmp_path / "c.json"),
                     tmp_path=tmp_path)
    assert "samples per backward" in out and "| smallcnn | 5 | ggn_exact |" in out
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    exact = next(r for r in rows if r["estimator"] == "ggn_exact")
    assert exact["status"] == "ok" and exact["micro_batch"] == 8 and exact["relative"] > 0


def test_bench_few_positions_compares_the_four_paths(tmp_path):
    out = run_script("bench_few_positions.py", "--backbones", "smallcnn", "--estimators",
                     "ggn_mc", "--image-size", "16", "--n", "16", "--batch-size", "8",
                     "--repeats", "1", tmp_path=tmp_path)
    for mode in ("backpack", "few", "chunked", "fairbench"):
        assert f"{mode} " in out, out


@pytest.mark.parametrize("extra", [[], ["--keep-on-host"]])
def test_bench_trainer_against_the_bare_loop(tmp_path, extra):
    out = run_script("bench_trainer.py", "--n-samples", "128", "--image-size", "16",
                     "--batch-size", "32", "--epochs", "1", "--repeats", "1", "--no-val-row",
                     "--device", "cpu", "--threads", "1", *extra, tmp_path=tmp_path)
    assert "train: Trainer.fit" in out and "trainer/bare throughput ratio" in out
    assert ("trainer images in host memory" in out) == bool(extra)
