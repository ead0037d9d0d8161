"""Shared fixtures of the core-pipeline tests (generic: nothing here is autouse).

* ``fresh_registries``: snapshot of the method/dataset/backbone registries, restored after the
  test, so a test may register plugin methods without leaking them into other tests.
* ``tiny_cache``: one tensor-cache folder for the whole session (tiny synthderm images are
  rendered once).
* ``tiny_run``: one finished tiny ``vanilla`` run (synthderm, 16 px, smallcnn, one epoch, weights
  saved), shared by the tests that only read a run directory; do not modify its files.
* ``make_tiny_config``: :func:`fairbench.testing.tiny_run_config` bound to the session cache.

Torch runs single-threaded in the test session (``FAIRBENCH_TEST_THREADS`` overrides): the
models are tiny, and on a shared machine OpenMP threads that wait for a descheduled sibling
made a 16-px forward/backward step 100 times slower (0.5 s instead of 5 ms).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FAIRBENCH_NO_PROGRESS", "1")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("FAIRBENCH_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def _required_here(nodeid: str) -> bool:
    """Whether ``FAIRBENCH_REQUIRE_TESTS`` (comma-separated parts of test ids; CI sets it)
    names this test: such a test may not skip."""
    parts = [p.strip() for p in os.environ.get("FAIRBENCH_REQUIRE_TESTS", "").split(",")]
    return any(p and p in nodeid for p in parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip of a required test (see ``_required_here``) is reported as a failure with the
    skip's reason, so CI cannot pass with its statistics or HTML tests silently skipped."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _required_here(item.nodeid) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"required by FAIRBENCH_REQUIRE_TESTS but skipped: {reason}"


@pytest.fixture
def fresh_registries():
    """Restore METHODS, DATASETS and BACKBONES to their state before the test."""
    from fairbench.data.dataset import DATASETS
    from fairbench.models.backbones import BACKBONES
    from fairbench.run.method import METHODS

    registries = (METHODS, DATASETS, BACKBONES)
    for registry in registries:
        registry.names()  # built-ins and entry points loaded before the snapshot
    saved = [(dict(r._entries), dict(r.plugin_errors), r._entry_points_loaded) for r in registries]
    yield registries
    for reg, (entries, errors, loaded) in zip(registries, saved):
        reg._entries.clear()
        reg._entries.update(entries)
        reg.plugin_errors.clear()
        reg.plugin_errors.update(errors)
        reg._entry_points_loaded = loaded


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fbcache")


@pytest.fixture(scope="session")
def make_tiny_config(tiny_cache):
    from fairbench.testing import tiny_run_config

    def make(method: str, runs_dir: Path, **kwargs):
        kwargs.setdefault("cache_dir", tiny_cache)
        return tiny_run_config(method, Path(runs_dir), **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, make_tiny_config):
    """A finished tiny vanilla run (``RunResult`` with ``model`` and ``context`` kept)."""
    import dataclasses

    from fairbench import run_experiment

    runs = tmp_path_factory.mktemp("tiny_runs")
    config = dataclasses.replace(make_tiny_config("vanilla", runs), save_weights=True)
    return run_experiment(config, keep_model=True)
