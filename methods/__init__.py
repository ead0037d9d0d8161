"""Built-in mitigation methods (installed as ``fairbench.methods``)."""

from . import fairprune, fairquantize, vanilla  # noqa: F401
