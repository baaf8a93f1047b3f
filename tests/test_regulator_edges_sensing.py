"""Rounds left short (SPEC §8, §9): a share that shrinks, or grows and lowers a
grant.min by rounding, frees connections kept for a grant.min, and the next
round goes on."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing
from helpers import open_sensed_manager

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
        open_sensed_manager(fake, decrease=0.5) as mgr,
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


async def test_a_share_growing_that_lowers_a_grant_min_lets_a_round_left_short_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Mins 1, 2, 2 scaled into a share of 1 are (1, 0, 0), into 2 (0, 1, 1): as
    # the share grows from 1 to 2 at t=15, p's grant.min falls to 0 and the
    # connection kept for it can go at once, not 60 s after the round left short.
    fake = FakeSensor()
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 4),
            grace_period=0,
            silence_period=60,
            sensing=Sensing([fake], interval=5.0, decrease=0.5, floor=1, increase=1),
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(1, 4)) as p,
        mgr.enroll("q", quota=cm.Quota(2, 4)),
        mgr.enroll("r", quota=cm.Quota(2, 4)),
        record_rounds(mgr) as rounds,
    ):
        fake.pressure = True
        await trio.sleep(11)
        assert (mgr.limits.high, p.grant.min) == (1, 1)
        mgr.protect("x", "test")
        mgr.track("x", direction="outbound", close=trio.lowlevel.checkpoint)
        mgr.track("x", direction="outbound", close=trio.lowlevel.checkpoint)
        kept = mgr.track("a", direction="outbound", close=trio.lowlevel.checkpoint)
        p.track_stream(kept)
        await trio.sleep(1)
        assert not kept.closed
        fake.pressure = False
        await trio.sleep(4)  # (past the sample at t=15)
        assert (mgr.limits.high, p.grant.min) == (2, 0)
        await trio.sleep(1)
        assert kept.closed, [(r.completed.time, r.completed.victims) for r in rounds.rounds]
