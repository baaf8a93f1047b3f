"""Churn without growth: many connections and streams through the manager, nothing left."""

from __future__ import annotations

import gc
import tracemalloc

import trio

import trio_connmgr as cm

from .conftest import Figures, live_tasks, open_fds, scale

CONNECTIONS = scale(5_000, 100_000)
STREAMS_PER_CONNECTION = 3


async def test_churn_leaves_nothing_behind(figures: Figures, collected: None) -> None:
    limits = cm.Limits(low=50, high=100)
    async with (
        cm.open_connection_manager(limits=limits, grace_period=0.0) as mgr,
        mgr.enroll("/a", quota=cm.Quota(0, 100)) as a,
        mgr.enroll("/b", quota=cm.Quota(0, 100)) as b,
    ):
        closed: list[int] = []

        async def close() -> None:
            closed.append(1)

        async def churn(n: int) -> None:
            for i in range(n):
                if i % 2:
                    async with mgr.connection(i, direction="inbound") as conn:
                        async with a.stream(conn):
                            pass
                        s1 = b.track_stream(conn)
                        s2 = a.track_stream(conn, burst=None)
                        s1.close()
                        s2.close()
                else:
                    conn = mgr.track(i, direction="outbound", close=close)
                    for _ in range(STREAMS_PER_CONNECTION):
                        b.track_stream(conn).close()
                    if i % 10 == 0:
                        # Ends with streams still open: release must close them.
                        a.track_stream(conn)
                    conn.release()

        # Warm up (interning, caches, first-time allocations) before measuring.
        await churn(1_000)
        gc.collect()
        tasks_before = live_tasks()
        fds_before = open_fds()
        tracemalloc.start()
        memory_before = tracemalloc.get_traced_memory()[0]
        await churn(CONNECTIONS)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        memory_after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        stats = mgr.statistics()
        figures["connections opened and closed"] = CONNECTIONS
        figures["streams opened and closed"] = CONNECTIONS * STREAMS_PER_CONNECTION
        figures["tasks before/after"] = f"{tasks_before}/{live_tasks()}"
        figures["fds before/after"] = f"{fds_before}/{open_fds()}"
        figures["traced memory growth (bytes)"] = memory_after - memory_before

        assert stats.connections == 0
        assert stats.streams == 0
        assert a.usage == b.usage == 0
        assert not a.streams
        assert not b.streams
        assert live_tasks() == tasks_before
        assert open_fds() == fds_before
        assert closed == []  # released connections are never closed by the manager
        # Flat: what remains is bounded, whatever the number of connections.
        assert memory_after - memory_before < 64 * 1024, memory_after - memory_before
        assert stats.connections_opened == CONNECTIONS + 1_000
