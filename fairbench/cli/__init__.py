"""The ``fairbench`` command: ``run``, ``show`` and ``list`` (:mod:`.main`), ``sweep``,
``leaderboard`` and ``plot`` (:mod:`.bench`) and ``data`` (:mod:`.data`). Parses options,
turns bad input into one line and exit code 2, and calls the packages below.

May import: every other package of fairbench."""

from fairbench.cli.main import main

__all__ = ["main"]
