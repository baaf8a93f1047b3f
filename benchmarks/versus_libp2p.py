"""Group 2: trio_connmgr side by side with py-libp2p 0.8.1, in the same process.

- Stream and connection accounting: our synchronous ``track_stream`` +
  ``close()`` and ``mgr.track`` + ``release()`` against the default
  ``new_resource_manager()``'s ``acquire_stream``/``release_stream`` and
  ``acquire_connection``/``release_connection``, called the way its swarm calls
  them (``str(peer_id)`` of a real peer id). Its per-peer connection rate limiter
  (10/s, burst 50) is part of the default: every sample gets a fresh resource
  manager and cycles through enough distinct peers to stay under it.
- Round planning (rows built by :mod:`benchmarks.planning`): its
  ``ConnectionPruner`` deciding over fake connections that mirror ours (same
  peers, directions, ages and 3 streams each; each peer tagged once per stream
  with the stream's protocol and score, the v1 analogue of our scorers). The
  decision is driven without I/O: the fake connections' ``close()`` does
  nothing, so the coroutine never suspends and is run by ``send(None)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import trio

import trio_connmgr as cm

from ._harness import Row, Scale, ainterleave, row

PROTOCOL = "/bench/libp2p/1.0.0"


def _peer_ids(n: int, seed: int = 2) -> list[Any]:
    """``n`` distinct py-libp2p peer ids (identity multihashes of random bytes)."""
    from libp2p.peer.id import ID

    rng = random.Random(seed)
    # 0x00 0x24: identity multihash of 36 bytes, the shape of an Ed25519 peer id.
    return [ID(b"\x00\x24" + rng.randbytes(36)) for _ in range(n)]


async def _noop() -> None:
    pass


async def _accounting(scale: Scale) -> list[Row]:
    from libp2p.rcmgr import Direction as LibDirection
    from libp2p.rcmgr import new_resource_manager

    ops = scale.libp2p_ops
    peers = [str(p) for p in _peer_ids(scale.libp2p_peers)]
    npeers = len(peers)
    outbound = LibDirection.OUTBOUND
    limits = cm.Limits(low=1_000_000, high=1_000_000)
    async with (
        cm.open_connection_manager(limits=limits) as mgr,
        mgr.enroll(PROTOCOL, quota=cm.Quota(0, 1_000)) as proto,
    ):
        conns = [mgr.track(p, direction="outbound", close=_noop) for p in peers]

        async def ours_stream() -> float:
            started = time.perf_counter()
            for i in range(ops):
                proto.track_stream(conns[i % npeers]).close()
            return (time.perf_counter() - started) / ops * 1e6

        async def theirs_stream() -> float:
            rm = new_resource_manager()
            started = time.perf_counter()
            for i in range(ops):
                peer = peers[i % npeers]
                if not rm.acquire_stream(peer, outbound):
                    raise RuntimeError("py-libp2p refused a stream")
                rm.release_stream(peer, outbound)
            return (time.perf_counter() - started) / ops * 1e6

        async def ours_connection() -> float:
            started = time.perf_counter()
            for i in range(ops):
                mgr.track(peers[i % npeers], direction="inbound", close=_noop).release()
            return (time.perf_counter() - started) / ops * 1e6

        async def theirs_connection() -> float:
            rm = new_resource_manager()
            started = time.perf_counter()
            for i in range(ops):
                peer = peers[i % npeers]
                if not rm.acquire_connection(peer, "127.0.0.1", "inbound"):
                    raise RuntimeError("py-libp2p refused a connection")
                rm.release_connection(peer, "127.0.0.1", "inbound")
            return (time.perf_counter() - started) / ops * 1e6

        samplers = [ours_stream, theirs_stream, ours_connection, theirs_connection]
        for sampler in samplers:
            await sampler()
        os_, ts, oc, tc = await ainterleave(samplers, scale.repeats)
        for conn in conns:
            conn.release()
    return [
        row(
            "libp2p",
            "stream accounting: `track_stream` + `close()`",
            "µs",
            os_,
            "acquire_stream + release_stream",
            ts,
            target="≥ 3x faster (ratio ≤ 0.33)",
            check=lambda v, r: r is not None and r <= 1 / 3,
        ),
        row(
            "libp2p",
            "connection accounting: `track` + `release()`",
            "µs",
            oc,
            "acquire_connection + release_connection",
            tc,
        ),
    ]


def run(scale: Scale) -> list[Row]:
    """Measure the accounting rows (the pruner rows come from :mod:`benchmarks.planning`)."""
    return trio.run(_accounting, scale)


# ----------------------------------------------------------------- the pruner


class _Muxed:
    __slots__ = ("peer_id",)

    def __init__(self, peer_id: Any) -> None:
        self.peer_id = peer_id


class FakeConnection:
    """Just enough of py-libp2p's ``INetConn`` for ``ConnectionPruner``."""

    def __init__(self, peer_id: Any, created_at: float, direction: Any, streams: int) -> None:
        self.muxed_conn = _Muxed(peer_id)
        self._created_at = created_at
        self.direction = direction
        self._streams = [object() for _ in range(streams)]

    def get_streams(self) -> list[object]:
        return self._streams

    def get_remote_address(self) -> tuple[str, int]:
        return ("10.0.0.1", 4001)

    async def close(self) -> None:
        pass


class FakeSwarm:
    """Just enough of py-libp2p's ``Swarm`` for ``ConnectionPruner``: connections,
    watermarks, a real ``TagStore`` and a real ``ConnectionGate``."""

    def __init__(self, connections: list[FakeConnection], low: int, high: int) -> None:
        from libp2p.network.config import ConnectionConfig
        from libp2p.network.connection_gate import ConnectionGate
        from libp2p.network.tag_store import TagStore

        self._connections = connections
        self.tag_store = TagStore()
        self.connection_gate = ConnectionGate()
        self.connection_config = ConnectionConfig(
            min_connections=0,
            low_watermark=low,
            high_watermark=high,
            max_connections=high + 1,
            grace_period=10.0,
        )
        self.peerstore = None

    def get_connections(self) -> list[FakeConnection]:
        return list(self._connections)


def pruner_for(
    connections: Iterable[cm.Connection], low: int, score: Callable[[cm.Stream], float]
) -> Callable[[], None]:
    """A py-libp2p pruner over fakes mirroring ``connections``; returns its decision."""
    from libp2p.network.connection_pruner import ConnectionPruner
    from libp2p.rcmgr import Direction as LibDirection

    conns = list(connections)
    ids = _peer_ids(len(conns), seed=3)
    wall = time.time()
    newest = max((c.opened_at for c in conns), default=0.0)
    fakes = []
    for conn, peer_id in zip(conns, ids, strict=True):
        direction = (
            LibDirection.INBOUND
            if conn.direction is cm.Direction.INBOUND
            else LibDirection.OUTBOUND
        )
        # Out of its grace period, as ours are, and in the same age order.
        created_at = wall - 1_000.0 - (newest - conn.opened_at)
        fakes.append(FakeConnection(peer_id, created_at, direction, len(conn.streams)))
    swarm = FakeSwarm(fakes, low, len(fakes) - 1)
    for fake, conn in zip(fakes, conns, strict=True):
        peer_id = fake.muxed_conn.peer_id
        swarm.tag_store.record_connection(peer_id, id(fake))
        for stream in conn.streams:
            swarm.tag_store.tag_peer(peer_id, stream.protocol, int(100 * score(stream)))
    pruner = ConnectionPruner(swarm)  # type: ignore[arg-type]
    pruner._started = True

    def decide() -> None:
        coro: Coroutine[Any, Any, None] = pruner._maybe_prune_connections()
        try:
            while True:
                coro.send(None)
        except StopIteration:
            pass

    return decide
