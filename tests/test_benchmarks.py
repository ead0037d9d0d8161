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
from repo_paths import BENCHMARKS as BENCH


def run_script(name: str, *args: str, tmp_path: Path) -> str:
    env = {**os.environ, "FAIRBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_curvature_reports_passes_ratios_and_floors(tmp_path):
    out = run_script("bench_curvature.py", "--backbones", "smallcnn", "--estimators", "ggn_mc",
                     "ggn_exact", "--engines", "auto", "backpack", "--image-size", "16",
                     "--batch-size", "8", "--n", "16", "--repeats", "1", "--threads", "1",
                     "--clock", "cpu", "--json", str(tmp_path / "c.json"), tmp_path=tmp_path)
    assert "samples per backward" in out and "| smallcnn | 5 | ggn_exact | auto |" in out
    assert "| smallcnn | 5 | ggn_exact | backpack |" in out and "its floor (goal" in out
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    exact = [r for r in rows if r["estimator"] == "ggn_exact"]
    assert {r["engine"] for r in exact} == {"auto", "backpack"}
    for r in exact:
        assert r["status"] == "ok" and r["micro_batch"] == 8 and r["relative"] > 0
        # one forward and five backward passes: (F + 5B) / (F + B), between 1 and 5
        assert 1 < r["floor"] < 5 and r["of_floor"] == pytest.approx(r["relative"] / r["floor"])
    mc = next(r for r in rows if r["estimator"] == "ggn_mc")
    assert mc["floor"] == 1.0


def test_bench_decode_times_the_decode_and_the_batch_path(tmp_path):
    import re

    out = run_script("bench_decode.py", "--n", "24", "--width", "96", "--height", "72",
                     "--sizes", "32", "--workers", "2", tmp_path=tmp_path)
    # size, mode, cores, img/s, img/s per core (then the PSNR on the draft row)
    rows = re.findall(r"^\s*32 (.+?)\s+(\d+)\s+(\d+)\s+(\d+)", out, flags=re.MULTILINE)
    modes = {(mode, int(cores)) for mode, cores, _, _ in rows}
    assert {("full decode, serial", 1), ("draft, processes", 2), ("augment + normalise", 1),
            ("augment + normalise", 2)} <= modes, out
    assert all(int(rate) > 0 for _, _, rate, _ in rows)


def test_bench_skin_floor_probes_colour_untrained_and_adversaries(tmp_path):
    import re

    out = run_script("bench_skin_floor.py", "control", "0", "--strength", "1", "--apple",
                     "1:0.4", "--n-samples", "240", "--n-test", "60", "--epochs", "1",
                     "--runs-dir", str(tmp_path / "runs"), tmp_path=tmp_path)
    line = next(x for x in out.splitlines() if x.startswith("control seed 0:"))
    floors = dict(re.findall(r"(rgb|untrained|vanilla) (\d\.\d{3})", line))
    assert set(floors) == {"rgb", "untrained", "vanilla"}, line
    # skin is the background of every synthderm image: three mean colours read it
    assert float(floors["rgb"]) > 0.9, line
    for method in ("adv_conf a=1", "adv_rev l=1"):
        probe = re.search(rf"{method}: probe (\d\.\d{{3}}) adversary (\d\.\d{{3}}) dF1 "
                          r"[+-]\d+\.\d", line)
        assert probe and 0 <= float(probe.group(1)) <= 1, line
    # APPLE's last epoch is delivered: its perturbation is there, within its bound
    apple = re.search(r"apple b=1 a=0.4: probe (\d\.\d{3}) -> (\d\.\d{3}) \|G\(f\)\|/\|f\| "
                      r"(\d\.\d{3}) dF1 [+-]\d+\.\d", line)
    assert apple and 0 < float(apple.group(3)) <= 1.0 + 1e-3, line


def test_bench_group_loss_gap_reads_vanilla_and_groupdro_runs(tmp_path):
    import math

    def run(name: str, method: str, scenario: str, probs: list[float] | None = None,
            engagement: dict | None = None) -> None:
        d = tmp_path / "runs" / method / name
        d.mkdir(parents=True)
        cfg = {"method": method, "dataset": "synthderm", "dataset_params": {"scenario": scenario},
               "groups": ["light", "dark"], "privileged": "light", "attribute": "skin_tone",
               "engagement": engagement}
        (d / "config.json").write_text(json.dumps(cfg))
        if probs is not None:  # rows: (part, label, group, probability of label 0)
            lines = ["part,label,attr_skin_tone,prob_0,prob_1"]
            for part, label, group, p0 in (("val", 0, 0, probs[0]), ("val", 0, 1, probs[1]),
                                           ("val", 1, 1, probs[2]), ("test", 0, 1, 0.01),
                                           ("val", 0, -1, 0.01)):
                lines.append(f"{part},{label},{group},{p0},{1 - p0}")
            (d / "predictions.csv").write_text("\n".join(lines) + "\n")

    run("v0", "vanilla", "control", [0.9, 0.5, 0.2])
    run("g0", "groupdro", "control",
        engagement={"engaged": False, "figures": {"tv_from_uniform": 0.01}})
    out = run_script("bench_group_loss_gap.py", str(BENCH / "mechanisms.toml"), "--runs-dir",
                     str(tmp_path / "runs"), tmp_path=tmp_path)
    # dark rows: -log 0.5 (label 0) and -log 0.8 (label 1); light: -log 0.9; the test row
    # and the row of unknown group are left out
    gap = (-math.log(0.5) - math.log(0.8)) / 2 + math.log(0.9)
    assert f"| control | {gap:.3f} [{gap:.3f}, {gap:.3f}] | 0.010 | 0/1 |" in out, out


def test_bench_few_positions_compares_the_paths(tmp_path):
    out = run_script("bench_few_positions.py", "--backbones", "smallcnn", "--estimators",
                     "ggn_mc", "--image-size", "16", "--n", "16", "--batch-size", "8",
                     "--repeats", "1", tmp_path=tmp_path)
    for mode in ("backpack", "few", "chunked", "both", "autograd"):
        assert f"{mode} " in out, out


def test_bench_released_recipe_compares_and_checks_equality(tmp_path):
    out = run_script("bench_released_recipe.py", "--backbones", "smallcnn", "--classes", "5",
                     "--image-size", "16", "--n", "8", "--repeats", "1", "--threads", "1",
                     "--json", str(tmp_path / "r.json"), tmp_path=tmp_path)
    assert "| smallcnn | 5 |" in out and "released / fairbench" in out
    row, = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert row["released_x"] > 0 and row["fairbench_x"] > 0 and row["floor_x"] >= 1
    assert row["max_rel_diff"] < 1e-4  # the same curvature


@pytest.mark.parametrize("extra", [[], ["--keep-on-host"]])
def test_bench_trainer_against_the_bare_loop(tmp_path, extra):
    out = run_script("bench_trainer.py", "--n-samples", "128", "--image-size", "16",
                     "--batch-size", "32", "--epochs", "1", "--repeats", "1", "--no-val-row",
                     "--device", "cpu", "--threads", "1", *extra, tmp_path=tmp_path)
    assert "train: Trainer.fit" in out and "trainer/bare throughput ratio" in out
    assert ("trainer images in host memory" in out) == bool(extra)


def test_bench_multiseed_times_the_three_forms(tmp_path):
    out = run_script("bench_multiseed.py", "--models", "2", "--batch-size", "8",
                     "--image-size", "16", "--steps", "1", tmp_path=tmp_path)
    for form in ("separate", "vmap", "grouped"):
        assert sum(f" {form} " in line for line in out.splitlines()) == 2  # both formats


def test_scenario_and_phase_scripts_read_a_suite_from_another_runs_folder(tmp_path):
    """bench_scenarios.py --suite and bench_suite_phases.py read the finished runs of a suite
    from the runs folder given (not the suite's own), one row per scenario / method."""
    suite = tmp_path / "scen.toml"
    entries = "".join(
        f'[[datasets]]\nname = "synthderm"\nlabel = "{s}"\nimage_size = 16\n'
        f'backbones = ["smallcnn"]\nparams = {{ n_samples = 160, scenario = "{s}" }}\n\n'
        for s in ("control", "annotation"))
    suite.write_text('name = "scen"\nseeds = 2\nruns_dir = "never-used"\n'
                     '[train]\nepochs = 1\nbatch_size = 32\n\n' + entries +
                     '[[methods]]\nname = "vanilla"\n')
    runs = tmp_path / "elsewhere"
    env = {**os.environ, "FAIRBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "FAIRBENCH_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "fairbench.cli.main", "sweep", str(suite),
                           "--runs-dir", str(runs)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = run_script("bench_scenarios.py", "--suite", str(suite), "--runs-dir", str(runs),
                     "--n-boot", "20", tmp_path=tmp_path)
    rows = [ln for ln in out.splitlines() if ln.startswith(("| control", "| annotation"))]
    assert [r.split("|")[2].strip() for r in rows] == ["2", "2"], out
    out = run_script("bench_suite_phases.py", str(suite), "--runs-dir", str(runs),
                     tmp_path=tmp_path)
    assert "| vanilla | 4 |" in out and "4 finished runs" in out, out
    assert not (tmp_path / "never-used").exists()


def test_engagement_report_counts_each_setting_against_vanilla(tmp_path):
    """bench_engagement_report.py: one line per grid setting and scenario, with the engaged
    count (today's criterion on the stored notes) and the change against vanilla recomputed
    here from the runs' metrics.json."""
    import json

    runs = tmp_path / "runs"
    suite = tmp_path / "eng.toml"
    suite.write_text(
        f'name = "eng"\nseeds = 2\nruns_dir = "{runs.as_posix()}"\n[train]\nepochs = 1\n'
        'batch_size = 32\n\n[[datasets]]\nname = "synthderm"\nlabel = "pres"\nimage_size = 16\n'
        'backbones = ["smallcnn"]\nparams = { n_samples = 160, scenario = "presentation" }\n\n'
        '[[methods]]\nname = "vanilla"\n\n[[methods]]\nname = "groupdro"\n'
        'grid = { eta = [0.0001, 0.5] }\n')
    env = {**os.environ, "FAIRBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "FAIRBENCH_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "fairbench.cli.main", "sweep", str(suite)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = run_script("bench_engagement_report.py", str(suite), tmp_path=tmp_path)
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]]
             for ln in out.splitlines() if ln.startswith("| groupdro")}
    assert set(lines) == {'groupdro {"eta": 0.0001}', 'groupdro {"eta": 0.5}'}, out

    def test_of(method: str, eta: float | None) -> dict[int, dict]:
        found = {}
        for cfg in (runs / "synthderm" / method).glob("*/config.json"):
            c = json.loads(cfg.read_text())
            if eta is None or c["method_params"]["eta"] == eta:
                m = json.loads((cfg.parent / "metrics.json").read_text())
                found[c["seed"]] = (m.get("test_true") or m["test"], c)
        return found

    vanilla = test_of("vanilla", None)
    for eta in (0.0001, 0.5):
        row = lines[f'groupdro {{"eta": {eta}}}']
        runs_eta = test_of("groupdro", eta)
        engaged = sum(bool(c["engagement"]["engaged"]) for _, c in runs_eta.values())
        assert row[2] == f"{engaged}/{len(runs_eta)}"
        d = [t["EqOddsGap"] - vanilla[s][0]["EqOddsGap"] for s, (t, _) in runs_eta.items()]
        assert row[5] == f"{100 * sum(d) / len(d):+.1f}"
    # a tiny step size leaves the group weights uniform: no run engaged
    assert lines['groupdro {"eta": 0.0001}'][2] == "0/2"
