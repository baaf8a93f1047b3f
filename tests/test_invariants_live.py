"""SPEC §12 held on the live manager's own paths, not only by the pure planner.

Each test here pins one invariant on a path of the Trio shell (the regulator's
apply step and lock revocation, admission eviction, closers, sensing) that the
planner's tests cannot reach, and was seen to fail on a deliberate bug in that
path.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr._core._planner import Plan, plan_round
from trio_connmgr._core._state import State
from trio_connmgr.sensing import FakeSensor, Sensing
from trio_connmgr.testing import (
    GarbageScorer,
    RaisingScorer,
    check_invariants,
    force_round,
    wait_idle,
)


def value_of(stream: cm.Stream) -> float:
    return float(stream.metadata.get("v", 0.5))


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def track(mgr: cm.ConnectionManager, peer: object, direction: str = "outbound") -> cm.Connection:
    return mgr.track(peer, direction=direction, close=trio.lowlevel.checkpoint)


# ---------------------------------------------------------------- invariant 2


async def test_the_apply_step_spares_a_connection_in_its_grace_period_whatever_its_plan(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The regulator checks every victim against the live state as it applies a
    # plan, grace period included, not only the locks and protections that can
    # change while it plans: a plan that names a connection in its grace period
    # (here from a planner that does not see grace periods) must not prune it.
    real = plan_round

    def blind_to_grace(state: State, now: float, **kwargs: Any) -> Generator[None, None, Plan]:
        return real(state, now + state.grace_period, **kwargs)

    monkeypatch.setattr(regulator_module, "plan_round", blind_to_grace)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 10), grace_period=10, silence_period=1000
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10), scorer=value_of) as p,
    ):
        old = [track(mgr, f"old-{i}") for i in range(2)]
        p.track_stream(old[0]).metadata["v"] = 0.2
        p.track_stream(old[1]).metadata["v"] = 0.9
        await trio.sleep(20)
        new = track(mgr, "new")  # idle: the blind plan's first victim
        pruned = await mgr.trim()
        assert not new.closed, "a connection in its grace period was pruned"
        assert pruned == [old[0]]
        assert all(trio.current_time() >= c.opened_at + 10 for c in pruned)


async def test_a_forced_round_revokes_only_locks_whose_connection_it_can_then_prune(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # SPEC §6, §8: a forced round revokes locks for the victims it lacks, lowest
    # tally first among the connections that revocation makes prunable. A locked
    # connection of a protected peer or in its grace period is not one of them:
    # revoking its lock would leave it in place and the round a victim short,
    # while the lock of a connection it could prune stood.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 5), grace_period=10, silence_period=1000, lock_budget=3
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5), scorer=value_of) as p,
        AsyncExitStack() as stack,
    ):

        async def locked(peer: str, value: float) -> tuple[cm.Connection, cm.Lock]:
            conn = track(mgr, peer)
            stream = p.track_stream(conn)
            stream.metadata["v"] = value
            return conn, await stack.enter_async_context(p.lock(stream, ttl=1000))

        old, old_lock = await locked("old", 0.9)  # the highest tally
        protected, protected_lock = await locked("protected", 0.1)
        mgr.protect("protected", "keep")
        await trio.sleep(20)
        young, young_lock = await locked("young", 0.2)  # in its grace period until t=30
        result = await force_round(mgr, force=True)
        assert result.pruned == (old,)
        assert old_lock.status == "revoked"
        assert protected_lock.held
        assert young_lock.held
        assert not protected.closed
        assert not young.closed
        check_invariants(mgr, last_round=result)


async def test_a_forced_round_revokes_for_its_whole_shortfall_grace_or_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A normal round under pressure leaves to the grace period the victims it
    # will bring (they become prunable soon); a forced round reaches its target
    # now: it revokes locks for its whole shortfall (SPEC §8, trim(force=True)).
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 5), grace_period=10, silence_period=1000, lock_budget=1
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5), scorer=value_of) as p,
    ):
        old = track(mgr, "old")
        stream = p.track_stream(old)
        async with p.lock(stream, ttl=1000) as lock:
            await trio.sleep(20)
            young = track(mgr, "young")  # in its grace period until t=30
            result = await force_round(mgr, force=True)
            assert result.pruned == (old,)
            assert lock.status == "revoked"
            assert not young.closed
            check_invariants(mgr, last_round=result)


async def test_a_round_never_prunes_a_connection_whose_lock_has_time_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Locks expire at their time, not before: a round that runs just before a
    # lock's expiry finds it held and leaves its connection alone.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 5), grace_period=0, silence_period=1000, lock_budget=1
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5), scorer=value_of) as p,
    ):
        conns = [track(mgr, i) for i in range(3)]
        streams = [p.track_stream(conn) for conn in conns]
        streams[0].metadata["v"] = 0.1  # the cheapest: the first to go, unless locked
        async with p.lock(streams[0], ttl=10) as lock:
            await trio.sleep(9.9)
            result = await force_round(mgr)
            assert lock.held
            assert not conns[0].closed
            assert set(result.pruned) == set(conns[1:])
            check_invariants(mgr, last_round=result)
            await trio.sleep(0.2)
            assert lock.status == "expired"


# ---------------------------------------------------------------- invariant 3


async def test_an_eviction_at_hard_never_takes_a_protocol_below_its_grant_min() -> None:
    # An allow-listed newcomer at the hard cap evicts the planner's first victim
    # of a normal round (SPEC §10), never one that only a forced round could
    # take: with every prunable connection holding a protocol at its grant.min,
    # the newcomer is refused.
    admission = cm.Admission(allow=["192.0.2.0/24"])
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=2, hard=2), admission=admission, grace_period=0
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(2, 2)) as p,
    ):
        conns = [
            mgr.track(f"p{i}", direction="inbound", address=f"198.51.100.{i}", close=noop_close)
            for i in range(2)
        ]
        for conn in conns:
            p.track_stream(conn)
        assert (p.usage, p.grant.min) == (2, 2)
        with pytest.raises(cm.ConnectionRefused, match=r"no connection can be evicted"):
            mgr.track("vip", direction="inbound", address="192.0.2.7", close=noop_close)
        assert not any(conn.closed for conn in conns)
        assert p.usage == 2
        check_invariants(mgr)


# ---------------------------------------------------------------- invariant 6


@pytest.mark.parametrize(
    "scorer",
    [RaisingScorer(), GarbageScorer(float("nan")), GarbageScorer("junk"), GarbageScorer(7)],
    ids=["raises", "nan", "junk", "out-of-range"],
)
async def test_a_bad_scorer_never_breaks_a_round_that_revokes_locks(
    scorer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A forced round rates locked connections to choose the locks it revokes
    # (lowest tally first), outside the planner: a scorer that raises or
    # returns garbage there is guarded as in the planner (SPEC §5).
    caplog.set_level(logging.CRITICAL, logger="trio_connmgr")
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 5), grace_period=0, lock_budget=2) as mgr,
        mgr.enroll("bad", quota=cm.Quota(0, 5), scorer=scorer) as bad,
        AsyncExitStack() as stack,
    ):
        conns = [track(mgr, i) for i in range(3)]
        for conn in conns[:2]:
            await stack.enter_async_context(bad.lock(bad.track_stream(conn), ttl=100))
        result = await force_round(mgr, force=True)
        assert len(result.pruned) == 2
        assert result.completed.revoked_locks == 1
        assert bad.scorer_errors + bad.scorer_clamped > 0
        check_invariants(mgr, last_round=result)


# ---------------------------------------------------------------- invariant 7


async def test_an_evicted_tracked_connection_is_closed_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An eviction at the hard cap prunes like a round does (the connection
    # carries a PruneReason): its close callback is awaited, once, and its
    # streams are closed.
    closed: list[str] = []

    def closer(peer: str) -> Any:
        async def close() -> None:
            await trio.sleep(1)  # (within close_timeout)
            closed.append(peer)

        return close

    admission = cm.Admission(allow=["192.0.2.0/24"])
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=2, hard=2), admission=admission, grace_period=0
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 2), scorer=value_of) as p,
    ):
        conns = [
            mgr.track(
                f"p{i}", direction="inbound", address=f"198.51.100.{i}", close=closer(f"p{i}")
            )
            for i in range(2)
        ]
        kept = p.track_stream(conns[0])
        kept.metadata["v"] = 0.9
        evicted = p.track_stream(conns[1])
        evicted.metadata["v"] = 0.1  # the lowest tally: the one evicted
        mgr.track("vip", direction="inbound", address="192.0.2.7", close=closer("vip"))
        assert conns[1].close_reason == "evicted"
        assert evicted.closed
        assert conns[1].streams == set()
        assert not kept.closed
        await wait_idle(mgr)
        assert closed == ["p1"]
    # And every other one once, as the manager closed.
    assert sorted(closed) == ["p0", "p1", "vip"]


# ---------------------------------------------------------------- invariant 5


async def test_sensing_keeps_every_grant_within_the_share_it_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Sensing moves G (SPEC §9): the grants are allocated again for the new G at
    # once, so the mins always fit in it and no grant exceeds it (invariant 5),
    # whichever way G moves and whatever the mins asked for.
    sensor = FakeSensor("fake")
    told: list[cm.Grant] = []
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(10, 100), sensing=Sensing([sensor], interval=1.0, floor=1)
        ) as mgr,
        mgr.enroll("strict", quota=cm.Quota(20, 30), strict=True) as strict,
        mgr.enroll("fixed", quota=cm.Quota(40, 60), on_grant=told.append) as fixed,
        mgr.enroll("share", quota=cm.Quota.share(0.2, 0.5)),
    ):
        assert sum(m.grant.min for m in mgr._state.members.values()) == 80
        await trio.sleep(0.5)  # between two samples
        # Down to each ceiling at once; back up by 5 (high / 20) a sample.
        for ceiling, expected in ((50, 50), (7, 7), (1, 1), (30, 6), (None, 11), (None, 16)):
            sensor.ceiling = ceiling
            await trio.sleep(1.0)
            share = mgr.limits.high
            assert share == expected
            grants = [m.grant for m in mgr._state.members.values()]
            assert sum(g.min for g in grants) <= share, (ceiling, grants)
            assert all(0 <= g.min <= g.max <= share for g in grants), (ceiling, grants)
            assert strict.grant.min == min(20, share)  # reserved first
            assert told[-1] == fixed.grant  # told of each change
            check_invariants(mgr)


async def test_a_forced_round_revokes_a_lock_it_can_prune_before_going_below_a_min() -> None:
    # Two locks, one to revoke. The lower tally's connection is q's only one (its
    # grant.min): revoking that lock would spare nothing but by going below the
    # min. The other's revocation lets the round reach low without going below.
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 5), grace_period=0, lock_budget=2) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5), scorer=value_of) as p,
        mgr.enroll("q", quota=cm.Quota(1, 5), scorer=value_of) as q,
        AsyncExitStack() as stack,
    ):
        only_q = mgr.track("only-q", direction="outbound", close=noop_close)
        q_stream = q.track_stream(only_q)
        q_stream.metadata["v"] = 0.1
        q_lock = await stack.enter_async_context(q.lock(q_stream, ttl=100))
        other = mgr.track("other", direction="outbound", close=noop_close)
        p_stream = p.track_stream(other)
        p_stream.metadata["v"] = 0.9
        p_lock = await stack.enter_async_context(p.lock(p_stream, ttl=100))
        result = await force_round(mgr, force=True)
        assert result.pruned == (other,)
        assert (p_lock.status, q_lock.status) == ("revoked", "held")
        assert q.usage == q.grant.min == 1
        check_invariants(mgr, last_round=result)


async def test_a_forced_round_planning_again_revokes_before_going_below_a_min(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One victim at a time: as the first one's body ends it protects the third,
    # so the round plans the rest again. That plan, too, must revoke the lock of
    # a connection it can then prune before it takes q below its grant.min.
    monkeypatch.setattr(regulator_module, "APPLY_CHUNK", 1)
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 5), grace_period=0, lock_budget=2) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5), scorer=value_of) as p,
        mgr.enroll("q", quota=cm.Quota(1, 5), scorer=value_of) as q,
        AsyncExitStack() as stack,
        trio.open_nursery() as nursery,
    ):
        entered = trio.Event()

        async def first_victim() -> None:
            try:
                async with mgr.connection("v1", direction="outbound") as conn:
                    p.track_stream(conn).metadata["v"] = 0.1
                    entered.set()
                    await trio.sleep_forever()
            finally:
                mgr.protect("v2", "meanwhile")

        nursery.start_soon(first_victim)
        await entered.wait()
        for peer, value in (("f", 0.15), ("v2", 0.2)):
            conn = mgr.track(peer, direction="outbound", close=noop_close)
            p.track_stream(conn).metadata["v"] = value
        only_q = mgr.track("only-q", direction="outbound", close=noop_close)
        q.track_stream(only_q).metadata["v"] = 0.3
        locked = mgr.track("locked", direction="outbound", close=noop_close)
        stream = p.track_stream(locked)
        stream.metadata["v"] = 0.9
        lock = await stack.enter_async_context(p.lock(stream, ttl=100))
        result = await force_round(mgr, force=True)
        assert only_q not in result.pruned
        assert locked in result.pruned
        assert lock.status == "revoked"
        assert q.usage == q.grant.min == 1
        assert mgr.statistics().connections == mgr.limits.low
