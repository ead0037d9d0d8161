"""The built distribution ships ``methods/`` and ``datasets/`` only under the ``fairbench``
namespace (a top-level ``datasets`` would shadow Hugging Face's package) and declares the
``fairbench`` console script."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy so that no build/ or egg-info folder lands in the working tree
    src = tmp_path_factory.mktemp("src")
    for name in ("fairbench", "methods", "datasets"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out)],
        cwd=src, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("fairbench-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_has_no_top_level_datasets_or_methods(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert "datasets" not in top and "methods" not in top, sorted(top)
    assert not [n for n in names if n.startswith(("datasets/", "methods/"))]
    assert "fairbench/methods/vanilla.py" in names
    assert "fairbench/datasets/synthderm.py" in names
    assert "fairbench/methods/__init__.py" in names
    assert "fairbench/datasets/__init__.py" in names
    assert "fairbench/metrics/fairness.py" in names
    # nothing but the package and its metadata
    assert top == {"fairbench"} | {t for t in top if t.endswith(".dist-info")}
    top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["fairbench"]


def test_wheel_declares_console_script(wheel):
    zf = zipfile.ZipFile(wheel)
    ep_name = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(zf.read(ep_name).decode())
    assert parser.get("console_scripts", "fairbench").strip() == "fairbench.cli:main"
    meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    # the dev extra carries the test dependencies
    assert "extra == \"dev\"" in meta and "fairlearn" in meta and "pytest" in meta


def test_installed_package_resolves_namespaced_modules():
    import fairbench.datasets.synthderm as sd
    import fairbench.methods.vanilla as va

    assert Path(va.__file__).resolve() == ROOT / "methods" / "vanilla.py"
    assert Path(sd.__file__).resolve() == ROOT / "datasets" / "synthderm.py"
    # the repository's top-level folders are not importable as packages of their own name
    # (that would shadow Hugging Face's `datasets`)
    from importlib import metadata

    dist = metadata.distribution("fairbench")
    top_level = dist.read_text("top_level.txt")
    if top_level is None:
        pytest.skip("this installation records no top_level.txt")
    assert top_level.split() == ["fairbench"]
