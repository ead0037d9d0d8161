"""What the command line shows about settings before anything runs: the resolved configuration
of a run as a TOML file (``fairbench run --print-config``) and the training settings
(``fairbench list train``)."""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (strings, booleans, numbers, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    if isinstance(value, Path):
        return toml_value(str(value))
    raise TypeError(f"no TOML form for {value!r}")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def resolved_config_toml(config: Any) -> str:
    """The configuration ``config`` (a :class:`~fairbench.run.runner.RunConfig`) resolves to,
    as a TOML file that ``fairbench run --config`` reads back to the same run: every method,
    dataset and training setting with its default filled in, the dataset's default backbone,
    image size and attribute, and as comments the run directory, whether it is finished and the
    split's hash. Reads the dataset's metadata and makes the split (no images, no training)."""
    from fairbench.data.cache import default_cache_dir
    from fairbench.run.runner import prepare, resolve_split, run_dir_for, run_identity
    from fairbench.run.store import is_finished

    p = prepare(config)
    table, attribute, split = resolve_split(p)
    identity = run_identity(p, SimpleNamespace(table=table, attribute=attribute, split=split))
    run_dir = run_dir_for(Path(config.runs_dir).expanduser(), identity)
    state = "finished: `fairbench run` reuses it unless --force" if is_finished(run_dir) \
        else "not run yet"
    cache = config.cache_dir or str(default_cache_dir())
    lines = [
        "# the resolved configuration: `fairbench run --config FILE` runs exactly this run",
        f"# run directory: {run_dir} ({state})",
        f"# split sha256: {split.sha256} ({', '.join(f'{k} {v}' for k, v in split.sizes().items())})",
        f"# groups of {attribute}: {', '.join(table.group_names(attribute))}",
    ]
    scalars: dict[str, Any] = {
        "method": config.method,
        "task": p.task,
        "dataset": config.dataset,
        "data_root": config.data_root,
        "attribute": attribute,
        "privileged": config.privileged,
        "backbone": p.backbone,
        "weights": config.weights,
        "pretrained": True if config.pretrained else None,
        "weights_dir": config.weights_dir,
        "image_size": p.image_size,
        "seed": config.seed,
        "split_seed": config.split_seed,
        "split_fractions": [float(f) for f in config.split_fractions],
        "split_file": config.split_file,
        "split": config.split if config.split != "seeded" else None,
        "split_dir": config.split_dir,
        "device": config.device,
        "runs_dir": config.runs_dir,
        "cache_dir": config.cache_dir,
        "save_weights": bool(config.save_weights),
        "plugins": list(config.plugins) or None,
    }
    for key, value in scalars.items():
        if value is not None:
            lines.append(f"{key} = {toml_value(value)}")
        elif key == "privileged":
            lines.append("# privileged: not set (the group the vanilla model serves better on "
                         "validation)")
        elif key == "cache_dir":
            lines.append(f"# cache_dir: not set ({cache})")
    from fairbench.core.params import params_to_dict

    tables = {
        "method_params": params_to_dict(p.method.params),
        "dataset_params": params_to_dict(p.adapter.params),
        "backbone_params": dict(p.config.backbone_params),  # typed by prepare()
        "train": params_to_dict(p.train),
    }
    for name, values in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def train_settings(pattern: str = "*") -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of every ``--train`` setting matching ``pattern``."""
    from fairbench.core.params import describe_params
    from fairbench.training.trainer import TrainConfig

    return [(name, type_name, _default_text(default), help_text)
            for name, type_name, default, help_text in describe_params(TrainConfig)
            if fnmatch.fnmatchcase(name, pattern or "*")]


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def aligned(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    """Rows as lines with every column but the last padded to its widest cell."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(r[:-1], widths)), r[-1]]).rstrip()
            for r in table]
