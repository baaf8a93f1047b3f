"""Which locks a round revokes (SPEC §6, §8): those that let it reach its
target, counting what its own victims take from each protocol."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm


def value_of(stream: cm.Stream) -> float:
    return stream.metadata["v"]  # type: ignore[no-any-return]


def track(mgr: cm.ConnectionManager, peer: str) -> cm.Connection:
    return mgr.track(peer, direction="inbound", close=trio.lowlevel.checkpoint)


async def test_a_forced_round_revokes_the_lock_that_spares_a_grant_min() -> None:
    # p (grant.min 2) has three connections: one protected, one free, which the
    # round takes first, and one locked, which p then needs for its grant.min.
    # q's connection is locked too, with a higher tally. Revoking the lock of
    # p's connection would leave the round a forced take below p's grant.min;
    # revoking q's reaches the target without one.
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10), grace_period=0, lock_budget=5) as mgr,
        mgr.enroll("p", quota=cm.Quota(2, 10), scorer=value_of) as p,
        mgr.enroll("q", quota=cm.Quota(0, 10), scorer=value_of) as q,
        AsyncExitStack() as locks,
    ):
        mgr.protect("kept-p", "test")
        p.track_stream(track(mgr, "kept-p")).metadata["v"] = 0.0
        free_p = track(mgr, "free-p")
        p.track_stream(free_p).metadata["v"] = 0.05
        held = {}
        for peer, member, value in (("locked-p", p, 0.1), ("locked-q", q, 0.5)):
            stream = member.track_stream(track(mgr, peer))
            stream.metadata["v"] = value
            held[peer] = await locks.enter_async_context(member.lock(stream, ttl=100))
        assert (p.usage, p.grant.min) == (3, 2)
        pruned = await mgr.trim(force=True)
        assert [conn.peer for conn in pruned] == ["free-p", "locked-q"]
        assert not any(conn.prune_reason and conn.prune_reason.forced for conn in pruned)
        assert held["locked-p"].held
        assert held["locked-q"].status == "revoked"
        assert p.usage == p.grant.min == 2


async def test_an_emergency_round_keeps_a_lock_its_own_victims_make_needed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # At hard, a round revokes locks for its shortfall, but never the lock of a
    # connection that a protocol needs for its grant.min: here, once the round
    # has taken p's free connection, p needs both locked ones. Their locks stay,
    # and explain() says so before the round.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2, hard=3), grace_period=0, lock_budget=2, silence_period=1e6
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(2, 10), scorer=value_of) as p,
        AsyncExitStack() as locks,
    ):
        held = []
        locked = []
        for peer in ("locked-1", "locked-2"):
            locked.append(track(mgr, peer))
            stream = p.track_stream(locked[-1])
            stream.metadata["v"] = 0.1
            held.append(await locks.enter_async_context(p.lock(stream, ttl=100)))
        free_p = track(mgr, "free-p")  # at hard: an emergency round at once
        p.track_stream(free_p).metadata["v"] = 0.05
        # (No checkpoint since: the regulator has not run its round yet.)
        for conn in locked:
            assert "would revoke" not in str(mgr.explain(conn))
        await trio.sleep(1)
        stats = mgr.statistics()
        assert stats.rounds.count == 1
        assert free_p.close_reason == "pruned"
        assert [lock.status for lock in held] == ["held", "held"]
        assert stats.rounds.locks_revoked == 0
        assert p.usage == p.grant.min == 2
