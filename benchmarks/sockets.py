"""Group 4: real loopback TCP sockets.

- Churn: clients connect, send 4 bytes, read the echo and close, a few at a
  time, as fast as they can; samples interleaved. The server through the adapter
  (``trio_connmgr.tcp.serve_tcp``) against plain ``trio.serve_tcp``, with the same
  plain clients; and both ends through the adapter (``open_tcp_connection`` on a
  second manager, as two nodes would) against plain ``serve_tcp`` and
  ``open_tcp_stream`` on both ends.
- Spike: 2,000 inbound connections as fast as loopback accepts them, each held
  open by its client until the server closes it, against ``Limits(low=100,
  high=200)`` with ``grace_period=0`` and ``silence_period=0.2`` (the default
  10 s silence would by design keep a second round from running for 10 s). The
  spike ends when the last connection has been admitted; measured: the time from
  then until the count is back at or under ``high``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr import tcp

from ._harness import Row, Scale, ainterleave, clean, raise_fd_limit, row

PING = b"ping"
LIMITS = cm.Limits(low=1_000_000, high=1_000_000)
SPIKE_SILENCE = 0.2


async def _echo_once(stream: trio.abc.Stream) -> None:
    data = await stream.receive_some(64)
    if data:
        await stream.send_all(data)


async def _read_reply(stream: trio.abc.Stream) -> None:
    await stream.send_all(PING)
    got = b""
    while len(got) < len(PING):
        chunk = await stream.receive_some(64)
        if not chunk:
            raise RuntimeError("connection closed before the echo")
        got += chunk


async def _churn(
    total: int, workers: int, serve: Callable[..., Awaitable[Any]], dial: Callable[[int], Any]
) -> float:
    """Connections per second for ``total`` connect/echo/close cycles."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        await trio.testing.wait_all_tasks_blocked()
        clean()
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await dial(port)

        started = time.perf_counter()
        async with trio.open_nursery() as clients:
            for _ in range(workers):
                clients.start_soon(worker)
        took = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return total / took


async def _churn_rows(scale: Scale) -> list[Row]:
    total, workers = scale.churn_connections, scale.churn_workers

    async def plain_handler(stream: trio.SocketStream) -> None:
        # No close: trio.serve_listeners closes the stream when the handler
        # returns, as it does for the adapter's handler.
        await _echo_once(stream)

    async def plain_serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_tcp(plain_handler, 0, host="127.0.0.1", task_status=task_status)

    async def plain_dial(port: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await _read_reply(stream)

    async def plain() -> float:
        return await _churn(total, workers, plain_serve, plain_dial)

    async def ours(both_ends: bool) -> float:
        async with (
            cm.open_connection_manager(limits=LIMITS) as server,
            cm.open_connection_manager(limits=LIMITS) as client,
        ):

            async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
                await _echo_once(stream)

            async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await tcp.serve_tcp(handler, 0, manager=server, task_status=task_status)

            async def dial(port: int) -> None:
                async with tcp.open_tcp_connection(client, "127.0.0.1", port) as (stream, _):
                    await _read_reply(stream)

            rate = await _churn(total, workers, serve, dial if both_ends else plain_dial)
            assert server._state.connections_opened >= total
            assert client._state.connections_opened >= (total if both_ends else 0)
        return rate

    async def server_side() -> float:
        return await ours(both_ends=False)

    async def both_ends() -> float:
        return await ours(both_ends=True)

    samplers = [plain, server_side, both_ends]
    for sampler in samplers:  # warm up
        await sampler()
    base, server_rates, both_rates = await ainterleave(samplers, scale.churn_repeats)
    return [
        row(
            "sockets",
            "TCP churn, server through `tcp.serve_tcp`",
            "conn/s",
            server_rates,
            "plain trio.serve_tcp",
            base,
            target="≥ 0.9x baseline",
            check=lambda v, r: r is not None and r >= 0.9,
            note=f"{workers} concurrent plain clients (trio.open_tcp_stream) in both cases",
        ),
        row(
            "sockets",
            "TCP churn, both ends through the adapter",
            "conn/s",
            both_rates,
            "plain trio.serve_tcp",
            base,
            note=(
                "serve_tcp and open_tcp_connection on two managers, against plain "
                "serve_tcp and open_tcp_stream"
            ),
        ),
    ]


async def _spike(n: int, low: int, high: int) -> tuple[float, float, int]:
    """(recovery after the spike's end, spike duration, highest count) in ms."""
    admitted = 0
    spike_over = trio.Event()
    ended = 0.0
    peak = 0
    async with cm.open_connection_manager(
        limits=cm.Limits(low=low, high=high), grace_period=0.0, silence_period=SPIKE_SILENCE
    ) as mgr:
        state = mgr._state

        async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
            nonlocal admitted, ended, peak
            admitted += 1
            peak = max(peak, state.count)
            if admitted == n:
                ended = time.perf_counter()  # the spike ends here, not when main wakes
                spike_over.set()
            await trio.sleep_forever()

        async def client(port: int, limiter: trio.CapacityLimiter) -> None:
            async with limiter:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                with contextlib.suppress(trio.BrokenResourceError, ConnectionError):
                    while await stream.receive_some(64):
                        pass

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: tcp.serve_tcp(handler, 0, manager=mgr, task_status=task_status)
            )
            port = listeners[0].socket.getsockname()[1]
            limiter = trio.CapacityLimiter(64)
            clean()
            started = time.perf_counter()
            async with trio.open_nursery() as clients:
                for _ in range(n):
                    clients.start_soon(client, port, limiter)
                await spike_over.wait()
                while state.count > high:  # noqa: ASYNC110 - polling is the measurement
                    await trio.sleep(0.001)
                recovered = time.perf_counter()
                clients.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    return (recovered - ended) * 1e3, (ended - started) * 1e3, peak


async def _spike_rows(scale: Scale) -> list[Row]:
    n = scale.spike_connections
    raise_fd_limit(2 * n + 256)
    recoveries: list[float] = []
    durations: list[float] = []
    peaks: list[int] = []
    for _ in range(scale.spike_repeats):
        recovery, duration, peak = await _spike(n, scale.spike_low, scale.spike_high)
        recoveries.append(recovery)
        durations.append(duration)
        peaks.append(peak)
    return [
        row(
            "sockets",
            f"back under high after a spike of {n:,}",
            "ms",
            recoveries,
            "the spike itself",
            durations,
            target="≤ 1,000 ms, every spike",
            check=lambda v, r: max(recoveries) <= 1000.0,
            note=(
                f"Limits(low={scale.spike_low}, high={scale.spike_high}), grace_period=0, "
                f"silence_period={SPIKE_SILENCE}; median of {len(recoveries)} spikes, the "
                f"slowest back in {max(recoveries):.0f} ms; the count peaked at {max(peaks)} "
                "during the spike"
            ),
        )
    ]


async def _measure(scale: Scale) -> list[Row]:
    return [*await _churn_rows(scale), *await _spike_rows(scale)]


def run(scale: Scale) -> list[Row]:
    """Measure the socket rows."""
    return trio.run(_measure, scale)
