"""An equal tuning budget: search spaces declared in the methods' params, a suite's
``tuning = { trials = K }`` expanded into K validation-chosen settings per method, the
Latin-hypercube draws, and bad input."""

from __future__ import annotations

from pathlib import Path

import fairbench.methods  # noqa: F401 - registers the built-in methods
import numpy as np
import pytest
from bench_helpers import make_run
from click.testing import CliRunner

from fairbench import FairbenchError, load_suite
from fairbench.bench.board import build_tables
from fairbench.bench.runs import read_run
from fairbench.bench.tuning import Tuning, draw_trials, parse_tuning
from fairbench.cli.main import main
from fairbench.core.params import Search, search_space
from fairbench.run.method import get_method_class, list_methods

SUITE = """
name = "tuned"
seeds = [0, 1, 2]
runs_dir = "{runs}"
tuning = {{ trials = {trials}, seed = 3 }}

[train]
epochs = 1

[[datasets]]
name = "synthderm"
image_size = 16
params = {{ n_samples = 200 }}

[[methods]]
name = "vanilla"

[[methods]]
name = "adv_conf"

[[methods]]
name = "groupdro"

[[methods]]
name = "apple"
params = {{ max_rel_norm = 0.2 }}
"""


def _suite(tmp_path: Path, trials: int = 4, extra: str = "") -> Path:
    path = tmp_path / "tuned.toml"
    path.write_text(SUITE.format(runs=tmp_path / "runs", trials=trials) + extra)
    return path


def test_search_ranges_map_the_unit_interval():
    assert Search(0.01, 1.0, log=True).value(0.0) == pytest.approx(0.01)
    assert Search(0.01, 1.0, log=True).value(0.5) == pytest.approx(0.1)
    assert Search(0.2, 0.4).value(0.5) == pytest.approx(0.3)
    assert Search(2, 16, integer=True).value(0.999) == 16
    assert Search(choices=("a", "b")).value(0.7) == "b"
    with pytest.raises(ValueError):
        Search(1.0, 1.0)
    with pytest.raises(ValueError):
        Search(0.0, 1.0, log=True)


def test_every_declared_search_range_lies_within_the_parameters_allowed_range():
    """A drawn value must pass the method's own parameter check."""
    from fairbench.core.params import build_params

    for name in list_methods():
        cls = get_method_class(name).Params
        for key, space in search_space(cls).items():
            for u in (0.0, 0.5, 0.999):
                build_params(cls, {key: space.value(u)})  # raises on an out-of-range value


def test_trials_are_the_entry_then_a_latin_hypercube_over_the_free_dimensions():
    space = {"a": Search(0.0, 1.0), "b": Search(0.01, 1.0, log=True)}
    trials = draw_trials(space, {"b": 0.5, "c": 1}, Tuning(9, seed=1), "m")
    assert trials[0] == {"b": 0.5, "c": 1}  # the entry as written comes first
    assert draw_trials(space, {"b": 0.5}, Tuning(3), "m", {"a": 0.25, "b": 9})[0] == {
        "a": 0.25, "b": 0.5}  # with the free dimensions' defaults written out
    assert all(t["b"] == 0.5 and t["c"] == 1 for t in trials)  # fixed stays fixed
    a = np.array([t["a"] for t in trials[1:]])
    # Latin hypercube: one draw in each of the 8 equal strata of the free dimension
    assert sorted(np.floor(a * 8).astype(int)) == list(range(8))
    both = draw_trials(space, {}, Tuning(9, seed=1), "m")
    b = np.log10([t["b"] for t in both[1:]])  # log-uniform: strata equal in log space
    assert sorted(np.floor((b + 2) / 2 * 8).astype(int)) == list(range(8))
    assert draw_trials(space, {}, Tuning(9, seed=1), "m") == both  # deterministic
    assert draw_trials(space, {}, Tuning(9, seed=2), "m") != both
    assert draw_trials(space, {}, Tuning(9, seed=1), "other") != both  # per entry
    assert draw_trials({}, {"x": 1}, Tuning(9), "m") == [{"x": 1}]  # nothing to tune


def test_a_suite_gives_every_method_the_same_number_of_trials(tmp_path):
    suite = load_suite(_suite(tmp_path, trials=5))
    planned = suite.expand()
    by_method: dict[str, list] = {}
    for p in planned:
        by_method.setdefault(p.method, []).append(p)
    settings = {m: {tuple(sorted(p.setting.items())) for p in ps} for m, ps in by_method.items()}
    assert len(settings["vanilla"]) == 1  # nothing to tune
    assert len(settings["adv_conf"]) == len(settings["groupdro"]) == len(settings["apple"]) == 5
    assert all(len(ps) == 5 * 3 for m, ps in by_method.items() if m != "vanilla")
    apple = [p.setting for p in by_method["apple"]]
    assert all(s["max_rel_norm"] == 0.2 for s in apple)  # the entry's value is kept
    assert all(set(p.grid_values) == {"alpha"} for p in by_method["apple"])
    assert min(s["alpha"] for s in apple) < 0.2 < max(s["alpha"] for s in apple)
    # the same suite expands to the same runs (a sweep resumes them)
    again = load_suite(_suite(tmp_path, trials=5)).expand()
    assert [p.config.method_params for p in again] == [p.config.method_params for p in planned]


def test_the_leaderboard_chooses_each_method_among_its_trials(tmp_path):
    """Two methods with the same budget: each row is chosen among as many settings as the
    budget, on validation, and says so."""
    suite = load_suite(_suite(tmp_path, trials=4))
    runs = []
    for p in suite.expand():
        acc = 0.7 + 0.05 * (hash(str(sorted(p.setting.items()))) % 3)
        d = make_run(tmp_path / "runs", method=p.config.method, seed=p.config.seed,
                     params=p.config.method_params, acc=acc)
        runs.append(read_run(d))
    (table,) = build_tables(runs, rule="fair_within_eps")
    rows = {r.label: r for r in table.rows}
    assert rows["adv_conf"].n_settings == rows["groupdro"].n_settings == 4
    assert rows["vanilla"].n_settings == 1
    assert "(chosen of 4 settings)" in rows["adv_conf"].params_text()
    assert rows["adv_conf"].params in [p.setting for p in suite.expand()
                                       if p.method == "adv_conf"]


@pytest.mark.parametrize("value,message", [
    ("{ trials = 0 }", "tuning.trials = 0 must be an integer from 1"),
    ("{ trials = 2.5 }", "tuning.trials = 2.5 must be an integer"),
    ("{ trials = 4, sed = 1 }", "tuning has unknown key 'sed'"),
    ("{ trials = 4, seed = -1 }", "tuning.seed = -1 must be a non-negative integer"),
    ("8", "tuning must be a table"),
])
def test_bad_tuning_is_one_line(tmp_path, value, message):
    path = tmp_path / "bad.toml"
    path.write_text(SUITE.format(runs=tmp_path / "runs", trials=4).replace(
        "tuning = { trials = 4, seed = 3 }", f"tuning = {value}"))
    with pytest.raises(FairbenchError, match=message):
        load_suite(path)
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message.split(" must")[0] in result.output


def test_a_grid_under_a_tuning_budget_is_refused(tmp_path):
    path = _suite(tmp_path, extra='\n[[methods]]\nname = "mfd"\ngrid = { lam = [1.0, 3.0] }\n')
    with pytest.raises(FairbenchError, match="has a grid while the suite sets tuning"):
        load_suite(path)


def test_parse_tuning_defaults():
    assert parse_tuning(None, "s") is None
    assert parse_tuning({"trials": 3}, "s") == Tuning(3, 0)


def test_dry_run_lists_the_trials_and_list_shows_the_ranges(tmp_path):
    result = CliRunner().invoke(main, ["sweep", str(_suite(tmp_path, trials=3)), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "/adv_conf/" in line]
    assert len(lines) == 3 * 3 and "alpha=" in result.output
    listing = CliRunner().invoke(main, ["list", "methods", "-v", "adv_conf"])
    assert "tuned: log-uniform in [0.01, 1]" in listing.output
