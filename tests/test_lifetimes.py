"""Lifetimes: what ends when, who is woken, and what is let go."""

from __future__ import annotations

import gc
import weakref

import trio
import trio.testing

import trio_connmgr as cm


async def test_wait_revoked_returns_when_the_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    revoked: list[cm.Lock] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4), grace_period=0) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = mgr.track("peer", direction="outbound", close=trio.lowlevel.checkpoint)
        lock = p.lock(p.track_stream(conn), ttl=100, on_revoke=revoked.append)
        woke = trio.Event()
        async with lock, trio.open_nursery() as nursery:

            async def waiter() -> None:
                await lock.wait_revoked()
                woke.set()

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            conn.release()  # the transport saw the connection end
            with trio.fail_after(1):
                await woke.wait()
        assert lock.status == "dropped"
        assert not lock.revoked
        assert revoked == []  # on_revoke is for protection taken away, not ended
        await lock.wait_revoked()  # and it returns at once afterwards


async def test_released_locks_do_not_keep_connections_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refs: list[weakref.ref[cm.Connection]] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), max_lock_ttl=300) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 20)) as p,
    ):
        for i in range(2_000):
            conn = mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
            async with p.lock(p.track_stream(conn), ttl=300):
                pass
            conn.release()
            refs.append(weakref.ref(conn))
            del conn
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        # Long before any ttl ran out, almost all of them are gone.
        assert alive < 100, alive


async def test_closed_bursts_do_not_keep_connections_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refs: list[weakref.ref[cm.Connection]] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), burst_linger=3600) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 20)) as p,
        p.burst("crawl") as burst,
    ):
        for i in range(500):
            conn = mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
            p.track_stream(conn, burst=burst).close()
            conn.release()
            refs.append(weakref.ref(conn))
            del conn
        gc.collect()
        assert sum(ref() is not None for ref in refs) == 0
        assert burst.streams_enlisted == 500
        assert burst.connections_touched == 500
        assert not burst.streams


async def test_cancellation_from_outside_crosses_enroll_with_a_nested_nursery() -> None:
    """A Cancelled wrapped in a group by the body's own nursery is not the body's error."""
    after: list[str] = []
    async with trio.open_nursery() as outer:
        async with cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr:

            async def protocol(task_status: trio.TaskStatus[None]) -> None:
                async with mgr.enroll("p", quota=cm.Quota(0, 2)), trio.open_nursery() as inner:
                    inner.start_soon(trio.sleep_forever)
                    task_status.started()
                    await trio.sleep_forever()

            await outer.start(protocol)
        # The manager closed: it cancelled the enrollment, whose task must end
        # quietly, not crash the outer nursery with a stray Cancelled.
        await trio.testing.wait_all_tasks_blocked()
        after.append("the outer body goes on")
    assert after == ["the outer body goes on"]


async def test_unprotect_wakes_a_waiting_regulator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 2), grace_period=0, silence_period=100
    ) as mgr:
        mgr.protect("vip", "test")
        for _ in range(3):
            mgr.track("vip", direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(1)  # a round ran and could prune nothing
        assert mgr.statistics().connections == 3
        start = trio.current_time()
        assert mgr.unprotect("vip", "test") is False
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1
        assert trio.current_time() == start  # at once, not after a retry delay
