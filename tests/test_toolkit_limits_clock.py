"""advance() under a manual MockClock moves the clock from deadline to deadline
exactly as autojump would, however close together the deadlines are."""

from __future__ import annotations

import trio
import trio.testing

from trio_connmgr.testing import advance, settle


async def test_advance_wakes_each_close_deadline_at_its_own_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Deadlines a fraction of a nanosecond apart: each sleeper wakes at its
    # deadline, and the clock stops at the time asked for, not past it.
    woke: list[tuple[float, float]] = []

    async def sleeper(seconds: float) -> None:
        await trio.sleep(seconds)
        woke.append((seconds, trio.current_time()))

    async with trio.open_nursery() as nursery:
        for seconds in (1e-10, 3e-10, 7e-10):
            nursery.start_soon(sleeper, seconds)
        await settle()
        await advance(5e-10)
        assert woke == [(1e-10, 1e-10), (3e-10, 3e-10)]
        assert trio.current_time() == 5e-10
        await advance(2e-10)
        assert woke[-1] == (7e-10, 7e-10)
        assert trio.current_time() == 5e-10 + 2e-10
