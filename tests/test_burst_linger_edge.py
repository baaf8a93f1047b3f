"""A burst's linger includes its edge, whatever the floats (SPEC §7)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_bursts import track

import trio_connmgr as cm


@pytest.mark.parametrize(("closed_at", "linger"), [(0.1, 0.3), (0.2, 0.1), (1.1, 0.3)])
async def test_a_burst_closed_exactly_one_linger_ago_still_goes_first(
    autojump_clock: trio.testing.MockClock, closed_at: float, linger: float
) -> None:
    # (closed_at + linger) - closed_at > linger for these floats: measured as a
    # difference, the edge fell outside the linger.
    assert (closed_at + linger) - closed_at > linger
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 20), grace_period=0, burst_linger=linger
        ) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 20)) as dht,
        mgr.enroll("steady", quota=cm.Quota(0, 20)) as steady,
    ):
        steady.track_stream(track(mgr, "steady"))
        await trio.sleep(closed_at)
        async with dht.burst() as burst:
            conn = track(mgr, "dht")
            dht.track_stream(conn, burst=burst)
        assert trio.current_time() == closed_at
        await trio.sleep(linger)
        assert trio.current_time() == closed_at + linger
        assert mgr.statistics().protocols["dht"].bursts_lingering == 1
        pruned = await mgr.trim()
        assert pruned == [conn]
        assert pruned[0].prune_reason is not None
        assert pruned[0].prune_reason.phase is cm.Phase.BURST
