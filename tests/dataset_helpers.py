"""Shared by the tests: where the real metadata lives, tiny generated JPEGs, running the CLI,
and counting the trainer's fits."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from repo_paths import FIXTURES as FIXTURES  # re-exported for the dataset tests
from repo_paths import SHARED_DATA

#: the full real metadata CSVs (CI always has them); tests using them skip when absent
SHARED = SHARED_DATA

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


def data_root(folder: Path, *files: Path, link: bool = False) -> Path:
    """``folder`` holding ``files``: symlinks to them with ``link`` (for the big real files),
    copies otherwise."""
    (link_files if link else copy_files)(folder, *files)
    return folder


def code_counts(codes: np.ndarray) -> dict[int, int]:
    """How often each code occurs, as ``{code: count}``."""
    return {int(k): int(v) for k, v in zip(*np.unique(codes, return_counts=True))}


def assert_patients_in_one_part(split, table) -> None:
    """No patient of ``table`` has samples in two parts of ``split`` (the images of one patient
    or lesion never straddle parts)."""
    part_of = {sid: part for part, ids in split.parts.items() for sid in ids}
    for _, g in table.df.groupby("patient_id"):
        assert len({part_of[s] for s in g.sample_id}) == 1, g.patient_id.iloc[0]


def check_sex_age_params(name: str, root: Path) -> None:
    """The parameter checks of an adapter whose attributes are sex and age (``ham10000``,
    ``isic2019``): ``age_edges`` must increase and ``drop_missing`` may name only sex and age,
    both refused when the adapter is made."""
    from fairbench import ParamError, create_dataset

    with pytest.raises(ParamError, match="age_edges=60,40 must be strictly increasing"):
        create_dataset(name, root, age_edges="60,40")
    with pytest.raises(ParamError, match="needs at least one edge"):
        create_dataset(name, root, age_edges="")
    with pytest.raises(ParamError, match=f"drop_missing names 'skin'; {name} has the "
                       "attributes sex and age"):
        create_dataset(name, root, drop_missing="skin,age")


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


@dataclass
class InfoCommand:
    """``fairbench data info DATASET --data-root ROOT``, run by a test that breaks the dataset's
    files one way after another and checks each error."""

    dataset: str
    root: Path

    def fails(self, *fragments: str, extra: Sequence[str] = ()) -> str:
        """Run the command (with ``extra`` arguments): it fails with one error line holding
        ``fragments``, which is returned."""
        return assert_cli_error(
            cli("data", "info", self.dataset, "--data-root", str(self.root), *extra), *fragments)

    def fails_on_cell(self, table: pd.DataFrame, path: Path, row: int, column: str, value: str,
                      *fragments: str) -> str:
        """Write ``table`` to ``path`` with ``value`` in ``column`` of ``row``: the command then
        fails naming the file's line (``row + 2``, after the header), the column and the value,
        with ``fragments``."""
        bad = table.copy()
        bad.loc[row, column] = value
        bad.to_csv(path, index=False)
        return self.fails(f"line {row + 2}", f"{column} {value!r}", *fragments)


def count_fits(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """From now on, the stage of every ``Trainer.fit`` call, in order (the list fills as the
    test runs): how a test tells which models were trained, and which reused."""
    from fairbench.training.trainer import Trainer

    calls: list[str | None] = []
    orig = Trainer.fit

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("stage"))
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", counting)
    return calls


def datasets_test_module(name: str):
    """A module of tests/datasets/, the one pytest imported if it did, else loaded here."""
    import importlib.util
    import sys

    from repo_paths import TESTS

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def save_timm_checkpoint(model: str, path: Path, seed: int = 0) -> dict:
    """Random weights of timm's ``model`` saved as timm's files hold them (classifier
    included; ``.safetensors`` or a torch file by the suffix); returns the state dict."""
    import timm
    import torch

    torch.manual_seed(seed)
    state = timm.create_model(model, pretrained=False).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state
