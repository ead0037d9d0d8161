"""The documentation as a reader meets it (``README.md``, ``docs/*.md``, ``mkdocs.yml``): every
fenced Python block runs (or is listed below with the test that runs it), every ``fairbench``
command line of a shell block, and of the README's "Commands" table, names a subcommand and
options that exist (run with ``--help`` appended: click answers ``--help`` before doing
anything, but refuses an unknown subcommand or option first), the API reference lists the
public API, and ``mkdocs build --strict`` passes (warnings are errors)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from repo_paths import ROOT
from test_api import SMALL_LINE

import fairbench
from fairbench.cli.main import main
from fairbench.testing import TINY_DATA, TINY_TRAIN

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# a fenced block, also one indented inside a list item (closed at the same indent)
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n"
                   r"(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)
SHELL = ("bash", "console", "sh", "shell")

#: Python blocks not run here, (page, index among the page's Python blocks) -> why
NOT_RUN_HERE = {
    ("docs/python-api.md", 0): "run by tests/test_api.py (test_docs_python_api_runs_as_written)",
    ("docs/python-api.md", 1): "run by tests/test_api.py (needs fairlearn and the block before)",
    ("docs/adding-a-method.md", 0):
        "run by tests/test_examples.py (test_docs_add_a_method_as_written)",
}


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: Path, langs: tuple[str, ...]) -> list[str]:
    return [textwrap.dedent(m["body"]) for m in FENCE.finditer(page.read_text())
            if m["lang"] in langs]


def _python_blocks() -> list[tuple[str, int, str]]:
    return [(_name(page), i, code) for page in PAGES
            for i, code in enumerate(_blocks(page, ("python", "py")))]


PYTHON = _python_blocks()


def test_the_pages_have_blocks_and_the_skip_list_is_current():
    found = {(page, i) for page, i, _ in PYTHON}
    assert set(NOT_RUN_HERE) <= found, sorted(set(NOT_RUN_HERE) - found)
    assert found - set(NOT_RUN_HERE), "no Python block left to run here"


#: what a block that runs here must print, (page, index) -> substrings of its output
PRINTS = {("README.md", 0): ("| vanilla |", "| resampling |")}  # the leaderboard's two rows


@pytest.mark.parametrize("page,index,code",
                         [pytest.param(*b, id=f"{b[0]}[{b[1]}]") for b in PYTHON])
def test_python_block_runs(page, index, code, tmp_path, monkeypatch, tiny_cache, capsys):
    reason = NOT_RUN_HERE.get((page, index))
    if reason:
        pytest.skip(reason)
    # the size-shrinking substitution of tests/test_api.py: a tiny synthderm, one epoch
    tiny = (f"small = dict(dataset_params={TINY_DATA!r}, image_size=16, "
            f"train={TINY_TRAIN!r}, cache_dir={str(tiny_cache)!r})")
    code = code.replace(SMALL_LINE, tiny)
    if "run_experiment" in code or "run_suite" in code:
        assert tiny in code, f"{page}[{index}] trains: size it with the line {SMALL_LINE!r}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAIRBENCH_NO_PROGRESS", "1")
    exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": "__docs__"})  # noqa: S102
    out = capsys.readouterr().out
    for expected in PRINTS.get((page, index), ()):
        assert expected in out, out


def test_the_readme_example_is_short():
    ((_, _, code),) = [b for b in PYTHON if b[0] == "README.md"]
    assert len([line for line in code.splitlines() if line.strip()]) <= 5, code


# -- command lines --------------------------------------------------------------------------
def _command_lines() -> list[tuple[str, str]]:
    lines = []
    for page in PAGES:
        for block in _blocks(page, SHELL):
            for line in block.splitlines():
                for part in line.split("&&"):
                    part = re.sub(r"\s+#.*$", "", part).strip().removeprefix("$ ")
                    if part.startswith("fairbench "):
                        lines.append((_name(page), part))
    # the README's "Commands" table: its first column's `fairbench ...` code spans
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("\n## Commands\n"):]
    table = table[:table.find("\n## ", 1)]
    for row in re.findall(r"(?m)^\| (.+?) \| ", table):
        for span in re.findall(r"`([^`]+)`", row):
            if span.startswith("fairbench "):
                lines.append(("README.md (Commands)", span.replace(r"\|", "|")))
    return lines


def _argv(line: str) -> list[str]:
    """The words of a documented command line, its placeholders resolved: ``[--seed 1]`` is
    ``--seed 1``, ``latex|csv|html`` its first choice, ``...`` nothing, a comment dropped."""
    words = []
    for word in shlex.split(line, comments=True):
        word = word.strip("[]")
        if word and word != "...":
            words.append(word.split("|", 1)[0] if "|" in word and "=" not in word else word)
    assert words[0] == "fairbench", line
    return words[1:]


COMMANDS = _command_lines()


def test_the_docs_show_commands():
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "README.md (Commands)", "docs/adding-a-method.md",
            "docs/scale-out.md", "docs/mechanisms.md"} <= pages, pages
    assert ("README.md", "fairbench run --method fairquantize") in COMMANDS


@pytest.mark.parametrize("page,line", [pytest.param(*c, id=f"{c[0]}: {c[1]}") for c in COMMANDS])
def test_command_line_parses(page, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the line (my_method.py, runs) land here
    result = CliRunner().invoke(main, [*_argv(line), "--help"])
    assert result.exit_code == 0, f"{page}: {line}\n{result.output}"
    assert "Usage:" in result.output, result.output
    assert not list(tmp_path.iterdir()), "--help wrote files"


# -- the site -------------------------------------------------------------------------------
def test_api_reference_lists_the_public_api():
    """docs/api/index.md names every public name under a comment naming its module."""
    listed, module = {}, None
    text = (ROOT / "docs" / "api" / "index.md").read_text()
    for line in text[text.index("::: fairbench\n"):].splitlines():
        if m := re.fullmatch(r" +# (fairbench[\w.]*)", line):
            module = m[1]
        elif m := re.fullmatch(r" +- (\w+)", line):
            listed[m[1]] = module
    assert listed == fairbench._API


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert {p for p in pages if f": {p}\n" not in nav} == set()


def test_mkdocs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]' brings mkdocs-material and "
                    "mkdocstrings)")
    proc = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    assert (site / "api" / "bench-stats" / "index.html").is_file()
    assert "fairbench.bench.stats.holm" in (site / "api" / "bench-stats" / "index.html").read_text()
