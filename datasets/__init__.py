"""Built-in dataset adapters (installed as ``fairbench.datasets``)."""

from . import synthderm  # noqa: F401
