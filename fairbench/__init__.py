"""fairbench: a benchmark suite for bias-mitigation methods on medical images.

The names below are the stable public API: plugins and scripts import them from ``fairbench``
and never from the sub-packages, whose layout may change. They are loaded on first use, so
``import fairbench`` (and the command line's ``--help``) does not import torch.

Run, read and compare from Python (docs/python-api.md has the full session)::

    from fairbench import RunConfig, run_experiment, runs_table, leaderboard

A plugin method (complete examples: the repository's ``examples/`` folder)::

    from fairbench import Method, TrainHooks, param, register_method

:func:`check_method` (and :func:`check_dataset` for a dataset adapter) runs the conformance
checks on it; ``fairbench check FILE.py`` runs them from the command line.

Sub-packages, in the order data flows through a run (each imports only those before it):
``core`` (errors, registries, parameters, files) and ``metrics`` at the bottom, then ``data``,
``models``, ``training``, ``run``, ``bench`` and ``cli``. Built-in methods and dataset
adapters live in ``fairbench.methods`` and ``fairbench.datasets``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fairbench.core.version import __version__


def _public_api() -> dict[str, str]:
    """Public name -> the module that defines it, read from the ``TYPE_CHECKING`` imports at
    the end of this file: the one place the API is listed (static tools read the same
    imports)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    return {alias.name: node.module for node in block.body
            if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}


_API: dict[str, str] = _public_api()
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'fairbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the public API, one import per name (read by _public_api)
    from fairbench.bench.leaderboard import leaderboard
    from fairbench.bench.matrix import build_matrix, plot_matrix
    from fairbench.bench.plots import plot_groups, plot_tradeoff
    from fairbench.bench.suite import load_suite
    from fairbench.bench.sweep import run_suite
    from fairbench.bench.tables import group_table, metric_frame, runs_table
    from fairbench.core.errors import (
        DataError,
        FairbenchError,
        ParamError,
        PluginError,
        UnknownNameError,
    )
    from fairbench.core.params import NoParams, param
    from fairbench.data.dataset import (
        DatasetAdapter,
        ImageSpec,
        SampleTable,
        create_dataset,
        get_dataset_class,
        list_datasets,
        register_dataset,
    )
    from fairbench.data.loaders import Batch, BatchLoader
    from fairbench.metrics import evaluate_classification, higher_is_better
    from fairbench.metrics.leakage import leakage_probe
    from fairbench.models.backbones import (
        Classifier,
        create_backbone,
        list_backbones,
        register_backbone,
    )
    from fairbench.run.context import RunContext
    from fairbench.run.engagement import NO_MECHANISM, Engagement
    from fairbench.run.leakage import run_leakage
    from fairbench.run.method import (
        Method,
        create_method,
        get_method_class,
        list_methods,
        register_method,
    )
    from fairbench.run.posthoc import group_curvature
    from fairbench.run.runner import RunConfig, RunResult, run_experiment
    from fairbench.testing import check_dataset, check_method
    from fairbench.training.curvature import diagonal_curvature, fair_saliency
    from fairbench.training.trainer import AuxModule, StepState, TrainConfig, TrainHooks
