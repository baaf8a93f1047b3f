"""Group 1: the per-operation hot paths against bare Trio and bare Python.

- ``track_stream`` + ``close()`` against a dict insert + delete (the least any
  accounting can do);
- ``async with enrollment.stream(conn)`` and ``async with mgr.connection(...)``
  against ``with trio.CancelScope()`` plus one ``trio.lowlevel.checkpoint()``
  (what each of them must do anyway: a checkpoint and a cancel scope);
- ``mgr.track(...)`` + ``conn.release()`` against ``nursery.start_soon`` of a
  no-op task (run to completion): what a supervisor task per connection would
  cost. ``track`` starts no task; a closer task is spawned only when a prune or
  the manager's exit must call ``close()``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

import trio_connmgr as cm

from ._harness import Row, Scale, ainterleave, row

PROTOCOL = "/bench/hot/1.0.0"


async def _noop() -> None:
    pass


def _per_op(started: float, ops: int) -> float:
    return (time.perf_counter() - started) / ops * 1e6


async def _measure(scale: Scale) -> list[Row]:
    ops = scale.hot_ops
    limits = cm.Limits(low=1_000_000, high=1_000_000)
    async with (
        cm.open_connection_manager(limits=limits) as mgr,
        mgr.enroll(PROTOCOL, quota=cm.Quota(0, 1_000)) as proto,
    ):
        conn = mgr.track("hot-peer", direction="inbound", close=_noop)

        async def track_stream() -> float:
            started = time.perf_counter()
            for _ in range(ops):
                proto.track_stream(conn).close()
            return _per_op(started, ops)

        async def dict_insert_delete() -> float:
            d: dict[int, object] = {}
            started = time.perf_counter()
            for i in range(ops):
                d[i] = conn
                del d[i]
            return _per_op(started, ops)

        async def stream_context() -> float:
            started = time.perf_counter()
            for _ in range(ops):
                async with proto.stream(conn):
                    pass
            return _per_op(started, ops)

        async def connection_context() -> float:
            started = time.perf_counter()
            for _ in range(ops):
                async with mgr.connection("hot-peer", direction="inbound"):
                    pass
            return _per_op(started, ops)

        async def scope_checkpoint() -> float:
            started = time.perf_counter()
            for _ in range(ops):
                with trio.CancelScope():
                    await trio.lowlevel.checkpoint()
            return _per_op(started, ops)

        async def track_release() -> float:
            started = time.perf_counter()
            for _ in range(ops):
                mgr.track("hot-peer", direction="inbound", close=_noop).release()
            return _per_op(started, ops)

        async def start_soon_noop() -> float:
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(ops):
                    nursery.start_soon(_noop)
            return _per_op(started, ops)

        samplers: list[Callable[[], Awaitable[float]]] = [
            track_stream,
            dict_insert_delete,
            stream_context,
            connection_context,
            scope_checkpoint,
            track_release,
            start_soon_noop,
        ]
        for sampler in samplers:  # warm up
            await sampler()
        ts, dicts, sc, cc, base, tr, ss = await ainterleave(samplers, scale.repeats)
        conn.release()

    us = "µs"
    return [
        row(
            "hot",
            "`track_stream` + `close()`",
            us,
            ts,
            "dict insert + delete",
            dicts,
            target="≤ 3 µs",
            check=lambda v, r: v <= 3.0,
        ),
        row(
            "hot",
            "`async with enrollment.stream(conn)`",
            us,
            sc,
            "CancelScope + checkpoint",
            base,
            target="≤ 1.3x baseline",
            check=lambda v, r: r is not None and r <= 1.3,
        ),
        row(
            "hot",
            "`async with mgr.connection(...)`",
            us,
            cc,
            "CancelScope + checkpoint",
            base,
            target="≤ 1.3x baseline",
            check=lambda v, r: r is not None and r <= 1.3,
        ),
        row(
            "hot",
            "`mgr.track(...)` + `release()`",
            us,
            tr,
            "start_soon(no-op), run",
            ss,
            target="≤ 1.5x baseline",
            check=lambda v, r: r is not None and r <= 1.5,
            note=(
                "track() starts no task (a closer task is spawned only when a prune or "
                "the manager's exit must await close()), so this compares the accounting "
                "against the per-connection task it avoids"
            ),
        ),
    ]


def run(scale: Scale) -> list[Row]:
    """Measure the hot paths; return their rows."""
    return trio.run(_measure, scale)
