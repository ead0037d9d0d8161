"""The Python API: the docs' "Python API" page (``docs/python-api.md``) runs as written (with
a smaller ``small`` line), ``runs_table`` gives one row per run from a runs folder, a suite or
a list of run folders, ``group_table`` has the shape of fairlearn's ``MetricFrame.by_group``,
and ``metric_frame`` is a real MetricFrame whose numbers equal the run's ``metrics.json``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from repo_paths import ROOT

import fairbench
from fairbench import FairbenchError, group_table, metric_frame, run_suite, runs_table
from fairbench.testing import TINY_DATA, TINY_TRAIN

SMALL_LINE = 'small = dict(dataset_params={"n_samples": 1000}, train={"epochs": 4})'


PYTHON_API_PAGE = ROOT / "docs" / "python-api.md"


def python_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_docs_python_api_runs_as_written(tmp_path, monkeypatch, tiny_cache, capsys):
    blocks = python_blocks(PYTHON_API_PAGE.read_text())
    assert len(blocks) == 2
    code = blocks[0]
    for block in blocks:  # the documented API is the top-level one
        assert "from fairbench." not in block and "import fairbench." not in block
    assert SMALL_LINE in code  # the one line the test makes smaller
    tiny = (f"small = dict(dataset_params={TINY_DATA!r}, image_size=16, "
            f"train={TINY_TRAIN!r}, cache_dir={str(tiny_cache)!r})")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.replace(SMALL_LINE, tiny), "docs/python-api.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    runs = namespace["runs"]
    assert isinstance(runs, pd.DataFrame) and len(runs) == 4
    assert sorted(runs["method"]) == ["resampling", "resampling", "vanilla", "vanilla"]
    assert runs["split"].nunique() == 1
    assert (tmp_path / "figures" / "tradeoff.png").is_file()
    assert (tmp_path / "figures" / "tradeoff.pdf").is_file()
    assert "| vanilla |" in out and "| resampling |" in out  # the rendered leaderboard
    assert "skin_tone" in out  # group_table's index
    pytest.importorskip("fairlearn")
    exec(compile(blocks[1], "docs/python-api.md (fairlearn)", "exec"), namespace)  # noqa: S102
    frame = namespace["frame"]
    assert type(frame).__name__ == "MetricFrame"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_cache):
    """A tiny suite swept once: vanilla and a 2-setting groupdro grid, seed 0 and 1."""
    root = tmp_path_factory.mktemp("api")
    suite = root / "tiny.toml"
    suite.write_text(f"""
name = "tiny"
seeds = [0, 1]
runs_dir = "{(root / 'runs').as_posix()}"
cache_dir = "{Path(tiny_cache).as_posix()}"
device = "cpu"
[train]
epochs = 1
batch_size = 16
eval_batch_size = 64
[[datasets]]
name = "synthderm"
image_size = 16
backbones = ["smallcnn"]
params = {{ n_samples = 160, n_classes = 3, images_per_patient = 1.0, dark_fraction = 0.4 }}
[[methods]]
name = "vanilla"
[[methods]]
name = "groupdro"
label = "GroupDRO"
grid = {{ eta = [0.01, 0.1] }}
""")
    from fairbench import load_suite

    run_suite(load_suite(suite))
    return suite, root / "runs"


def test_runs_table_one_row_per_run(swept):
    _, runs_dir = swept
    table = runs_table(runs_dir)
    assert len(table) == 6  # vanilla × 2 seeds, groupdro × 2 settings × 2 seeds
    assert list(table.columns[:13]) == ["method", "label", "params", "dataset", "task",
                                        "attribute", "backbone", "seed", "split", "config_hash",
                                        "privileged", "seconds", "run_dir"]
    assert table["config_hash"].is_unique and table["run_dir"].is_unique
    assert set(table["attribute"]) == {"skin_tone"} and set(table["backbone"]) == {"smallcnn"}
    assert table["split"].nunique() == 1 and len(table["split"].iloc[0]) == 64
    dro = table[table["method"] == "groupdro"]
    assert sorted(dro["param.eta"]) == [0.01, 0.01, 0.1, 0.1]
    assert table.loc[table["method"] == "vanilla", "param.eta"].isna().all()
    assert all("eta=" in p for p in dro["params"])
    # every number of metrics.json, per part, as stored (fractions)
    for row in table.itertuples(index=False):
        metrics = json.loads((Path(row.run_dir) / "metrics.json").read_text())
        values = row._asdict()
        for part in ("val", "test"):
            assert table.loc[table["run_dir"] == row.run_dir, f"{part}.F1"].item() == \
                pytest.approx(metrics[part]["F1"])
        for key in ("test.EqOddsGap", "test.dark.F1", "test.worst.F1", "val.gap.AUC"):
            assert key in table.columns
        assert values["seed"] in (0, 1)
    row = table[(table["method"] == "vanilla") & (table["seed"] == 1)].iloc[0]
    metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
    assert row["test.dark.F1"] == pytest.approx(metrics["test"]["dark"]["F1"])
    assert row["test.worst.F1"] == pytest.approx(metrics["test"]["worst"]["F1"])
    # only the test part when asked
    only_test = runs_table(runs_dir, parts=("test",))
    assert not [c for c in only_test.columns if c.startswith("val.")]


def test_runs_table_from_a_suite_a_run_and_a_list(swept):
    suite, runs_dir = swept
    from_dir = runs_table(runs_dir)
    from_suite = runs_table(suite)
    assert sorted(from_suite["run_dir"]) == sorted(from_dir["run_dir"])
    assert set(from_suite["label"]) == {"vanilla", "GroupDRO"}  # the suite's labels
    one = from_dir["run_dir"].iloc[0]
    assert runs_table(one)["run_dir"].tolist() == [one]
    listed = runs_table(list(from_dir["run_dir"].iloc[:2]))
    assert len(listed) == 2
    pd.testing.assert_frame_equal(
        runs_table(list(from_dir["run_dir"])).reset_index(drop=True), from_dir)


def test_runs_table_bad_input_is_one_clear_error(tmp_path, swept):
    with pytest.raises(FairbenchError, match="neither a suite file"):
        runs_table(tmp_path / "missing")
    with pytest.raises(FairbenchError, match="not a finished run directory"):
        runs_table([tmp_path])
    with pytest.raises(FairbenchError, match="unknown part"):
        runs_table(swept[1], parts=("train",))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runs_table(empty).empty


def test_group_table_is_by_group_shaped(swept):
    _, runs_dir = swept
    run = runs_table(runs_dir)["run_dir"].iloc[0]
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    table = group_table(run)
    assert table.index.name == "skin_tone" and list(table.index) == ["light", "dark"]
    assert {"n", "accuracy", "precision", "recall", "F1", "AUC", "ECE"} <= set(table.columns)
    for group in ("light", "dark"):
        for key, value in metrics["test"][group].items():
            got = table.loc[group, key]
            assert (math.isnan(got) and value is None) or got == pytest.approx(value)
    assert table["n"].sum() == metrics["test"]["n"]
    val = group_table(run, part="val")
    assert val.loc["dark", "F1"] == pytest.approx(metrics["val"]["dark"]["F1"])
    with pytest.raises(FairbenchError, match="unknown part"):
        group_table(run, part="train")


def test_metric_frame_equals_the_stored_metrics(swept):
    pytest.importorskip("fairlearn")
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import balanced_accuracy_score

    _, runs_dir = swept
    run = runs_table(runs_dir)["run_dir"].iloc[-1]
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    frame = metric_frame(run)
    assert isinstance(frame, MetricFrame)
    by_group = frame.by_group
    assert by_group.index.name == "skin_tone"
    assert sorted(by_group.index) == ["dark", "light"]  # fairlearn sorts the groups
    stored = group_table(run)
    for key in ("accuracy", "precision", "recall", "F1"):
        for group in ("light", "dark"):
            assert by_group.loc[group, key] == pytest.approx(stored.loc[group, key])
        assert frame.overall[key] == pytest.approx(metrics["test"][key])
    custom = metric_frame(run, "val", metrics={"bal": balanced_accuracy_score})
    assert list(custom.by_group.columns) == ["bal"]


def test_metric_frame_without_fairlearn_is_one_clear_line(swept, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fairlearn(name, *args, **kwargs):
        if name == "fairlearn" or name.startswith("fairlearn."):
            raise ImportError("No module named 'fairlearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fairlearn)
    run = runs_table(swept[1])["run_dir"].iloc[0]
    with pytest.raises(FairbenchError, match="pip install fairlearn"):
        metric_frame(run)


def test_the_api_names_are_at_the_top_level():
    for name in ("runs_table", "group_table", "metric_frame", "leaderboard", "plot_tradeoff",
                 "plot_groups", "run_experiment", "RunConfig", "load_suite", "run_suite",
                 "build_matrix", "plot_matrix", "leakage_probe", "run_leakage"):
        assert name in fairbench.__all__ and callable(getattr(fairbench, name))


def test_every_public_name_resolves_to_the_module_that_defines_it():
    import importlib

    for name, module in fairbench._API.items():
        assert getattr(fairbench, name) is getattr(importlib.import_module(module), name)


def test_true_labels_and_leakage_in_the_tables(swept):
    """Runs on synthderm carry test metrics against the true labels and the attribute probe:
    ``runs_table`` has them as columns, ``group_table`` and ``metric_frame`` read the
    ``test_true`` part (against ``predictions.csv``'s ``true_label``)."""
    pytest.importorskip("fairlearn")
    _, runs_dir = swept
    table = runs_table(runs_dir)
    for row in table.itertuples(index=False):
        metrics = json.loads((Path(row.run_dir) / "metrics.json").read_text())
        values = table[table["run_dir"] == row.run_dir].iloc[0]
        assert values["test_true.EqOddsGap"] == pytest.approx(metrics["test_true"]["EqOddsGap"])
        assert values["test_true.dark.F1"] == pytest.approx(metrics["test_true"]["dark"]["F1"])
        assert values["leakage.balanced_accuracy"] == pytest.approx(
            metrics["leakage"]["balanced_accuracy"])
    only = runs_table(runs_dir, parts=("test_true",))
    assert {c.split(".")[0] for c in only.columns[13:]} == {"param", "test_true"}
    # a run whose test part has noisy labels: the true-label part differs from the observed one
    run = None
    for candidate in table["run_dir"]:
        preds = pd.read_csv(Path(candidate) / "predictions.csv")
        test = preds[preds["part"] == "test"]
        if (test["label"] != test["true_label"]).any():
            run = candidate
            break
    assert run is not None, "no test label differs from its true label: the check is idle"
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    stored = group_table(run, part="test_true")
    for group in ("light", "dark"):
        assert stored.loc[group, "F1"] == pytest.approx(metrics["test_true"][group]["F1"])
    frame = metric_frame(run, "test_true")
    for key in ("accuracy", "precision", "recall", "F1"):
        for group in ("light", "dark"):
            assert frame.by_group.loc[group, key] == pytest.approx(stored.loc[group, key])
        assert frame.overall[key] == pytest.approx(metrics["test_true"][key])
    observed = metric_frame(run, "test")
    assert not observed.by_group.equals(frame.by_group)
    with pytest.raises(FairbenchError, match="unknown part 'leakage'"):
        group_table(run, part="leakage")
