"""Shared by the dataset-adapter tests: where the real metadata lives, tiny generated JPEGs, and
running the CLI."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: the full real metadata CSVs (CI always has them); tests using them skip when absent
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

requires_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                     reason=f"real metadata not found at {SHARED}")


def colour_of(name: str) -> tuple[int, int, int]:
    """A colour derived from the name, so a test can tell which image landed in which row."""
    h = abs(hash(name)) % (2**24)
    return (h & 255, (h >> 8) & 255, (h >> 16) & 255)


def make_jpegs(folder: Path, names: Iterable[str], size: tuple[int, int] = (40, 30),
               ext: str = ".jpg") -> list[Path]:
    """One small flat-coloured JPEG (plus a little noise) per name in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for name in names:
        arr = np.empty((size[1], size[0], 3), np.uint8)
        arr[:] = colour_of(name)
        arr = np.clip(arr.astype(int) + rng.integers(-2, 3, arr.shape), 0, 255).astype(np.uint8)
        p = folder / f"{name}{ext}"
        Image.fromarray(arr).save(p, quality=95)
        out.append(p)
    return out


def copy_files(dst: Path, *files: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, dst / f.name)


def link_files(dst: Path, *files: Path) -> None:
    """Symlink big metadata files instead of copying them."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dst / f.name).symlink_to(f)


def cli(*args: str):
    """Run ``fairbench *args``; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from fairbench.cli.main import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_cli_error(result, *fragments: str) -> str:
    """Exit code 2, no traceback, and exactly one ``error:`` line on stderr containing
    ``fragments`` (the shared check of every test's bad-input paths; notes may go to stdout)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]
