"""The package version (read by setup.cfg and recorded in every run)."""

__version__ = "0.1.0"
