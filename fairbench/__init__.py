"""fairbench: a benchmark suite for bias-mitigation methods on medical images.

The names below are the stable public API: plugins and scripts import them from ``fairbench``
and never from the sub-packages, whose layout may change. They are loaded on first use, so
``import fairbench`` (and the command line's ``--help``) does not import torch.

Run, read and compare from Python (the README's "Python API" section has the full example)::

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

#: public name -> module that defines it
_API: dict[str, str] = {
    # errors
    "FairbenchError": "fairbench.core.errors",
    "ParamError": "fairbench.core.errors",
    "DataError": "fairbench.core.errors",
    "PluginError": "fairbench.core.errors",
    "UnknownNameError": "fairbench.core.errors",
    # typed parameters
    "param": "fairbench.core.params",
    "NoParams": "fairbench.core.params",
    # datasets
    "DatasetAdapter": "fairbench.data.dataset",
    "SampleTable": "fairbench.data.dataset",
    "ImageSpec": "fairbench.data.dataset",
    "register_dataset": "fairbench.data.dataset",
    "create_dataset": "fairbench.data.dataset",
    "list_datasets": "fairbench.data.dataset",
    "get_dataset_class": "fairbench.data.dataset",
    "Batch": "fairbench.data.loaders",
    "BatchLoader": "fairbench.data.loaders",
    # backbones
    "Classifier": "fairbench.models.backbones",
    "register_backbone": "fairbench.models.backbones",
    "create_backbone": "fairbench.models.backbones",
    "list_backbones": "fairbench.models.backbones",
    # training
    "TrainConfig": "fairbench.training.trainer",
    "TrainHooks": "fairbench.training.trainer",
    "StepState": "fairbench.training.trainer",
    "AuxModule": "fairbench.training.trainer",
    "diagonal_curvature": "fairbench.training.curvature",
    "fair_saliency": "fairbench.training.curvature",
    # methods and runs
    "Method": "fairbench.run.method",
    "register_method": "fairbench.run.method",
    "create_method": "fairbench.run.method",
    "list_methods": "fairbench.run.method",
    "get_method_class": "fairbench.run.method",
    "RunContext": "fairbench.run.context",
    "group_curvature": "fairbench.run.posthoc",
    "RunConfig": "fairbench.run.runner",
    "RunResult": "fairbench.run.runner",
    "run_experiment": "fairbench.run.runner",
    "run_leakage": "fairbench.run.leakage",
    # many runs
    "load_suite": "fairbench.bench.suite",
    "run_suite": "fairbench.bench.sweep",
    "leaderboard": "fairbench.bench.leaderboard",
    # results as tables and figures
    "runs_table": "fairbench.bench.tables",
    "group_table": "fairbench.bench.tables",
    "metric_frame": "fairbench.bench.tables",
    "plot_tradeoff": "fairbench.bench.plots",
    "plot_groups": "fairbench.bench.plots",
    "build_matrix": "fairbench.bench.matrix",
    "plot_matrix": "fairbench.bench.matrix",
    # metrics
    "evaluate_classification": "fairbench.metrics",
    "higher_is_better": "fairbench.metrics",
    "leakage_probe": "fairbench.metrics.leakage",
    # conformance kit
    "check_method": "fairbench.testing",
    "check_dataset": "fairbench.testing",
}

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


if TYPE_CHECKING:  # what static tools see; the same names as _API
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
