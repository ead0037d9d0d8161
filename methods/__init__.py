"""Built-in mitigation methods (installed as ``fairbench.methods``)."""

from . import vanilla  # noqa: F401
