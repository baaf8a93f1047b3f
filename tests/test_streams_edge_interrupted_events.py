"""Connections, streams, locks and protocols are accounted for even when an event
writer raises what must not be caught (a KeyboardInterrupt from a trace file):
bodies are cancelled and close() awaited (SPEC §12 invariant 7), streams closed."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import Interrupt, InterruptingFile, drain

import trio_connmgr as cm
from trio_connmgr.testing import check_invariants


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


async def test_a_stream_body_is_cancelled_when_the_close_event_is_interrupted() -> None:
    seen: list[str] = []
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 10), trace=InterruptingFile('"connection_closed"')
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
        trio.open_nursery() as nursery,
    ):

        async def handler(task_status: trio.TaskStatus[cm.Connection]) -> None:
            async with mgr.connection("a", direction="inbound") as conn, p.stream(conn):
                task_status.started(conn)
                try:
                    await trio.sleep_forever()
                finally:
                    seen.append("stream body cancelled")
            seen.append(f"connection block exited: {conn.close_reason}")

        conn = await nursery.start(handler)
        with pytest.raises(Interrupt):
            conn.release()
        await trio.testing.wait_all_tasks_blocked()
        # The interrupt comes out, but the connection is closed all the way:
        # neither its body nor its stream's goes on.
        assert seen == ["stream body cancelled", "connection block exited: released"]
        check_invariants(mgr)


async def test_a_closing_connections_streams_close_when_a_lock_event_is_interrupted() -> None:
    woken: list[int] = []
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 10), trace=InterruptingFile('"lock_released"')
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
        trio.open_nursery() as nursery,
    ):
        conn = mgr.track("a", direction="outbound", close=noop_close)
        first = p.track_stream(conn)
        second = p.track_stream(conn)
        async with p.lock(first, ttl=10) as lock1, p.lock(second, ttl=10) as lock2:

            async def wait(lock: cm.Lock) -> None:
                await lock.wait_revoked()
                woken.append(lock.id)

            nursery.start_soon(wait, lock1)
            nursery.start_soon(wait, lock2)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Interrupt):
                conn.release()
            assert conn.closed
            # Both of its locks ended (their waiters woken), both of its streams closed.
            assert (lock1.status, lock2.status) == ("dropped", "dropped")
            assert first.closed
            assert second.closed
            assert conn.streams == set()
            assert p.usage == 0
            check_invariants(mgr)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(woken) == [lock1.id, lock2.id]


async def test_a_pruned_connection_is_closed_when_the_prune_event_is_interrupted() -> None:
    closed: list[str] = []

    async def close() -> None:
        await trio.lowlevel.checkpoint()
        closed.append("closed")

    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 10), grace_period=0, trace=InterruptingFile('"connection_pruned"')
        ) as mgr,
        mgr.subscribe() as events,
    ):
        conns = [mgr.track(n, direction="outbound", close=close) for n in range(2)]
        with pytest.RaisesGroup(Interrupt, allow_unwrapped=True, flatten_subgroups=True):
            await mgr.trim()
        await trio.testing.wait_all_tasks_blocked()
        (victim,) = [conn for conn in conns if conn.closed]
        assert victim.close_reason == "pruned"
        # Its close() was awaited, as for any pruned connection, and subscribers
        # were told of its close too.
        assert closed == ["closed"]
        kinds = [event.kind for event in drain(events)]
        assert kinds[-2:] == ["connection_pruned", "connection_closed"]


@pytest.mark.parametrize("marker", ['"lock_released"', '"burst_closed"'])
async def test_a_protocol_leaving_closes_its_streams_when_an_event_is_interrupted(
    marker: str,
) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 10), trace=InterruptingFile(marker)
    ) as mgr:
        conn = mgr.track("a", direction="outbound", close=noop_close)
        with pytest.raises(Interrupt):
            async with mgr.enroll("p", quota=cm.Quota(1, 4)) as p:
                stream = p.track_stream(conn)
                # Both still held as the protocol leaves.
                lock = await p.lock(stream, ttl=10).__aenter__()
                burst = await p.burst().__aenter__()
        # The protocol has left all the same: its lock ended, its burst closed,
        # its stream closed, its quota returned, and its name is free again.
        assert lock.status == "released"
        assert burst.closed_at is not None
        assert stream.closed
        assert conn.streams == set()
        assert p.usage == 0
        assert "p" not in mgr.statistics().protocols
        check_invariants(mgr)
        async with mgr.enroll("p", quota=cm.Quota(1, 4)) as again:
            assert again.grant == cm.Grant(1, 4)


@pytest.mark.parametrize("how", ["track", "connection"])
async def test_a_connection_whose_opening_event_is_interrupted_is_not_counted(how: str) -> None:
    closed: list[str] = []

    async def close() -> None:
        await trio.lowlevel.checkpoint()
        closed.append("closed")

    file = InterruptingFile('"connection_opened"')
    async with cm.open_connection_manager(limits=cm.Limits(2, 10), trace=file) as mgr:
        with pytest.raises(Interrupt):
            if how == "track":
                mgr.track("a", direction="inbound", close=close)
            else:
                async with mgr.connection("a", direction="inbound"):
                    pytest.fail("admitted")  # pragma: no cover
        # The caller never got it: it does not stay counted.
        stats = mgr.statistics()
        assert (stats.connections, stats.inbound) == (0, 0)
        assert mgr.connections == ()
        check_invariants(mgr)
    # Nor is close() called for a connection the transport was refused.
    assert closed == []


async def test_a_lock_whose_grant_event_is_interrupted_is_not_left_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 10), trace=InterruptingFile('"lock_granted"')
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = mgr.track("a", direction="outbound", close=noop_close)
        lock = p.lock(p.track_stream(conn), ttl=5)
        with pytest.raises(Interrupt):
            async with lock:
                pytest.fail("entered")  # pragma: no cover
        # The caller never held it: it protects nothing, now or after its ttl.
        assert not lock.held
        assert not conn.locked
        assert mgr.statistics().locked_connections == 0
        await lock.wait_revoked()  # returns at once
        check_invariants(mgr)


async def test_a_denied_lock_whose_event_is_interrupted_still_wakes_its_waiters() -> None:
    woken: list[str] = []
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 10), lock_budget=0, trace=InterruptingFile('"lock_denied"')
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
        trio.open_nursery() as nursery,
    ):
        conn = mgr.track("a", direction="outbound", close=noop_close)
        lock = p.lock(p.track_stream(conn), ttl=5)

        async def wait() -> None:
            await lock.wait_revoked()
            woken.append(lock.status)

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Interrupt):
            async with lock:
                pytest.fail("entered")  # pragma: no cover
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["denied"]


async def test_a_burst_whose_opening_event_is_interrupted_is_not_left_open() -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 10), trace=InterruptingFile('"burst_opened"')
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        burst = p.burst("lookup")
        with pytest.raises(Interrupt):
            async with burst:
                pytest.fail("entered")  # pragma: no cover
        # The caller never entered it: it is closed, and takes no stream.
        assert burst.closed_at is not None
        assert mgr.statistics().protocols["p"].bursts_open == 0
        conn = mgr.track("a", direction="outbound", close=noop_close)
        with pytest.raises(cm.ResourceClosed):
            p.track_stream(conn, burst=burst)


async def test_a_lock_released_with_its_event_interrupted_still_wakes_the_regulator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every connection is locked as its grace period ends: the round at
    # count > high prunes nothing and waits (silence_period is long). Releasing
    # one lock makes its connection prunable, and wakes the regulator, even when
    # the release event's writer raises an interrupt.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2),
            grace_period=10,
            silence_period=1000,
            lock_budget=3,
            trace=InterruptingFile('"how":"released"'),
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 2)) as p,
        mgr.enroll("q", quota=cm.Quota(0, 2)) as q,
    ):
        conns = [mgr.track(i, direction="outbound", close=noop_close) for i in range(3)]
        # (An enrollment locks at most grant.max = 2 connections.)
        locks = [
            member.lock(member.track_stream(conn), ttl=10_000)
            for member, conn in zip((p, q, q), conns, strict=True)
        ]
        for lock in locks:
            await lock.__aenter__()
        await trio.sleep(11)
        assert mgr.statistics().rounds.last_victims == 0
        assert not any(conn.closed for conn in conns)
        with pytest.raises(Interrupt):
            await locks[0].__aexit__(None, None, None)
        assert not locks[0].held
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 11
        assert conns[0].closed
        for lock in locks[1:]:
            await lock.__aexit__(None, None, None)


async def test_a_lock_shortened_with_its_event_interrupted_expires_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 10), trace=InterruptingFile('"lock_extended"')
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = mgr.track("a", direction="outbound", close=noop_close)
        async with p.lock(p.track_stream(conn), ttl=100) as lock:
            with pytest.raises(Interrupt):
                lock.extend(1)
            assert lock.expires_at == 1
            await trio.sleep(2)
            assert lock.status == "expired"
