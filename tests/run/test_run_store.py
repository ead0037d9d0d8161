"""The run store: the documented files of a run directory, atomic writes, reuse, ``force``, the
shared vanilla baseline and the privileged group."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dataset_helpers import count_fits
from sklearn.metrics import f1_score, multilabel_confusion_matrix

from fairbench import Method, create_backbone, run_experiment
from fairbench.core.files import read_json
from fairbench.run.method import METHODS
from fairbench.run.store import RunWriter, is_finished
from fairbench.training.trainer import Trainer


def snapshot(root):
    """Every file under ``root`` with its bytes' hash and (outside ``splits/``, whose shared
    split files every run re-saves with the same bytes) its mtime."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            mtime = None if "/splits" in p else os.stat(p).st_mtime_ns
            out[p] = (hashlib.sha256(Path(p).read_bytes()).hexdigest(), mtime)
    return out


def paper_measures(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """The papers' EOpp0, EOpp1, EOdd and EOdd_signed (light − dark, every rate 0 where its
    denominator is 0, classes 0..max(y, pred)) from scikit-learn's one-vs-rest confusion
    matrices, group by group: an independent computation of fairbench.metrics.fairness."""
    labels = list(range(int(max(y.max(), pred.max())) + 1))

    def rates(g: int) -> np.ndarray:  # C × (TPR, TNR, FPR)
        mcm = multilabel_confusion_matrix(y[groups == g], pred[groups == g], labels=labels)
        tn, fp, fn, tp = (mcm[:, i // 2, i % 2].astype(float) for i in range(4))

        def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

        return np.stack([ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(fp, tn + fp)], 1)

    d = rates(0) - rates(1)
    return {"EOpp0": float(np.abs(d[:, 1]).mean()), "EOpp1": float(np.abs(d[:, 0]).mean()),
            "EOdd": float(np.abs(d[:, 0] + d[:, 2]).mean() / 2),
            "EOdd_signed": float((d[:, 0] + d[:, 2]).mean() / 2)}


# -- the files of a finished run ---------------------------------------------------------------
def test_config_json(tiny_run):
    cfg = read_json(tiny_run.run_dir / "config.json")
    assert cfg["method"] == "vanilla" and cfg["dataset"] == "synthderm"
    assert cfg["method_params"] == {} and cfg["backbone"] == "smallcnn"
    assert cfg["dataset_params"]["n_samples"] == 160
    assert cfg["seed"] == 0 and cfg["image_size"] == 16
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["batch_size"] == 16
    for pkg in ("fairbench", "torch", "numpy", "python"):
        assert cfg["versions"][pkg]
    assert cfg["versions"]["torch"] == torch.__version__
    # the split hash is the sha256 of the saved split file
    split_file = tiny_run.context.bundle.split_file
    assert cfg["split_sha256"] == hashlib.sha256(split_file.read_bytes()).hexdigest()
    assert cfg["split_file"] == str(split_file)
    assert sum(cfg["split_sizes"].values()) == 160
    assert cfg["groups"] == ["light", "dark"] and cfg["attribute"] == "skin_tone"
    assert cfg["identity"]["split"] == cfg["split_sha256"]


def test_privileged_group_recorded(tiny_run):
    cfg = read_json(tiny_run.run_dir / "config.json")
    metrics = read_json(tiny_run.run_dir / "metrics.json")
    assert cfg["privileged"] in ("light", "dark")
    assert cfg["privileged_rule"] == "higher vanilla validation macro-F1"
    assert metrics["meta"]["privileged"] == cfg["privileged"]
    # the rule: the group with the higher validation macro-F1 of the vanilla model
    ctx = tiny_run.context
    val = ctx.vanilla_meta()["val"]
    best = max(("light", "dark"), key=lambda g: (val[g]["F1"], g == "light"))
    assert cfg["privileged"] == best


def test_metrics_json_layout_and_values(tiny_run):
    metrics = read_json(tiny_run.run_dir / "metrics.json")
    preds = pd.read_csv(tiny_run.run_dir / "predictions.csv")
    assert set(metrics) >= {"val", "test", "meta"}
    for part in ("val", "test"):
        m = metrics[part]
        for key in ("EOpp0", "EOpp1", "EOdd", "EOpp0_signed", "EOpp1_signed", "EOdd_signed",
                    "F1", "precision", "recall", "accuracy", "AUC", "ECE"):
            assert key in m, key
        for group in ("light", "dark"):
            assert {"F1", "precision", "recall", "accuracy", "n"} <= set(m[group])
        for summary in ("Avg", "Diff", "Diff_signed", "gap", "worst"):
            assert "F1" in m[summary]
        # recomputed from the stored predictions with scikit-learn, the numbers agree
        rows = preds[preds["part"] == part]
        y, pred = rows["label"].to_numpy(), rows["pred"].to_numpy()
        groups = rows["attr_skin_tone"].to_numpy()
        ref = {"F1": f1_score(y, pred, average="macro"), **paper_measures(y, pred, groups)}
        for key in ("F1", "EOpp0", "EOpp1", "EOdd", "EOdd_signed"):
            assert m[key] == pytest.approx(ref[key], abs=1e-9), (part, key)
        dark = groups == 1
        assert m["dark"]["F1"] == pytest.approx(f1_score(y[dark], pred[dark], average="macro"))
        assert m["Diff_signed"]["F1"] == pytest.approx(m["light"]["F1"] - m["dark"]["F1"])
        # one direction for every signed difference: the papers' twins run the same way
        assert metrics["meta"]["signed_direction"] == "light minus dark"
        assert m["EOdd_signed"] == pytest.approx(paper_measures(y, pred, groups)["EOdd_signed"])
    assert metrics["meta"]["groups"] == ["light", "dark"]
    assert metrics["meta"]["higher_is_better"]["EOdd"] is False


def test_predictions_csv(tiny_run):
    preds = pd.read_csv(tiny_run.run_dir / "predictions.csv")
    cols = list(preds.columns)
    assert cols[:4] == ["sample_id", "part", "label", "pred"]
    attrs = [c for c in cols if c.startswith("attr_")]
    assert set(attrs) == {"attr_skin_tone", "attr_sex", "attr_fitzpatrick"}
    probs = [c for c in cols if c.startswith("prob_")]
    assert probs == ["prob_0", "prob_1", "prob_2"]
    assert cols.index(probs[0]) > max(cols.index(a) for a in attrs)
    sizes = read_json(tiny_run.run_dir / "config.json")["split_sizes"]
    assert (preds["part"] == "val").sum() == sizes["val"]
    assert (preds["part"] == "test").sum() == sizes["test"]
    assert preds["sample_id"].is_unique
    p = preds[probs].to_numpy()
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert (preds["pred"].to_numpy() == p.argmax(1)).all()  # multi-class: argmax
    # labels and attributes are those of the table
    table = tiny_run.context.table.df.set_index("sample_id")
    assert (table.loc[preds["sample_id"], "label"].to_numpy() == preds["label"].to_numpy()).all()
    assert (table.loc[preds["sample_id"], "attr_skin_tone"].to_numpy()
            == preds["attr_skin_tone"].to_numpy()).all()


def test_weights_round_trip(tiny_run):
    state = torch.load(tiny_run.run_dir / "weights.pt", map_location="cpu", weights_only=True)
    model = create_backbone("smallcnn", num_classes=3, image_size=16, width=8)
    model.load_state_dict(state)
    ctx = tiny_run.context
    probs = Trainer(torch.device("cpu"), progress=False).predict(model, ctx.loader("test")).probs
    preds = pd.read_csv(tiny_run.run_dir / "predictions.csv")
    stored = preds[preds["part"] == "test"][["prob_0", "prob_1", "prob_2"]].to_numpy()
    assert np.allclose(probs, stored, atol=1e-6)


def test_train_log(tiny_run):
    log = pd.read_csv(tiny_run.run_dir / "train_log.csv")
    assert len(log) == 1 and log["stage"].iloc[0] == "vanilla" and "val_F1" in log.columns


def test_show_and_is_finished(tiny_run):
    assert is_finished(tiny_run.run_dir)
    assert not list(tiny_run.run_dir.parent.glob(".*tmp*"))


def test_run_writer(tmp_path):
    final = tmp_path / "run"
    w = RunWriter(final)
    (w.path / "config.json").write_text("{}")
    assert not final.exists() and w.path.name.startswith(".run.tmp-")
    w.commit()
    assert (final / "config.json").is_file() and not w.path.exists()
    w2 = RunWriter(final)
    (w2.path / "config.json").write_text('{"new": 1}')
    with pytest.raises(Exception, match="already exists"):
        w2.commit()
    w2.commit(replace=True)
    assert read_json(final / "config.json") == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    w3 = RunWriter(final)
    w3.abort()
    assert not w3.path.exists() and (final / "config.json").is_file()


class _Crash(Method):
    """Crashes after the baseline was trained."""

    kind = "post-hoc"

    def run(self, ctx, params):
        ctx.vanilla()
        (ctx.run_dir / "partial.txt").write_text("half-written")
        raise RuntimeError("method crashed")


class _Posthoc(Method):
    """Starts from the shared baseline and changes nothing."""

    kind = "post-hoc"

    def run(self, ctx, params):
        return ctx.vanilla()


@pytest.fixture
def runs(tmp_path, tiny_run, monkeypatch):
    """A runs dir holding a copy of the finished tiny vanilla run (and its baseline cache)."""
    import shutil

    src_runs = tiny_run.run_dir.parents[2]
    dst = tmp_path / "runs"
    shutil.copytree(src_runs, dst)
    monkeypatch.setitem(METHODS._entries, "crashy", _Crash)
    monkeypatch.setitem(METHODS._entries, "posthoc_noop", _Posthoc)
    monkeypatch.setattr(_Crash, "registered_name", "crashy", raising=False)
    monkeypatch.setattr(_Posthoc, "registered_name", "posthoc_noop", raising=False)
    return dst


def test_finished_run_is_reused_and_force_recomputes(runs, make_tiny_config, monkeypatch,
                                                     tiny_run):
    calls = count_fits(monkeypatch)
    ran = []
    monkeypatch.setattr("fairbench.methods.vanilla.Vanilla.run",
                        lambda self, ctx, params: ran.append(1) or ctx.vanilla())
    config = dataclasses.replace(make_tiny_config("vanilla", runs), save_weights=True)
    run_dir = runs / tiny_run.run_dir.relative_to(tiny_run.run_dir.parents[2])
    before = snapshot(run_dir)
    again = run_experiment(config)
    assert again.reused and again.run_dir == run_dir
    assert ran == [] and calls == []
    assert snapshot(run_dir) == before
    assert again.metrics["test"]["F1"] == pytest.approx(tiny_run.metrics["test"]["F1"])
    # force: recomputed (the method runs; the cached baseline is not retrained) and replaced
    forced = run_experiment(dataclasses.replace(config, force=True))
    assert not forced.reused and forced.run_dir == run_dir and ran == [1] and calls == []
    assert snapshot(run_dir) != before and is_finished(run_dir)
    assert read_json(run_dir / "config.json")["split_sha256"] == tiny_run.config["split_sha256"]
    assert not list(run_dir.parent.glob(".*"))


def test_crash_leaves_nothing_and_keeps_finished_runs(runs, make_tiny_config):
    before = snapshot(runs)
    config = make_tiny_config("crashy", runs)
    with pytest.raises(RuntimeError, match="method crashed"):
        run_experiment(config)
    method_dir = runs / "synthderm" / "crashy"
    leftovers = list(method_dir.iterdir()) if method_dir.exists() else []
    assert leftovers == []  # neither a finished-looking dir nor a temporary one
    after = snapshot(runs)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing touched
    new = set(after) - set(before)
    assert all("/crashy/" not in p for p in new)


def test_interrupted_run_dir_is_not_finished_and_is_redone(runs, make_tiny_config, tiny_run):
    from click.testing import CliRunner

    from fairbench.cli.main import main

    name = "smallcnn-s0-deadbeef00"
    parent = runs / "synthderm" / "posthoc_noop"
    parent.mkdir(parents=True)
    # a killed run: temporary dir with some files (pid not alive)
    tmp = parent / f".{name}.tmp-99999999"
    tmp.mkdir()
    (tmp / "config.json").write_text("{}")
    (tmp / "metrics.json").write_text("{}")
    assert not is_finished(tmp.with_name(name))
    r = CliRunner().invoke(main, ["show", str(parent / name)])
    assert r.exit_code == 2 and "does not exist" in r.output
    partial = parent / "partial-run"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    r = CliRunner().invoke(main, ["show", str(partial)])
    assert r.exit_code == 2 and "not a finished run" in r.output
    # the real run of this method removes temporaries of its own run name only
    result = run_experiment(make_tiny_config("posthoc_noop", runs))
    assert is_finished(result.run_dir)
    stale_own = parent / f".{result.run_dir.name}.tmp-99999999"
    stale_own.mkdir()
    run_experiment(dataclasses.replace(make_tiny_config("posthoc_noop", runs), force=True))
    assert not stale_own.exists()


def test_unfinished_dir_under_final_name_is_replaced_without_force(runs, make_tiny_config):
    """A directory under the run's final name that lacks the run files and a manifest (a copy
    cut short, files deleted by hand) is no result: the next run replaces it, no --force
    needed. (With its manifest, a missing file is damage: reported, see test_manifest.py.)"""
    first = run_experiment(make_tiny_config("posthoc_noop", runs))
    (first.run_dir / "metrics.json").unlink()
    (first.run_dir / "manifest.json").unlink()
    (first.run_dir / "junk.txt").write_text("left over")
    assert not is_finished(first.run_dir)
    again = run_experiment(make_tiny_config("posthoc_noop", runs))
    assert not again.reused and again.run_dir == first.run_dir
    assert is_finished(again.run_dir) and not (again.run_dir / "junk.txt").exists()
    assert not list(again.run_dir.parent.glob(".*"))


def test_identical_run_finished_meanwhile_is_kept(runs, make_tiny_config, monkeypatch):
    """Two processes on the same config: the one that finishes second keeps the first one's
    result untouched and reports it as reused."""
    done = run_experiment(make_tiny_config("posthoc_noop", runs))
    before = snapshot(done.run_dir)
    monkeypatch.setattr("fairbench.run.runner.is_finished",
                        lambda d, calls=[]: calls.append(1) or len(calls) > 1)
    again = run_experiment(make_tiny_config("posthoc_noop", runs))
    assert again.reused and snapshot(done.run_dir) == before
    assert not list(done.run_dir.parent.glob(".*"))


def test_vanilla_trained_once_and_shared(runs, make_tiny_config, monkeypatch, tiny_run):
    calls = count_fits(monkeypatch)
    vdirs = [d for d in (runs / "_vanilla").iterdir() if d.is_dir()]
    assert len(vdirs) == 1 and (vdirs[0] / "model.pt").is_file()
    assert (vdirs[0] / "meta.json").is_file()
    # a post-hoc method on the same data, split, backbone, training config and seed starts
    # from the cached baseline: nothing is trained
    second = run_experiment(make_tiny_config("posthoc_noop", runs), keep_model=True)
    assert calls == []
    p1 = pd.read_csv(tiny_run.run_dir / "predictions.csv")
    p2 = pd.read_csv(second.run_dir / "predictions.csv")
    assert np.array_equal(p1.filter(like="prob_").to_numpy(), p2.filter(like="prob_").to_numpy())
    assert second.config["privileged"] == tiny_run.config["privileged"]
    # ctx.vanilla() hands out copies: changing one does not change the cache
    ctx = second.context
    m = ctx.vanilla()
    with torch.no_grad():
        next(m.parameters()).add_(1.0)
    assert not torch.equal(next(ctx.vanilla().parameters()), next(m.parameters()))
    # another training seed is another baseline, trained once and then shared
    run_experiment(make_tiny_config("posthoc_noop", runs, seed=1))
    assert calls == ["vanilla"]
    run_experiment(make_tiny_config("vanilla", runs, seed=1))
    assert calls == ["vanilla"]
    assert len([d for d in (runs / "_vanilla").iterdir() if d.is_dir()]) == 2


def test_crash_in_baseline_training_leaves_no_cache(tmp_path, make_tiny_config, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("killed during training")

    monkeypatch.setattr(Trainer, "fit", boom)
    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="killed during training"):
        run_experiment(make_tiny_config("vanilla", runs))
    vanilla = runs / "_vanilla"
    assert not [d for d in vanilla.iterdir() if d.is_dir()]
    assert not (runs / "synthderm" / "vanilla").exists() or not any(
        (runs / "synthderm" / "vanilla").iterdir())


def test_configured_privileged_group(runs, make_tiny_config, tiny_run):
    cfg = dataclasses.replace(make_tiny_config("vanilla", runs), privileged="dark")
    result = run_experiment(cfg)
    # the privileged group is part of a run's identity: another run directory
    assert result.run_dir != runs / tiny_run.run_dir.relative_to(tiny_run.run_dir.parents[2])
    assert not result.reused
    assert result.config["privileged"] == "dark" and result.config["privileged_rule"] == "configured"
    assert result.metrics["meta"]["privileged"] == "dark"


def test_weights_identity_is_the_file_content(tmp_path, make_tiny_config):
    """Replacing the weights file under the same path gives a new run (and a new baseline);
    the same bytes under another path are the same run."""
    from fairbench import create_backbone
    from fairbench.core.files import file_sha256

    def save(path, seed):
        torch.manual_seed(seed)
        model = create_backbone("smallcnn", num_classes=3, image_size=16, width=8)
        torch.save(model.state_dict(), path)

    runs = tmp_path / "runs"
    weights = tmp_path / "init.pt"
    save(weights, 0)
    config = dataclasses.replace(make_tiny_config("vanilla", runs), weights=str(weights))
    first = run_experiment(config)
    assert first.config["weights_sha256"] == file_sha256(weights)
    assert first.config["identity"]["weights"] == file_sha256(weights)
    save(weights, 1)  # other content, same path
    second = run_experiment(config)
    assert not second.reused and second.run_dir != first.run_dir
    assert len([d for d in (runs / "_vanilla").iterdir() if d.is_dir()]) == 2
    moved = tmp_path / "moved.pt"
    weights.rename(moved)
    third = run_experiment(dataclasses.replace(config, weights=str(moved)))
    assert third.reused and third.run_dir == second.run_dir
