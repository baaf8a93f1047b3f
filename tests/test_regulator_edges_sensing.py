"""Rounds left short under sensing pressure (SPEC §8, §9): a share that shrinks
lowers the grant.mins that kept connections, and the next round goes on."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing
from trio_connmgr.testing import record_rounds


async def test_a_share_shrinking_after_a_round_left_short_lets_the_next_one_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # p reserves the whole share (grant.min = G). Pressure at t=5 halves the
    # share to 10: the emergency round prunes 2 of p's 12 connections and is
    # left short, the 10 others kept for p's grant.min. At t=10 the share
    # halves again, to 5, and so does p's grant.min: 5 more can go at once,
    # without waiting out the 60 s that a round left short otherwise waits.
    fake = FakeSensor()
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(10, 20),
            grace_period=0,
            silence_period=60,
            sensing=Sensing([fake], interval=5.0, decrease=0.5),
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota.share(1.0, 1.0)) as p,
        record_rounds(mgr) as rounds,
    ):
        for i in range(12):
            p.track_stream(mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint))
        fake.pressure = True
        await trio.sleep(7)  # (past the sample at t=5, before the next)
        assert (mgr.limits.high, p.grant.min, p.usage) == (10, 10, 10)
        await trio.sleep(5)  # (past the sample at t=10)
        assert (mgr.limits.high, p.grant.min) == (5, 5)
        done = [(r.completed.time, r.completed.victims) for r in rounds.rounds]
        assert done == [(5.0, 2), (10.0, 5)]
        assert p.usage == 5
