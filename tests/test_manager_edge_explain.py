"""mgr.explain(conn) at the instant a lock's ttl ends agrees with a round run then."""

from __future__ import annotations

import trio
import trio.testing

import trio_connmgr as cm


async def close_nothing() -> None:
    await trio.lowlevel.checkpoint()


async def test_a_lock_whose_ttl_is_up_no_longer_keeps_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 5), grace_period=0, lock_budget=1) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 3)) as p,
    ):
        locked = mgr.track("a", direction="outbound", close=close_nothing)
        mgr.protect("b", "keep")
        mgr.track("b", direction="outbound", close=close_nothing)
        stream = p.track_stream(locked)
        async with p.lock(stream, ttl=10) as lock:
            assert mgr.explain(locked).excluded_by == "locked"
            # The ttl is up; the manager's lock timer has not run yet (it runs at
            # its next schedule point, as may any task woken at this instant).
            autojump_clock.jump(10)
            explained = mgr.explain(locked)
            assert explained.excluded_by is None, explained.text
            assert explained.locked_by == ()
            assert explained.would_prune
            assert explained.rank == 1
            assert lock.revoked
            # What a round run now does.
            assert await mgr.trim() == [locked]
        stream.close()
