"""trio_connmgr.libp2p: streams that exist before attach(), and mplex streams.

Real py-libp2p hosts on 127.0.0.1, the real clock, every wait under
``trio.fail_after`` (as in test_libp2p).
"""

from __future__ import annotations

import math
import re
from typing import Any

import multiaddr
import pytest
import trio

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.config import RetryConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from test_libp2p import DialRecorder, drain, info, make_host, running, until

import trio_connmgr as cm
from trio_connmgr import libp2p as libp2p_adapter
from trio_connmgr.libp2p import attach

DHT = "/trio-connmgr-test/details/dht/1.0.0"
HOLD = "/trio-connmgr-test/details/hold/1.0.0"


async def test_a_connection_and_its_streams_from_before_attach_are_adopted() -> None:
    managed, _ = make_host()
    remote, _ = make_host()

    async def echo(stream: INetStream) -> None:
        await drain(stream)

    remote.set_stream_handler(DHT, echo)
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        running(managed, remote),
    ):
        with trio.fail_after(15):
            await managed.connect(info(remote))
            stream = await managed.new_stream(remote.get_id(), [DHT])
            await stream.write(b"ping")
            assert await stream.read(4) == b"ping"
            (conn,) = managed.get_network().get_connections(remote.get_id())
            # A connection whose direction py-libp2p did not record: the side that
            # initiated the muxed connection dialled it.
            swarm_conn: Any = conn
            swarm_conn.direction = "unknown"
            assert str(swarm_conn.direction) == "unknown"
            async with mgr.enroll(DHT, quota=cm.Quota(0, 4)), attach(managed, mgr) as attachment:
                tracked_conn = attachment.connection_for(conn)
                assert tracked_conn is not None
                assert tracked_conn.direction is cm.Direction.OUTBOUND
                tracked = attachment.stream_for(stream)
                assert tracked is not None
                assert tracked.protocol == DHT
                assert tracked.direction is cm.Direction.OUTBOUND
                assert tracked.connection is tracked_conn
                assert mgr.statistics().protocols[DHT].streams == 1
                await stream.close()
                assert tracked.closed
                assert mgr.statistics().streams == 0


def make_mplex_host() -> IHost:
    return new_host(key_pair=create_new_key_pair(), muxer_preference="MPLEX")


async def test_an_mplex_stream_counts_until_both_ends_have_finished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream ended on one side only stays counted; once the other side ends it
    too, the sweep closes it (py-libp2p notifies neither)."""
    # The test sweeps itself, once it has looked.
    monkeypatch.setattr(libp2p_adapter, "SWEEP_INTERVAL", math.inf)
    managed = make_mplex_host()
    remote = make_mplex_host()
    finish = trio.Event()

    async def hold(stream: INetStream) -> None:
        request = await stream.read(64)
        await stream.write(b"found:" + request)
        await finish.wait()
        await stream.close()

    remote.set_stream_handler(HOLD, hold)
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        running(managed, remote),
        mgr.enroll(HOLD, quota=cm.Quota(0, 4)),
        attach(managed, mgr) as attachment,
    ):
        with trio.fail_after(15):
            await managed.connect(info(remote))
            (conn,) = managed.get_network().get_connections(remote.get_id())
            muxed: Any = conn.muxed_conn
            assert type(muxed).__name__ == "Mplex"
            stream = await managed.new_stream(remote.get_id(), [HOLD])
            tracked = attachment.stream_for(stream)
            assert tracked is not None
            await stream.write(b"key")
            await stream.close_write()
            assert await stream.read(9) == b"found:key"
            # Ended locally, still open at the remote end: it still counts.
            attachment._sweep_once()
            assert not tracked.closed
            assert attachment.stream_for(stream) is tracked
            finish.set()
            # The remote's end of the stream arrives (py-libp2p does not announce it).
            mplex_stream: Any = stream.muxed_stream  # type: ignore[attr-defined]
            await until(mplex_stream.event_remote_closed.is_set)
            attachment._sweep_once()
            assert tracked.closed
            assert attachment.stream_for(stream) is None
            assert mgr.statistics().streams == 0


async def test_streams_of_a_connection_the_remote_closes_are_forgotten() -> None:
    managed, managed_observer = make_host()
    remote, _ = make_host()

    async def echo(stream: INetStream) -> None:
        await drain(stream)

    remote.set_stream_handler(DHT, echo)
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        running(managed, remote),
        mgr.enroll(DHT, quota=cm.Quota(0, 4)),
        attach(managed, mgr) as attachment,
    ):
        with trio.fail_after(15):
            await managed.connect(info(remote))
            stream = await managed.new_stream(remote.get_id(), [DHT])
            tracked = attachment.stream_for(stream)
            assert tracked is not None
            await remote.disconnect(managed.get_id())
            await managed_observer.gone(remote.get_id()).wait()
            assert tracked.connection.close_reason == "released"
            assert tracked.closed
            assert attachment.stream_for(stream) is None


async def test_leaving_restores_a_dial_peer_wrapped_before_attach() -> None:
    """attach() wraps ``Swarm.dial_peer`` as it finds it and puts back exactly that
    (and unregisters its notifee)."""
    recorder = DialRecorder()
    managed, _ = make_host()
    remote, _ = make_host()
    swarm: Any = managed.get_network()
    dialled: list[Any] = []
    original = swarm.dial_peer

    async def outer_dial_peer(peer_id: Any) -> Any:
        dialled.append(peer_id)
        return await original(peer_id)

    swarm.dial_peer = outer_dial_peer
    notifees = list(swarm.notifees)
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), triggers=[recorder]) as mgr,
        running(managed, remote),
    ):
        with trio.fail_after(15):
            async with attach(managed, mgr):
                await managed.connect(info(remote))
                assert dialled == [remote.get_id()]
                assert [ok for _, ok, _ in recorder.dials] == [True]
            assert swarm.dial_peer is outer_dial_peer
            assert swarm.notifees == notifees
            await managed.disconnect(remote.get_id())
            await managed.connect(info(remote))
            assert dialled == [remote.get_id()] * 2
            assert len(recorder.dials) == 1


@pytest.mark.parametrize(
    ("max_connections", "min_connections", "refused"),
    [
        (8, 0, "max_connections=8 is not above the manager's hard=8"),
        (9, 2, "9 - 2 = 7 inbound connections, below the manager's hard=8"),
        (9, 1, None),
    ],
)
async def test_attach_checks_py_libp2p_limits_against_hard(
    max_connections: int, min_connections: int, refused: str | None
) -> None:
    host, _ = make_host(
        max_connections=max_connections,
        min_connections=min_connections,
        low_watermark=min_connections,
        high_watermark=max_connections,
    )
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4, hard=8)) as mgr,
        running(host),
    ):
        if refused is None:
            async with attach(host, mgr) as attachment:
                assert attachment.host is host
        else:
            with pytest.raises(cm.ConfigError, match=re.escape(refused)):
                async with attach(host, mgr):
                    pytest.fail("attach() must refuse these limits")  # pragma: no cover


@pytest.mark.parametrize("reachable", [True, False])
async def test_a_dial_that_ends_after_leaving_is_not_reported(reachable: bool) -> None:
    recorder = DialRecorder()
    managed, _ = make_host()
    remote, _ = make_host()
    swarm: Any = managed.get_network()
    swarm.retry_config = RetryConfig(max_retries=0)
    original = swarm.dial_peer
    dialled = trio.Event()
    release = trio.Event()

    async def held_dial_peer(peer_id: Any) -> Any:
        # Returns (or raises) only once the test has left attach().
        try:
            return await original(peer_id)
        finally:
            dialled.set()
            await release.wait()

    swarm.dial_peer = held_dial_peer
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), triggers=[recorder]) as mgr,
        running(managed, remote),
    ):
        if reachable:
            peer = remote.get_id()
            addresses = remote.get_addrs()
        else:
            peer = ID.from_pubkey(create_new_key_pair().public_key)
            with trio.socket.socket() as sock:
                await sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            addresses = [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]
        managed.get_peerstore().add_addrs(peer, addresses, 60)

        async def dial() -> None:
            try:
                await swarm.dial_peer(peer)
            except SwarmException:
                assert not reachable

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                async with attach(managed, mgr):
                    nursery.start_soon(dial)
                    await dialled.wait()
                release.set()
        assert recorder.dials == []
