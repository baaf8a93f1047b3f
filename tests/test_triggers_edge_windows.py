"""Trigger windows include an event exactly one window old, whatever the window.

Times come from the Trio clock: an event at ``t`` and a check after sleeping
``window`` seconds happen exactly one window apart, and the window holds both
even where ``(t + window) - t`` is not ``window`` in floating point.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.triggers import FailedDials, Spike

# (start, window) pairs where (start + window) - start > window in binary floating point.
EDGES = [(0.1, 0.3), (0.2, 0.1), (0.4, 0.7), (0.5, 3.9)]


@pytest.mark.parametrize(("start", "window"), EDGES)
async def test_a_spike_counts_an_opening_exactly_one_window_old(
    start: float, window: float, autojump_clock: trio.testing.MockClock
) -> None:
    assert (start + window) - start > window
    spike = Spike(connections=1, window=window)
    await trio.sleep(start)
    assert not spike.connection_opened(trio.current_time())
    await trio.sleep(window)
    assert spike.connection_opened(trio.current_time())
    assert spike.check(cm.triggers.TriggerView(2, 1, 10, None), trio.current_time())


@pytest.mark.parametrize(("start", "window"), EDGES)
async def test_failed_dials_count_a_dial_exactly_one_window_old(
    start: float, window: float, autojump_clock: trio.testing.MockClock
) -> None:
    assert (start + window) - start > window
    failed = FailedDials(ratio=1.0, window=window, min_dials=2)
    await trio.sleep(start)
    assert not failed.dial_reported(False, None, trio.current_time())
    await trio.sleep(window)
    assert failed.dial_reported(False, None, trio.current_time())
    assert failed.failure_ratio(trio.current_time()) == 1.0
    await trio.sleep(window)
    # The first dial is now more than one window old; the second is exactly one.
    assert failed.failure_ratio(trio.current_time()) == 1.0
    assert len(failed._dials) == 1


async def test_a_spike_one_window_wide_starts_a_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 10), grace_period=0, triggers=[Spike(connections=2, window=0.3)]
    ) as mgr:
        await trio.sleep(0.1)
        for peer in ("a", "b"):
            mgr.track(peer, direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(0.3)
        mgr.track("c", direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        rounds = mgr.statistics().rounds
        assert (rounds.count, rounds.last_trigger, mgr.statistics().connections) == (
            1,
            "spike",
            1,
        )
