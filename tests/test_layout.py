"""The package layout: imports point one way, down the path of a run, and never in a circle.

The imports are read with ``ast`` from the source files (every ``import``, at module level, in
functions and under ``TYPE_CHECKING`` alike), so the test needs nothing installed and fails on
an import that is only ever executed lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from repo_paths import ROOT

#: package -> the packages its modules may import (itself included)
BOTTOM = {"core"}
ALLOWED: dict[str, set[str]] = {
    "core": BOTTOM,
    "metrics": BOTTOM | {"metrics"},
    "data": BOTTOM | {"metrics", "data"},
    "datasets": BOTTOM | {"metrics", "data", "datasets"},
    "models": BOTTOM | {"metrics", "data", "models"},
    "training": BOTTOM | {"metrics", "data", "models", "training"},
    "run": BOTTOM | {"metrics", "data", "models", "training", "run"},
    "methods": BOTTOM | {"metrics", "data", "models", "training", "run", "methods"},
    "bench": BOTTOM | {"metrics", "data", "models", "training", "run", "bench"},
    "cli": BOTTOM | {"metrics", "data", "models", "training", "run", "bench", "cli", "api"},
    # the public API at the top (fairbench/__init__.py, fairbench/testing.py)
    "api": BOTTOM | {"metrics", "data", "models", "training", "run", "bench", "api"},
}
TOP_LEVEL_MODULES = {"__init__", "testing"}


def source_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for fairbench/ and the folders installed under it."""
    folders = {"fairbench": root / "fairbench", "fairbench.methods": root / "methods",
               "fairbench.datasets": root / "datasets"}
    out: dict[str, Path] = {}
    for prefix, folder in folders.items():
        for file in sorted(folder.rglob("*.py")):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = file
    return out


def package_of(module: str) -> str:
    """The layer a dotted module belongs to (``api`` for the top-level modules)."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in TOP_LEVEL_MODULES):
        return "api"
    return parts[1]


def imported_modules(module: str, file: Path, known: set[str]) -> set[str]:
    """fairbench modules ``file`` imports (a ``from pkg import sub`` of a submodule counts as
    importing the submodule)."""
    is_package = file.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "fairbench")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fairbench":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            out.update(subs or {target})
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = source_modules(root)
    known = set(modules)
    return {m: imported_modules(m, f, known) & known - {m} for m, f in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        allowed = ALLOWED[package_of(module)]
        for target in sorted(targets):
            if package_of(target) not in allowed:
                out.append(f"{module} imports {target} ({package_of(module)} may import "
                           f"{', '.join(sorted(allowed))})")
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_imports_point_down_the_path_of_a_run():
    assert upward_imports(import_graph(ROOT)) == []


def test_no_import_circles():
    assert import_cycles(import_graph(ROOT)) == []


def test_top_level_holds_only_the_public_api():
    top = {p.stem for p in (ROOT / "fairbench").glob("*.py")}
    assert top == TOP_LEVEL_MODULES
    packages = {p.name for p in (ROOT / "fairbench").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED) - {"api", "datasets", "methods"}
    for name in packages:
        doc = ast.get_docstring(ast.parse((ROOT / "fairbench" / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"fairbench/{name}/__init__.py: say what it may import"


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tiny_tree(tmp_path):
    for rel in ("fairbench/__init__.py", "fairbench/testing.py", "methods/__init__.py",
                "datasets/__init__.py", "fairbench/core/__init__.py", "fairbench/run/__init__.py",
                "fairbench/data/__init__.py"):
        _write(tmp_path, rel)
    _write(tmp_path, "fairbench/core/errors.py", "class E(Exception): ...\n")
    _write(tmp_path, "fairbench/data/table.py", "from fairbench.core.errors import E\n")
    _write(tmp_path, "fairbench/run/context.py", "from ..data.table import E\n")
    return tmp_path


def test_the_checks_pass_on_a_clean_tree(tiny_tree):
    graph = import_graph(tiny_tree)
    assert graph["fairbench.run.context"] == {"fairbench.data.table"}
    assert upward_imports(graph) == [] and import_cycles(graph) == []


def test_a_deliberate_upward_import_fails(tiny_tree):
    # a lazy import inside a function counts too
    _write(tiny_tree, "fairbench/data/table.py",
           "def f():\n    from fairbench.run.context import Ctx\n")
    problems = upward_imports(import_graph(tiny_tree))
    assert problems == ["fairbench.data.table imports fairbench.run.context "
                        "(data may import core, data, metrics)"]


def test_a_plugin_package_imported_from_the_core_fails(tiny_tree):
    _write(tiny_tree, "fairbench/run/context.py", "import fairbench.methods\n")
    assert upward_imports(import_graph(tiny_tree))[0].startswith(
        "fairbench.run.context imports fairbench.methods")


def test_a_circle_is_found_even_under_type_checking(tiny_tree):
    _write(tiny_tree, "fairbench/run/method.py",
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
           "    from fairbench.run.context import Ctx\n")
    _write(tiny_tree, "fairbench/run/context.py", "from fairbench.run import method\n")
    assert import_cycles(import_graph(tiny_tree)) == [
        ["fairbench.run.context", "fairbench.run.method"]]


def test_no_method_imports_another_method():
    """Shared pieces live in fairbench.run or fairbench.training, never in a method's module."""
    graph = import_graph(ROOT)
    crossing = sorted(f"{m} imports {t}" for m, targets in graph.items()
                      if m.startswith("fairbench.methods.") for t in targets
                      if t.startswith("fairbench.methods"))
    assert crossing == []


def test_a_method_importing_another_is_found(tiny_tree):
    _write(tiny_tree, "methods/a.py", "X = 1\n")
    _write(tiny_tree, "methods/b.py", "from .a import X\n")
    graph = import_graph(tiny_tree)
    assert graph["fairbench.methods.b"] == {"fairbench.methods.a"}


# -- one source of metric names ------------------------------------------------------------------
def metric_name_lists(root: Path) -> list[str]:
    """Literal tuples, lists and sets of three or more metric names, and dicts keyed by them,
    outside the metric catalog: each is a second source of a list the catalog declares."""
    from fairbench.metrics.catalog import PREFIX_DIRECTION, SPECS, SUMMARY_KEYS

    def is_metric(s: object) -> bool:
        if not isinstance(s, str):
            return False
        if s in SPECS:
            return True
        prefix, _, base = s.partition(".")
        return base in SPECS and (prefix in PREFIX_DIRECTION or prefix in SUMMARY_KEYS)

    found = []
    for module, file in source_modules(root).items():
        if module.startswith("fairbench.metrics"):
            continue  # the catalog, and the core that computes the metrics it declares
        tree = ast.parse(file.read_text(), str(file))
        skip = {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                and (module, fn.name) in INDEPENDENT_DEFINITIONS for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                elts = node.elts
            elif isinstance(node, ast.Dict):
                elts = [k for k in node.keys if k is not None]
            else:
                continue
            names = [e.value for e in elts if isinstance(e, ast.Constant) and is_metric(e.value)]
            if len(names) >= 3:
                found.append(f"{file.relative_to(root)}:{node.lineno}: {names}")
    return found


#: functions that define metrics independently of the catalog on purpose: scikit-learn's
#: functions for the fairlearn MetricFrame (the independent computation)
INDEPENDENT_DEFINITIONS = {("fairbench.bench.tables", "default_fairlearn_metrics")}


def test_metric_names_have_one_source():
    assert metric_name_lists(ROOT) == []


def test_a_second_list_of_metric_names_is_found(tiny_tree):
    _write(tiny_tree, "fairbench/run/report.py", 'COLS = ("F1", "worst.F1", "EqOddsGap")\n')
    assert metric_name_lists(tiny_tree) == [
        "fairbench/run/report.py:1: ['F1', 'worst.F1', 'EqOddsGap']"]


#: the test files at the top of tests/: they test the project as a whole, not one package
WHOLE_PROJECT_TESTS = {"test_api.py", "test_benchmarks.py", "test_ci_guard.py",
                       "test_conformance.py", "test_docs.py", "test_examples.py", "test_layout.py", "test_packaging.py"}


def misplaced_tests(tests: Path, root: Path) -> list[str]:
    """Test files that do not sit in the folder of the package they test (fairlearn's layout):
    ``tests/<package>/`` for every subpackage of ``fairbench`` and for the installed ``methods``
    and ``datasets`` folders; the top of ``tests/`` only for :data:`WHOLE_PROJECT_TESTS`."""
    packages = {p.name for p in (root / "fairbench").iterdir() if (p / "__init__.py").is_file()}
    packages |= {"methods", "datasets"}
    problems = []
    for file in sorted(tests.rglob("test_*.py")):
        rel = file.relative_to(tests)
        if len(rel.parts) == 1:
            if rel.name not in WHOLE_PROJECT_TESTS:
                problems.append(f"{rel} is at the top of tests/ (move it to tests/<package>/)")
        elif len(rel.parts) > 2 or rel.parts[0] not in packages:
            problems.append(f"{rel} is in a folder that is no package of the project")
    return problems


def test_tests_mirror_the_packages():
    assert misplaced_tests(ROOT / "tests", ROOT) == []
    folders = {p.name for p in (ROOT / "tests").iterdir()
               if p.is_dir() and p.name not in {"fixtures", "__pycache__"}}
    assert {"bench", "cli", "core", "data", "metrics", "models", "run", "training",
            "methods", "datasets"} <= folders


def test_a_misplaced_test_is_found(tmp_path):
    (tmp_path / "fairbench" / "metrics").mkdir(parents=True)
    (tmp_path / "fairbench" / "metrics" / "__init__.py").write_text("")
    tests = tmp_path / "tests"
    (tests / "metrics").mkdir(parents=True)
    (tests / "widgets").mkdir()
    for rel in ("metrics/test_gap.py", "test_gap_flat.py", "widgets/test_w.py", "test_docs.py"):
        (tests / rel).write_text("")
    assert misplaced_tests(tests, tmp_path) == [
        "test_gap_flat.py is at the top of tests/ (move it to tests/<package>/)",
        "widgets/test_w.py is in a folder that is no package of the project",
    ]
