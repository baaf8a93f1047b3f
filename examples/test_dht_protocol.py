"""Testing a small DHT-like protocol against trio_connmgr with the testing toolkit.

Run it: ``.venv/bin/python -m pytest examples/test_dht_protocol.py``

The protocol keeps a routing table of up to ``k`` peers (long-lived streams it
scores 1.0) and runs lookups as bursts over many short-lived connections. What
it expects from the connection manager, and what these tests check with
nothing but the toolkit (fixtures from the ``trio_connmgr`` pytest plugin,
helpers from :mod:`trio_connmgr.testing`, strategies from
:mod:`trio_connmgr.testing.strategies`):

- the connections a lookup used go first when the count is above ``high``;
- the routing table survives regulation while it stays within its grant;
- a bucket refresh that locks its streams is never interrupted;
- a scorer bug (an exception on some streams) never breaks a round;
- under random background churn from other protocols, the invariants hold.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings

import trio_connmgr as cm
from trio_connmgr.testing import (
    ConstantScorer,
    FakeConnections,
    advance,
    assert_not_pruned,
    assert_open,
    assert_pruned,
    check_invariants,
    force_round,
    open_fake_connections,
    record_rounds,
    run_workload,
)
from trio_connmgr.testing import strategies as cst

KAD = "/ipfs/kad/1.0.0"

# ---------------------------------------------------------------- the protocol


class MiniKad:
    """A DHT-like protocol reduced to what the connection manager sees.

    Args:
        k: Routing table size.
        lookup_time: Seconds one query of a lookup takes.
    """

    def __init__(self, *, k: int = 4, lookup_time: float = 0.05) -> None:
        self.k = k
        self.lookup_time = lookup_time
        self.table: dict[Hashable, cm.Stream] = {}
        self.enrollment: cm.Enrollment | None = None
        self.fail_on: set[Hashable] = set()  # peers whose scoring raises (a bug)

    def score(self, stream: cm.Stream) -> float:
        """Routing-table streams are worth keeping; lookup leftovers fade with idleness."""
        peer = stream.connection.peer
        if peer in self.fail_on:
            raise KeyError(peer)
        if self.table.get(peer) is stream:
            return 1.0
        return 0.5 ** (stream.idle_time / 5.0)

    def enroll(self, mgr: cm.ConnectionManager) -> Any:
        """Enrol with the manager: half the table reserved, up to ``3k`` connections."""
        return mgr.enroll(KAD, quota=cm.Quota(self.k // 2, 3 * self.k), scorer=self.score)

    def add_peer(self, conn: cm.Connection) -> bool:
        """Put ``conn``'s peer in the routing table (a long-lived stream) if there is room."""
        assert self.enrollment is not None
        self.table = {peer: s for peer, s in self.table.items() if not s.closed}
        if len(self.table) >= self.k or conn.peer in self.table:
            return False
        self.table[conn.peer] = self.enrollment.track_stream(conn)
        return True

    async def lookup(self, conns: list[cm.Connection]) -> int:
        """Query every connection once, inside one burst; return how many answered."""
        assert self.enrollment is not None
        answered = 0
        async with self.enrollment.burst("lookup") as burst:
            for conn in conns:
                if conn.closed:
                    continue
                async with self.enrollment.stream(conn, burst=burst) as stream:
                    stream.touch(nbytes=128)
                    await trio.sleep(self.lookup_time)
                    answered += 1
        return answered

    async def refresh_bucket(self, ttl: float) -> list[cm.Lock]:
        """Lock every routing-table stream for ``ttl`` seconds (a refresh in progress)."""
        assert self.enrollment is not None
        locks = []
        for stream in self.table.values():
            lock = self.enrollment.lock(stream, ttl=ttl)
            await lock.__aenter__()
            locks.append(lock)
        return locks


async def build_table(
    kad: MiniKad, mgr: cm.ConnectionManager, fake_connections: FakeConnections
) -> list[cm.Connection]:
    members = [await fake_connections.open(mgr, f"table-{i}") for i in range(kad.k)]
    for conn in members:
        assert kad.add_peer(conn)
    return members


# ------------------------------------------------------------------- the tests


@pytest.mark.connmgr(limits=cm.Limits(low=6, high=10), grace_period=1, silence_period=0)
async def test_lookup_connections_go_first(
    connmgr: cm.ConnectionManager,
    fake_connections: FakeConnections,
    autojump_clock: trio.testing.MockClock,
) -> None:
    kad = MiniKad()
    async with kad.enroll(connmgr) as kad.enrollment, record_rounds(connmgr) as rounds:
        members = await build_table(kad, connmgr, fake_connections)
        # Peers met during the lookup: 12 of them, well above high=10.
        strangers = await fake_connections.open_many(connmgr, 12, direction="outbound")
        assert await kad.lookup(strangers) == 12
        await advance(1)  # their grace period ends: the regulator runs a round
        last = rounds.last
        assert last is not None
        assert last.completed.trigger == "high-water"
        assert last.completed.count_after == 6  # down to low
        # 10 burst-only connections went first, oldest lookup first...
        assert_pruned(last.pruned, phase="burst", protocol=KAD, in_order=True)
        assert len(last.pruned) == 10
        # ...and the routing table was never touched.
        assert_open(members)
        check_invariants(connmgr, last_round=last)


@pytest.mark.connmgr(limits=cm.Limits(low=6, high=12), grace_period=0)
async def test_routing_table_outlives_idle_lookup_leftovers(
    connmgr: cm.ConnectionManager,
    fake_connections: FakeConnections,
    autojump_clock: trio.testing.MockClock,
) -> None:
    kad = MiniKad()
    async with kad.enroll(connmgr) as kad.enrollment:
        members = await build_table(kad, connmgr, fake_connections)
        others = await fake_connections.open_many(connmgr, 6)
        # Streams kept open after a lookup, outside any burst: scored by idleness.
        leftovers = [kad.enrollment.track_stream(conn) for conn in others]
        for i, stream in enumerate(leftovers):
            await advance(1)
            stream.touch()  # the later, the fresher
            assert i == 0 or stream.last_active > leftovers[i - 1].last_active
        # kad uses 10 connections, within its max of 12: no offender, ranked by tally.
        result = await force_round(connmgr)
        assert result.pruned == tuple(others[:4])  # the least recently active first
        assert_pruned(result.pruned, phase="tally", in_order=True)
        assert_not_pruned(members)
        check_invariants(connmgr, last_round=result)


@pytest.mark.connmgr(limits=cm.Limits(low=4, high=10), grace_period=0, lock_budget=4)
async def test_a_bucket_refresh_holds_its_connections(
    connmgr: cm.ConnectionManager,
    fake_connections: FakeConnections,
    autojump_clock: trio.testing.MockClock,
) -> None:
    kad = MiniKad(k=4)
    async with (
        kad.enroll(connmgr) as kad.enrollment,
        # A protocol whose streams outweigh kad's: kad's table has the lowest tallies.
        connmgr.enroll(
            "/meshsub/1.1.0", quota=cm.Quota(0, 10), scorer=ConstantScorer(1.0), weight=2.0
        ) as mesh,
    ):
        members = await build_table(kad, connmgr, fake_connections)
        others = await fake_connections.open_many(connmgr, 6)
        for conn in others:
            mesh.track_stream(conn)
        locks = await kad.refresh_bucket(ttl=30)
        assert all(lock.held for lock in locks)
        result = await force_round(connmgr)
        # Without the locks, the two table connections above kad's grant.min would
        # have gone first; locked, they are not even candidates.
        assert result.completed.unprunable == 4
        assert_pruned(others, phase="tally")
        assert_open(members)
        check_invariants(connmgr, last_round=result)
        # The refresh never finishes: its locks lapse after their ttl.
        await advance(30)
        assert [lock.status for lock in locks] == ["expired"] * 4
        assert connmgr.statistics().protocols[KAD].locks_expired == 4


@pytest.mark.connmgr(limits=cm.Limits(low=4, high=8), grace_period=0)
async def test_a_raising_scorer_never_breaks_a_round(
    connmgr: cm.ConnectionManager,
    fake_connections: FakeConnections,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kad = MiniKad(k=2)
    async with kad.enroll(connmgr) as kad.enrollment:
        conns = await fake_connections.open_many(connmgr, 8)
        for conn in conns:
            kad.enrollment.track_stream(conn)
        kad.fail_on = {conns[0].peer, conns[1].peer}
        result = await force_round(connmgr)
        assert len(result.pruned) == 4
        check_invariants(connmgr, last_round=result)
        stats = connmgr.statistics().protocols[KAD]
        assert stats.scorer_errors >= 2
        assert "scorer of '/ipfs/kad/1.0.0' raised" in caplog.text


@settings(max_examples=25, deadline=None)
@given(cst.workloads(max_size=20, garbage_scorers=True))
def test_lookups_under_random_churn_keep_the_invariants(workload: list[Any]) -> None:
    """Other protocols come and go at random while kad runs lookups."""

    async def main() -> None:
        limits = cm.Limits(low=6, high=12)
        async with (
            cm.open_connection_manager(limits=limits, grace_period=1) as mgr,
            open_fake_connections(prefix="kad") as fakes,
        ):
            kad = MiniKad(k=3, lookup_time=0.01)
            async with kad.enroll(mgr) as kad.enrollment, trio.open_nursery() as nursery:
                await build_table(kad, mgr, fakes)

                async def lookups() -> None:
                    while True:
                        conns = await fakes.open_many(mgr, 4, direction="outbound")
                        await kad.lookup(conns)
                        await trio.sleep(2)

                nursery.start_soon(lookups)
                await run_workload(mgr, workload)  # checks the invariants at every step
                nursery.cancel_scope.cancel()
            check_invariants(mgr)
        check_invariants(mgr)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
