"""The ``fairbench`` command line.

Every user error (unknown names, malformed parameters, bad files, missing data) prints one
line ``error: ...`` and exits with code 2, without a traceback and without touching results
already written. Ctrl-C and SIGTERM stop a command the same way: the unfinished run's
temporary files are removed, finished runs are kept.

Plugin code (``--plugin`` files, a config's or suite's ``plugins``) is imported only by the
commands that resolve or run methods: ``run``, ``sweep`` (``--dry-run`` too), ``leaderboard``
and ``plot tradeoff``/``plot cd`` of a suite file, ``list`` and ``data``. ``show``,
``leaderboard``/``plot`` of a runs folder without ``--plugin``, ``plot groups``/``ablation``
and ``runs check``/``repair`` never import plugin code.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from fairbench.cli.bench import BENCH_COMMANDS
from fairbench.cli.check import check_cmd
from fairbench.cli.data import data_group
from fairbench.cli.options import (
    VERBOSE_HELP,
    ErrorLineGroup,
    add_verbose_everywhere,
    trust_unmanifested_option,
    verbose_requested,
)
from fairbench.cli.runs import runs_group
from fairbench.core.errors import FairbenchError, ParamError
from fairbench.core.files import read_toml
from fairbench.core.version import __version__

CONFIG_KEYS = {
    "method", "task", "dataset", "data_root", "attribute", "privileged", "backbone", "weights",
    "pretrained", "weights_dir", "image_size", "seed", "split_seed", "split_fractions",
    "split_file", "split", "split_dir", "device", "runs_dir",
    "cache_dir", "save_weights", "params", "method_params", "dataset_params", "backbone_params",
    "train", "epochs", "plugins",
}


#: the type of every scalar key of a config file (``epochs`` is checked as a train setting)
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    **{k: (str,) for k in ("method", "task", "dataset", "data_root", "attribute", "privileged",
                           "backbone", "weights", "split_file", "device", "runs_dir",
                           "cache_dir", "weights_dir", "split", "split_dir")},
    **{k: (int,) for k in ("image_size", "seed", "split_seed")},
    "save_weights": (bool,),
    "pretrained": (bool,),
    "split_fractions": (list,),
    "plugins": (list,),
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup on the way out runs (the unfinished
    run's temporary folder, a half-built cache entry, claims and locks)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class FairbenchGroup(ErrorLineGroup):
    """Turns :class:`FairbenchError` into one line on stderr and exit code 2
    (:class:`~fairbench.cli.options.ErrorLineGroup`), and SIGTERM into the same clean stop as
    Ctrl-C."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = None
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # not the main thread: leave signals alone
            pass
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"{what}; finished runs are kept, the unfinished one was discarded",
                       err=True)
            ctx.exit(143 if isinstance(exc, Terminated) else 130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _load_plugins(plugins: tuple[str, ...] | list[str]) -> None:
    from fairbench.core.registry import load_plugin_file

    for path in plugins:
        load_plugin_file(path)


def _check_names_early(method: str, dataset: str, plugins: list[str]) -> None:
    """Refuse an unknown method or dataset before plugin code runs and, in a fresh process,
    before torch is imported (seconds): built-in names are read from the sources (or from the
    registries when they are loaded already), a plugin file's from its literal
    ``@register_...("name")`` decorators. Undecidable cases (a plugin that registers names in
    another way, installed plugin packages) are left to the registry."""
    import re

    from fairbench.core.registry import REGISTER_CALL, check_name_early

    extra: set[str] = set()
    for plugin in plugins:
        try:
            text = Path(plugin).expanduser().read_text(errors="replace")
        except OSError:
            return  # the plugin loader reports it
        found = set(REGISTER_CALL.findall(text))
        calls = len(re.findall(r"register\w*\s*\(", text))
        if calls > len(REGISTER_CALL.findall(text)):
            return  # names registered another way: nothing to decide here
        extra |= found
    loaded = "fairbench.run.method" in sys.modules
    for kind, name, package in (("method", method, "fairbench.methods"),
                                ("dataset", dataset, "fairbench.datasets")):
        if name in extra:
            continue
        if loaded:  # in-process use: the registries (with their plugins) decide
            from fairbench.data.dataset import DATASETS
            from fairbench.run.method import METHODS

            registry = METHODS if kind == "method" else DATASETS
            if name not in registry:
                registry.get(name)  # raises the registry's own message
            continue
        check_name_early(kind, name, package=package, group=package)


def _read_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path).expanduser()
    data = read_toml(file, "config file")
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(CONFIG_KEYS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FairbenchError(f"config file {str(file)!r} has unknown key {unknown[0]!r}{hint}")
    for key in ("params", "method_params", "dataset_params", "backbone_params", "train"):
        if key in data and not isinstance(data[key], dict):
            raise FairbenchError(f"config file {str(file)!r}: [{key}] must be a table")
    for key, kinds in CONFIG_TYPES.items():
        value = data.get(key)
        if value is None:
            continue
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if ok and isinstance(value, list):
            elem = (int, float) if key == "split_fractions" else (str,)
            ok = all(isinstance(v, elem) and not isinstance(v, bool) for v in value)
        if not ok:
            want = {"split_fractions": "a list of three numbers", "plugins": "a list of paths"
                    }.get(key, " or ".join(k.__name__ for k in kinds))
            raise FairbenchError(
                f"config file {str(file)!r}: {key} = {value!r} must be {want}")
    return data


@click.group(cls=FairbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
# the version of the code (the distribution is named fairbench-med, the command fairbench)
@click.version_option(version=__version__, prog_name="fairbench")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
def main(verbose: bool) -> None:
    """fairbench: every bias-mitigation method on identical, hashed splits, with one trainer
    and one metrics module.

    \b
    Start with:
      fairbench run --method fairquantize     (built-in synthetic dataset, CPU-sized)
      fairbench list methods                  (what can run)
      fairbench show runs/synthderm/vanilla/<run>
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(message)s")


@main.command()
@click.option("--method", "-m", default=None, help="Mitigation method (see `fairbench list methods`). [default: vanilla]")
@click.option("--dataset", "-d", default=None, help="Dataset adapter. [default: synthderm]")
@click.option("--task", type=click.Choice(["classification", "segmentation"]), default=None,
              help="Task type. [default: the dataset's first task that the method supports]")
@click.option("--data-root", default=None, help="Folder holding the dataset (not needed for synthderm).")
@click.option("--backbone", "-b", default=None, help="Backbone name, timm:<model> or tv:<model>; for segmentation unet:<encoder>, e.g. unet:tu-resnet18. [default: the dataset's]")
@click.option("--backbone-param", "backbone_params", multiple=True, metavar="KEY=VALUE",
              help="Backbone option, e.g. width=16 or encoder_depth=3 (repeatable).")
@click.option("--weights", default=None, help="Local weights file for the backbone (never downloaded); what does not load is reported.")
@click.option("--allow-partial-weights", is_flag=True, default=False,
              help="Load a --weights file that covers less than 90% of the backbone.")
@click.option("--pretrained", is_flag=True, default=None,
              help="Start the backbone (resnet18, timm_vgg11, timm:<name>) from its "
                   "ImageNet-pretrained timm weights, read from a local file (never "
                   "downloaded): --weights-dir, $FAIRBENCH_WEIGHTS_DIR or the Hugging Face cache.")
@click.option("--weights-dir", default=None, type=click.Path(),
              help="Folder holding pretrained weights files (resnet18.safetensors, "
                   "resnet18.pth, or timm/resnet18.a1_in1k/model.safetensors). "
                   "[default: $FAIRBENCH_WEIGHTS_DIR]")
@click.option("--seed", type=int, default=None, help="Training seed. [default: 0]")
@click.option("--epochs", type=int, default=None, help="Training epochs (shortcut for --train epochs=N).")
@click.option("--device", default=None, help="auto, cpu or cuda. [default: auto]")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="Method parameter, checked against the method's typed parameters (repeatable).")
@click.option("--data-param", "data_params", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, e.g. n_samples=2000 (repeatable).")
@click.option("--train", "train_params", multiple=True, metavar="KEY=VALUE",
              help="Training setting, e.g. lr=0.01 or optimizer=sgd (repeatable).")
@click.option("--attribute", default=None, help="Sensitive attribute. [default: the dataset's]")
@click.option("--privileged", default=None, help="Privileged group name. [default: the group the vanilla model serves better on val]")
@click.option("--image-size", type=int, default=None, help="Image side in pixels. [default: the dataset's]")
@click.option("--split-file", default=None, help="CSV of sample_id,part to use instead of the seeded split.")
@click.option("--split-seed", type=int, default=None, help="Seed of the generated split. [default: 0]")
@click.option("--split", "split", type=click.Choice(["seeded", "published"]), default=None,
              help="seeded: the hashed split of --split-seed; published: the Fair Multi-Exit "
                   "repository's split files (Fitzpatrick-17k, ISIC 2019), checked by sha256. "
                   "[default: seeded]")
@click.option("--split-dir", default=None, type=click.Path(),
              help="Folder of the published split files. [default: $FAIRBENCH_SPLITS_DIR, "
                   "else DATA_ROOT/published_split]")
@click.option("--config", "config_file", default=None, help="TOML file with any of these settings; flags win.")
@click.option("--runs-dir", default=None, help="Where run directories go. [default: ./runs]")
@click.option("--cache-dir", default=None, help="Tensor cache folder. [default: $FAIRBENCH_CACHE or ~/.cache/fairbench]")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Load a local plugin file (repeatable; its code runs, as the config's plugins do).")
@click.option("--save-weights", is_flag=True, default=None, help="Store the fitted model's weights in the run.")
@click.option("--force", is_flag=True, help="Recompute even if an identical run is finished.")
@click.option("--tracking", type=click.Choice(["mlflow"]), default=None,
              help="Also log the finished run to MLflow (needs the mlflow extra).")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI. [default: the SQLite file RUNS_DIR/mlflow.db]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved configuration (a TOML file for --config) and run nothing.")
def run(**opts: Any) -> None:
    """Run one method on one dataset and store the result in a run directory.

    \b
    The run directory holds config.json, metrics.json, predictions.csv and train_log.csv.
    An identical finished run is not recomputed (use --force). Examples:
      fairbench run --method vanilla
      fairbench run --method vanilla --seed 1 --train lr=0.01 --data-param dark_fraction=0.2
      fairbench run --method apple --task segmentation   (a U-Net on synthderm's lesion masks)
      fairbench run --method fairquantize -p beta=0.75 --print-config > my_run.toml
      fairbench run --method vanilla --backbone resnet18 --pretrained --weights-dir ~/weights
    """
    file_cfg = _read_config(opts["config_file"])
    config = _run_config(opts, file_cfg)  # names checked before torch is imported
    from fairbench.run.report import run_summary
    from fairbench.run.runner import run_experiment

    if opts["print_config"]:
        from fairbench.cli.resolved import resolved_config_toml

        config.plugins = tuple(list(file_cfg.get("plugins", [])) + list(opts["plugins"]))
        click.echo(resolved_config_toml(config), nl=False)
        return
    result = run_experiment(config)
    if result.reused:
        click.echo(f"identical run already finished (use --force to redo): {result.run_dir}")
    click.echo(run_summary(result.config, result.metrics))
    click.echo(f"\nrun directory: {result.run_dir}")
    if config.tracking == "mlflow" and not result.reused:
        from fairbench.run.tracking import default_tracking_uri

        if config.tracking_uri is None:
            uri = default_tracking_uri(config.runs_dir)
            click.echo(f"MLflow store: {uri} (browse it: mlflow ui --backend-store-uri {uri})")
        else:
            click.echo(f"MLflow: {config.tracking_uri}")


def _run_config(opts: dict[str, Any], file_cfg: dict[str, Any]) -> Any:
    """The :class:`RunConfig` of ``fairbench run``: the flags over the ``--config`` file (its
    plugins loaded, names checked before torch is imported)."""
    from fairbench.core.params import parse_assignments

    def pick(key: str, default: Any = None) -> Any:
        return opts.get(key) if opts.get(key) is not None else file_cfg.get(key, default)

    plugins = list(file_cfg.get("plugins", [])) + list(opts["plugins"])
    _check_names_early(str(pick("method", "vanilla")), str(pick("dataset", "synthderm")),
                       plugins)
    _load_plugins(plugins)

    method_params = dict(file_cfg.get("method_params", {}))
    method_params.update(file_cfg.get("params", {}))
    method_params.update(parse_assignments(opts["params"], flag="--param"))
    dataset_params = dict(file_cfg.get("dataset_params", {}))
    dataset_params.update(parse_assignments(opts["data_params"], flag="--data-param"))
    train = dict(file_cfg.get("train", {}))
    if "epochs" in file_cfg:
        if "epochs" in train:
            raise ParamError("the config file sets epochs twice (epochs and train.epochs); "
                             "keep one of them")
        train["epochs"] = file_cfg["epochs"]
    train_flags = parse_assignments(opts["train_params"], flag="--train")
    if opts["epochs"] is not None:
        if "epochs" in train_flags:
            # never let one silently hide the other (a malformed value would go unnoticed)
            raise ParamError(f"--epochs {opts['epochs']} and --train epochs="
                             f"{train_flags['epochs']} both given; use one of them")
        train_flags["epochs"] = opts["epochs"]
    train.update(train_flags)
    fractions = file_cfg.get("split_fractions", (0.6, 0.2, 0.2))
    from fairbench.run.runner import RunConfig

    config = RunConfig(
        method=pick("method", "vanilla"),
        method_params=method_params,
        dataset=pick("dataset", "synthderm"),
        dataset_params=dataset_params,
        data_root=pick("data_root"),
        attribute=pick("attribute"),
        privileged=pick("privileged"),
        backbone=pick("backbone"),
        backbone_params={**dict(file_cfg.get("backbone_params", {})),
                         **parse_assignments(opts["backbone_params"], flag="--backbone-param")},
        task=pick("task"),
        weights=pick("weights"),
        pretrained=bool(pick("pretrained", False)),
        weights_dir=pick("weights_dir"),
        image_size=pick("image_size"),
        seed=int(pick("seed", 0)),
        split_seed=int(pick("split_seed", 0)),
        split_fractions=tuple(fractions),  # type: ignore[arg-type]
        split_file=pick("split_file"),
        split=pick("split", "seeded"),
        split_dir=pick("split_dir"),
        train=train,
        device=pick("device", "auto"),
        runs_dir=pick("runs_dir", "runs"),
        cache_dir=pick("cache_dir"),
        save_weights=bool(pick("save_weights", False)),
        force=bool(opts["force"]),
        allow_partial_weights=bool(opts["allow_partial_weights"]),
        progress=not opts["quiet"],
        tracking=opts["tracking"],
        tracking_uri=opts["tracking_uri"],
    )
    if config.tracking_uri is not None and config.tracking is None:
        raise ParamError("--tracking-uri needs --tracking mlflow")
    return config


@main.command("list")
@click.argument("kind", type=click.Choice(["methods", "datasets", "backbones", "train"]))
@click.argument("pattern", required=False, default="*")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Load a local plugin file first.")
def list_cmd(kind: str, pattern: str, plugins: tuple[str, ...]) -> None:
    """List registered methods, datasets or backbones matching PATTERN (wildcards: 'fair*'),
    or the training settings (`list train`: every --train key with its type, default and help).
    """
    from fairbench.core.params import describe_params
    from fairbench.data.dataset import get_dataset_class, list_datasets
    from fairbench.models.backbones import BACKBONES
    from fairbench.run.method import get_method_class, list_methods

    _load_plugins(plugins)
    details = verbose_requested()
    if kind == "train":
        from fairbench.cli.resolved import aligned, train_settings

        rows = train_settings(pattern)
        if not rows:
            raise FairbenchError(f"no training setting matches {pattern!r}; see "
                                 "`fairbench list train`")
        click.echo("--train KEY=VALUE (repeatable), or [train] in a --config or suite file; "
                   "segmentation runs pick checkpoints by Dice unless select= is given")
        for line in aligned(rows, ("setting", "type", "default", "help")):
            click.echo(line)
        return
    if kind == "methods":
        names = list_methods(pattern)
        width = max([16, *(len(n) + 1 for n in names)])
        for name in names:
            cls = get_method_class(name)
            tasks = "cls+seg" if "segmentation" in cls.tasks else "cls"
            click.echo(f"{name:{width}s} {cls.kind:12s} {tasks:8s} {cls.summary()}")
            if details:
                _echo_params(describe_params(cls.Params))
    elif kind == "datasets":
        names = list_datasets(pattern)
        width = max([16, *(len(n) + 1 for n in names)])
        for name in names:
            cls = get_dataset_class(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            tasks = "+".join({"classification": "cls", "segmentation": "seg"}.get(t, t)
                             for t in cls.tasks)
            click.echo(f"{name:{width}s} {tasks:8s} {doc[0] if doc else ''}")
            if details:
                _echo_params(describe_params(cls.Params))
                for scen, knobs in getattr(cls, "scenarios", {}).items():
                    changed = {k: v for k, v in knobs.items()
                               if v != getattr(cls, "scenarios", {}).get("control", {}).get(k)}
                    text = ", ".join(f"{k}={v}" for k, v in changed.items()) or \
                        ", ".join(f"{k}={v}" for k, v in knobs.items())
                    click.echo(f"    scenario={scen:15s} {text}")
    else:
        for name in BACKBONES.list(pattern):
            factory = BACKBONES.get(name)
            doc = (factory.__doc__ or "").strip().splitlines()
            click.echo(f"{name:16s} {doc[0] if doc else ''}")
        if pattern in ("*", "timm*", "tv*"):
            click.echo("timm:<name>      any timm model, e.g. timm:efficientnet_b0 (random init)")
            click.echo("tv:<name>        a torchvision ResNet or VGG, e.g. tv:resnet34 (random init)")
        if pattern in ("*", "unet*"):
            click.echo("unet:<encoder>   a U-Net segmentor (--task segmentation), e.g. "
                       "unet:tu-resnet10t (default), unet:tu-resnet18, unet:resnet34")
    for kind_registry_errors in _plugin_errors():
        click.echo(f"warning: {kind_registry_errors}", err=True)


def _echo_params(rows: list[tuple[str, str, Any, str]]) -> None:
    """The parameters of one method or dataset as aligned columns: name, default, type, help."""
    from fairbench.cli.resolved import aligned

    if not rows:
        click.echo("    (no parameters)")
        return
    table = [(name, str(default), type_name, help_text)
             for name, type_name, default, help_text in rows]
    for line in aligned(table, ("parameter", "default", "type", "help")):
        click.echo(f"    {line}")


def _plugin_errors() -> list[str]:
    from fairbench.data.dataset import DATASETS
    from fairbench.models.backbones import BACKBONES
    from fairbench.run.method import METHODS

    return [msg for reg in (METHODS, DATASETS, BACKBONES) for msg in reg.plugin_errors.values()]


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--part", type=click.Choice(["val", "test", "both"]), default="test", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "md", "csv", "latex"]),
              default="text", show_default=True,
              help="text: the paper-style table and the comparison with vanilla; md, csv, "
                   "latex: the comparison table, to paste.")
@trust_unmanifested_option
def show(run_dir: str, part: str, fmt: str) -> None:
    """A finished run: the paper-style table and, metric by metric (overall, worst group, the
    equalized-odds gap, the papers' EOpp0/EOpp1/EOdd, AUC, then per group with its number of
    test samples), the run beside the shared vanilla model of the same split and seed (a
    vanilla run in the same runs folder) and the difference.

    \b
    Examples:
      fairbench show runs/synthderm/fairquantize/smallcnn-s0-6d31b5ff3c
      fairbench show RUN_DIR --format md --part both
      fairbench show RUN_DIR --format latex > table.tex
    """
    from fairbench.run.report import (
        comparison_frame,
        comparison_text,
        find_vanilla_run,
        run_summary,
    )
    from fairbench.run.store import read_run_files

    path = Path(run_dir)
    if not path.is_dir():
        raise FairbenchError(f"run directory {run_dir!r} does not exist")
    config, metrics = read_run_files(path)  # a damaged run: one line, the way out
    parts = ("val", "test") if part == "both" else (part,)
    vanilla_dir = find_vanilla_run(path)
    vanilla = read_run_files(vanilla_dir)[1] if vanilla_dir else None
    if config.get("method") == "vanilla":
        where = "this run is the vanilla model"
    elif vanilla_dir is None:
        where = ("no vanilla run of the same split, seed and settings in this runs folder "
                 "(run `fairbench run --method vanilla` with the same options to compare)")
    else:
        where = f"vanilla: {vanilla_dir}"
    out = [run_summary(config, metrics, parts=parts) + "\n"] if fmt == "text" else []
    for p in parts:
        frame = comparison_frame(metrics, vanilla, part=p)
        title = f"[{p}] {config['method']} against vanilla, values in % ({where})"
        out.append(comparison_text(frame, fmt, title=title if fmt != "csv" else ""))
    click.echo("\n".join(out).rstrip("\n"))


main.add_command(data_group, "data")
main.add_command(check_cmd, "check")
main.add_command(runs_group, "runs")
for _name, _command in BENCH_COMMANDS.items():  # sweep, leaderboard, plot (cli_bench.py)
    main.add_command(_command, _name)
add_verbose_everywhere(main)


def entry() -> None:  # pragma: no cover
    main(prog_name="fairbench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

