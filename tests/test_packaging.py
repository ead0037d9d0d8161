"""The built distribution (named ``fairbench-med``: ``fairbench`` on the public index is another
project) ships ``methods/`` and ``datasets/`` only under the ``fairbench`` namespace (a
top-level ``datasets`` would shadow Hugging Face's package), declares the ``fairbench`` console
script, carries its MIT licence text and Python/OS classifiers, and imports where ``fcntl``
does not exist."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from repo_paths import ROOT

DIST = "fairbench-med"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy so that no build/ or egg-info folder lands in the working tree
    src = tmp_path_factory.mktemp("src")
    for name in ("fairbench", "methods", "datasets"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out)],
        cwd=src, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("fairbench_med-*.whl"))
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

    dist = metadata.distribution(DIST)
    top_level = dist.read_text("top_level.txt")
    if top_level is None:
        pytest.skip("this installation records no top_level.txt")
    assert top_level.split() == ["fairbench"]


def _metadata(wheel: Path) -> str:
    zf = zipfile.ZipFile(wheel)
    return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def test_wheel_names_its_own_distribution_and_licence(wheel):
    meta = _metadata(wheel)
    assert "\nName: fairbench-med\n" in meta
    names = zipfile.ZipFile(wheel).namelist()
    licence = [n for n in names if n.endswith("LICENSE") and ".dist-info/" in n]
    assert licence, names
    text = zipfile.ZipFile(wheel).read(licence[0]).decode()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY" in text
    assert text == (ROOT / "LICENSE").read_text()


def test_classifiers_match_python_requires(wheel):
    meta = _metadata(wheel)
    classifiers = [line.split(": ", 1)[1] for line in meta.splitlines()
                   if line.startswith("Classifier: ")]
    versions = [c.rsplit(":: ", 1)[1] for c in classifiers
                if c.startswith("Programming Language :: Python :: 3.")]
    assert versions, classifiers
    required = next(line for line in meta.splitlines() if line.startswith("Requires-Python"))
    assert required.endswith(">=3.10")
    assert all(tuple(map(int, v.split("."))) >= (3, 10) for v in versions), versions
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions  # the tested one
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    # the mlflow extra installs the full package (its UI and server), not mlflow-skinny
    extras = [line for line in meta.splitlines() if 'extra == "mlflow"' in line]
    assert extras and all("skinny" not in line for line in extras), extras
    assert any(line.startswith("Requires-Dist: mlflow") for line in extras)


def test_installed_distribution_provides_the_import_and_the_command():
    from importlib import metadata

    assert DIST in metadata.packages_distributions().get("fairbench", [])
    script = Path(sys.executable).parent / "fairbench"  # the console script of this install
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "fairbench.cli"]
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    import fairbench

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fairbench, version {fairbench.__version__}"


def test_imports_where_fcntl_does_not_exist(tmp_path):
    """Off POSIX there is no ``fcntl``: the package, its locks and the command still load."""
    script = tmp_path / "no_fcntl.py"
    script.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fcntl':\n"
        "            raise ModuleNotFoundError(\"No module named 'fcntl'\")\n"
        "sys.modules.pop('fcntl', None)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fairbench.core.files as f, fairbench.cli.main, fairbench.run.runner\n"
        "import fairbench.bench.sweep\n"
        "from pathlib import Path\n"
        "with f.file_lock(Path(sys.argv[1])):\n"
        "    pass\n"
        "assert 'fcntl' not in sys.modules\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "x.lock")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
