"""The manager's lifetime (SPEC §2, §12.8): no leaks, ManagerClosed, errors, statistics."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing

import trio_connmgr as cm


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task of the run, found by walking the task tree from the root."""
    found: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


async def busy_manager(
    mgr: cm.ConnectionManager, stack: AsyncExitStack, closes: list[str]
) -> None:
    """Put every kind of work under ``mgr``: tasks, streams, locks, bursts, tracked."""

    async def close() -> None:
        await trio.sleep(0.5)
        closes.append("closed")

    async def worker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    kad = await stack.enter_async_context(mgr.enroll("kad", quota=cm.Quota(1, 5)))
    kad.start_soon(worker)
    await kad.start(worker)
    for i in range(4):
        conn = mgr.track(i, direction="inbound", close=close)
        stream = kad.track_stream(conn)
        if i == 0:
            await stack.enter_async_context(kad.lock(stream, ttl=100))
    burst = await stack.enter_async_context(kad.burst("b"))
    burst.enlist(next(iter(kad.streams)))


async def test_nothing_left_after_exit(
    task_census: Any, autojump_clock: trio.testing.MockClock
) -> None:
    before = all_tasks()
    closes: list[str] = []
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 3), grace_period=1.0, triggers=[cm.triggers.Interval(5)]
    ) as mgr:
        async with AsyncExitStack() as stack:
            await busy_manager(mgr, stack, closes)
            during = all_tasks()
            assert len(during - before) >= 4  # services, kad's tasks
            assert task_census.alive
            # Keep the block open while a round runs and prunes.
            await trio.sleep(2)
            assert mgr.statistics().connections_pruned >= 1
            await trio.sleep(3)
        state = mgr._state
    assert task_census.spawned >= 4
    assert task_census.alive == set()
    assert all_tasks() == before
    assert state.connections == {}
    assert state.members == {}
    assert state.closed
    assert closes == ["closed"] * 4


async def test_use_after_close_raises_manager_closed() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 3)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 3)) as p,
        mgr.connection("c", direction="inbound") as conn,
    ):
        pass
    assert mgr._state.closed
    with pytest.raises(cm.ManagerClosed):
        async with mgr.connection("c", direction="inbound"):
            pytest.fail("opened on a closed manager")  # pragma: no cover
    with pytest.raises(cm.ManagerClosed):
        mgr.track("c", direction="outbound", close=trio.lowlevel.checkpoint)
    with pytest.raises(cm.ManagerClosed):
        async with mgr.enroll("q", quota=cm.Quota(0, 1)):
            pytest.fail("enrolled on a closed manager")  # pragma: no cover
    with pytest.raises(cm.ManagerClosed):
        await mgr.trim()
    # A left enrollment and a closed connection refuse new streams.
    with pytest.raises(cm.ResourceClosed):
        p.track_stream(conn)
    with pytest.raises(cm.ResourceClosed):
        p.start_soon(trio.sleep_forever)
    # Reading still works.
    assert mgr.statistics().connections == 0
    assert issubclass(cm.ManagerClosed, cm.ResourceClosed)
    assert issubclass(cm.ResourceClosed, cm.ConnMgrError)


async def test_exit_closes_connections_and_enrollments() -> None:
    seen: list[str] = []
    async with cm.open_connection_manager(limits=cm.Limits(2, 3)) as outer_mgr:
        conns: list[cm.Connection] = []

        async def protocol(mgr: cm.ConnectionManager, task_status: trio.TaskStatus[None]) -> None:
            async with mgr.enroll("p", quota=cm.Quota(0, 3)) as p:

                async def task() -> None:
                    try:
                        await trio.sleep_forever()
                    finally:
                        seen.append("task cancelled")

                p.start_soon(task)
                async with mgr.connection("c", direction="outbound") as conn:
                    conns.append(conn)
                    async with p.stream(conn):
                        task_status.started()
                        try:
                            await trio.sleep_forever()
                        finally:
                            seen.append(f"connection: {conn.close_reason}")
                pytest.fail("the enrollment's cancellation was swallowed")  # pragma: no cover
            # The enrollment block exits quietly once the manager has closed it.
            seen.append("left")

        async with (
            trio.open_nursery() as nursery,
            cm.open_connection_manager(limits=cm.Limits(2, 3)) as mgr,
        ):
            await nursery.start(protocol, mgr)
            assert outer_mgr.statistics().connections == 0  # managers are independent
            assert mgr.statistics().connections == 1
        assert sorted(seen[:2]) == ["connection: manager closed", "task cancelled"]
        assert seen[2:] == ["left"]
        assert conns[0].close_reason == "manager closed"


async def test_body_error_propagates_unwrapped() -> None:
    with pytest.raises(ValueError, match="from the body") as info:
        async with cm.open_connection_manager(limits=cm.Limits(2, 3)) as mgr:
            mgr.track("c", direction="outbound", close=trio.lowlevel.checkpoint)
            raise ValueError("from the body")
    assert type(info.value) is ValueError
    assert mgr._state.closed
    assert mgr._state.connections == {}


async def test_two_managers_coexist() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=0) as small,
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as big,
    ):
        for i in range(4):
            small.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
            big.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert small.statistics().connections == 1
        assert big.statistics().connections == 4
        async with small.enroll("p", quota=cm.Quota(0, 1)), big.enroll("p", quota=cm.Quota(0, 1)):
            pass


async def test_statistics_snapshot() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 6, hard=8)) as mgr,
        mgr.enroll("kad", quota=cm.Quota.share(0.5, 1), weight=2.0) as kad,
        mgr.enroll("ping", quota=cm.Quota(1, 2)) as ping,
    ):
        conns = [
            mgr.track(i, direction="inbound" if i % 2 else "outbound", close=trio.sleep_forever)
            for i in range(5)
        ]
        for conn in conns[:3]:
            kad.track_stream(conn)
        kad.track_stream(conns[0])
        ping.track_stream(conns[4]).close()
        ping.track_stream(conns[3])
        mgr.protect("friend", "t")
        stats = mgr.statistics()
        assert isinstance(stats, cm.Statistics)
        assert (stats.connections, stats.inbound, stats.outbound) == (5, 2, 3)
        assert (stats.low, stats.high, stats.hard) == (4, 6, 8)
        assert stats.limits_source == "configured"
        assert stats.streams == 5
        assert stats.streams_opened == 6
        assert stats.connections_opened == 5
        assert stats.protected_peers == 1
        assert stats.lock_budget == 2
        assert set(stats.protocols) == {"kad", "ping"}
        k = stats.protocols["kad"]
        assert isinstance(k, cm.ProtocolStatistics)
        assert (k.name, k.grant_min, k.grant_max, k.usage, k.streams, k.weight) == (
            "kad",
            3,
            6,
            3,
            4,
            2.0,
        )
        p = stats.protocols["ping"]
        assert (p.grant_min, p.grant_max, p.usage, p.streams, p.streams_opened) == (1, 2, 1, 1, 2)
        assert stats.rounds.count == 0
        assert stats.rounds.last_trigger is None
        assert stats.refusals == {}
        # Frozen: a snapshot does not move with the manager.
        with pytest.raises(AttributeError):
            stats.connections = 0  # type: ignore[misc]
        conns[4].release()
        assert stats.connections == 5
        assert mgr.statistics().connections == 4
        assert mgr.limits == cm.Limits(4, 6, 8)
        for conn in conns:
            conn.release()


async def test_trim_runs_at_once_and_starts_the_silence_period_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 3), grace_period=0, silence_period=10
    ) as mgr:
        for i in range(4):  # above high: the regulator's round prunes to low
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().rounds.count == 1
        await trio.sleep(1)
        for i in range(4, 6):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        # Within the silence period, below high: trim() does not wait for it.
        assert len(await mgr.trim()) == 2
        assert trio.current_time() == 1
        # Above high again: the regulator waits 10 s from the trim's round.
        for i in range(6, 9):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(9.99)
        assert mgr.statistics().connections == 4
        await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1
        assert mgr.statistics().rounds.last_at == 11
