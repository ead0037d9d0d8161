"""Progress bars (tqdm on stderr), switched off in one place for tests and quiet runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def progress_enabled(requested: bool = True) -> bool:
    if os.environ.get("FAIRBENCH_NO_PROGRESS"):
        return False
    return requested


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress_bar(*, total: int | None, desc: str, unit: str = "it", enabled: bool = True,
                 leave: bool = False) -> Iterator[Any]:
    if not progress_enabled(enabled):
        yield _NullBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()
