"""The testing toolkit (trio_connmgr.testing): fakes, time, rounds, assertions, invariants."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._core._events import RoundCompleted
from trio_connmgr.testing import (
    ConstantScorer,
    FakeConnections,
    GarbageScorer,
    IdScorer,
    MetadataScorer,
    PeerIds,
    RaisingScorer,
    RoundResult,
    advance,
    assert_not_pruned,
    assert_open,
    assert_pruned,
    check_invariants,
    describe,
    force_round,
    open_fake_connection,
    open_fake_connections,
    open_manager_factory,
    record_rounds,
    run_workload,
    settle,
    wait_idle,
)
from trio_connmgr.testing import workload as w

LIMITS = cm.Limits(low=2, high=4)


# ------------------------------------------------------------------ peers


def test_peer_ids_count_per_factory() -> None:
    peers = PeerIds("dht")
    assert peers() == "dht-1"
    assert peers.take(2) == ["dht-2", "dht-3"]
    assert PeerIds()() == "peer-1"


# ------------------------------------------------------------ connections


async def test_open_fake_connection_is_cancelled_when_pruned(autojump_clock: object) -> None:
    held: list[cm.Connection] = []
    reached_end = False

    async def hold(mgr: cm.ConnectionManager, task_status: trio.TaskStatus[None]) -> None:
        nonlocal reached_end
        async with open_fake_connection(mgr, direction="outbound") as conn:
            held.append(conn)
            task_status.started()
            await trio.sleep_forever()
            reached_end = True  # pragma: no cover - pruning cancels the body

    with trio.fail_after(60):
        async with (
            cm.open_connection_manager(limits=LIMITS, grace_period=0) as mgr,
            open_fake_connections() as fakes,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(hold, mgr)
            await advance(1)
            others = await fakes.open_many(mgr, 4)
            # Above high (and no grace period): the regulator prunes at once.
            await wait_idle(mgr)
    [conn] = held
    assert conn.peer == "peer-1"
    assert [c.peer for c in others] == ["peer-2", "peer-3", "peer-4", "peer-5"]
    assert conn.direction is cm.Direction.OUTBOUND
    assert not reached_end
    assert_pruned(conn, phase="idle", trigger="high-water")
    assert conn.prune_reason is not None
    assert conn.prune_reason.rank == 1  # the least recently active idle connection


async def test_fake_connections_open_close_and_refusal(autojump_clock: object) -> None:
    limits = cm.Limits(low=2, high=3, hard=3)
    async with (
        cm.open_connection_manager(limits=limits) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 3)
        assert [c.peer for c in conns] == ["peer-1", "peer-2", "peer-3"]
        assert fakes.open_connections == conns
        # The holding tasks live in the fakes' own nursery: a refused open leaves none.
        tasks_before = len(fakes._nursery.child_tasks)
        assert tasks_before == 3
        with pytest.raises(cm.ConnectionRefused) as refused:
            await fakes.open(mgr, fakes.peer())
        assert refused.value.reason == "hard"
        assert len(fakes._nursery.child_tasks) == tasks_before
        assert mgr.statistics().connections == 3
        # Outbound dials are never refused by count.
        out = await fakes.open(mgr, "boot", direction="outbound")
        assert out.peer == "boot"
        await fakes.close(conns[0])
        assert conns[0].close_reason == "closed"
        assert conns[0].prune_reason is None
        assert fakes.open_connections == [conns[1], conns[2], out]
        await fakes.close(conns[0])  # closing twice does nothing
        with pytest.raises(cm.ConfigError, match="not opened by these fake connections"):
            async with open_fake_connection(mgr, direction="outbound") as other:
                await fakes.close(other)
    # Leaving the block closed everything it held.
    assert all(c.closed for c in fakes.opened)


async def test_tracked_fakes_close_once_when_pruned_never_when_released(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=0, close_timeout=5) as mgr,
        open_fake_connections() as fakes,
    ):
        released = fakes.track(mgr)
        await fakes.close(released)
        assert released.close_reason == "released"
        slow = [fakes.track(mgr, close_delay=3) for _ in range(4)]
        start = trio.current_time()
        result = await force_round(mgr)
        # force_round waits until the closers are done: under autojump the clock
        # moves to the end of their close() calls, and no further.
        assert trio.current_time() == start + 3
        assert not mgr._nursery.child_tasks
        assert list(result.pruned) == slow[:2]
        assert [fakes.close_calls(c) for c in slow] == [1, 1, 0, 0]
        assert fakes.close_calls(released) == 0
        check_invariants(mgr, last_round=result)
        # A connection from open() has no close() to count; one from elsewhere
        # is none of these fakes' business.
        with pytest.raises(cm.ConfigError, match=r"was opened with open\(\), which has no"):
            fakes.close_calls(await fakes.open(mgr))
        with pytest.raises(cm.ConfigError, match="was not opened by these fake connections"):
            fakes.close_calls(mgr.track("stranger", direction="outbound", close=noop_close))


# ------------------------------------------------------------------- time


async def test_advance_under_autojump_sees_each_deadline(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=10) as mgr,
        open_fake_connections() as fakes,
        record_rounds(mgr) as rounds,
    ):
        conns = await fakes.open_many(mgr, 5)
        await advance(25)
        assert trio.current_time() == 25
        assert rounds.last is not None
        assert rounds.last.completed.time == 10  # at the grace end, not at 25
        assert_pruned(conns[:3], phase="idle", trigger="high-water", in_order=True)
        check_invariants(mgr, last_round=rounds.last)


async def test_advance_steps_a_manual_mock_clock(mock_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=10) as mgr,
        open_fake_connections() as fakes,
        record_rounds(mgr) as rounds,
    ):
        conns = await fakes.open_many(mgr, 5)
        await advance(25)
        # A single jump to 25 would have let the regulator wake late, at 25.
        assert trio.current_time() == 25
        assert rounds.last is not None
        assert rounds.last.completed.time == 10
        assert_pruned(conns[:3], phase="idle")
        await advance(0)
        assert trio.current_time() == 25
        for bad in (-1, math.nan, math.inf, "1", True, None):
            with pytest.raises(cm.ConfigError, match=f"advance seconds must be .*, got {bad!r}"):
                await advance(bad)  # type: ignore[arg-type]


async def test_wait_idle_never_moves_a_manual_clock(mock_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = [fakes.track(mgr, close_delay=2) for _ in range(3)]
        await mgr.trim()
        await wait_idle(mgr)
        assert trio.current_time() == 0
        assert mgr._nursery.child_tasks  # the closer sleeps on the clock
        assert fakes.close_calls(conns[0]) == 1
        await advance(2)
        await wait_idle(mgr)
        assert not mgr._nursery.child_tasks


async def test_settle_lets_woken_tasks_react(autojump_clock: object) -> None:
    limits = cm.Limits(low=2, high=10)
    async with cm.open_connection_manager(limits=limits, grace_period=0) as mgr:
        ended: list[cm.Connection] = []

        async def hold() -> None:
            async with open_fake_connection(mgr) as conn:
                await trio.sleep_forever()
            ended.append(conn)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(hold)
            await settle()
            assert len(mgr.connections) == 5
            assert sorted(str(c.peer) for c in mgr.connections) == [
                f"peer-{i}" for i in range(1, 6)
            ]
            pruned = await mgr.trim()
            assert not ended  # the bodies have not run yet
            await settle()
            assert sorted(c.id for c in ended) == sorted(c.id for c in pruned)
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------- rounds


async def test_force_round_reports_victims_in_rank_order(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=6), grace_period=0) as mgr,
        mgr.enroll("/chat", quota=cm.Quota(0, 10), scorer=MetadataScorer()) as chat,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 6)
        for conn, score in zip(conns, [0.9, 0.1, 0.8, 0.2, 0.7, 0.3], strict=True):
            chat.track_stream(conn).metadata["score"] = score
        result = await force_round(mgr)
        assert isinstance(result, RoundResult)
        assert list(result.pruned) == [conns[1], conns[3], conns[5], conns[4]]
        assert [r.rank for r in result.reasons] == [1, 2, 3, 4]
        assert result.completed.trigger == "trim"
        assert result.completed.count_before == 6
        assert result.completed.count_after == 2
        assert_pruned(result.pruned, phase=cm.Phase.TALLY, protocol=None, in_order=True)
        assert_open([conns[0], conns[2]])
        check_invariants(mgr, last_round=result)


async def test_forced_round_revokes_locks(autojump_clock: object) -> None:
    limits = cm.Limits(low=1, high=4)
    async with (
        cm.open_connection_manager(limits=limits, grace_period=0, lock_budget=3) as mgr,
        mgr.enroll("/mesh", quota=cm.Quota(0, 4)) as mesh,
        open_fake_connections() as fakes,
        contextlib.AsyncExitStack() as stack,
    ):
        conns = await fakes.open_many(mgr, 3)
        locks = [
            await stack.enter_async_context(mesh.lock(mesh.track_stream(conn), ttl=60))
            for conn in conns
        ]
        result = await force_round(mgr)
        assert not result.pruned
        assert result.completed.unprunable == 3
        assert_not_pruned(conns)
        check_invariants(mgr, last_round=result)
        result = await force_round(mgr, force=True)
        assert result.completed.forced
        assert result.completed.revoked_locks == 2
        assert [lock.revoked for lock in locks].count(True) == 2
        assert_pruned(result.pruned, trigger="force")
        check_invariants(mgr, last_round=result)


async def test_record_rounds_sees_regulator_rounds_and_their_victims(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=1, silence_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        early = await fakes.open_many(mgr, 3)
        async with record_rounds(mgr) as rounds:
            late = await fakes.open_many(mgr, 3)
            await advance(1)
            assert [r.completed.trigger for r in rounds.rounds][-1] == "high-water"
            assert set(rounds.pruned) == {*early, late[0]}
            for result in rounds.rounds:
                check_invariants(mgr, last_round=result)
        await fakes.open_many(mgr, 3)
        await advance(1)
        assert len(rounds.rounds) == 2  # nothing recorded after the block


async def noop_close() -> None:
    pass


async def test_record_rounds_leaves_evictions_out_of_rounds(autojump_clock: object) -> None:
    # An eviction by admission at hard happens outside any round.
    admission = cm.Admission(allow=["10.0.0.0/8"])
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 3, 4), grace_period=1, admission=admission
    ) as mgr:
        conns = [
            mgr.track(f"p{i}", direction="inbound", address=f"192.0.2.{i}", close=noop_close)
            for i in range(3)
        ]
        await advance(2)  # a round prunes one; the others leave their grace period
        async with record_rounds(mgr) as rounds:
            while len(mgr.connections) < 4:
                conns.append(
                    mgr.track("late", direction="inbound", address="192.0.2.9", close=noop_close)
                )
            mgr.track("trusted", direction="inbound", address="10.0.0.1", close=noop_close)
            assert [c.close_reason for c in conns].count("evicted") == 1
            await advance(2)
        assert rounds.rounds
        assert all(c.close_reason == "pruned" for c in rounds.pruned)
        for result in rounds.rounds:
            check_invariants(mgr, last_round=result)


# ------------------------------------------------------------- assertions


async def test_assertion_messages_say_what_happened(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=5) as mgr,
        mgr.enroll("/kad", quota=cm.Quota(0, 10)) as kad,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 6)
        kad.track_stream(conns[5])
        await advance(5)  # grace ends: the 4 oldest idle connections go
        fresh = await fakes.open(mgr)
        mgr.protect(conns[4].peer, "bootstrap")
        assert_pruned(conns[:4], phase="idle", protocol=None, trigger="high-water")

        with pytest.raises(AssertionError) as info:
            assert_pruned(conns, phase="idle")
        message = str(info.value)
        assert "2 of 6 connections were not pruned as expected (phase='idle'):" in message
        assert "#5 peer='peer-5' inbound: open (its peer is protected)" in message
        assert "#6 peer='peer-6' inbound [/kad]: open (prunable)" in message

        with pytest.raises(AssertionError, match=r"open \(in its grace period\)"):
            assert_pruned(fresh)
        with pytest.raises(AssertionError) as info:
            assert_pruned(conns[0], phase=cm.Phase.BURST, trigger="trim")
        assert "1 of 1 connection was not pruned as expected" in str(info.value)
        assert "pruned by phase idle #1" in str(info.value)
        assert "phase is 'idle'; trigger is 'high-water'" in str(info.value)
        with pytest.raises(AssertionError, match="not in the expected order"):
            assert_pruned([conns[1], conns[0]], in_order=True)
        with pytest.raises(cm.ConfigError, match="phase must be a Phase or one of"):
            assert_pruned(conns[0], phase="bogus")

        assert_not_pruned(conns[4:])
        with pytest.raises(AssertionError, match="2 of 3 connections were pruned, expected none"):
            assert_not_pruned(conns[2:5])
        await fakes.close(conns[5])
        with pytest.raises(AssertionError, match=r"#6 .*: closed, not pruned"):
            assert_open(conns[4:])
    # The fake connections closed (from the remote side) before the manager.
    assert describe(fresh) == "#7 peer='peer-7' inbound: closed, not pruned"


# ------------------------------------------------------------- invariants


async def test_check_invariants_holds_on_a_busy_manager(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=6), grace_period=0) as mgr,
        mgr.enroll("/a", quota=cm.Quota(1, 3)) as a,
        mgr.enroll("/b", quota=cm.Quota.share(0.5, 1.0), scorer=IdScorer()) as b,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 4) + [fakes.track(mgr, direction="outbound")]
        for conn in conns:
            a.track_stream(conn)
        async with b.burst("walk") as burst:
            for conn in conns[2:]:
                b.track_stream(conn, burst=burst)
            async with a.lock(next(iter(conns[0].streams)), ttl=5):
                check_invariants(mgr)
        check_invariants(mgr)
        result = await force_round(mgr)
        check_invariants(mgr, last_round=result)
    check_invariants(mgr)  # closed: nothing left


async def test_check_invariants_reports_corrupted_bookkeeping(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=6), grace_period=0) as mgr,
        mgr.enroll("/a", quota=cm.Quota(1, 3)) as a,
        open_fake_connections() as fakes,
    ):
        state = mgr._state
        conns = await fakes.open_many(mgr, 3)
        stream = a.track_stream(conns[0])

        state.inbound += 1
        with pytest.raises(AssertionError) as info:
            check_invariants(mgr)
        assert "trio_connmgr invariants violated (2):" in str(info.value)
        assert "counts by direction are inbound=4, outbound=0" in str(info.value)
        state.inbound -= 1

        a.usage += 1
        with pytest.raises(
            AssertionError, match="usage of '/a' is 2 but its open streams are on 1"
        ):
            check_invariants(mgr)
        a.usage -= 1

        conns[0].closed = True
        with pytest.raises(AssertionError, match="stream #1 of '/a' is open on closed connection"):
            check_invariants(mgr)
        conns[0].closed = False

        a.grant = cm.Grant(5, 3)
        with pytest.raises(AssertionError) as info:
            check_invariants(mgr)
        assert "grant of '/a' is min=5, max=3: invariant 5" in str(info.value)
        assert "(stale)" in str(info.value)
        a.grant = cm.Grant(7, 7)
        with pytest.raises(AssertionError, match="the grant mins add up to 7 > G=6"):
            check_invariants(mgr)
        a.grant = cm.Grant(1, 3)

        async with a.lock(stream, ttl=5):
            state.locked_connections += 1
            with pytest.raises(AssertionError, match="locked_connections is 2 but 1 connection"):
                check_invariants(mgr)
            state.locked_connections -= 1
            state._lock_budget = 0
            with pytest.raises(AssertionError, match="over the lock budget of 0"):
                check_invariants(mgr)
            state._lock_budget = None
        check_invariants(mgr)

        state.rounds.failures += 1
        with pytest.raises(AssertionError, match="1 regulation round"):
            check_invariants(mgr)
        check_invariants(mgr, allow_round_failures=True)
        state.rounds.failures -= 1


async def test_check_invariants_judges_the_last_round(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=10) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 6)
        now = trio.current_time()

        def completed(**fields: object) -> RoundCompleted:
            values: dict[str, object] = {
                "time": now,
                "number": 1,
                "trigger": "high-water",
                "forced": False,
                "count_before": 6,
                "count_after": 2,
                "victims": 0,
                "by_phase": (),
                "duration": 0.0,
                "revoked_locks": 0,
                "unprunable": 0,
            }
            values.update(fields)
            return RoundCompleted(**values)  # type: ignore[arg-type]

        check_invariants(mgr, last_round=completed())
        check_invariants(mgr, last_round=completed(count_after=5, unprunable=5))
        check_invariants(mgr, last_round=completed(count_before=4, count_after=4))
        with pytest.raises(AssertionError, match=r"left 5 connections, above max\(low=2"):
            check_invariants(mgr, last_round=completed(count_after=5, unprunable=3))
        # Connections that arrived after the round planned are not held against it.
        check_invariants(mgr, last_round=completed(count_after=5, unprunable=3, arrived=2))
        with pytest.raises(
            AssertionError, match=r"left 5 connections \(1 of them opened after it planned\)"
        ):
            check_invariants(mgr, last_round=completed(count_after=5, unprunable=3, arrived=1))

        # Victims that break invariants 2, 3 and 4 (a round cannot do that: fake them).
        mgr._prune(conns[0], cm.PruneReason(cm.Phase.TALLY, None, 0.1, 1, "trim"))
        mgr._prune(conns[1], cm.PruneReason(cm.Phase.BURST, "/kad", 0.0, 2, "trim"))
        mgr._prune(conns[2], cm.PruneReason(cm.Phase.TALLY, None, 0.1, 3, "trim", forced=True))
        await settle()
        result = RoundResult(tuple(conns[:3]), completed(victims=3))
        with pytest.raises(AssertionError) as info:
            check_invariants(mgr, last_round=result)
        message = str(info.value)
        assert "within its grace period of 10.0s (invariant 2)" in message
        assert "which was not forced (invariant 3)" in message
        assert "(rank 2) after another victim (rank 1) (invariant 4)" in message
        assert "below a grant.min (rank" not in message  # forced, but last
        # A forced round takes connections below a grant.min only when nothing
        # else is left: after every other victim.
        mgr._prune(conns[3], cm.PruneReason(cm.Phase.IDLE, None, 0.0, 1, "trim", forced=True))
        mgr._prune(conns[4], cm.PruneReason(cm.Phase.TALLY, None, 0.1, 2, "trim"))
        await settle()
        result = RoundResult(tuple(conns[3:5]), completed(forced=True, victims=2))
        with pytest.raises(
            AssertionError,
            match=r"below a grant.min \(rank 1\) before a victim that was not \(rank 2\)",
        ):
            check_invariants(mgr, last_round=result)
        with pytest.raises(AssertionError, match="reported pruned by round 1 but is open"):
            check_invariants(mgr, last_round=RoundResult((conns[5],), completed(victims=1)))
        # A pruned connection still holding a stream (invariant 7): fake it.
        async with mgr.enroll("x", quota=cm.Quota(0, 1)) as x:
            stray = x.track_stream(conns[5])
            conns[4].streams.add(stray)
            with pytest.raises(
                AssertionError, match=r"pruned connection #\d+ still has 1 open stream\(s\)"
            ):
                check_invariants(mgr, last_round=RoundResult((conns[4],), completed(victims=1)))
            conns[4].streams.discard(stray)


async def test_forced_round_takes_a_burst_only_connection_last(autojump_clock: object) -> None:
    # Nothing else left, a forced round takes burst-only connections below their
    # protocol's grant.min, after every other victim: invariant 4 orders the rest.
    limits = cm.Limits(low=1, high=10)
    async with (
        cm.open_connection_manager(limits=limits, grace_period=0, silence_period=0) as mgr,
        open_fake_connections() as fakes,
        mgr.enroll("dht", quota=cm.Quota(2, 5)) as dht,
        mgr.enroll("other", quota=cm.Quota(0, 5)) as other,
    ):
        first, second, idle, used = await fakes.open_many(mgr, 4)
        async with dht.burst("lookup") as burst:
            dht.track_stream(first, burst=burst)
            dht.track_stream(second, burst=burst)
        other.track_stream(used)
        result = await force_round(mgr, force=True)
        assert [(c, c.prune_reason.phase) for c in result.pruned if c.prune_reason] == [
            (idle, cm.Phase.IDLE),
            (used, cm.Phase.TALLY),
            (first, cm.Phase.BURST),
        ]
        assert [c.prune_reason.forced for c in result.pruned if c.prune_reason] == [
            False,
            False,
            True,
        ]
        check_invariants(mgr, last_round=result)


async def test_check_invariants_on_a_closed_manager() -> None:
    async with cm.open_connection_manager(limits=LIMITS) as mgr:
        pass
    check_invariants(mgr)
    mgr._state.connections[99] = mgr._state.connections.get(99)  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="the manager is closed but still counts 1"):
        check_invariants(mgr)


# ---------------------------------------------------------------- scorers


async def test_test_scorers(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=LIMITS, grace_period=0) as mgr,
        mgr.enroll("/x", quota=cm.Quota(0, 8)) as x,
        open_fake_connection(mgr) as conn,
    ):
        stream = x.track_stream(conn)
        assert ConstantScorer(0.25)(stream) == 0.25
        assert 0 <= IdScorer(3)(stream) < 1
        assert MetadataScorer(default=0.4)(stream) == 0.4
        stream.metadata["score"] = 0.9
        assert MetadataScorer()(stream) == 0.9
        assert GarbageScorer(None)(stream) is None
        flaky = RaisingScorer(every=2)
        assert flaky(stream) == 0.5
        with pytest.raises(RuntimeError, match="scorer failure"):
            flaky(stream)
        assert ConstantScorer.well_behaved
        assert not GarbageScorer.well_behaved
        assert not RaisingScorer.well_behaved


async def test_garbage_scorers_never_break_a_round(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=6), grace_period=0) as mgr,
        mgr.enroll("/big", quota=cm.Quota(0, 8), scorer=GarbageScorer(7.0)) as bad,
        mgr.enroll("/nan", quota=cm.Quota(0, 8), scorer=GarbageScorer(math.nan)) as nan,
        mgr.enroll("/raise", quota=cm.Quota(0, 8), scorer=RaisingScorer()) as worse,
        open_fake_connections() as fakes,
    ):
        for conn in await fakes.open_many(mgr, 6):
            bad.track_stream(conn)
            nan.track_stream(conn)
            worse.track_stream(conn)
        result = await force_round(mgr)
        assert len(result.pruned) == 4
        check_invariants(mgr, last_round=result)
        stats = mgr.statistics().protocols
        assert stats["/big"].scorer_clamped > 0
        assert stats["/nan"].scorer_errors + stats["/nan"].scorer_clamped > 0
        assert stats["/raise"].scorer_errors > 0


# -------------------------------------------------------------- factories


async def test_manager_factory_keeps_managers_until_closed() -> None:
    async with open_manager_factory() as factory:
        first = await factory()
        second = await factory(limits=cm.Limits(low=1, high=2), grace_period=0)
        assert first.limits == cm.Limits(low=4, high=8)
        assert second.limits == cm.Limits(low=1, high=2)
        assert factory.managers == [first, second]
        await factory.close(first)
        assert first._state.closed
        assert factory.managers == [second]
        async with open_manager_factory() as other:
            with pytest.raises(cm.ConfigError, match="not opened by this factory"):
                await other.close(second)
        with pytest.raises(cm.ConfigError, match="grace_period"):
            await factory(grace_period=-1)
    assert second._state.closed


# -------------------------------------------------------------- workloads


async def test_run_workload_applies_every_kind_of_operation(autojump_clock: object) -> None:
    workload = [
        w.Enrol(0, cm.Quota(1, 2), ConstantScorer(0.5)),
        w.Enrol(0, cm.Quota(0, 9)),  # already enrolled: skipped
        w.Enrol(1, cm.Quota(6, 6), strict=True),  # min 6 > G = 5: refused
        w.Enrol(2, cm.Quota.share(0.1, 0.5), weight=2.0),
        w.Connect(count=4),
        w.Connect(direction="outbound", tracked=True, close_delay=0.5),
        w.OpenStream(0, 0),
        w.OpenStream(1, 1),
        w.OpenBurst(1),
        w.OpenStream(1, 2, in_burst=True),
        w.Touch(0, 100),
        w.LockStream(0, ttl=1.0),
        w.Protect(3),
        w.Advance(0.5),
        w.CloseBurst(1),
        w.Connect(count=3),
        w.Trim(),
        w.Unlock(0),
        w.Protect(3, protect=False),
        w.CloseStream(0),
        w.Disconnect(0),
        w.Trim(force=True),
        w.Leave(0),
        w.Advance(5),
    ]
    steps: list[w.Op] = []
    async with cm.open_connection_manager(
        limits=cm.Limits(low=3, high=5), grace_period=0, silence_period=0
    ) as mgr:
        report = await run_workload(mgr, workload, on_step=lambda op, m: steps.append(op))
        assert steps == workload
        assert report.steps == len(workload)
        assert report.quota_denied == 1
        assert report.streams == 3
        assert report.locks == 1
        assert report.bursts == 1
        assert len(report.connections) == 8
        assert report.rounds >= 2
        assert report.pruned
        assert_pruned(report.pruned)
        # Everything the workload opened is gone; the manager stays open.
        assert not mgr.connections
        assert not mgr._state.members
        check_invariants(mgr)


async def test_run_workload_skips_operations_with_nothing_to_act_on() -> None:
    async with cm.open_connection_manager(limits=LIMITS) as mgr:
        report = await run_workload(
            mgr,
            [w.Leave(0), w.Disconnect(3), w.OpenStream(0, 0), w.CloseStream(1), w.Unlock(0)],
        )
    assert report.skipped == 5


async def test_run_workload_catches_a_regulator_that_ignores_grace(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mutant regulator that forgets the grace period is caught at the step it breaks."""
    from trio_connmgr import _regulator
    from trio_connmgr._core import _planner

    def without_grace(state: Any) -> Iterator[None]:
        saved = state.grace_period
        state.grace_period = 0.0
        yield
        state.grace_period = saved

    def plan_round(state: Any, now: float, **kwargs: Any) -> Generator[None, None, Any]:
        with contextlib.contextmanager(without_grace)(state):
            return _planner.plan_now(state, now, **kwargs)
        yield  # pragma: no cover - a generator, like the real one

    def exclusion(state: Any, conn: cm.Connection, now: float) -> str | None:
        with contextlib.contextmanager(without_grace)(state):
            return _planner.exclusion(state, conn, now)

    monkeypatch.setattr(_regulator, "plan_round", plan_round)
    monkeypatch.setattr(_regulator, "exclusion", exclusion)
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=8), grace_period=30) as mgr:
        with pytest.raises(AssertionError) as info:
            await run_workload(mgr, [w.Connect(count=6), w.Advance(1), w.Trim()])
    assert "after step 3, Trim(force=False):" in str(info.value)
    assert "within its grace period of 30.0s (invariant 2)" in str(info.value)


async def test_fake_connections_can_be_built_on_any_nursery(autojump_clock: object) -> None:
    async with cm.open_connection_manager(limits=LIMITS) as mgr, trio.open_nursery() as nursery:
        fakes = FakeConnections(nursery, prefix="node")
        conn = await fakes.open(mgr, fakes.peer())
        assert conn.peer == "node-1"
        await fakes.close(conn)
        assert not nursery.child_tasks


async def test_locks_granted_before_sensing_shrinks_low_are_not_a_violation(
    autojump_clock: object,
) -> None:
    from trio_connmgr.testing import FakeSensors

    sensors = FakeSensors()
    sensor = sensors.sensor()
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=4, high=8), grace_period=0, sensing=sensors.sensing(sensor)
        ) as mgr,
        mgr.enroll("/p", quota=cm.Quota(0, 8)) as p,
        open_fake_connections() as fakes,
        contextlib.AsyncExitStack() as stack,
    ):
        conns = await fakes.open_many(mgr, 4)
        for conn in conns[:2]:
            await stack.enter_async_context(p.lock(p.track_stream(conn), ttl=300))
        check_invariants(mgr)
        sensor.pressure = True
        with trio.fail_after(30):
            while mgr._state.lock_budget >= 2:
                await advance(1)
        # low shrank, and the budget with it, below the two locks held.
        assert mgr._state.locked_connections == 2
        check_invariants(mgr)


# ------------------------------------------- what only the moment of pruning shows


def _mutant_regulator(
    monkeypatch: pytest.MonkeyPatch,
    *,
    protection: bool = True,
    locks: bool = True,
    mins: bool = True,
) -> None:
    """A regulator that forgets protections, locks or grant.mins, as a bug would."""
    from trio_connmgr import _regulator
    from trio_connmgr._core import _planner

    @contextlib.contextmanager
    def forgetting(state: Any) -> Iterator[None]:
        protected = dict(state.protected)
        held = {conn: conn._locks for conn in state.connections.values()}
        grants = {m: m.grant for m in state.members.values()}
        if not protection:
            state.protected.clear()
        if not locks:
            for conn in held:
                conn._locks = ()
        if not mins:
            for m, grant in grants.items():
                m.grant = cm.Grant(0, grant.max)
        try:
            yield
        finally:
            state.protected.update(protected)
            for conn, kept in held.items():
                conn._locks = kept
            for m, grant in grants.items():
                m.grant = grant

    def plan_round(state: Any, now: float, **kwargs: Any) -> Generator[None, None, Any]:
        with forgetting(state):
            return _planner.plan_now(state, now, **kwargs)
        yield  # pragma: no cover - a generator, like the real one

    def exclusion(state: Any, conn: cm.Connection, now: float) -> str | None:
        with forgetting(state):
            return _planner.exclusion(state, conn, now)

    monkeypatch.setattr(_regulator, "plan_round", plan_round)
    monkeypatch.setattr(_regulator, "exclusion", exclusion)
    if not mins:
        monkeypatch.setattr(_regulator, "below_min", lambda conn: False)


async def test_check_invariants_sees_a_protected_peer_pruned(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mutant_regulator(monkeypatch, protection=False)
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=3), grace_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 3)
        mgr.protect(conns[0].peer, "keep")
        result = await force_round(mgr)
        assert conns[0] in result.pruned
        with pytest.raises(AssertionError) as info:
            check_invariants(mgr, last_round=result)
        assert f"#{conns[0].id} was pruned though its peer 'peer-1' is protected" in str(
            info.value
        )
        # The protection is still there: the round result remembers, not the check.
        mgr.unprotect(conns[0].peer, "keep")
        with pytest.raises(AssertionError, match="is protected \\(invariant 2\\)"):
            check_invariants(mgr, last_round=result)


async def test_check_invariants_sees_a_locked_connection_pruned(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mutant_regulator(monkeypatch, locks=False)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=10), grace_period=0, lock_budget=2
        ) as mgr,
        mgr.enroll("/p", quota=cm.Quota(0, 3), scorer=lambda s: s.metadata["score"]) as p,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 3)
        for conn, score in zip(conns, [0.0, 1.0, 1.0], strict=True):
            p.track_stream(conn).metadata["score"] = score
        async with p.lock(next(iter(conns[0].streams)), ttl=60) as lock:
            result = await force_round(mgr)
            assert conns[0] in result.pruned
            assert lock.status == "dropped"
        with pytest.raises(AssertionError) as info:
            check_invariants(mgr, last_round=result)
        assert f"#{conns[0].id} was pruned while a lock protected it" in str(info.value)


@contextlib.asynccontextmanager
async def _dht_on_three(
    n: int,
) -> AsyncIterator[tuple[cm.ConnectionManager, cm.Enrollment, list[cm.Connection]]]:
    """``n`` connections, the first three carrying a stream of "/dht" (grant.min 3)."""
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=10), grace_period=0, lock_budget=2
        ) as mgr,
        mgr.enroll("/dht", quota=cm.Quota(3, 5)) as dht,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, n)
        for conn in conns[:3]:
            dht.track_stream(conn)
        yield mgr, dht, conns


async def test_check_invariants_sees_a_protocol_taken_below_its_min(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mutant_regulator(monkeypatch, mins=False)
    async with _dht_on_three(5) as (mgr, dht, _):
        result = await force_round(mgr, force=False)
        assert dht.usage < 3
        with pytest.raises(AssertionError) as info:
            check_invariants(mgr, last_round=result)
        assert "below its grant.min of 3, without being a forced take (invariant 3)" in str(
            info.value
        )


async def test_correct_rounds_pass_the_prune_time_checks(autojump_clock: object) -> None:
    # The same set-ups with the real regulator: nothing to report.
    async with _dht_on_three(7) as (mgr, dht, conns):
        mgr.protect(conns[3].peer, "keep")
        async with dht.lock(dht.track_stream(conns[4]), ttl=60):
            result = await force_round(mgr)
            assert result.pruned
            check_invariants(mgr, last_round=result)
            # A forced round revokes the lock (and may go below the min): still correct.
            result = await force_round(mgr, force=True)
            assert result.completed.revoked_locks == 1
            check_invariants(mgr, last_round=result)


async def test_a_round_is_judged_by_the_limits_it_worked_to(autojump_clock: object) -> None:
    from trio_connmgr.testing import FakeSensors

    sensors = FakeSensors()
    sensor = sensors.sensor(pressure=True)
    async with cm.open_connection_manager(
        limits=cm.Limits(low=10, high=20),
        grace_period=0,
        silence_period=0,
        sensing=sensors.sensing(sensor, interval=1),
    ) as mgr:
        # Pressure shrinks low and high step by step: each round worked to the
        # limits of its own time, which later rounds' checks must not use.
        report = await run_workload(mgr, [w.Connect(count=8), w.Connect(count=8), w.Advance(5)])
        assert report.rounds >= 2
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), grace_period=0) as mgr,
        open_fake_connections() as fakes,
        record_rounds(mgr) as rounds,
    ):
        await fakes.open_many(mgr, 5)
        await settle()
        assert rounds.last is not None
        assert rounds.last.limits == cm.Limits(low=2, high=4)


async def test_default_peers_never_land_on_a_peer_in_use(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=8, high=16)) as mgr,
        open_fake_connections(prefix="kad") as fakes,
    ):
        named = await fakes.open(mgr, "kad-2")
        first, second = await fakes.open_many(mgr, 2)
        assert (named.peer, first.peer, second.peer) == ("kad-2", "kad-1", "kad-3")
        assert fakes.track(mgr).peer == "kad-4"
        assert fakes.peer() == "kad-5"
        async with open_fake_connection(mgr) as plain:
            assert plain.peer == "peer-1"
        # open_fake_connection counts per manager, skipping peers in use.
        await fakes.open(mgr, "peer-2")
        async with open_fake_connection(mgr) as plain:
            assert plain.peer == "peer-3"


async def test_run_workload_lifts_its_protections(autojump_clock: object) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=8), grace_period=0) as mgr:
        await run_workload(
            mgr,
            [w.Connect(count=3), w.Protect(connection=0), w.Protect(connection=1)],
        )
        assert not mgr._state.protected


async def test_describe_names_the_protocol_a_connection_is_kept_for(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=4), grace_period=0) as mgr,
        mgr.enroll("/dht", quota=cm.Quota(2, 4)) as dht,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 3)
        for conn in conns[:2]:
            dht.track_stream(conn)
        assert describe(conns[0]).endswith("[/dht]: open (kept for the grant.min of '/dht')")
        assert describe(conns[2]).endswith(": open (prunable)")
        mgr.protect(conns[2].peer, "keep")

        def no_clock() -> float:
            raise RuntimeError("must be called from async context")

        # Without a clock (outside a Trio run) a grace period cannot be told,
        # but a protection still can.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trio, "current_time", no_clock)
            assert describe(conns[2]).endswith(": open (its peer is protected)")


async def test_assert_pruned_refuses_to_check_nothing() -> None:
    with pytest.raises(AssertionError, match="given no connections: nothing was checked"):
        assert_pruned([], phase="idle")
