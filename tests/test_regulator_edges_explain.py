"""explain() says a lock would be revoked only when a round would revoke it."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm


def value_of(stream: cm.Stream) -> float:
    return stream.metadata["v"]  # type: ignore[no-any-return]


async def test_explain_at_hard_keeps_a_lock_the_rounds_victims_make_needed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Once a round has taken p's free connection, p needs both locked ones for
    # its grant.min: a round run now keeps their locks, and explain() says so.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2, hard=3), grace_period=0, lock_budget=2, silence_period=1e6
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(2, 10), scorer=value_of) as p,
        AsyncExitStack() as locks,
    ):
        locked = []
        for peer in ("locked-1", "locked-2"):
            locked.append(mgr.track(peer, direction="inbound", close=trio.lowlevel.checkpoint))
            stream = p.track_stream(locked[-1])
            stream.metadata["v"] = 0.1
            await locks.enter_async_context(p.lock(stream, ttl=100))
        free_p = mgr.track("free-p", direction="inbound", close=trio.lowlevel.checkpoint)
        p.track_stream(free_p).metadata["v"] = 0.05
        # (At hard now; no checkpoint since: the regulator has not run its round.)
        for conn in locked:
            assert "would revoke" not in str(mgr.explain(conn))
        await trio.sleep(1)
        assert free_p.close_reason == "pruned"
        assert all(conn.locked for conn in locked)
