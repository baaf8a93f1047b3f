"""The testing toolkit in detail: what each assertion, check, fake and strategy promises."""

from __future__ import annotations

import math
import textwrap
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings

import trio_connmgr as cm
from trio_connmgr._core._events import RoundCompleted
from trio_connmgr.testing import (
    FakeSensors,
    MetadataScorer,
    RaisingScorer,
    RoundResult,
    advance,
    assert_not_pruned,
    assert_open,
    assert_pruned,
    check_invariants,
    describe,
    open_fake_connections,
    open_manager_factory,
    record_rounds,
    run_workload,
    settle,
    wait_idle,
)
from trio_connmgr.testing import strategies as cst
from trio_connmgr.testing import workload as w

pytest_plugins = ["pytester"]


def _completed(**fields: object) -> RoundCompleted:
    values: dict[str, object] = {
        "time": trio.current_time(),
        "number": 1,
        "trigger": "trim",
        "forced": False,
        "count_before": 0,
        "count_after": 0,
        "victims": 0,
        "by_phase": (),
        "duration": 0.0,
        "revoked_locks": 0,
        "unprunable": 0,
    }
    values.update(fields)
    return RoundCompleted(**values)  # type: ignore[arg-type]


def _reason(phase: cm.Phase, rank: int, *, forced: bool = False) -> cm.PruneReason:
    protocol = "/kad" if phase is cm.Phase.BURST else None
    return cm.PruneReason(phase, protocol, 0.0, rank, "trim", forced)


def _violations(mgr: cm.ConnectionManager, **kwargs: Any) -> str:
    with pytest.raises(AssertionError) as info:
        check_invariants(mgr, **kwargs)
    return str(info.value)


# -------------------------------------------------------------- assertions


async def test_assert_pruned_fails_for_a_connection_closed_without_pruning(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        open_fake_connections() as fakes,
    ):
        conn = await fakes.open(mgr)
        await fakes.close(conn)
        with pytest.raises(AssertionError, match=r"#1 peer='peer-1' inbound: closed, not pruned"):
            assert_pruned(conn)


async def test_assert_pruned_checks_the_protocol_and_forced_flag(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=4), grace_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 2)
        mgr._prune(conns[0], _reason(cm.Phase.BURST, 1))
        mgr._prune(conns[1], _reason(cm.Phase.IDLE, 2, forced=True))
        assert_pruned(conns[0], phase="burst", protocol="/kad", forced=False)
        assert_pruned(conns[1], protocol=None, forced=True)
        with pytest.raises(AssertionError, match="protocol is '/kad'"):
            assert_pruned(conns[0], protocol="/chat")
        with pytest.raises(AssertionError, match="protocol is None"):
            assert_pruned(conns[1], protocol="/kad")
        with pytest.raises(AssertionError, match="forced is False"):
            assert_pruned(conns[0], forced=True)
        with pytest.raises(AssertionError, match="forced is True"):
            assert_pruned(conns[1], forced=False)


async def test_assert_pruned_in_order_wants_strictly_ascending_ranks(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=8), grace_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        a, b, c, d = await fakes.open_many(mgr, 4)
        for conn, rank in ((a, 1), (b, 2), (c, 3), (d, 1)):
            mgr._prune(conn, _reason(cm.Phase.IDLE, rank))
        assert_pruned([a, b, c], in_order=True)
        # One pair out of order is enough.
        with pytest.raises(AssertionError, match=r"ranks \[1, 3, 2\], expected ascending"):
            assert_pruned([a, c, b], in_order=True)
        # Equal ranks (two rounds' first victims) are not an order.
        with pytest.raises(AssertionError, match=r"ranks \[1, 1\]"):
            assert_pruned([a, d], in_order=True)


async def test_assert_not_pruned_and_assert_open_refuse_to_check_nothing() -> None:
    with pytest.raises(AssertionError, match="given no connections: nothing was checked"):
        assert_not_pruned([])
    with pytest.raises(AssertionError, match="given no connections: nothing was checked"):
        assert_open(iter([]))


async def test_describe_says_a_lock_protects_a_locked_connection(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8), grace_period=0) as mgr,
        mgr.enroll("/p", quota=cm.Quota(0, 4)) as p,
        open_fake_connections() as fakes,
    ):
        conn = await fakes.open(mgr)
        async with p.lock(p.track_stream(conn), ttl=10):
            assert describe(conn) == "#1 peer='peer-1' inbound [/p]: open (a lock protects it)"


async def test_describe_outside_a_trio_run_does_not_claim_a_grace_period(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8), grace_period=5) as mgr,
        open_fake_connections() as fakes,
    ):
        await advance(10)
        conn = await fakes.open(mgr)
        await advance(5)  # past its grace period

        def no_clock() -> float:
            raise RuntimeError("must be called from async context")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trio, "current_time", no_clock)
            assert describe(conn).endswith(": open (prunable)")


# -------------------------------------------------------------- invariants


async def test_check_invariants_reports_corrupted_connections(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8)) as mgr,
        open_fake_connections() as fakes,
    ):
        state = mgr._state
        first, _, third = await fakes.open_many(mgr, 3)
        state.connections[first.id] = third
        assert "connection #3 is registered under id 1" in _violations(mgr)
        state.connections[first.id] = first
        first.closed = True
        assert "connection #1 is closed (None) but still counted" in _violations(mgr)
        first.closed = False
        check_invariants(mgr)


async def test_check_invariants_reports_corrupted_streams(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8)) as mgr,
        mgr.enroll("/a", quota=cm.Quota(0, 4)) as a,
        open_fake_connections() as fakes,
    ):
        first, second = await fakes.open_many(mgr, 2)
        stream = a.track_stream(first)
        other = a.track_stream(second)

        stream.closed = True
        message = _violations(mgr)
        assert "closed stream #1 is still on connection #1" in message
        assert "closed stream #1 is still counted for '/a'" in message
        stream.closed = False

        second.streams.add(stream)
        message = _violations(mgr)
        assert "stream #1 is on connection #2 but belongs to #1" in message
        assert "connection #2 counts streams per protocol {'/a': 1} but carries {'/a': 2}" in (
            message
        )
        second.streams.discard(stream)

        first.streams.discard(stream)
        assert "stream #1 of '/a' is missing from connection #1's streams" in _violations(mgr)
        first.streams.add(stream)

        a.closed = True
        message = _violations(mgr)
        assert "protocol '/a' has left but is still enrolled" in message
        a.closed = False

        members = dict(mgr._state.members)
        mgr._state.members.clear()
        message = _violations(mgr)
        assert "stream #2 on connection #2 belongs to '/a', which is not enrolled" in message
        mgr._state.members.update(members)

        # A protocol counted at 0 streams is no protocol on the connection.
        first._protocols[a] = 1
        other.close()
        second._protocols[a] = 0
        check_invariants(mgr)
        del second._protocols[a]

        a.usage -= 1
        assert "usage of '/a' is 0 but its open streams are on 1 connection(s)" in _violations(mgr)
        a.usage += 1
        check_invariants(mgr)


async def test_check_invariants_reports_grants_outside_zero_and_the_share(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8)) as mgr,
        mgr.enroll("/a", quota=cm.Quota(0, 4)) as a,
    ):
        grant = a.grant
        a.grant = cm.Grant(2, 9)
        message = _violations(mgr)
        assert "grant of '/a' is min=2, max=9: invariant 5 wants 0 <= min <= max <= G=8" in message
        a.grant = cm.Grant(-1, 4)
        assert "grant of '/a' is min=-1, max=4: invariant 5" in _violations(mgr)
        a.grant = grant
        check_invariants(mgr)


async def test_check_invariants_reports_corrupted_locks(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8), grace_period=0) as mgr,
        mgr.enroll("/a", quota=cm.Quota(0, 8)) as a,
        open_fake_connections() as fakes,
    ):
        state = mgr._state
        conns = await fakes.open_many(mgr, 3)
        streams = [a.track_stream(conn) for conn in conns]
        async with a.lock(streams[0], ttl=60), a.lock(streams[1], ttl=60):
            check_invariants(mgr)
            lock = conns[0]._locks[0]

            lock.status = "released"
            assert "lock #1 protects connection #1 but is released" in _violations(mgr)
            lock.status = "held"

            lock.stream = streams[1]
            assert "lock #1 sits on connection #1 but its stream is on #2" in _violations(mgr)
            lock.stream = streams[0]

            a._locked[conns[2]] = 1
            assert "'/a' counts locks {1: 1, 2: 1, 3: 1}" in _violations(mgr)
            del a._locked[conns[2]]

            conns[0].closed = True
            assert "'/a' counts a lock on closed connection #1" in _violations(mgr)
            conns[0].closed = False

            # A third lock over the default budget (half of low=4): only a bug
            # could grant it.
            state._lock_budget = 3
            async with a.lock(streams[2], ttl=60):
                state._lock_budget = None
                assert "3 connections are locked, over the lock budget of 2" in _violations(mgr)
        check_invariants(mgr)


async def test_check_invariants_on_a_closed_manager_reports_what_is_left() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        mgr.enroll("/a", quota=cm.Quota(0, 2)) as a,
    ):
        pass
    state = mgr._state
    check_invariants(mgr)
    state.outbound = 1
    assert "the manager is closed but counts inbound=0, outbound=1" in _violations(mgr)
    state.outbound = 0
    state.members["/a"] = a
    assert "the manager is closed but these protocols are still enrolled: ['/a']" in (
        _violations(mgr)
    )
    del state.members["/a"]
    check_invariants(mgr)


async def test_check_invariants_judges_a_round_that_started_just_above_high(
    autojump_clock: object,
) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr:
        message = _violations(mgr, last_round=_completed(count_before=5, count_after=5))
        assert "started at count 5 > high=4 and left 5 connections" in message
        check_invariants(mgr, last_round=_completed(count_before=4, count_after=4))


async def test_check_invariants_judges_each_victim_of_a_round_result(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=16), grace_period=10) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 5)
        await advance(9.5)
        # Half a second short of its grace period.
        mgr._prune(conns[0], _reason(cm.Phase.IDLE, 1))
        message = _violations(mgr, last_round=RoundResult((conns[0],), _completed(victims=1)))
        assert "9.500s after opening, within its grace period of 10.0s" in message

        await advance(1)
        # Burst-only victims must come before every other one (invariant 4).
        for conn, phase, rank in (
            (conns[1], cm.Phase.BURST, 1),
            (conns[2], cm.Phase.IDLE, 2),
            (conns[3], cm.Phase.BURST, 3),
            (conns[4], cm.Phase.IDLE, 4),
        ):
            mgr._prune(conn, _reason(phase, rank))
        result = RoundResult(tuple(conns[1:]), _completed(victims=4))
        message = _violations(mgr, last_round=result)
        assert "pruned a burst-only connection (rank 3) after another victim (rank 2)" in message
        assert "duplicate ranks" not in message

        # Two victims of one round cannot share a rank.
        result = RoundResult((conns[2], conns[4]), _completed(victims=2))
        check_invariants(mgr, last_round=result)
        object.__setattr__(result, "pruned", (conns[2], conns[2]))
        assert "round 1 gave duplicate ranks [2, 2]" in _violations(mgr, last_round=result)

        # The victims it reports are those pruned.
        result = RoundResult((conns[2], conns[4]), _completed(victims=3))
        assert "round 1 reports 3 victim(s) but 2 connection(s) were pruned" in _violations(
            mgr, last_round=result
        )


async def test_check_invariants_wants_round_victims_closed_as_pruned(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=16), grace_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        conn = await fakes.open(mgr)
        # An eviction at hard carries a PruneReason, but no round pruned it.
        mgr._state.close_connection(conn, "evicted", _reason(cm.Phase.IDLE, 1))
        await settle()
        message = _violations(mgr, last_round=RoundResult((conn,), _completed(victims=1)))
        assert "connection #1 was reported pruned by round 1 but is evicted" in message


async def test_a_lock_released_before_its_connection_is_pruned_is_no_violation(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=8), grace_period=0, lock_budget=2
        ) as mgr,
        mgr.enroll("/a", quota=cm.Quota(0, 8), scorer=MetadataScorer()) as a,
        open_fake_connections() as fakes,
    ):
        weak, strong = await fakes.open_many(mgr, 2)
        a.track_stream(strong).metadata["score"] = 1.0
        stream = a.track_stream(weak)
        stream.metadata["score"] = 0.0
        async with record_rounds(mgr) as rounds:
            async with a.lock(stream, ttl=60):
                pass
            await mgr.trim()
        assert rounds.pruned == [weak]
        assert rounds.last is not None
        check_invariants(mgr, last_round=rounds.last)


async def test_a_round_result_carries_only_its_own_violations(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=8), grace_period=0) as mgr,
        mgr.enroll("/dht", quota=cm.Quota(2, 4)) as dht,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 4)
        dht.track_stream(conns[0])
        dht.track_stream(conns[1])
        async with record_rounds(mgr) as rounds:
            # Taking '/dht' from its grant.min of 2 to 1 without a forced take.
            mgr._prune(conns[0], _reason(cm.Phase.TALLY, 1))
            await mgr.trim()
            await mgr.trim()
        first, second = rounds.rounds[-2:]
        assert "took '/dht' to usage 1, below its grant.min of 2" in _violations(
            mgr, last_round=first
        )
        check_invariants(mgr, last_round=second)


# -------------------------------------------------------------------- time


async def test_closing_a_factory_manager_moves_a_manual_clock_no_further_than_needed(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_manager_factory() as factory, trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 100)
        mgr = await factory(limits=cm.Limits(low=2, high=4))
        await factory.close(mgr)
        assert trio.current_time() == 0
        nursery.cancel_scope.cancel()


async def test_the_factory_closes_its_managers_newest_first() -> None:
    closed: list[str] = []

    def closer(name: str) -> Any:
        async def close() -> None:
            closed.append(name)

        return close

    async with open_manager_factory() as factory:
        for name in ("old", "new"):
            mgr = await factory()
            mgr.track(name, direction="inbound", close=closer(name))
    assert closed == ["new", "old"]


def test_wait_idle_waits_for_closers_under_a_clock_that_runs_by_itself() -> None:
    # A MockClock with a rate moves by itself: it is no manual clock, and
    # wait_idle lets it run to the end of the close() callbacks.
    finished: list[str] = []

    async def close() -> None:
        await trio.sleep(1)
        finished.append("closed")

    async def main() -> None:
        async with cm.open_connection_manager(
            limits=cm.Limits(low=1, high=2), grace_period=0
        ) as mgr:
            conn = mgr.track("slow", direction="inbound", close=close)
            mgr._prune(conn, _reason(cm.Phase.IDLE, 1))
            await wait_idle(mgr)
            assert finished == ["closed"]

    trio.run(main, clock=trio.testing.MockClock(rate=1000))


# ------------------------------------------------------------------- fakes


async def test_fake_connections_open_skips_peers_in_use(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8)) as mgr,
        open_fake_connections() as fakes,
    ):
        await fakes.open(mgr, "peer-1")
        assert (await fakes.open(mgr)).peer == "peer-2"


@pytest.mark.parametrize("n", [2.5, -1, True, "3"])
async def test_open_many_refuses_a_count_that_is_no_count(n: Any, autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8)) as mgr,
        open_fake_connections() as fakes,
    ):
        with pytest.raises(cm.ConfigError, match=f"open_many n must be .*, got {n!r}"):
            await fakes.open_many(mgr, n)
        with pytest.raises(cm.ConfigError, match=f"PeerIds.take n must be .*, got {n!r}"):
            fakes.peers.take(n)
        assert fakes.opened == []
        assert await fakes.open_many(mgr, 0) == []
        assert fakes.peers.take(0) == []


async def test_tracked_fakes_are_listed_as_opened(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=8)) as mgr,
        open_fake_connections() as fakes,
    ):
        conn = await fakes.open(mgr)
        tracked = fakes.track(mgr)
        assert fakes.opened == [conn, tracked]
        assert fakes.open_connections == [conn, tracked]
        await fakes.close(tracked)
        assert fakes.open_connections == [conn]


def test_metadata_scorer_defaults_to_the_neutral_score() -> None:
    class Stream:
        def __init__(self) -> None:
            self.metadata: dict[str, float] = {}

    assert MetadataScorer()(Stream()) == 0.5  # type: ignore[arg-type]


def test_fake_sensors_keep_every_sensor_and_sense_every_second() -> None:
    kit = FakeSensors()
    disk = kit.sensor("disk")
    assert kit.sensors == [disk]
    sensing = kit.sensing()
    assert sensing.interval == 1.0
    assert len(kit.sensors) == 2
    assert kit.sensors[1].name == "fake-2"


# --------------------------------------------------------------- workloads


async def test_run_workload_enrols_again_after_a_leave(autojump_clock: object) -> None:
    enrolled: list[bool] = []

    def look(op: w.Op, mgr: cm.ConnectionManager) -> None:
        enrolled.append(w.PROTOCOLS[0] in mgr._state.members)

    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr:
        report = await run_workload(
            mgr,
            [w.Enrol(0, cm.Quota(0, 2)), w.Leave(0), w.Enrol(0, cm.Quota(0, 2)), w.Connect(0)],
            on_step=look,
        )
    assert enrolled == [True, False, True, True]
    assert report.skipped == 1  # connecting no connection does nothing


async def test_run_workload_uses_bursts_as_written(autojump_clock: object) -> None:
    seen: list[tuple[int, ...]] = []

    def bursts(op: w.Op, mgr: cm.ConnectionManager) -> None:
        member = mgr._state.members.get(w.PROTOCOLS[0])
        if member is not None:
            seen.append(
                tuple(sorted(b.id for b in member._open_bursts))
                + tuple(1000 + s.burst.id for s in member.streams if s.burst is not None)
            )

    async with cm.open_connection_manager(limits=cm.Limits(low=4, high=8)) as mgr:
        await run_workload(
            mgr,
            [
                w.Enrol(0, cm.Quota(0, 4)),
                w.Connect(1),
                w.OpenBurst(0),
                w.OpenBurst(0),
                w.OpenStream(0, 0, in_burst=True),
                w.CloseBurst(0),
            ],
            on_step=bursts,
        )
    # The stream goes in the newest burst (#2); CloseBurst closes the oldest (#1).
    assert seen[-2:] == [(1, 2, 1002), (2, 1002)]


async def test_run_workload_counts_denied_locks_and_runs_forced_trims(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=4, high=8), grace_period=0, lock_budget=0
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        report = await run_workload(
            mgr,
            [
                w.Enrol(0, cm.Quota(0, 4)),
                w.Connect(1),
                w.OpenStream(0, 0),
                w.LockStream(0),
                w.Trim(force=True),
            ],
        )
    assert sum(report.locks_denied.values()) == 1
    assert [r.completed.trigger for r in rounds.rounds] == ["force"]


async def test_run_workload_checks_close_calls_of_tracked_connections(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_connmgr.testing import workload as workload_module

    made: list[Any] = []
    original = workload_module.open_fake_connections

    def capture(**kwargs: Any) -> Any:
        cm_ = original(**kwargs)

        class Wrapper:
            async def __aenter__(self) -> Any:
                fakes = await cm_.__aenter__()
                made.append(fakes)
                return fakes

            async def __aexit__(self, *exc: Any) -> Any:
                return await cm_.__aexit__(*exc)

        return Wrapper()

    monkeypatch.setattr(workload_module, "open_fake_connections", capture)

    def miscount(calls: int) -> Any:
        def step(op: w.Op, mgr: cm.ConnectionManager) -> None:
            fakes = made[-1]
            for conn, held in fakes._held.items():
                if conn.closed and held.tracked:
                    held.close_calls = calls

        return step

    async with cm.open_connection_manager(limits=cm.Limits(low=1, high=8), grace_period=0) as mgr:
        # A released tracked connection whose close() was called anyway.
        with pytest.raises(AssertionError, match=r"released connection #\d+: close\(\) awaited 1"):
            await run_workload(
                mgr,
                [w.Connect(1, tracked=True), w.Disconnect(0), w.Advance(0)],
                on_step=miscount(1),
            )
        # A pruned tracked connection whose close() was never awaited.
        with pytest.raises(AssertionError, match=r"close\(\) awaited 0 times, expected exactly"):
            await run_workload(
                mgr,
                [w.Connect(2, tracked=True), w.Trim(), w.Advance(0)],
                on_step=miscount(0),
            )


async def test_run_workload_returns_once_the_manager_is_idle(autojump_clock: object) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=1, high=1), grace_period=0) as mgr:
        start = trio.current_time()
        report = await run_workload(
            mgr, [w.Connect(2, tracked=True, close_delay=5.0), w.Advance(0)], check=False
        )
        assert len(report.pruned) == 1
        # The pruned connection's close() (5 seconds long) has been awaited.
        assert trio.current_time() - start >= 5.0
        assert not mgr._nursery.child_tasks


# -------------------------------------------------------------- strategies


@settings(max_examples=200, deadline=None)
@given(cst.limits(hard=True))
def test_limits_with_hard_keep_it_at_or_above_high(limits: cm.Limits) -> None:
    assert limits.hard is not None
    assert limits.high <= limits.hard <= 2 * 20


def test_limits_may_put_hard_at_high() -> None:
    from hypothesis import find

    found = find(cst.limits(hard=True), lambda limits: limits.hard == limits.high)
    assert found.hard == found.high


@settings(max_examples=200, deadline=None)
@given(cst.operations(tracked=False, garbage_scorers=False))
def test_operations_leave_out_what_was_turned_off(op: w.Op) -> None:
    if isinstance(op, w.Connect):
        assert not op.tracked
    if isinstance(op, w.Enrol):
        assert getattr(op.scorer, "well_behaved", True)


@settings(max_examples=100, deadline=None)
@given(cst.workloads(min_size=0, max_size=0))
def test_workloads_of_no_operation_are_their_prelude(workload: list[w.Op]) -> None:
    # An Enrol of protocol 0, 1 to 3 Connects, then up to 6 OpenStreams of protocol 0.
    kinds = [type(op).__name__ for op in workload]
    connects = kinds.count("Connect")
    streams = kinds.count("OpenStream")
    assert kinds == ["Enrol"] + ["Connect"] * connects + ["OpenStream"] * streams
    assert 1 <= connects <= 3
    assert streams <= 6


# ----------------------------------------------------------------- plugin


@pytest.mark.parametrize(
    "option",
    [
        "admission=ADMISSION",
        "triggers=[SPIKE]",
    ],
)
def test_stateful_admission_and_triggers_of_a_marker_serve_one_test(
    pytester: pytest.Pytester, option: str
) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\naddopts = -p no:cacheprovider\n")
    pytester.makepyfile(
        test_shared=textwrap.dedent(
            f"""
            import pytest
            import trio_connmgr as cm
            import trio_connmgr.triggers

            SPIKE = cm.triggers.Spike(connections=5, window=1)
            ADMISSION = cm.Admission(rate=10, burst=10)


            @pytest.mark.connmgr(limits=cm.Limits(low=2, high=4), {option})
            async def test_once(connmgr):
                pass


            # A marker of its own, built anew, but around the same object.
            @pytest.mark.connmgr(limits=cm.Limits(low=2, high=4), {option})
            async def test_again(connmgr):
                pass
            """
        )
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*was already used by an earlier test's manager*"])


def test_a_raising_scorer_needs_a_positive_every() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(cm.ConfigError, match=f"RaisingScorer.every .*, got {bad!r}"):
            RaisingScorer(every=bad)  # type: ignore[arg-type]
    scorer = RaisingScorer(every=2)
    assert scorer(None) == 0.5  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="scorer failure"):
        scorer(None)  # type: ignore[arg-type]


async def test_track_refuses_a_close_delay_that_is_no_period() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        open_fake_connections() as fakes,
    ):
        for bad in (-1, math.inf, math.nan, "1"):
            with pytest.raises(cm.ConfigError, match="track close_delay"):
                fakes.track(mgr, close_delay=bad)  # type: ignore[arg-type]
        assert mgr.connections == ()
