"""A forced round whose revoked lock is taken again while it plans (SPEC §6, §8).

The holder of a revoked lock learns it through ``on_revoke`` and may lock its
connection again at once: it does so while the round plans again after revoking,
so the round finds that victim locked as it applies its plan. Here the planner
yields after every connection, as it does every 1024 on big rounds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._core._planner import plan_round
from trio_connmgr.testing import check_invariants, record_rounds


def value_of(stream: cm.Stream) -> float:
    return float(stream.metadata.get("v", 0.5))


@pytest.fixture
def yielding_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds that yield after every connection they classify or choose."""
    defaults = plan_round.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "chunk", 1)


@attrs.define
class Peers:
    mgr: cm.ConnectionManager
    p: cm.Enrollment
    q: cm.Enrollment
    protected: cm.Connection
    relocked: cm.Connection
    revocations: list[cm.Lock]


@asynccontextmanager
async def relocking(*, low: int, p_min: int, q_min: int = 0) -> AsyncIterator[Peers]:
    """A manager with a protected idle connection and a connection locked by
    ``q`` (quota ``min=q_min``), whose holder locks it again as soon as the lock
    is revoked; ``p`` (quota ``min=p_min``) for the test's own connections."""
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low, 10), grace_period=0, silence_period=1e6, lock_budget=1
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(p_min, 10), scorer=value_of) as p,
        mgr.enroll("q", quota=cm.Quota(q_min, 10), scorer=value_of) as q,
        trio.open_nursery() as nursery,
    ):
        revocations: list[cm.Lock] = []

        async def hold(
            stream: cm.Stream, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            async with q.lock(stream, ttl=1000, on_revoke=lock_again):
                task_status.started()
                await trio.sleep_forever()

        def lock_again(lock: cm.Lock) -> None:
            revocations.append(lock)
            nursery.start_soon(hold, lock.stream)

        protected = mgr.track("protected", direction="inbound", close=trio.lowlevel.checkpoint)
        mgr.protect("protected", "keep")
        relocked = mgr.track("relocked", direction="inbound", close=trio.lowlevel.checkpoint)
        stream = q.track_stream(relocked)
        stream.metadata["v"] = 0.0  # the first lock to revoke, the first victim
        await nursery.start(hold, stream)
        yield Peers(mgr, p, q, protected, relocked, revocations)
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("yielding_planner")
async def test_a_forced_round_does_not_revoke_again_a_lock_taken_again_but_goes_below_a_min(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The round revokes the lock and plans again: the relocked connection and
    # the idle one are its victims, nothing below p's grant.min. The holder
    # locks again meanwhile, so the round prunes only the idle one and plans
    # for the victim it skipped. Revoking that lock again would only have it
    # taken again, over and over: the round takes a connection of p below its
    # grant.min instead, its last resort, and reaches low.
    async with relocking(low=2, p_min=1) as peers:
        mgr, p = peers.mgr, peers.p
        idle = mgr.track("idle", direction="inbound", close=trio.lowlevel.checkpoint)
        kept = mgr.track("kept", direction="inbound", close=trio.lowlevel.checkpoint)
        p.track_stream(kept).metadata["v"] = 0.9
        await trio.sleep(1)
        async with record_rounds(mgr) as rounds:
            pruned = await mgr.trim(force=True)
        assert pruned == [idle, kept]
        assert kept.prune_reason is not None
        assert kept.prune_reason.forced
        assert len(peers.revocations) == 1
        assert peers.relocked.locked
        assert mgr.statistics().connections == 2
        check_invariants(mgr, last_round=rounds.last)


@pytest.mark.usefixtures("yielding_planner")
async def test_a_victim_locked_again_as_the_round_applies_counts_as_unprunable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The round revokes the lock and plans again, forced: the relocked connection
    # first, then p's connection below its grant.min, its last resort. The holder
    # locks again meanwhile and the round leaves that victim (and, planning
    # again, does not revoke its lock again): it ends with the protected
    # connection and the locked one, neither of which it could prune, and says so.
    async with relocking(low=1, p_min=1) as peers:
        mgr, p = peers.mgr, peers.p
        kept = mgr.track("kept", direction="inbound", close=trio.lowlevel.checkpoint)
        p.track_stream(kept).metadata["v"] = 0.9
        await trio.sleep(1)
        async with record_rounds(mgr) as rounds:
            pruned = await mgr.trim(force=True)
        assert pruned == [kept]
        assert peers.relocked.locked
        assert rounds.last is not None
        completed = rounds.last.completed
        assert (completed.count_after, completed.unprunable) == (2, 2)
        check_invariants(mgr, last_round=rounds.last)


@pytest.mark.usefixtures("yielding_planner")
async def test_a_forced_round_does_not_go_below_a_min_once_a_victim_before_was_locked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # q has a grant.min of 1 and two connections: the relocked one and `spare`.
    # The round revokes the lock and plans again, forced: the relocked
    # connection (the lowest tally), then p's connection below p's grant.min
    # (`spare` would take q below its own). The holder locks again meanwhile:
    # with the relocked connection staying, `spare` can go without taking q
    # below its grant.min, and p's connection is no longer the last resort. The
    # round plans again and prunes `spare` first.
    async with relocking(low=2, p_min=1, q_min=1) as peers:
        mgr, p = peers.mgr, peers.p
        below = mgr.track("below", direction="inbound", close=trio.lowlevel.checkpoint)
        p.track_stream(below).metadata["v"] = 0.0
        spare = mgr.track("spare", direction="inbound", close=trio.lowlevel.checkpoint)
        peers.q.track_stream(spare).metadata["v"] = 0.1
        await trio.sleep(1)
        async with record_rounds(mgr) as rounds:
            pruned = await mgr.trim(force=True)
        assert pruned == [spare, below]
        assert spare.prune_reason is not None
        assert not spare.prune_reason.forced
        assert below.prune_reason is not None
        assert below.prune_reason.forced
        assert peers.relocked.locked
        assert mgr.statistics().connections == 2
        check_invariants(mgr, last_round=rounds.last)
