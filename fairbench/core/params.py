"""Typed hyperparameters: dataclass fields with help text and ranges, parsed from strings.

A method (or dataset, or the trainer) declares its parameters as a dataclass whose fields are
made with :func:`param`::

    @dataclass
    class Params:
        beta: float = param(1.0, help="weight of the privileged group", min=0.0)

:func:`build_params` turns ``{"beta": "0.5"}`` (from ``--param beta=0.5`` or a TOML file) into a
checked instance; every problem is a :class:`~fairbench.core.errors.ParamError` or
:class:`~fairbench.core.errors.UnknownNameError` with one clear line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from fairbench.core.errors import ParamError, UnknownNameError

P = TypeVar("P")

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclasses.dataclass(frozen=True)
class Search:
    """Where a suite's tuning budget may move a parameter (:mod:`fairbench.bench.tuning`):
    ``low``..``high`` (uniform, or log-uniform with ``log``; rounded with ``integer``), or one
    of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.choices:
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a search range needs low < high, got {self.low}, {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log search range needs low > 0, got {self.low}")

    def value(self, u: float) -> Any:
        """The value at ``u`` in [0, 1) of the range (or of the choices, in equal shares)."""
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if self.log \
            else lo + u * (hi - lo)
        return int(round(x)) if self.integer else float(f"{x:.4g}")

    def describe(self) -> str:
        if self.choices:
            return "one of " + "|".join(map(str, self.choices))
        kind = "log-uniform" if self.log else "uniform"
        return f"{kind} in [{self.low:g}, {self.high:g}]" + (" (integer)" if self.integer else "")


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    default_factory: Any = dataclasses.MISSING,
    search: Search | None = None,
) -> Any:
    """A dataclass field carrying ``help`` and an allowed range ``[min, max]``.

    ``min_exclusive``/``max_exclusive`` make the bounds open (e.g. a ratio in ``(0, 1]``);
    ``search`` declares the range a suite's tuning budget draws the parameter from.
    """
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
        "search": search,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class NoParams:
    """Used by methods and datasets that take no parameters."""


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]
    return False, tp


def type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if get_origin(inner) is Literal:
        name = "|".join(str(a) for a in get_args(inner))
    elif get_origin(inner) in (tuple, list):
        args = [a for a in get_args(inner) if a is not Ellipsis]
        name = f"list of {type_name(args[0]) if args else 'str'}"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or none" if optional else name


def coerce_value(name: str, raw: Any, tp: Any) -> Any:
    """Convert ``raw`` (a string from the command line, or a TOML value) to type ``tp``."""
    optional, inner = _is_optional(tp)
    if optional and (raw is None or (isinstance(raw, str) and raw.lower() in {"none", "null"})):
        return None
    origin = get_origin(inner)
    bad = ParamError(f"parameter {name}={raw!r} is not a valid {type_name(tp)}")
    if origin is Literal:
        choices = get_args(inner)
        for choice in choices:
            if raw == choice or (isinstance(raw, str) and str(choice) == raw):
                return choice
        raise ParamError(
            f"parameter {name}={raw!r} must be one of: {', '.join(str(c) for c in choices)}"
        )
    if origin in (tuple, list):
        args = [a for a in get_args(inner) if a is not Ellipsis]
        elem = args[0] if args else str
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        values = [coerce_value(name, item.strip() if isinstance(item, str) else item, elem)
                  for item in items if not (isinstance(item, str) and item.strip() == "")]
        return tuple(values) if origin is tuple else values
    if inner is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ParamError(f"parameter {name}={raw!r} must be true or false")
    if inner is int:
        if isinstance(raw, bool):
            raise bad
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        try:
            return int(str(raw).strip())
        except ValueError:
            raise bad from None
    if inner is float:
        if isinstance(raw, bool):
            raise bad
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise bad from None
        if math.isnan(value):
            raise bad
        if math.isinf(value):
            raise ParamError(f"parameter {name}={raw!r} is not a finite number")
        return value
    if inner is str:
        if isinstance(raw, (dict, list)):
            raise bad
        return str(raw)
    return raw



def range_text(lo: float | None, hi: float | None, lo_exclusive: bool, hi_exclusive: bool) -> str:
    """``[0, 1]``, ``(0, inf)``: an interval in the usual notation (an infinite end is open)."""
    left = "(" if lo_exclusive or lo is None else "["
    right = ")" if hi_exclusive or hi is None else "]"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return f"{left}{lo_s}, {hi_s}{right}"

def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f"parameter {name}={value!r} is not a finite number")
    lo, hi = meta.get("min"), meta.get("max")
    lo_x, hi_x = meta.get("min_exclusive", False), meta.get("max_exclusive", False)
    if lo is None and hi is None:
        return
    below = lo is not None and (value <= lo if lo_x else value < lo)
    above = hi is not None and (value >= hi if hi_x else value > hi)
    if below or above:
        raise ParamError(f"parameter {name}={value!r} is out of range "
                         f"{range_text(lo, hi, lo_x, hi_x)}")


def build_params(cls: type[P], raw: Mapping[str, Any] | None = None, *, owner: str = "") -> P:
    """Build a ``cls`` instance from ``raw`` (strings or typed values), checking every field.

    Unknown names raise :class:`UnknownNameError` with the close matches; bad values and values
    out of range raise :class:`ParamError`. A ``validate()`` method on ``cls`` runs last, for
    checks that involve several fields.
    """
    raw = dict(raw or {})
    if isinstance(raw, cls):  # pragma: no cover - defensive
        return raw
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = field_types(cls)
    where = f" for {owner}" if owner else ""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        key = key.replace("-", "_")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
            if close:
                hint = f"did you mean {', '.join(close)}?"
            elif fields:
                hint = f"valid: {', '.join(fields)}"
            else:
                hint = "it takes no parameters"
            raise UnknownNameError(f"unknown parameter {key!r}{where}; {hint}")
        values[key] = coerce_value(key, value, hints[key])
    try:
        instance = cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ParamError(f"bad parameters{where}: {exc}") from None
    for name, f in fields.items():
        _check_range(name, getattr(instance, name), f.metadata)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate()
    return instance


def params_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-ready dict of a params dataclass (tuples become lists)."""
    out = dataclasses.asdict(params)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def describe_params(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field, for ``--help`` and ``fairbench list``."""
    hints = field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "required"
        help_text = f.metadata.get("help", "")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None or hi is not None:
            rng = range_text(lo, hi, bool(f.metadata.get("min_exclusive")),
                             bool(f.metadata.get("max_exclusive")))
            help_text = f"{help_text} range {rng}".strip()
        if f.metadata.get("search") is not None:
            help_text = f"{help_text}; tuned: {f.metadata['search'].describe()}".strip()
        rows.append((f.name, type_name(hints[f.name]), default, help_text))
    return rows


def parse_assignments(items: tuple[str, ...] | list[str], *, flag: str = "--param") -> dict[str, str]:
    """Parse ``["a=1", "b=x"]`` into a dict; a malformed item raises :class:`ParamError`."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ParamError(f"malformed {flag} {item!r}; write it as {flag} key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ParamError(f"malformed {flag} {item!r}; the key before '=' is empty")
        out[key] = value.strip()
    return out


def search_space(cls: type) -> dict[str, Search]:
    """The parameters of the params dataclass ``cls`` that a tuning budget may move, with
    their :class:`Search` ranges, in field order (empty for a class without any)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: f.metadata["search"] for f in dataclasses.fields(cls)
            if f.metadata.get("search") is not None}
