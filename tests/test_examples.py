"""The plugin examples and the docs' "Add a method" page, as a user meets them:
``fairbench check`` on ``examples/label_smoothing.py``, on the page's ``my_method.py`` and on
``examples/derm_folder.py`` (with image folders made here), runs through ``--plugin``, and
``fairbench check``'s answers to broken plugins (exit 1) and bad input (exit 2)."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from repo_paths import ROOT

from fairbench.cli.main import main
from fairbench.testing import TINY_DATA

EXAMPLES = ROOT / "examples"
TINY_FLAGS = [*(a for k, v in TINY_DATA.items() for a in ("--data-param", f"{k}={v}")),
              "--image-size", "16", "--train", "epochs=1", "--train", "batch_size=16", "-q"]


@pytest.fixture
def fresh_registries(fresh_registries):
    """The registries restored after the test, and the plugin files it loaded forgotten (a
    file is imported once per process; the next test must register its names again)."""
    import sys

    before = {m for m in sys.modules if m.startswith("fairbench_plugin_")}
    yield fresh_registries
    for name in [m for m in sys.modules if m.startswith("fairbench_plugin_")]:
        if name not in before:
            del sys.modules[name]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_examples_use_only_the_top_level_api():
    files = sorted(EXAMPLES.glob("*.py"))
    assert {f.name for f in files} >= {"label_smoothing.py", "derm_folder.py"}
    for file in files:
        code = file.read_text()
        assert "from fairbench import" in code, file
        assert "from fairbench." not in code and "import fairbench." not in code, file


def test_label_smoothing_example_passes_the_check(fresh_registries, tmp_path):
    r = invoke("check", EXAMPLES / "label_smoothing.py", "-p", "smoothing=0.3",
               "--keep", tmp_path / "kept")
    assert r.exit_code == 0, r.output
    assert re.search(r"^ok +method label_smoothing \(classification\): outputs, determinism, "
                     r"weights round-trip, attribute-free; test F1 [0-9.]+", r.output, re.MULTILINE), \
        r.output
    # the parameter reached the method, and the loss is the smoothed one: with ε = 0.3 over 3
    # classes the loss cannot fall below the target's entropy (0.83 nats)
    (config,) = (tmp_path / "kept").glob(
        "label_smoothing-classification/a/**/label_smoothing/*/config.json")
    assert json.loads(config.read_text())["method_params"] == {"smoothing": 0.3}
    log = (config.parent / "train_log.csv").read_text().splitlines()
    header = log[0].split(",")
    losses = [float(line.split(",")[header.index("train_loss")]) for line in log[1:]
              if line.split(",")[header.index("stage")] == "train"]
    eps, k = 0.3, 3
    target = np.array([1 - eps + eps / k] + [eps / k] * (k - 1))
    assert losses and min(losses) > float(-(target * np.log(target)).sum())


def test_check_rejects_bad_parameters_with_one_line(fresh_registries):
    r = invoke("check", EXAMPLES / "label_smoothing.py", "-p", "smoothing=1.0")
    assert r.exit_code == 2, r.output
    assert "smoothing" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


BROKEN = '''
import torch
from fairbench import NO_MECHANISM, Method, register_method

@register_method("coin_flip")
class CoinFlip(Method):
    """Returns an untrained model that differs on every call (not seeded)."""
    kind = "in-training"

    def run(self, ctx, params):
        torch.manual_seed(torch.seed())  # unseeded on purpose
        return ctx.new_model(seed_offset=int(torch.randint(0, 10**6, ())))

    def engagement(self, notes):
        return NO_MECHANISM
'''

CRASHING = '''
from fairbench import Method, register_method

@register_method("crashes")
class Crashes(Method):
    """Raises inside run()."""

    def run(self, ctx, params):
        return 1 / 0
'''


def test_check_reports_a_failing_method_and_exits_1(fresh_registries, tmp_path):
    broken = tmp_path / "coin_flip.py"
    broken.write_text(BROKEN)
    r = invoke("check", broken)
    assert r.exit_code == 1, r.output
    assert "FAILED  method coin_flip (classification): coin_flip: the same seed must give the " \
           "same predictions" in r.output
    crashing = tmp_path / "crashes.py"
    crashing.write_text(CRASHING)
    r = invoke("check", crashing)
    assert r.exit_code == 1, r.output
    assert "FAILED  method crashes (classification): ZeroDivisionError: division by zero " \
           "(crashes.py, line 9)" in r.output


def test_check_bad_input_is_one_line_and_exit_2(fresh_registries, tmp_path):
    r = invoke("check", tmp_path / "missing.py")
    assert r.exit_code == 2 and "does not exist" in r.output
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    r = invoke("check", empty)
    assert r.exit_code == 2 and "registers no method and no dataset" in r.output
    r = invoke("check", EXAMPLES / "label_smoothing.py", "--method", "vanilla")
    assert r.exit_code == 2 and "is not registered by" in r.output
    r = invoke("check", EXAMPLES / "derm_folder.py")
    assert r.exit_code == 2 and "--data-root" in r.output
    for result in (r,):
        assert "Traceback" not in result.output


# -- the plugin dataset adapter -----------------------------------------------------------------
@pytest.fixture(scope="module")
def derm_root(tmp_path_factory) -> Path:
    """80 small PNGs in benign/ and malignant/ (a dark centre marks malignant) and subjects.csv
    with patient, sex and age."""
    from PIL import Image

    root = tmp_path_factory.mktemp("derm")
    rng = np.random.default_rng(0)
    rows = ["image,patient,sex,age"]
    for i in range(80):
        cls = ("benign", "malignant")[i % 2]
        sex = ("female", "male")[(i // 2) % 2]
        age = int(rng.integers(20, 90))
        img = rng.integers(150, 230, (20, 20, 3)).astype(np.uint8)
        img[6:14, 6:14] = 40 if cls == "malignant" else 120
        (root / cls).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / cls / f"img{i:03d}.png")
        rows.append(f"{cls}/img{i:03d}.png,p{i:03d},{sex if i != 5 else ''},{age}")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")
    return root


def test_derm_folder_example_passes_the_dataset_check(fresh_registries, derm_root):
    r = invoke("check", EXAMPLES / "derm_folder.py", "--data-root", derm_root)
    assert r.exit_code == 0, r.output
    assert re.search(r"^ok +dataset derm_folder: 80 images, 2 classes; sex: female 39, male 40; "
                     r"age: <60 \d+, 60\+ \d+", r.output, re.MULTILINE), r.output


def test_derm_folder_example_runs(fresh_registries, derm_root, tmp_path, tiny_cache):
    plugin = EXAMPLES / "derm_folder.py"
    common = ["run", "--plugin", plugin, "--dataset", "derm_folder", "--data-root", derm_root,
              "--image-size", "16", "--epochs", "1", "--train", "batch_size=16",
              "--runs-dir", tmp_path / "runs", "--cache-dir", tiny_cache, "-q"]
    r = invoke(*common)
    assert r.exit_code == 0, r.output
    (metrics,) = (tmp_path / "runs" / "derm_folder" / "vanilla").glob("*/metrics.json")
    stored = json.loads(metrics.read_text())
    assert stored["meta"]["groups"] == ["female", "male"]
    assert stored["test"]["n_missing_group"] + stored["val"]["n_missing_group"] <= 1
    r = invoke(*common, "--attribute", "age", "--data-param", "age_threshold=50")
    assert r.exit_code == 0, r.output
    runs = list((tmp_path / "runs" / "derm_folder" / "vanilla").glob("*/metrics.json"))
    ages = [json.loads(m.read_text())["meta"]["groups"] for m in runs]
    assert ["<50", "50+"] in ages
    # the metadata file is part of the identity: an edited CSV is a new run, not a reuse
    config = json.loads((metrics.parent / "config.json").read_text())
    assert len(config["identity"]["dataset"]["metadata_sha256"]) == 64


def test_derm_folder_bad_layout_is_one_line(fresh_registries, tmp_path):
    (tmp_path / "benign").mkdir()
    r = invoke("run", "--plugin", EXAMPLES / "derm_folder.py", "--dataset", "derm_folder",
               "--data-root", tmp_path, "--runs-dir", tmp_path / "runs", "-q")
    assert r.exit_code == 2, r.output
    assert "subjects.csv" in r.output and "does not exist" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


# -- the docs' "Add a method" (docs/adding-a-method.md) --------------------------------------
def _add_a_method() -> tuple[str, list[list[str]]]:
    section = (ROOT / "docs" / "adding-a-method.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in textwrap.dedent(block).splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(shlex.split(line))
    return textwrap.dedent(code), commands


def test_docs_add_a_method_as_written(fresh_registries, tmp_path, monkeypatch, tiny_cache):
    code, commands = _add_a_method()
    assert "from fairbench." not in code
    monkeypatch.chdir(tmp_path)
    Path("my_method.py").write_text(code)
    assert [c[:2] for c in commands] == [["fairbench", "check"], ["fairbench", "list"],
                                         ["fairbench", "run"]]
    r = invoke(*commands[0][1:])  # fairbench check my_method.py
    assert r.exit_code == 0, r.output
    assert re.search(r"^ok +method groupweighted \(classification\): outputs, determinism, "
                     r"weights round-trip, attribute-free; test F1", r.output, re.MULTILINE), r.output
    r = invoke(*commands[1][1:])  # fairbench list methods --plugin my_method.py -v
    assert r.exit_code == 0 and "groupweighted" in r.output
    assert re.search(r"^ +power +1\.0 +float ", r.output, re.MULTILINE), r.output
    # fairbench run --plugin my_method.py --method groupweighted -p power=0.5, made tiny
    r = invoke(*commands[2][1:], *TINY_FLAGS, "--runs-dir", "runs", "--cache-dir", tiny_cache)
    assert r.exit_code == 0, r.output
    (config,) = Path("runs/synthderm/groupweighted").glob("*/config.json")
    assert json.loads(config.read_text())["method_params"] == {"power": 0.5}
