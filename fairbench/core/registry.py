"""Name → factory registries for methods, datasets and backbones, in the style of timm.

Each registry maps a name to an object (a class or a factory function) and offers
``register`` (a decorator), ``get``, ``create`` and ``list`` with shell-style wildcards.
Third-party packages extend a registry through an entry-point group (``fairbench.methods``,
``fairbench.datasets``, ``fairbench.backbones``); entry points are loaded lazily, the first
time the registry is queried, and a broken plugin is reported by name without breaking the
others.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from fairbench.core.errors import PluginError, UnknownNameError

T = TypeVar("T")

#: what a registered name may be: it becomes a folder name of every run (``runs/<dataset>/
#: <method>/...``), so letters, digits, ``_``, ``-``, ``.`` and ``+``, starting with a letter or
#: a digit (no ``/``, no ``..``, no spaces)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid registry name (see :data:`NAME_PATTERN`), else ``ValueError``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '-', '.' or '+' "
            "(starting with a letter or digit, at most 64 characters; it names run folders)")
    return name


class Registry(Generic[T]):
    """A registry of named objects of one kind (``kind`` is used in messages)."""

    def __init__(self, kind: str, entry_point_group: str, *, builtins: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        #: module holding the built-in entries, imported (by name) before the first lookup
        self.builtins = builtins
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False
        self.plugin_errors: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, *, override: bool = False) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (see :data:`NAME_PATTERN`)."""
        check_name(self.kind, name)

        def decorator(obj: T) -> T:
            # the built-ins first, so that a plugin taking a built-in name is the one refused
            self._ensure_builtins()
            if name in self._entries and self._entries[name] is not obj and not override:
                existing = self._entries[name]
                same_origin = (
                    getattr(existing, "__qualname__", None) == getattr(obj, "__qualname__", None)
                    and getattr(existing, "__module__", None) == getattr(obj, "__module__", None)
                )
                if not same_origin:  # a module imported twice re-registers the same object
                    origin = getattr(existing, "__module__", "") or ""
                    whose = (" by a built-in" if self.builtins and origin.startswith(
                        self.builtins) else f" by {origin}" if origin else "")
                    raise ValueError(f"{self.kind} {name!r} is already registered{whose}; "
                                     "register yours under another name")
            self._entries[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    # -- lookup -------------------------------------------------------------------------------
    def _ensure_builtins(self) -> None:
        if self.builtins and not getattr(self, "_builtins_loaded", False):
            self._builtins_loaded = True  # set first: the built-ins register through here
            importlib.import_module(self.builtins)

    def _ensure_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        self._ensure_builtins()
        try:
            eps = metadata.entry_points(group=self.entry_point_group)
        except Exception:  # pragma: no cover - broken installation metadata
            return
        for ep in eps:
            try:
                obj = ep.load()
            except Exception as exc:  # a plugin that raises on import
                msg = f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}"
                self.plugin_errors[ep.name] = msg
                warnings.warn(msg, stacklevel=2)
                continue
            # Loading the module normally registers it through the decorator; an entry point
            # may also point at the object itself, registered here under the entry-point name.
            if ep.name not in self._entries and not isinstance(obj, type(metadata)):
                try:
                    check_name(self.kind, ep.name)
                except ValueError as exc:
                    msg = f"{self.kind} plugin {ep.name!r} ({ep.value}) is refused: {exc}"
                    self.plugin_errors[ep.name] = msg
                    warnings.warn(msg, stacklevel=2)
                    continue
                self._entries[ep.name] = obj

    def names(self) -> list[str]:
        self._ensure_entry_points()
        return sorted(self._entries)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching ``pattern`` (``fnmatch`` wildcards, e.g. ``"fair*"``)."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern or "*")]

    def __contains__(self, name: object) -> bool:
        self._ensure_entry_points()
        return name in self._entries

    def get(self, name: str) -> T:
        """The object registered under ``name``; unknown names list the close matches."""
        self._ensure_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(names)}"
        msg = f"unknown {self.kind} {name!r}; {hint} (see `fairbench list {self.kind}s`)"
        if name in self.plugin_errors:
            msg = self.plugin_errors[name]
        return msg

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the registered factory with ``kwargs`` (``None`` values are dropped, as timm)."""
        factory = self.get(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return factory(**kwargs)  # type: ignore[operator]


REGISTER_CALL = re.compile(
    r"""@\s*(?:\w+\.)*register\w*\(\s*['"]([^'"]+)['"]""")


def static_names(package: str) -> set[str] | None:
    """The names that the modules of ``package`` register with a literal decorator
    (``@register_method("vanilla")``), read from their source without importing them (so
    without torch); ``None`` when the package cannot be found."""
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    names: set[str] = set()
    for folder in spec.submodule_search_locations:
        for file in Path(folder).glob("*.py"):
            try:
                names.update(REGISTER_CALL.findall(file.read_text(errors="replace")))
            except OSError:
                return None
    return names


def check_name_early(kind: str, name: str, *, package: str, group: str) -> None:
    """Refuse an unknown ``name`` before anything heavy is imported, when that can be decided:
    the built-ins of ``package`` are read from their source, and no plugin is installed in the
    entry-point ``group`` (a plugin package may register any name, so then nothing is
    decided here and the registry decides later)."""
    try:
        if any(True for _ in metadata.entry_points(group=group)):
            return
    except Exception:  # pragma: no cover - broken installation metadata
        return
    names = static_names(package)
    if not names or name in names:
        return
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(names))}"
    raise UnknownNameError(f"unknown {kind} {name!r}; {hint} (see `fairbench list {kind}s`)")


def load_plugin_file(path: str) -> None:
    """Import a local Python file so that its ``@register_*`` decorators run.

    Raises :class:`PluginError` naming the file when it is missing or raises on import.
    """
    import importlib.util
    import sys
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise PluginError(f"plugin file {str(file)!r} does not exist; pass a path to a .py file")
    module_name = f"fairbench_plugin_{file.stem}_{abs(hash(str(file.resolve()))) % 10**8}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {str(file)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(
            f"plugin file {str(file)!r} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
