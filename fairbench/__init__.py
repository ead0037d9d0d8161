"""fairbench: a benchmark suite for bias-mitigation methods on medical images."""

__version__ = "0.1.0"
