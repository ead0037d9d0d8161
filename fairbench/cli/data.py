"""``fairbench data``: build the tensor cache ahead of time, show a dataset's counts, import
published split files.

    fairbench data prepare isic2019 --data-root ~/data/isic2019 --image-size 112
    fairbench data info fitzpatrick17k --data-root ~/data/fitz17k --data-param unknown_skin_type=keep
    fairbench data import-split fitzpatrick17k --data-root ~/data/fitz17k \\
        --val fitzpatrick17k_vali.csv --test fitzpatrick17k_test.csv --out me_split.csv
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from fairbench.cli.options import ErrorLineGroup
from fairbench.core.errors import FairbenchError


def _table(dataset: str, data_root: str | None, data_params: tuple[str, ...],
           plugins: tuple[str, ...], cache_dir: str | None, image_size: int | None,
           attribute: str | None) -> tuple[Any, int, Any]:
    """The adapter (with its cache folder), the image size and the table after its filters;
    a named attribute is checked against the table."""
    adapter = _adapter(dataset, data_root, data_params, plugins)
    adapter.cache_dir = _cache_dir(cache_dir)
    size = _image_size(adapter, image_size)
    table = adapter.build_table()
    if attribute:
        table.check_attribute(attribute)
    return adapter, size, table


def _dataset_options(f: Any) -> Any:
    options = [
        click.argument("dataset"),
        click.option("--data-root", default=None, help="Folder holding the dataset."),
        click.option("--data-param", "data_params", multiple=True, metavar="KEY=VALUE",
                     help="Dataset option (repeatable); see `fairbench list datasets -v`."),
        click.option("--plugin", "plugins", multiple=True, metavar="FILE.py",
                     help="Load a local plugin file first (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _adapter(dataset: str, data_root: str | None, data_params: tuple[str, ...],
             plugins: tuple[str, ...]) -> Any:
    from fairbench.core.params import parse_assignments
    from fairbench.core.registry import load_plugin_file
    from fairbench.data.dataset import get_dataset_class

    for plugin in plugins:
        load_plugin_file(plugin)
    cls = get_dataset_class(dataset)
    return cls(params=parse_assignments(data_params, flag="--data-param"), data_root=data_root)


def _is_text(path: str) -> bool:
    try:
        Path(path).expanduser().read_text()
    except (UnicodeDecodeError, OSError):
        return False
    return True


def _image_size(adapter: Any, image_size: int | None) -> int:
    from fairbench.core.limits import check_image_size

    size = type(adapter).default_image_size if image_size is None else image_size
    return check_image_size(int(size))


def _cache_dir(cache_dir: str | None) -> Path:
    from fairbench.data.cache import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def format_counts(table: Any, attribute: str | None = None) -> str:
    """Samples per class × group of ``attribute`` (the default one if None), with totals, and
    the group totals of every other attribute."""
    attribute = attribute or table.default_attribute
    lines = [f"{len(table)} samples, {table.n_classes} classes"
             + (f", {len(set(table.patient_ids))} patients/lesions"
                if table.patient_ids is not None else "")]
    for name in table.attributes:
        names = table.group_names(name)
        codes = table.attr(name)
        parts = [f"{g} {int((codes == k).sum())}" for k, g in enumerate(names)]
        if (codes < 0).any():
            parts.append(f"missing {int((codes < 0).sum())}")
        mark = " (default)" if name == table.default_attribute else ""
        lines.append(f"attribute {name}{mark}: " + ", ".join(parts))
    counts = table.counts(attribute)
    order = [g for g in table.group_names(attribute) + ["missing"] if g in counts.columns]
    counts = counts.reindex(index=[c for c in table.classes if c in counts.index],
                            columns=order)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    lines.append(f"\nsamples per class and {attribute} group:")
    lines.append(counts.to_string())
    empty = [c for c in table.classes if c not in counts.index]
    if empty:
        lines.append(f"classes without samples: {', '.join(empty)}")
    return "\n".join(lines)


@click.group("data", cls=ErrorLineGroup)
def data_group() -> None:
    """Prepare datasets: build the image cache, show counts, import published splits.

    \b
    Examples:
      fairbench data prepare isic2019 --data-root ~/data/isic2019
      fairbench data info ham10000 --data-root ~/data/ham10000 --attribute age
    """


@data_group.command("prepare")
@_dataset_options
@click.option("--image-size", type=int, default=None, help="Image side in pixels. [default: the dataset's]")
@click.option("--cache-dir", default=None, help="Tensor cache folder. [default: $FAIRBENCH_CACHE or ~/.cache/fairbench]")
@click.option("--attribute", default=None, help="Attribute whose groups the class table shows. [default: the dataset's]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def prepare_cmd(dataset: str, data_root: str | None, data_params: tuple[str, ...],
                plugins: tuple[str, ...], image_size: int | None, cache_dir: str | None,
                attribute: str | None, quiet: bool) -> None:
    """Decode and resize every image of DATASET once into the tensor cache, then print the
    counts per class and group. A run later reads the cache instead of the JPEGs."""
    from fairbench.data.cache import cache_key, entry_problem, load_or_build

    adapter, size, table = _table(dataset, data_root, data_params, plugins, cache_dir,
                                  image_size, attribute)
    for note in getattr(adapter, "notes", []) or []:
        click.echo(f"note: {note}")
    root = _cache_dir(cache_dir)
    entry = root / "images" / f"{adapter.name}-{size}px-{cache_key(adapter, table, size)}"
    existed = entry.exists() and entry_problem(entry, table, size) is None
    started = time.perf_counter()
    cached = load_or_build(adapter, table, size, root, progress=not quiet)
    secs = time.perf_counter() - started
    if existed:
        click.echo(f"cache already built: {cached.path}")
    else:
        rate = len(table) / secs if secs > 0 else float("inf")
        click.echo(f"cached {len(table)} images at {size}px in {secs:.1f} s ({rate:.0f} img/s): "
                   f"{cached.path}")
    click.echo(format_counts(table, attribute))


@data_group.command("info")
@_dataset_options
@click.option("--image-size", type=int, default=None, help="Image size whose cache entry to look for. [default: the dataset's]")
@click.option("--cache-dir", default=None, help="Tensor cache folder. [default: $FAIRBENCH_CACHE or ~/.cache/fairbench]")
@click.option("--attribute", default=None, help="Attribute whose groups the class table shows. [default: the dataset's]")
def info_cmd(dataset: str, data_root: str | None, data_params: tuple[str, ...],
             plugins: tuple[str, ...], image_size: int | None, cache_dir: str | None,
             attribute: str | None) -> None:
    """Show DATASET's counts per class and group (after its filters) and whether its image
    cache is built; reads no pixels."""
    import json

    from fairbench.data.cache import cache_key, entry_problem

    adapter, size, table = _table(dataset, data_root, data_params, plugins, cache_dir,
                                  image_size, attribute)
    cls = type(adapter)
    click.echo(f"dataset {adapter.name}: default backbone {cls.default_backbone}, "
               f"default image size {cls.default_image_size}px")
    for note in getattr(adapter, "notes", []) or []:
        click.echo(f"note: {note}")
    entry = _cache_dir(cache_dir) / "images" / (
        f"{adapter.name}-{size}px-{cache_key(adapter, table, size)}")
    problem = entry_problem(entry, table, size) if entry.exists() else None
    if entry.exists() and problem is not None:
        click.echo(f"cache at {size}px: damaged ({problem}); the next run or `fairbench data "
                   f"prepare` builds it again: {entry}")
    elif entry.exists():
        meta = json.loads((entry / "meta.json").read_text())
        mb = sum(f.stat().st_size for f in entry.iterdir() if f.is_file()) / 2**20
        click.echo(f"cache at {size}px: built ({len(meta['sample_ids'])} images, {mb:.1f} MiB) "
                   f"{entry}")
    else:
        click.echo(f"cache at {size}px: not built (fairbench data prepare {adapter.name} ... "
                   f"--image-size {size})")
    click.echo(format_counts(table, attribute))


@data_group.command("import-split")
@_dataset_options
@click.option("--train", "train_file", default=None, help="File of train ids. [default: every sample not in val or test]")
@click.option("--val", "val_file", required=True, help="File of validation ids (CSV with an id column, or .txt).")
@click.option("--test", "test_file", required=True, help="File of test ids.")
@click.option("--id-column", default=None, help="Id column of the part files. [default: sample_id, image, image_id, md5hash, hasher or id]")
@click.option("--out", "out_file", required=True, help="Split file to write (sample_id,part), for --split-file.")
def import_split_cmd(dataset: str, data_root: str | None, data_params: tuple[str, ...],
                     plugins: tuple[str, ...], train_file: str | None, val_file: str,
                     test_file: str, id_column: str | None, out_file: str) -> None:
    """Combine a published split given as one file of ids per part (e.g. the Fair Multi-Exit
    repository's fitzpatrick17k_{vali,test}.csv or isic2019_{train,val,test}_pretraining.csv)
    into one split file, checked against DATASET, for `fairbench run --split-file`."""
    from fairbench.data.splits import save_split, split_from_part_files

    adapter = _adapter(dataset, data_root, data_params, plugins)
    table = adapter.build_table()
    try:
        split = split_from_part_files(train=train_file, val=val_file, test=test_file,
                                      id_column=id_column, table=table)
    except UnicodeDecodeError:
        bad = next((f for f in (train_file, val_file, test_file) if f and not _is_text(f)),
                   val_file)
        raise FairbenchError(f"split part file {bad!r} is not a text file (a CSV with an id "
                             "column, or a .txt with one id per line)") from None
    out = Path(out_file).expanduser()
    try:
        path = save_split(split, out)
    except OSError as exc:
        raise FairbenchError(f"cannot write the split file {str(out)!r} "
                             f"({exc.strerror or exc}); choose another --out") from None
    sizes = ", ".join(f"{p} {n}" for p, n in split.sizes().items())
    unused = len(table) - sum(split.sizes().values())
    click.echo(f"wrote {path} ({sizes}; sha256 {split.sha256[:12]})")
    if unused:
        click.echo(f"note: {unused} samples of the dataset are in no part")
