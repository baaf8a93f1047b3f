"""When the regulator's rounds come: the silence period, trim() and wake-ups (SPEC §8)."""

from __future__ import annotations

import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.testing import record_rounds


async def test_a_round_waiting_for_a_trim_to_end_keeps_the_silence_period_it_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The regulator is woken (a protection lifted, the count above high) while a
    # trim() round runs: once it ends, the trim's round started a silence period,
    # and the regulator's next round waits for it like after any other round.
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 2), grace_period=0, silence_period=100.0
    ) as mgr:
        mgr.protect("p", "keep")
        for _ in range(3000):  # enough that a round yields many times
            mgr.track("p", direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().rounds.count == 1  # nothing prunable: no silence
        await trio.sleep(1)

        async def unprotect_while_the_trim_runs() -> None:
            while not mgr._regulator._round_lock.locked():
                await trio.lowlevel.checkpoint()
            mgr.unprotect("p", "keep")

        async with record_rounds(mgr) as rounds:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(unprotect_while_the_trim_runs)
                assert await mgr.trim()
            await trio.sleep(200)
        trim, *later = rounds.rounds
        assert trim.completed.trigger == "trim"
        assert trim.completed.time == 1.0
        assert [r.completed.time for r in later if r.completed.time < 101.0] == []
        assert mgr.statistics().connections == 1
