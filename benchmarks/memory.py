"""Group 5: memory per tracked connection and per stream (tracemalloc).

Everything the manager allocates for 10,000 connections (``mgr.track``) and for
10,000 streams (``track_stream``, one per connection) is traced and divided by
the count; the peers and the ``close`` callback exist before tracing starts and
no socket is involved. Baselines, traced the same way: a Trio task parked in
``sleep_forever`` (what a supervisor task per connection would add) and a bare
``trio.CancelScope()`` (what ``async with enrollment.stream()`` adds on top of
the stream).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import trio
import trio.testing

import trio_connmgr as cm

from ._harness import Row, Scale, row

PROTOCOL = "/bench/memory/1.0.0"
T = TypeVar("T")


async def _noop() -> None:
    pass


def _track_all(mgr: cm.ConnectionManager, peers: list[str]) -> list[cm.Connection]:
    return [mgr.track(p, direction="inbound", close=_noop) for p in peers]


def _streams_on(proto: cm.Enrollment, conns: list[cm.Connection]) -> list[cm.Stream]:
    return [proto.track_stream(c) for c in conns]


def _scopes(n: int) -> list[trio.CancelScope]:
    return [trio.CancelScope() for _ in range(n)]


def _traced(make: Callable[..., T], n: int, *args: Any) -> tuple[float, T]:
    """Bytes per object that ``make(*args)`` leaves allocated, and what it returned."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make(*args)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / n, kept


async def _measure(scale: Scale) -> list[Row]:
    n = scale.memory_objects
    peers = [f"peer-{i}" for i in range(n)]
    for peer in peers:
        hash(peer)  # str hashes are cached in the object: compute them before tracing
    limits = cm.Limits(low=10 * n, high=10 * n)
    conn_bytes: list[float] = []
    stream_bytes: list[float] = []
    task_bytes: list[float] = []
    scope_bytes: list[float] = []
    for _ in range(3):
        async with (
            cm.open_connection_manager(limits=limits) as mgr,
            mgr.enroll(PROTOCOL, quota=cm.Quota(0, 10 * n)) as proto,
        ):
            per_conn, conns = _traced(_track_all, n, mgr, peers)
            per_stream, streams = _traced(_streams_on, n, proto, conns)
            conn_bytes.append(per_conn)
            stream_bytes.append(per_stream)
            for stream in streams:
                stream.close()
            for conn in conns:
                conn.release()

        async with trio.open_nursery() as nursery:
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(n):
                    nursery.start_soon(trio.sleep_forever)
                await trio.testing.wait_all_tasks_blocked()
                gc.collect()
                per_task = (tracemalloc.get_traced_memory()[0] - before) / n
            finally:
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
        task_bytes.append(per_task)
        per_scope, _ = _traced(_scopes, n, n)
        scope_bytes.append(per_scope)
    return [
        row(
            "memory",
            "per tracked connection",
            "B",
            conn_bytes,
            "a parked Trio task",
            task_bytes,
            target="≤ 1,536 B",
            check=lambda v, r: v <= 1536,
        ),
        row(
            "memory",
            "per stream",
            "B",
            stream_bytes,
            "a trio.CancelScope()",
            scope_bytes,
            target="≤ 614 B",
            check=lambda v, r: v <= 614,
        ),
    ]


def run(scale: Scale) -> list[Row]:
    """Measure the memory rows."""
    return trio.run(_measure, scale)
