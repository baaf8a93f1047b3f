"""Locks ending at the same instant (SPEC §6): each one ends, whatever the
callbacks of the others raise."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing
from helpers import Interrupt

import trio_connmgr as cm


async def test_locks_due_together_all_expire_though_an_on_revoke_raises_an_interrupt(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Two locks expire at t=5. The first one's on_revoke raises what must not be
    # caught (a KeyboardInterrupt): it is raised, after the second lock has
    # expired too (explain() expires due locks, as a round would).
    def interrupt(lock: object) -> None:
        raise Interrupt("on_revoke")

    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10), grace_period=0) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10)) as p,
    ):
        first = mgr.track("a", direction="outbound", close=trio.lowlevel.checkpoint)
        second = mgr.track("b", direction="outbound", close=trio.lowlevel.checkpoint)
        async with (
            p.lock(p.track_stream(first), ttl=5, on_revoke=interrupt) as lock1,
            p.lock(p.track_stream(second), ttl=5) as lock2,
        ):
            mock_clock.jump(5)
            with pytest.raises(Interrupt):
                mgr.explain(first)
            assert (lock1.status, lock2.status) == ("expired", "expired")
            assert not second.locked
            assert mgr.statistics().locked_connections == 0
