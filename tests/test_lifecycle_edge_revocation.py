"""Lock revocation edges: what an emergency round may take from lock holders."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

import trio_connmgr as cm


async def test_an_emergency_round_keeps_locks_whose_connections_hold_a_grant_min() -> None:
    revoked: list[cm.Lock] = []
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 4, hard=4), grace_period=0, lock_budget=4
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(2, 4)) as p,
        AsyncExitStack() as stack,
    ):
        conns = [
            mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint) for i in range(4)
        ]
        locks = [
            await stack.enter_async_context(
                p.lock(p.track_stream(conn), ttl=100, on_revoke=revoked.append)
            )
            for conn in conns[:2]
        ]
        for conn in conns[2:]:
            mgr.protect(conn.peer, "keep")
        # The count at hard makes the round an emergency, but the two locked
        # connections carry p's grant.min: a normal round could prune neither,
        # so revoking their locks would take protection away for nothing.
        assert "revoke" not in str(mgr.explain(conns[0]))
        assert await mgr.trim() == []
        assert [lock.status for lock in locks] == ["held", "held"]
        assert revoked == []
        assert mgr.statistics().rounds.locks_revoked == 0
        # A forced round still revokes them as its last resort, and prunes them.
        assert set(await mgr.trim(force=True)) == set(conns[:2])
        assert [lock.status for lock in locks] == ["revoked", "revoked"]
        assert revoked == locks
