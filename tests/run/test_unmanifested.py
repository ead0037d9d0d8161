"""Runs without a manifest (written before manifests, or edited and their manifest deleted)
are not trusted silently: every reader refuses them in one line unless
``--trust-unmanifested`` (then a warning on each), and ``runs repair`` adds a manifest only to
a run whose metrics.json agrees with the metrics re-derived from predictions.csv."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fairbench.cli.main import main
from fairbench.run.store import MANIFEST, check_run, rederive_problem


@pytest.fixture
def two_runs(tmp_path: Path, make_tiny_config):
    """A runs folder with two finished vanilla runs (seeds 0 and 1), manifests removed; the
    seed-1 run's test F1 edited by hand."""
    from fairbench.run.runner import run_experiment

    root = tmp_path / "runs"
    import dataclasses

    runs = [run_experiment(dataclasses.replace(make_tiny_config("vanilla", root), seed=s)).run_dir
            for s in (0, 1)]
    for run in runs:
        (run / MANIFEST).unlink()
    metrics = json.loads((runs[1] / "metrics.json").read_text())
    metrics["test"]["F1"] = min(1.0, metrics["test"]["F1"] + 0.2)
    (runs[1] / "metrics.json").write_text(json.dumps(metrics))
    return root, runs


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_readers_refuse_a_run_without_a_manifest(two_runs, tmp_path: Path) -> None:
    root, (clean, edited) = two_runs
    for args in (["show", str(edited)], ["leaderboard", str(root)],
                 ["plot", "groups", str(edited), "--out", str(tmp_path / "g")]):
        r = _cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "has no manifest.json" in r.output and "--trust-unmanifested" in r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "g.png").exists()


def test_trusting_them_warns_on_every_use(two_runs, monkeypatch) -> None:
    root, (clean, edited) = two_runs
    monkeypatch.delenv("FAIRBENCH_TRUST_UNMANIFESTED", raising=False)
    r = _cli("show", str(edited), "--trust-unmanifested")
    assert r.exit_code == 0 and "without a manifest" in r.output, r.output
    r = _cli("leaderboard", str(root), "--trust-unmanifested")
    assert r.exit_code == 0 and r.output.count("without a manifest") >= 2, r.output


def test_repair_blesses_only_what_predictions_confirm(two_runs) -> None:
    root, (clean, edited) = two_runs
    assert rederive_problem(clean) is None
    assert "test.F1" in (rederive_problem(edited) or "")
    r = _cli("runs", "check", str(root))
    assert r.exit_code == 1 and "unverified" in r.output, r.output
    r = _cli("runs", "repair", str(root))
    assert r.exit_code == 0, r.output
    assert (clean / MANIFEST).is_file() and check_run(clean).finished
    assert not edited.exists()  # moved aside, never blessed
    aside = root / "_damaged" / edited.relative_to(root)
    assert aside.is_dir() and not (aside / MANIFEST).exists()
    assert _cli("show", str(clean)).exit_code == 0
    assert _cli("runs", "check", str(root)).exit_code == 0


def test_a_segmentation_run_cannot_be_rederived(two_runs) -> None:
    _root, (clean, _edited) = two_runs
    config = json.loads((clean / "config.json").read_text())
    config["task"] = "segmentation"
    (clean / "config.json").write_text(json.dumps(config))
    assert (rederive_problem(clean) or "").startswith("cannot")
    shutil.rmtree(clean)
