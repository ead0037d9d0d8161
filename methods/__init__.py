"""Built-in mitigation methods (installed as ``fairbench.methods``).

Every module of this package is imported, so a new built-in method only needs its own file
with a ``@register_method`` class (modules whose name starts with ``_`` are helpers and are
imported by the methods that use them).
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
