"""Sensor windows include a dial or a lag exactly one window old, whatever the window.

Times come from the Trio clock: an event at ``t`` and a sample after sleeping
``window`` seconds happen exactly one window apart, and the window holds both
even where ``(t + window) - t`` is not ``window`` in floating point.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.sensing import DialHealth, LoopLag, Sensing

# (start, window) pairs where (start + window) - start > window in binary floating point.
EDGES = [(0.1, 0.3), (0.2, 0.1), (0.4, 0.7), (0.5, 3.9)]


@pytest.mark.parametrize(("start", "window"), EDGES)
async def test_dial_health_counts_dials_exactly_one_window_old(
    start: float, window: float, autojump_clock: Any
) -> None:
    assert (start + window) - start > window
    dials = DialHealth(window=window, min_dials=1)
    await trio.sleep(start)
    dials.dial_reported(False, None, trio.current_time())
    dials.dial_reported(True, 0.25, trio.current_time())
    await trio.sleep(window)
    reading = dials.sample(trio.current_time())
    assert (reading.values["dials"], reading.values["failed"]) == (2, 1)
    assert reading.values["latency"] == 0.25
    assert reading.pressure


@pytest.mark.parametrize(("start", "window"), EDGES)
async def test_loop_lag_counts_lags_exactly_one_window_old(
    start: float, window: float, autojump_clock: Any
) -> None:
    assert (start + window) - start > window
    lag = LoopLag(window=window, threshold=0.05)
    await trio.sleep(start)
    lag.record(trio.current_time(), 0.5)
    await trio.sleep(window)
    reading = lag.sample(trio.current_time())
    assert reading.values["samples"] == 1.0
    assert reading.pressure


async def test_the_controller_counts_dials_exactly_one_interval_old(autojump_clock: Any) -> None:
    dials = DialHealth(window=0.3, ratio=0.5, min_dials=2)
    sensing = Sensing([dials], interval=0.3, floor=1, decrease=0.5)
    await trio.sleep(0.1)
    async with cm.open_connection_manager(limits=cm.Limits(5, 10), sensing=sensing) as mgr:
        # Reported right after the first sample; the next one is a window later.
        mgr.report_dial("a", ok=False)
        mgr.report_dial("b", ok=False)
        await trio.sleep(0.3)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().sensors["dial-health"]["dials"] == 2.0
        assert mgr.limits.high == 5
