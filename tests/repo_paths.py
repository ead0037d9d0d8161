"""Where the tests find the repository's folders, wherever under ``tests/`` a test file sits.

``tests/`` is on the import path (``pythonpath`` in pyproject.toml), so a test anywhere in the
tree imports these as ``from repo_paths import ROOT``.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BENCHMARKS = ROOT / "benchmarks"
FIXTURES = TESTS / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
