"""PhaseTimer: exclusive wall time per phase, and the run summary's time line."""

from __future__ import annotations

import time

import pytest

from fairbench.core.timing import PhaseTimer
from fairbench.run.report import time_line


def test_nested_phases_are_exclusive_and_add_up():
    timer = PhaseTimer()
    t0 = time.perf_counter()
    with timer.phase("outer"):
        time.sleep(0.05)
        with timer.phase("inner"):
            time.sleep(0.1)
        with timer.phase("outer"):  # re-entering a name adds to it
            time.sleep(0.02)
    total = time.perf_counter() - t0
    assert timer.seconds["inner"] == pytest.approx(0.1, abs=0.04)
    assert timer.seconds["outer"] == pytest.approx(0.07, abs=0.04)
    assert sum(timer.seconds.values()) == pytest.approx(total, abs=1e-3)


def test_a_phase_that_raises_is_still_counted():
    timer = PhaseTimer()
    with pytest.raises(ValueError), timer.phase("failing"):
        time.sleep(0.01)
        raise ValueError("boom")
    assert timer.seconds["failing"] >= 0.01
    with timer.phase("next"):  # the stack was unwound
        pass
    assert set(timer.rounded()) == {"failing", "next"}


def test_time_line():
    assert time_line({}) == ""
    assert time_line({"total": 12.34}, "cpu") == "wall 12.3 s on cpu"  # runs without phases
    line = time_line({"total": 10.0, "phases": {"data": 1.0, "train": 8.96, "other": 0.01}},
                     "cuda:0")
    assert line == "wall 10.0 s on cuda:0; by phase (s): data 1.0, train 9.0"
