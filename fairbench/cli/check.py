"""``fairbench check FILE.py``: the conformance kit on a plugin file.

Loads the file (as ``--plugin`` does) and runs :func:`fairbench.testing.check_method` on every
method it registers (each task the method declares, or ``--task``) and
:func:`fairbench.testing.check_dataset` on every dataset adapter it registers (on
``--data-root``). Prints one line per check; exit code 0 when all pass, 1 when one fails (its
message says which check and why), 2 for bad input (a missing file, a file that fails to load or
registers nothing, a bad ``--param``).
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fairbench.core.errors import FairbenchError

EXIT_FAILED = 1


def _defined_in(obj: Any, file: Path) -> bool:
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    source = getattr(module, "__file__", None)
    return source is not None and Path(source).resolve() == file.resolve()


def _where(exc: BaseException, file: Path) -> str:
    """The deepest line of ``file`` in the exception's traceback (the plugin's own bug)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve() == file.resolve()]
    return f" ({file.name}, line {frames[-1].lineno})" if frames else ""


@click.command("check")
@click.argument("plugin_file", metavar="FILE.py")
@click.option("--method", "-m", "only_method", default=None,
              help="Check only this method of the file. [default: all]")
@click.option("--dataset", "-d", "only_dataset", default=None,
              help="Check only this dataset adapter of the file. [default: all]")
@click.option("--task", type=click.Choice(["classification", "segmentation"]), default=None,
              help="Check methods on this task only. [default: every task a method declares]")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="Method parameter for the check (repeatable).")
@click.option("--train", "train_params", multiple=True, metavar="KEY=VALUE",
              help="Training setting for the check (repeatable), e.g. epochs=2.")
@click.option("--data-root", default=None, help="The data a dataset adapter is checked on.")
@click.option("--data-param", "data_params", multiple=True, metavar="KEY=VALUE",
              help="Dataset option for the dataset check (repeatable).")
@click.option("--keep", "keep_dir", default=None, metavar="DIR",
              help="Keep the check runs' folders in DIR. [default: a temporary folder]")
def check_cmd(plugin_file: str, only_method: str | None, only_dataset: str | None,
              task: str | None, params: tuple[str, ...], train_params: tuple[str, ...],
              data_root: str | None, data_params: tuple[str, ...],
              keep_dir: str | None) -> None:
    """Run the conformance checks on the methods and datasets a plugin file registers.

    \b
    A method runs twice on a tiny synthderm (CPU, 16 px, one epoch): its outputs, the same
    predictions for the same seed, weights that survive torch.save/load, and predictions that
    ignore the attribute when it says it needs none. A dataset adapter builds its table twice
    on --data-root and decodes a few images. Examples:
      fairbench check examples/label_smoothing.py
      fairbench check my_method.py -p alpha=0.5 --train epochs=2
      fairbench check examples/derm_folder.py --data-root ~/my_images
    """
    from fairbench.core.params import parse_assignments
    from fairbench.core.registry import load_plugin_file
    from fairbench.data.dataset import get_dataset_class, list_datasets
    from fairbench.run.method import get_method_class, list_methods

    file = Path(plugin_file).expanduser()
    method_params = parse_assignments(params, flag="--param")
    train = parse_assignments(train_params, flag="--train")
    dataset_params = parse_assignments(data_params, flag="--data-param")
    load_plugin_file(str(file))
    methods = [n for n in list_methods() if _defined_in(get_method_class(n), file)]
    datasets = [n for n in list_datasets() if _defined_in(get_dataset_class(n), file)]
    if not methods and not datasets:
        raise FairbenchError(
            f"plugin file {str(file)!r} registers no method and no dataset; decorate a Method "
            "subclass with @register_method('name') (or a DatasetAdapter with "
            "@register_dataset('name'))")
    for flag, chosen, names in (("--method", only_method, methods),
                                ("--dataset", only_dataset, datasets)):
        if chosen is not None and chosen not in names:
            raise FairbenchError(f"{flag} {chosen!r} is not registered by {str(file)!r}; it "
                                 f"registers {', '.join(names) or 'none'}")
    if only_method or only_dataset:
        methods = [only_method] if only_method else []
        datasets = [only_dataset] if only_dataset else []
    if (method_params or train) and not methods:
        raise FairbenchError("--param and --train are for methods; this check has none")

    import torch

    # the check's models are tiny: one thread is faster than several that wait on each other
    # (on a busy 2-core machine a 16-px step took 100 times longer with two threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        failed = _run_checks(file, methods, datasets, task=task, method_params=method_params,
                             train=train, data_root=data_root, dataset_params=dataset_params,
                             keep_dir=keep_dir)
    finally:
        torch.set_num_threads(threads)
    if failed:
        click.echo(f"{failed} check(s) failed", err=True)
        click.get_current_context().exit(EXIT_FAILED)


def _run_checks(file: Path, methods: list[str], datasets: list[str], *, task: str | None,
                method_params: dict[str, Any], train: dict[str, Any], data_root: str | None,
                dataset_params: dict[str, Any], keep_dir: str | None) -> int:
    """Run the checks, print one line each; returns the number that failed."""
    from fairbench.data.dataset import get_dataset_class
    from fairbench.run.method import get_method_class
    from fairbench.testing import check_dataset, check_method

    failed = 0
    with tempfile.TemporaryDirectory(prefix="fairbench-check-") as tmp:
        root = Path(keep_dir).expanduser() if keep_dir else Path(tmp)
        for name in methods:
            cls = get_method_class(name)
            tasks = [task] if task else list(cls.tasks)
            if task and task not in cls.tasks:
                raise FairbenchError(f"method {name!r} declares tasks {', '.join(cls.tasks)}, "
                                     f"not {task}")
            for t in tasks:
                what = f"method {name} ({t})"
                started = time.perf_counter()
                metrics = _attempt(what, file, lambda: check_method(
                    cls, root / f"{name}-{t}", params=method_params, train=train, task=t))
                if metrics is None:
                    failed += 1
                    continue
                key = "Dice" if t == "segmentation" else "F1"
                checks = "outputs, determinism, weights round-trip" + (
                    "" if cls.needs_attribute_at_inference else ", attribute-free")
                click.echo(f"ok      {what}: {checks}; test {key} "
                           f"{metrics['test'][key]:.3f} ({time.perf_counter() - started:.1f} s)")
        for name in datasets:
            what = f"dataset {name}"
            started = time.perf_counter()
            cls = get_dataset_class(name)
            if cls.requires_data_root and data_root is None:
                raise FairbenchError(f"dataset {name!r} is checked on its data; pass "
                                     "--data-root DIR")
            summary = _attempt(what, file,
                               lambda: check_dataset(cls, data_root, params=dataset_params))
            if summary is None:
                failed += 1
                continue
            groups = "; ".join(f"{a}: " + ", ".join(f"{g} {n}" for g, n in counts.items())
                               for a, counts in summary["attributes"].items())
            click.echo(f"ok      {what}: {summary['n']} images, {len(summary['classes'])} "
                       f"classes; {groups} ({time.perf_counter() - started:.1f} s)")
    return failed


def _attempt(what: str, file: Path, check: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run one check; on a failed assertion or the plugin's own error print one ``FAILED``
    line (with the plugin file's line where the error arose) and return None. Bad input
    (:class:`FairbenchError`: a parameter out of range...) is raised: one line, exit 2."""
    try:
        return check()
    except FairbenchError:
        raise
    except AssertionError as exc:
        click.echo(f"FAILED  {what}: {exc}")
    except Exception as exc:  # noqa: BLE001 - the plugin's own error, reported
        click.echo(f"FAILED  {what}: {type(exc).__name__}: {exc}{_where(exc, file)}")
    return None
