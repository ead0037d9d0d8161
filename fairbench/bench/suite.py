"""Benchmark suites: a TOML file naming datasets, backbones, methods with parameter grids,
seeds and the model-selection rule; parsed, checked and expanded into :class:`RunConfig`\\ s.

::

    name = "quick"
    seeds = 3                      # or a list, e.g. [0, 1, 2, 3, 4]; default 3 → 0, 1, 2
    runs_dir = "runs"              # relative to the working directory; --runs-dir overrides
    plugins = ["my_method.py"]     # optional local plugin files (relative to the working dir)
    selection = { rule = "fair_within_eps", eps = 0.02, fairness = "EqOddsGap" }

    [train]                        # shared by every method (so all share one vanilla model)
    epochs = 8

    [[datasets]]
    name = "synthderm"             # a registered dataset adapter
    label = "synthderm"            # optional display name (unique); default: the name
    backbones = ["smallcnn"]       # default: the dataset's default backbone
    image_size = 32                # optional; also attribute, privileged, data_root,
    params = { n_samples = 2000 }  #   split_seed, split_file, split_fractions, train = {...},
                                   #   pretrained = true (with weights_dir = "...")
    # task = "segmentation"        # optional; default: the dataset's first task per method

    [[methods]]
    name = "vanilla"

    [[methods]]
    name = "fairquantize"
    params = { retrain_epochs = 2 }         # fixed values
    grid = { beta = [0.5, 1.0], target_ratio = [0.1, 0.2] }   # axes of the grid (non-empty)
    # label = "fairquantize-released"       # a second entry of one method needs its own label
    # datasets = ["synthderm"]              # restrict to some dataset labels

    # tuning = { trials = 8, seed = 0 }     # instead of grids: every method entry gets 8
    #                                       # settings drawn from its declared search space
    #                                       # (fairbench.bench.tuning), chosen on validation

Every name (dataset, method, backbone, parameter, training setting) and every value of the
expanded grid is checked before anything runs; a problem is one :class:`FairbenchError`
naming the suite file and the entry.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairbench.bench.selection import Rule, parse_rule
from fairbench.bench.tuning import Tuning, draw_trials, parse_tuning
from fairbench.core.errors import DataError, FairbenchError
from fairbench.core.files import read_toml
from fairbench.core.params import params_to_dict
from fairbench.run.runner import RunConfig, prepare

DEFAULT_SEEDS = 3

TOP_KEYS = {"name", "description", "seeds", "runs_dir", "cache_dir", "device", "train",
            "equivalence_margin", "tuning",
            "selection", "datasets", "methods", "plugins", "save_weights"}
DATASET_KEYS = {"name", "label", "task", "params", "data_root", "attribute", "privileged",
                "backbones",
                "backbone", "backbone_params", "weights", "pretrained", "weights_dir",
                "split", "split_dir", "image_size", "split_seed",
                "split_file", "split_fractions", "train"}
METHOD_KEYS = {"name", "label", "params", "grid", "datasets"}


@dataclass
class DatasetEntry:
    label: str
    name: str
    params: dict[str, Any]
    data_root: str | None
    attribute: str | None
    privileged: str | None
    backbones: list[str | None]
    backbone_params: dict[str, Any]
    weights: str | None
    image_size: int | None
    split_seed: int
    split_file: str | None
    split_fractions: tuple[float, float, float]
    train: dict[str, Any]
    task: str | None = None
    #: start from the ImageNet-pretrained weights (fairbench.models.pretrained), found in
    #: weights_dir (else $FAIRBENCH_WEIGHTS_DIR, else the Hugging Face cache)
    pretrained: bool = False
    weights_dir: str | None = None
    #: "seeded" or "published" (fairbench.data.published), the latter's files in split_dir
    split: str = "seeded"
    split_dir: str | None = None


@dataclass
class MethodEntry:
    label: str
    name: str
    params: dict[str, Any]
    grid: dict[str, list[Any]]
    datasets: list[str] | None
    #: the suite's tuning budget (:mod:`fairbench.bench.tuning`): trials instead of a grid
    tuning: Tuning | None = None

    def varying(self) -> list[str]:
        """The parameters that differ between the entry's settings: the grid axes, or the
        search dimensions its trials draw."""
        if self.tuning is None:
            return list(self.grid)
        return [k for k in self._search_space() if k not in self.params]

    def _search_space(self) -> dict[str, Any]:
        from fairbench.core.params import search_space
        from fairbench.run.method import get_method_class

        return search_space(get_method_class(self.name).Params)

    def settings(self) -> list[dict[str, Any]]:
        """Every combination of the grid axes on top of the fixed params (grid order), or,
        under a tuning budget, the entry's trials (:func:`fairbench.bench.tuning.draw_trials`)."""
        if self.tuning is not None:
            from fairbench.core.params import build_params, params_to_dict
            from fairbench.run.method import get_method_class

            defaults = params_to_dict(build_params(get_method_class(self.name).Params, {}))
            return draw_trials(self._search_space(), self.params, self.tuning, self.label,
                               defaults)
        axes = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[a] for a in axes)):
            p = dict(self.params)
            p.update(zip(axes, values))
            out.append(p)
        return out


@dataclass
class PlannedConfig:
    """One run of a suite before its data is resolved."""

    config: RunConfig
    dataset: str        # dataset label
    method: str         # method label
    setting: dict[str, Any]   # the grid point (fixed params + axes)
    grid_values: dict[str, Any]  # only the grid axes' values (what varies)


@dataclass
class Suite:
    name: str
    path: Path | None
    seeds: list[int]
    runs_dir: str
    cache_dir: str | None
    device: str
    train: dict[str, Any]
    rule: Rule
    datasets: list[DatasetEntry]
    methods: list[MethodEntry]
    plugins: list[str] = field(default_factory=list)
    save_weights: bool = False
    description: str = ""
    #: run options that do not change a run's identity (set from the sweep's command line)
    tracking: str | None = None
    tracking_uri: str | None = None
    #: ±δ of the leaderboard's and matrix's equivalence test per metric (fractions; the
    #: suite's ``equivalence_margin`` is in points); None: the catalog's defaults
    margins: dict[str, float] | None = None
    #: the tuning budget every method entry gets (None: each entry's grid)
    tuning: Tuning | None = None

    def expand(self) -> list[PlannedConfig]:
        """Every run of the suite: datasets × backbones × methods × grid × seeds."""
        out: list[PlannedConfig] = []
        # a suite with vanilla writes the vanilla runs itself; without, each run leaves its own
        leave_vanilla = not any(m.name == "vanilla" for m in self.methods)
        for d in self.datasets:
            for backbone in d.backbones:
                for m in self.methods:
                    if m.datasets is not None and d.label not in m.datasets:
                        continue
                    for setting in m.settings():
                        for seed in self.seeds:
                            train = dict(self.train)
                            train.update(d.train)
                            cfg = RunConfig(
                                method=m.name, method_params=dict(setting), dataset=d.name,
                                task=d.task,
                                dataset_params=dict(d.params), data_root=d.data_root,
                                attribute=d.attribute, privileged=d.privileged,
                                backbone=backbone, backbone_params=dict(d.backbone_params),
                                weights=d.weights, pretrained=d.pretrained,
                                weights_dir=d.weights_dir, image_size=d.image_size, seed=seed,
                                split_seed=d.split_seed, split_fractions=d.split_fractions,
                                split_file=d.split_file, split=d.split,
                                split_dir=d.split_dir, train=train, device=self.device,
                                runs_dir=self.runs_dir, cache_dir=self.cache_dir,
                                save_weights=self.save_weights, progress=False,
                                plugins=tuple(self.plugins), tracking=self.tracking,
                                tracking_uri=self.tracking_uri,
                                leave_vanilla_run=leave_vanilla)
                            out.append(PlannedConfig(cfg, d.label, m.label, setting,
                                                     {a: setting[a] for a in m.varying()
                                                      if a in setting}))
        return out


def _where(path: Path | None) -> str:
    return f"suite {str(path)!r}" if path else "suite"


def _table(value: Any, what: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FairbenchError(f"{where}: {what} must be a table (key = value pairs)")
    return dict(value)


def _typed(entry: Mapping[str, Any], key: str, kinds: tuple[type, ...], want: str,
           where: str) -> None:
    """One clear error when ``entry[key]`` is set but not of ``kinds`` (a bool is no number)."""
    if key not in entry or entry[key] is None:
        return
    value = entry[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise FairbenchError(f"{where}: {key} = {value!r} must be {want}")


_STRING_KEYS = ("attribute", "privileged", "data_root", "weights", "split_file", "task",
                "backbone", "weights_dir", "split", "split_dir")


def _check_entry_types(d: Mapping[str, Any], where: str) -> None:
    for key in _STRING_KEYS:
        _typed(d, key, (str,), "a string", where)
    _typed(d, "split_seed", (int,), "a non-negative integer", where)
    _typed(d, "pretrained", (bool,), "true or false", where)
    _typed(d, "image_size", (int,), "an integer number of pixels", where)
    if isinstance(d.get("split_seed"), int) and d["split_seed"] < 0:
        raise FairbenchError(f"{where}: split_seed = {d['split_seed']} must be non-negative")
    if isinstance(d.get("image_size"), int) and not isinstance(d["image_size"], bool) \
            and d["image_size"] < 8:
        raise FairbenchError(f"{where}: image_size = {d['image_size']} is too small; use at "
                             "least 8")
    fractions = d.get("split_fractions")
    if fractions is not None and (
            not isinstance(fractions, (list, tuple)) or len(fractions) != 3
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool)
                       for f in fractions)):
        raise FairbenchError(f"{where}: split_fractions = {fractions!r} must be three numbers "
                             "(train, val, test)")


def _unknown(keys: set[str], allowed: set[str], what: str, where: str) -> None:
    bad = sorted(keys - allowed)
    if bad:
        close = difflib.get_close_matches(bad[0], sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; valid: {', '.join(sorted(allowed))}"
        raise FairbenchError(f"{where}: {what} has unknown key {bad[0]!r}{hint}")


def load_suite(path: str | Path, *, data_roots: Mapping[str, str] | None = None,
               runs_dir: str | None = None, seeds: list[int] | None = None,
               check: bool = True, allow_missing_data: bool = False) -> Suite:
    """Read, check and return the suite at ``path`` (see the module docstring).

    ``data_roots`` maps dataset labels (or ``"*"``: every dataset that is not synthetic) to
    data folders, overriding the file; ``runs_dir`` and ``seeds`` override the file too.
    """
    path = Path(path)
    suite = parse_suite(read_toml(path, "suite file"), path=path, data_roots=data_roots, runs_dir=runs_dir,
                        seeds=seeds)
    if check:
        check_suite(suite, allow_missing_data=allow_missing_data)
    return suite


def _seeds(value: Any, where: str) -> list[int]:
    if value is None:
        return list(range(DEFAULT_SEEDS))
    if isinstance(value, bool):
        raise FairbenchError(f"{where}: seeds must be a count or a list of integers")
    if isinstance(value, int):
        if value < 1:
            raise FairbenchError(f"{where}: seeds = {value} must be at least 1")
        return list(range(value))
    if isinstance(value, list):
        if not value:
            raise FairbenchError(f"{where}: seeds is an empty list; give at least one seed")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
            raise FairbenchError(f"{where}: seeds must be non-negative integers, got {value!r}")
        if len(set(value)) != len(value):
            raise FairbenchError(f"{where}: seeds {value!r} repeat a seed")
        return list(value)
    raise FairbenchError(f"{where}: seeds must be a count or a list of integers, got {value!r}")


def _runs_dir(given: str | None, in_file: Any, where: str) -> str:
    """The runs folder: the command line's, else the suite's; an empty name is refused (it
    would write into the current folder)."""
    if given is not None and not str(given).strip():
        raise FairbenchError("--runs-dir is empty; name the folder runs go to, e.g. runs")
    value = str(given or in_file)
    if not value.strip():
        raise FairbenchError(f"{where}: runs_dir is empty; name the folder runs go to")
    return value


def parse_margins(value: Any, where: str) -> dict[str, float] | None:
    """``equivalence_margin``: a number of points for every metric of
    :data:`fairbench.metrics.catalog.EQUIVALENCE_MARGINS`, or a table ``{metric = points}``
    (replacing the defaults of the metrics it names); returned as fractions."""
    from fairbench.metrics import check_directed_metric
    from fairbench.metrics.catalog import EQUIVALENCE_MARGINS

    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {k: value for k in EQUIVALENCE_MARGINS}
    if not isinstance(value, Mapping) or not value:
        raise FairbenchError(f"{where}: equivalence_margin must be a number of points or a "
                             "table such as {{ EqOddsGap = 2, F1 = 2 }}")
    out = dict(EQUIVALENCE_MARGINS)
    for key, points in value.items():
        try:
            check_directed_metric(str(key), "equivalence_margin metric")
        except FairbenchError as exc:
            raise FairbenchError(f"{where}: {exc}") from None
        if isinstance(points, bool) or not isinstance(points, (int, float)) or not points > 0:
            raise FairbenchError(f"{where}: equivalence_margin {key} = {points!r} must be a "
                                 "positive number of points, e.g. 2")
        out[str(key)] = float(points) / 100
    return out


def _parse_datasets(data: Mapping[str, Any], where: str,
                    data_roots: Mapping[str, str] | None) -> list[DatasetEntry]:
    """The suite's ``[[datasets]]`` entries, each checked, with ``--data-root`` applied."""
    raw_datasets = data.get("datasets")
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise FairbenchError(f"{where}: it names no dataset; add at least one [[datasets]] table")
    datasets: list[DatasetEntry] = []
    for i, d in enumerate(raw_datasets):
        if not isinstance(d, Mapping):
            raise FairbenchError(f"{where}: datasets entry {i + 1} must be a table")
        if "name" not in d:
            raise FairbenchError(f"{where}: datasets entry {i + 1} has no name")
        label = str(d.get("label", d["name"]))
        w = f"{where}, dataset {label!r}"
        _unknown(set(d), DATASET_KEYS, "the entry", w)
        _check_entry_types(d, w)
        if "backbones" in d and "backbone" in d:
            raise FairbenchError(f"{w}: give backbone or backbones, not both")
        backbones = d.get("backbones", [d["backbone"]] if "backbone" in d else [None])
        if not isinstance(backbones, list):
            backbones = [backbones]
        if not backbones:
            raise FairbenchError(f"{w}: backbones is an empty list; name at least one")
        if not all(b is None or isinstance(b, str) for b in backbones):
            raise FairbenchError(f"{w}: backbones = {backbones!r} must be a list of names")
        fractions = d.get("split_fractions", (0.6, 0.2, 0.2))
        if not isinstance(fractions, (list, tuple)) or len(fractions) != 3:
            raise FairbenchError(f"{w}: split_fractions must be three numbers (train, val, test)")
        data_root = d.get("data_root")
        if data_roots:
            data_root = data_roots.get(label, data_roots.get("*", data_root)
                                       if d["name"] != "synthderm" else data_root)
        datasets.append(DatasetEntry(
            label=label, name=str(d["name"]), params=_table(d.get("params"), "params", w),
            data_root=None if data_root is None else str(data_root),
            attribute=d.get("attribute"), privileged=d.get("privileged"),
            backbones=[None if b is None else str(b) for b in backbones],
            backbone_params=_table(d.get("backbone_params"), "backbone_params", w),
            weights=d.get("weights"), image_size=d.get("image_size"),
            split_seed=int(d.get("split_seed", 0)), split_file=d.get("split_file"),
            split_fractions=tuple(float(f) for f in fractions),  # type: ignore[arg-type]
            train=_table(d.get("train"), "train", w),
            task=None if d.get("task") is None else str(d["task"]),
            pretrained=bool(d.get("pretrained", False)), weights_dir=d.get("weights_dir"),
            split=str(d.get("split", "seeded")), split_dir=d.get("split_dir")))
    labels = [d.label for d in datasets]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise FairbenchError(f"{where}: dataset label {dup[0]!r} is used twice; give each "
                             "entry its own label")
    if data_roots:
        unknown = sorted(set(data_roots) - set(labels) - {"*"})
        if unknown:
            raise FairbenchError(f"{where}: --data-root names dataset {unknown[0]!r}, which the "
                                 f"suite does not have; its datasets: {', '.join(labels)}")
    return datasets


def _parse_methods(data: Mapping[str, Any], where: str, labels: list[str],
                   tuning: Tuning | None = None) -> list[MethodEntry]:
    """The suite's ``[[methods]]`` entries, each checked (params, grid, datasets)."""
    raw_methods = data.get("methods")
    if not isinstance(raw_methods, list) or not raw_methods:
        raise FairbenchError(f"{where}: it names no method; add at least one [[methods]] table")
    methods: list[MethodEntry] = []
    for i, m in enumerate(raw_methods):
        if not isinstance(m, Mapping):
            raise FairbenchError(f"{where}: methods entry {i + 1} must be a table")
        if "name" not in m:
            raise FairbenchError(f"{where}: methods entry {i + 1} has no name")
        label = str(m.get("label", m["name"]))
        w = f"{where}, method {label!r}"
        _unknown(set(m), METHOD_KEYS, "the entry", w)
        params = _table(m.get("params"), "params", w)
        grid = _table(m.get("grid"), "grid", w)
        for axis, values in grid.items():
            if not isinstance(values, list):
                raise FairbenchError(f"{w}: grid axis {axis!r} must be a list of values, "
                                     f"got {values!r}")
            if not values:
                raise FairbenchError(f"{w}: grid axis {axis!r} is an empty list; give at least "
                                     "one value or remove the axis")
            if axis in params:
                raise FairbenchError(f"{w}: {axis!r} is both a fixed param and a grid axis")
        if grid and tuning is not None:
            raise FairbenchError(f"{w}: has a grid while the suite sets tuning (every method "
                                 "gets the same number of trials); remove the grid, or fix "
                                 "its values in params")
        only = m.get("datasets")
        if only is not None:
            if not isinstance(only, list) or not only:
                raise FairbenchError(f"{w}: datasets must be a non-empty list of dataset labels")
            for lbl in only:
                if lbl not in labels:
                    raise FairbenchError(f"{w}: datasets names {lbl!r}, which is not a dataset "
                                         f"label of the suite ({', '.join(labels)})")
        methods.append(MethodEntry(label, str(m["name"]), params, grid,
                                   None if only is None else [str(x) for x in only], tuning))
    mlabels = [m.label for m in methods]
    dup = sorted({x for x in mlabels if mlabels.count(x) > 1})
    if dup:
        raise FairbenchError(f"{where}: method {dup[0]!r} appears twice; give the second entry "
                             "its own label = \"...\"")
    return methods


def parse_suite(data: Mapping[str, Any], *, path: Path | None = None,
                data_roots: Mapping[str, str] | None = None, runs_dir: str | None = None,
                seeds: list[int] | None = None) -> Suite:
    """Turn the TOML data into a :class:`Suite` (structure only; see :func:`check_suite`)."""
    where = _where(path)
    _unknown(set(data), TOP_KEYS, "the top level", where)
    for key in ("name", "description", "runs_dir", "cache_dir", "device"):
        _typed(data, key, (str,), "a string", where)
    _typed(data, "save_weights", (bool,), "true or false", where)
    plugins_value = data.get("plugins")
    if plugins_value is not None and not (
            isinstance(plugins_value, str) or (isinstance(plugins_value, list) and all(
                isinstance(x, str) for x in plugins_value))):
        raise FairbenchError(f"{where}: plugins = {plugins_value!r} must be a list of paths")
    train = _table(data.get("train"), "[train]", where)
    sel = data.get("selection")
    if isinstance(sel, str):
        sel = {"rule": sel}
    sel = _table(sel, "selection", where)
    try:
        rule = parse_rule(sel or None)
    except FairbenchError as exc:
        raise FairbenchError(f"{where}: {exc}") from None

    datasets = _parse_datasets(data, where, data_roots)
    tuning = parse_tuning(data.get("tuning"), where)
    methods = _parse_methods(data, where, [d.label for d in datasets], tuning)
    plugins = data.get("plugins", [])
    if isinstance(plugins, str):
        plugins = [plugins]
    name = str(data.get("name", path.stem if path else "suite"))
    return Suite(
        name=name, path=path, seeds=seeds if seeds is not None else _seeds(data.get("seeds"), where),
        runs_dir=_runs_dir(runs_dir, data.get("runs_dir", "runs"), where), cache_dir=data.get("cache_dir"),
        device=str(data.get("device", "auto")), train=train, rule=rule, datasets=datasets,
        methods=methods, plugins=[_plugin_path(p) for p in plugins],
        save_weights=bool(data.get("save_weights", False)),
        margins=parse_margins(data.get("equivalence_margin"), where), tuning=tuning,
        description=str(data.get("description", "")))


def attach_run_options(suite: Suite, *, plugins: Sequence[str] = (), tracking: str | None = None,
                       tracking_uri: str | None = None) -> None:
    """Add the command line's plugin files and tracking to every run of ``suite`` (worker
    processes load the plugins themselves)."""
    for plugin in plugins:
        path = _plugin_path(plugin)
        if path not in suite.plugins:
            suite.plugins.append(path)
    suite.tracking, suite.tracking_uri = tracking, tracking_uri


def _plugin_path(plugin: Any) -> str:
    """A plugin path made absolute (relative ones from the working directory, like
    ``runs_dir``), so worker processes started elsewhere load the same file."""
    return str(Path(str(plugin)).expanduser().resolve())


def check_suite(suite: Suite, *, allow_missing_data: bool = False) -> None:
    """Check every name and every expanded run's parameters without training anything
    (names, ranges, training settings, backbones, data folders); one clear error.

    With ``allow_missing_data`` (``--dry-run``) a missing data folder is not an error; the
    method, training and backbone settings of its runs are still checked."""
    from fairbench.core.registry import load_plugin_file
    from fairbench.data.dataset import get_dataset_class
    from fairbench.run.method import get_method_class

    where = _where(suite.path)
    for plugin in suite.plugins:
        load_plugin_file(plugin)
    for d in suite.datasets:
        try:
            get_dataset_class(d.name)
        except FairbenchError as exc:
            raise FairbenchError(f"{where}, dataset {d.label!r}: {exc}") from None
    for m in suite.methods:
        try:
            get_method_class(m.name)
        except FairbenchError as exc:
            raise FairbenchError(f"{where}, method {m.label!r}: {exc}") from None
    seen: dict[tuple[str, str, str, str], str] = {}
    for planned in suite.expand():
        if planned.config.seed != suite.seeds[0]:
            continue  # the seed changes nothing that can be checked here
        try:
            try:
                p = prepare(planned.config)
            except DataError:
                if not allow_missing_data:
                    raise
                _check_without_data(planned.config)
                continue
        except FairbenchError as exc:
            at = f" at {_fmt_setting(planned.grid_values)}" if planned.grid_values else ""
            raise FairbenchError(f"{where}, dataset {planned.dataset!r}, method "
                                 f"{planned.method!r}{at}: {exc}") from None
        # two grid points that resolve to the same parameters would be one run listed twice
        key = (planned.dataset, str(planned.config.backbone), planned.method,
               repr(sorted(params_to_dict(p.method.params).items())))
        here = _fmt_setting(planned.grid_values) or "(defaults)"
        if key in seen:
            raise FairbenchError(f"{where}, method {planned.method!r}: grid points {seen[key]} "
                                 f"and {here} resolve to the same parameters")
        seen[key] = here


def _check_without_data(config: RunConfig) -> None:
    """What :func:`fairbench.run.runner.prepare` checks, less the data folder."""
    from fairbench.core.params import build_params
    from fairbench.data.dataset import get_dataset_class
    from fairbench.models.backbones import BACKBONES
    from fairbench.run.method import get_method_class
    from fairbench.training.trainer import TrainConfig

    get_method_class(config.method)(dict(config.method_params))
    cls = get_dataset_class(config.dataset)
    build_params(cls.Params, dict(config.dataset_params), owner=f"dataset {config.dataset}")
    build_params(TrainConfig, config.train, owner="training (--train)")
    backbone = config.backbone or cls.default_backbone
    if not backbone.startswith(("timm:", "tv:")):
        BACKBONES.get(backbone)


def _fmt_setting(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
