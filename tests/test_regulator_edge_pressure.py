"""Wake-ups of the regulator under sensing pressure (SPEC §6, §8)."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing
from helpers import open_sensed_manager

from trio_connmgr.sensing import FakeSensor
from trio_connmgr.testing import record_rounds


async def test_lifting_a_protection_under_pressure_below_high_runs_a_round_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Under sensing pressure rounds run above low. A pressure round finds only
    # protected connections and is left short; lifting the protection makes
    # them prunable, and the next round runs then, not a silence period later.
    fake = FakeSensor()
    async with (
        open_sensed_manager(fake, decrease=0.9) as mgr,
        record_rounds(mgr) as rounds,
    ):
        mgr.protect("kept", "test")
        for _ in range(15):
            mgr.track("kept", direction="outbound", close=trio.lowlevel.checkpoint)
        fake.pressure = True
        await trio.sleep(7)  # (past the sample at t=5, before the next)
        assert [(r.completed.time, r.completed.victims) for r in rounds.rounds] == [(5.0, 0)]
        assert mgr.limits.low < mgr.statistics().connections <= mgr.limits.high
        assert mgr.unprotect("kept", "test") is False
        await trio.testing.wait_all_tasks_blocked()
        last = rounds.rounds[-1].completed
        assert (last.time, last.trigger) == (7.0, "pressure")
        assert mgr.statistics().connections == mgr.limits.low
