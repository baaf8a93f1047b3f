"""An inbound flood on loopback against the TCP adapter with ``hard`` set."""

from __future__ import annotations

import functools
import time

import trio

import trio_connmgr as cm
from trio_connmgr import tcp

from .conftest import Figures, open_fds, scale

ATTEMPTS = scale(1_000, 10_000)
CONCURRENCY = 100


async def test_inbound_flood(figures: Figures, collected: None) -> None:
    limits = cm.Limits(low=40, high=70, hard=100)
    fds_before = open_fds()
    valuable: dict[str, cm.Connection] = {}
    max_count = 0
    refused_under_hard = 0
    worst_tick = 0.0

    async with (
        cm.open_connection_manager(
            limits=limits, grace_period=0.05, silence_period=0.05, lock_budget=10
        ) as mgr,
        mgr.enroll("/mesh", quota=cm.Quota(0, 10)) as mesh,
        mgr.enroll("/essential", quota=cm.Quota(5, 10)) as essential,
        mgr.subscribe(buffer=1_000_000) as events,
        trio.open_nursery() as nursery,
    ):
        all_in = trio.Event()

        def register(name: str, conn: cm.Connection) -> None:
            valuable[name] = conn
            if len(valuable) == 15:
                all_in.set()

        async def handler(sock: trio.SocketStream, conn: cm.Connection) -> None:
            role = (await sock.receive_some(16)).strip()
            if role == b"locked":
                async with mesh.stream(conn) as stream, mesh.lock(stream, ttl=300):
                    register(f"locked-{conn.id}", conn)
                    await sock.receive_some(1)
            elif role == b"essential":
                async with essential.stream(conn):
                    register(f"essential-{conn.id}", conn)
                    await sock.receive_some(1)
            elif role == b"protected":
                mgr.protect(conn.peer, "honest")
                register(f"protected-{conn.id}", conn)
                await sock.receive_some(1)
            else:
                while await sock.receive_some(1024):
                    pass

        listeners = await nursery.start(functools.partial(tcp.serve_tcp, handler, 0, manager=mgr))
        port = listeners[0].socket.getsockname()[1]

        async def ticker() -> None:
            nonlocal worst_tick
            while True:
                before = time.perf_counter()
                await trio.sleep(0.01)
                worst_tick = max(worst_tick, time.perf_counter() - before - 0.01)

        nursery.start_soon(ticker)

        # Honest peers first: 5 locked, 5 of a protocol at its grant.min, 5 protected.
        honest: list[trio.SocketStream] = []
        for role in [b"locked"] * 5 + [b"essential"] * 5 + [b"protected"] * 5:
            sock = await trio.open_tcp_stream("127.0.0.1", port)
            await sock.send_all(role + b"\n")
            honest.append(sock)
        await all_in.wait()

        limiter = trio.CapacityLimiter(CONCURRENCY)
        outcomes = {"connected": 0, "failed": 0}

        async def attacker() -> None:
            async with limiter:
                try:
                    sock = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    outcomes["failed"] += 1
                    return
                outcomes["connected"] += 1
                async with sock:
                    try:
                        await sock.send_all(b"flood\n")
                        with trio.move_on_after(0.2):
                            await sock.receive_some(1)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

        with trio.fail_after(120):
            async with trio.open_nursery() as flood:
                for i in range(ATTEMPTS):
                    flood.start_soon(attacker)
                    if i % CONCURRENCY == 0:
                        # Spawning is the test's own work: keep it from blocking
                        # the loop, so the ticker measures the manager.
                        await trio.lowlevel.checkpoint()

        for sock in honest:
            await sock.aclose()
        # The clients are done, but the server may not have accepted the last of
        # their connections yet: follow its events until it has admitted or
        # refused every connection that reached it.
        reached = len(honest) + outcomes["connected"]
        answered = 0
        count = 0
        with trio.fail_after(60):
            async for event in events:
                if isinstance(event, cm.ConnectionOpened):
                    answered += 1
                    count = event.count
                    max_count = max(max_count, count)
                elif isinstance(event, cm.ConnectionClosed):
                    count = event.count
                elif isinstance(event, cm.AdmissionRefused):
                    answered += 1
                    if event.reason == "hard" and count < limits.hard:
                        refused_under_hard += 1
                if answered >= reached:
                    break
        stats = mgr.statistics()
        nursery.cancel_scope.cancel()

    lost = [name for name, conn in valuable.items() if conn.close_reason in ("pruned", "evicted")]
    figures["connection attempts"] = ATTEMPTS
    figures["refusals by reason"] = dict(stats.refusals)
    figures["max count (hard)"] = f"{max_count} ({limits.hard})"
    figures["pruned"] = stats.connections_pruned
    figures["lost valuable connections"] = len(lost)
    figures["fds before/after"] = f"{fds_before}/{open_fds()}"
    figures["worst ticker delay (ms)"] = f"{worst_tick * 1e3:.1f}"

    assert outcomes["connected"] + outcomes["failed"] == ATTEMPTS
    # The cap holds, and refuses only at the cap. (How often the flood reaches it
    # depends on the machine's speed: "refusals by reason" shows it.)
    assert max_count <= limits.hard
    assert refused_under_hard == 0
    assert lost == []
    assert sum(stats.refusals.values()) + stats.connections_opened == reached
    assert stats.protocols["/essential"].pruned == 0
    assert open_fds() == fds_before
