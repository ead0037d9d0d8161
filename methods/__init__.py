"""Built-in mitigation methods (installed as ``fairbench.methods``)."""

from . import fairquantize, vanilla  # noqa: F401
