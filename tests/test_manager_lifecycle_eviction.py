"""A trusted newcomer at hard evicts a connection whose lock's ttl is up."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm


async def test_a_trusted_newcomer_at_hard_evicts_a_connection_whose_lock_is_past_its_ttl(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Every connection is locked until t=5. At t=5, before the lock timer has
    # run, a trusted newcomer arrives at hard: the locks whose ttl is up keep
    # nothing (as for a round or explain()), so it evicts one of them.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 3, hard=3),
            grace_period=0,
            lock_budget=3,
            admission=cm.Admission(allow=["10.0.0.1"]),
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 3)) as p,
        AsyncExitStack() as locks,
    ):
        conns = [
            mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint) for i in range(3)
        ]
        for conn in conns:
            await locks.enter_async_context(p.lock(p.track_stream(conn), ttl=5))
        mock_clock.jump(5)
        newcomer = mgr.track(
            "trusted", direction="inbound", address="10.0.0.1", close=trio.lowlevel.checkpoint
        )
        assert [c.close_reason for c in conns].count("evicted") == 1
        assert mgr.statistics().connections == 3
        assert not newcomer.closed
