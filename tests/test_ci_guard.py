"""The CI guard of tests/conftest.py: a test that ``FAIRBENCH_REQUIRE_TESTS`` names may not
skip (CI names the statistics and HTML tests), and every other skip keeps its reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from repo_paths import ROOT


def _pytest(folder: Path, required: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FAIRBENCH_REQUIRE_TESTS": required}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "-p", "no:randomly", str(folder)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_required_skip_fails_and_another_skip_stays_a_skip(tmp_path: Path) -> None:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_needed.py").write_text(
        "import pytest\n\ndef test_needs_a_tool():\n    pytest.skip('no such tool')\n")
    (tmp_path / "test_optional.py").write_text(
        "import pytest\n\ndef test_optional_tool():\n    pytest.skip('optional tool missing')\n")
    guarded = _pytest(tmp_path, "test_needed.py")
    assert guarded.returncode == 1, guarded.stdout
    assert "required by FAIRBENCH_REQUIRE_TESTS but skipped" in guarded.stdout
    assert "no such tool" in guarded.stdout
    assert "1 failed, 1 skipped" in guarded.stdout
    assert "optional tool missing" in guarded.stdout  # -rs: the other skip's reason is listed
    unguarded = _pytest(tmp_path, "")
    assert unguarded.returncode == 0 and "2 skipped" in unguarded.stdout, unguarded.stdout


def test_ci_requires_the_statistics_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "FAIRBENCH_REQUIRE_TESTS=" in ci
    for name in ("tests/bench/test_stats.py", "tests/bench/test_equivalence.py",
                 "tests/bench/test_matrix.py", "tests/metrics/",
                 "test_html_page_renders_in_headless_chromium"):
        assert name in ci, name
        if name.startswith("tests/"):
            assert (ROOT / name).exists(), name
