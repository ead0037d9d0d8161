"""Typed hyperparameters: coercion from strings/TOML values, ranges, unknown keys, ``key=value``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from fairbench import FairbenchError, NoParams, ParamError, TrainConfig, UnknownNameError, param
from fairbench.core.params import (
    build_params,
    coerce_value,
    describe_params,
    params_to_dict,
    parse_assignments,
)


@dataclass
class P:
    flag: bool = param(False, help="a switch")
    epochs: int = param(10, help="epochs", min=1, max=100)
    lr: float = param(0.1, help="learning rate", min=0.0, min_exclusive=True)
    ratio: float = param(0.5, min=0.0, max=1.0, max_exclusive=True)
    mode: Literal["oneshot", "iterative"] = param("oneshot")
    level: Literal[1, 2, 4] = param(2)
    grid: tuple[float, ...] = param((0.1, 0.2))
    cap: int | None = param(None, min=1)
    name: str | None = param(None)
    label: str = param("x")


def test_defaults_and_typed_coercion():
    assert build_params(P) == P()
    p = build_params(P, {"flag": "yes", "epochs": "7", "lr": "1e-3", "mode": "iterative",
                         "level": "4", "grid": "0.05, 0.1,0.3", "cap": "5", "name": "none",
                         "label": 12})
    assert p.flag is True and p.epochs == 7 and isinstance(p.epochs, int)
    assert p.lr == pytest.approx(1e-3) and isinstance(p.lr, float)
    assert p.mode == "iterative" and p.level == 4 and isinstance(p.level, int)
    assert p.grid == (0.05, 0.1, 0.3) and isinstance(p.grid, tuple)
    assert p.cap == 5 and p.name is None and p.label == "12"
    # typed values (TOML) pass through
    q = build_params(P, {"flag": False, "epochs": 3, "lr": 2, "grid": [0.5], "cap": None,
                         "level": 1})
    assert q.flag is False and q.epochs == 3 and q.lr == 2.0 and q.grid == (0.5,) and q.cap is None
    assert q.level == 1
    # a float that is an integer is accepted as int; dashes in keys become underscores
    assert build_params(P, {"epochs": 4.0}).epochs == 4
    assert build_params(TrainConfig, {"batch-size": "8"}).batch_size == 8


@pytest.mark.parametrize("value", ["0", "false", "No", "off", "F"])
def test_bool_false_spellings(value):
    assert build_params(P, {"flag": value}).flag is False


@pytest.mark.parametrize("key,value,fragment", [
    ("epochs", "abc", "not a valid int"),
    ("epochs", "1.5", "not a valid int"),
    ("epochs", True, "not a valid int"),
    ("lr", "fast", "not a valid float"),
    ("lr", "nan", "not a valid float"),
    ("flag", "maybe", "true or false"),
    ("mode", "twoshot", "oneshot, iterative"),
    ("level", "3", "1, 2, 4"),
    ("grid", "0.1,x", "not a valid float"),
    ("cap", "many", "int or none"),
])
def test_mistyped_values(key, value, fragment):
    with pytest.raises(ParamError) as exc:
        build_params(P, {key: value})
    msg = str(exc.value)
    assert fragment in msg and key in msg and "\n" not in msg
    assert isinstance(exc.value, FairbenchError)


@pytest.mark.parametrize("key,value,fragment", [
    ("epochs", "0", "[1, 100]"),
    ("epochs", "101", "[1, 100]"),
    ("lr", "0", "(0, inf)"),
    ("lr", "-1", "(0, inf)"),
    ("ratio", "1.0", "[0, 1)"),
    ("ratio", "-0.1", "[0, 1)"),
    ("cap", "0", "[1, inf)"),
])
def test_out_of_range(key, value, fragment):
    with pytest.raises(ParamError) as exc:
        build_params(P, {key: value})
    assert "out of range" in str(exc.value) and fragment in str(exc.value)


def test_range_bounds_inclusive_where_declared():
    assert build_params(P, {"epochs": "1"}).epochs == 1
    assert build_params(P, {"epochs": "100"}).epochs == 100
    assert build_params(P, {"ratio": "0"}).ratio == 0.0
    assert build_params(P, {"lr": "1e-12"}).lr == 1e-12


def test_unknown_key_lists_close_matches():
    with pytest.raises(UnknownNameError) as exc:
        build_params(P, {"epoch": "3"}, owner="method demo")
    msg = str(exc.value)
    assert "'epoch'" in msg and "did you mean epochs" in msg and "method demo" in msg
    with pytest.raises(UnknownNameError) as exc:
        build_params(P, {"zzz": "3"})
    assert "valid:" in str(exc.value) and "epochs" in str(exc.value)
    with pytest.raises(UnknownNameError, match="takes no parameters"):
        build_params(NoParams, {"alpha": "1"})


def test_validate_hook_runs_last():
    with pytest.raises(ParamError, match="select='nope'"):
        build_params(TrainConfig, {"select": "nope"})
    with pytest.raises(ParamError, match="no direction"):
        build_params(TrainConfig, {"select": "EOdd_signed"})
    assert build_params(TrainConfig, {"select": "worst.F1"}).select == "worst.F1"


def test_parse_assignments():
    assert parse_assignments(["a=1", " b = x=y ", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in ("novalue", "=3"):
        with pytest.raises(ParamError) as exc:
            parse_assignments([bad], flag="--param")
        assert "--param" in str(exc.value) and "malformed" in str(exc.value)


def test_describe_and_to_dict():
    rows = {r[0]: r for r in describe_params(P)}
    assert rows["epochs"][1] == "int" and rows["epochs"][2] == 10 and "[1, 100]" in rows["epochs"][3]
    assert rows["mode"][1] == "oneshot|iterative"
    assert rows["cap"][1] == "int or none"
    assert rows["grid"][1] == "list of float"
    d = params_to_dict(build_params(P, {"grid": "0.3"}))
    assert d["grid"] == [0.3] and d["epochs"] == 10


def test_coerce_value_direct():
    assert coerce_value("x", " 12 ", int) == 12
    assert coerce_value("x", "none", Optional[float]) is None  # noqa: UP045
    assert coerce_value("x", "1,2", list[int]) == [1, 2]
