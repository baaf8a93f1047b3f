"""trio_connmgr.libp2p with real py-libp2p hosts on 127.0.0.1, in one Trio program.

Real hosts, real TCP, real noise + yamux and multistream-select; the real clock
(py-libp2p's transports do not run on a mock clock), short durations, and every
wait under ``trio.fail_after``.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

import trio_connmgr as cm
from trio_connmgr import libp2p as libp2p_adapter
from trio_connmgr.libp2p import Attachment, attach
from trio_connmgr.triggers import Trigger

CHAT = "/trio-connmgr-test/chat/1.0.0"
DHT = "/trio-connmgr-test/dht/1.0.0"
ECHO_UNENROLLED = "/trio-connmgr-test/unenrolled/1.0.0"
SINK = "/trio-connmgr-test/sink/1.0.0"
LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


class Observer(INotifee):
    """Records a host's disconnections, per remote peer."""

    def __init__(self) -> None:
        self._gone: dict[ID, trio.Event] = {}

    def gone(self, peer: ID) -> trio.Event:
        return self._gone.setdefault(peer, trio.Event())

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.gone(conn.muxed_conn.peer_id).set()
        await trio.lowlevel.checkpoint()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: Any) -> None:
        await trio.lowlevel.checkpoint()


class DialRecorder(Trigger):
    """A trigger that never fires and records every report_dial."""

    name = "dial-recorder"

    def __init__(self) -> None:
        self.dials: list[tuple[float, bool, float | None]] = []

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
        self.dials.append((now, ok, latency))
        return False


def make_host(**config: int) -> tuple[IHost, Observer]:
    host = new_host(
        key_pair=create_new_key_pair(),
        connection_config=ConnectionConfig(**config) if config else None,
    )
    observer = Observer()
    host.get_network().register_notifee(observer)
    return host, observer


def info(host: IHost) -> PeerInfo:
    return info_from_p2p_addr(host.get_addrs()[0])


@asynccontextmanager
async def running(*hosts: IHost) -> AsyncIterator[None]:
    """Run ``hosts`` on 127.0.0.1; on exit close them (``host.close()`` closes every
    connection's socket, which merely leaving ``host.run()`` does not)."""
    async with AsyncExitStack() as stack:
        for host in hosts:
            await stack.enter_async_context(host.run(LOOPBACK))
        try:
            yield
        finally:
            with trio.move_on_after(10, shield=True):
                for host in hosts:
                    await host.close()


async def until(condition: Callable[[], bool], *, interval: float = 0.01) -> None:
    """Poll ``condition``: state of py-libp2p's that no event announces (every
    call is under ``trio.fail_after``)."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(interval)


async def drain(stream: INetStream, tracked: cm.Stream | None = None) -> None:
    """Echo whatever arrives until the stream ends (EOF, reset or closed)."""
    try:
        while data := await stream.read(1024):
            if tracked is not None:
                tracked.touch(len(data))
            await stream.write(data)
    except StreamError:
        pass


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counting fds needs /proc")
async def test_managed_host_is_regulated() -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    recorder = DialRecorder()
    managed, managed_observer = make_host()
    observers = dict(make_host() for _ in range(7))
    hosts = list(observers)
    # Per dial: how long after the lookup began py-libp2p's connection was up.
    up_after: list[float] = []
    locked_peer, burst_a, burst_b, chat_a, chat_b, chat_c, late = hosts
    chatters = [chat_a, chat_b, chat_c]
    seen: list[cm.Stream | None] = []
    chat_ended = {host.get_id(): trio.Event() for host in [locked_peer, *chatters]}

    async def dht_handler(stream: INetStream) -> None:
        request = await stream.read(64)
        await stream.write(b"found:" + request)
        await stream.close()

    for host in (burst_a, burst_b):
        host.set_stream_handler(DHT, dht_handler)

    async def chat_client(host: IHost, role: bytes, ready: trio.Event) -> None:
        await host.connect(info(managed))
        stream = await host.new_stream(managed.get_id(), [CHAT])
        await stream.write(role)
        assert await stream.read(2) == b"ok"
        await stream.write(b"hello")
        assert await stream.read(5) == b"hello"
        ready.set()
        await drain(stream)
        chat_ended[host.get_id()].set()

    async with AsyncExitStack() as stack:
        mgr = await stack.enter_async_context(
            cm.open_connection_manager(
                limits=cm.Limits(low=3, high=4, hard=6),
                grace_period=0.3,
                silence_period=0.05,
                triggers=[recorder],
            )
        )
        await stack.enter_async_context(running(managed, *hosts))
        chat = await stack.enter_async_context(mgr.enroll(CHAT, quota=cm.Quota(0, 6)))
        dht = await stack.enter_async_context(mgr.enroll(DHT, quota=cm.Quota(0, 6)))
        attachment = await stack.enter_async_context(attach(managed, mgr))
        nursery = await stack.enter_async_context(trio.open_nursery())

        async def chat_handler(stream: INetStream) -> None:
            tracked = attachment.stream_for(stream)
            seen.append(tracked)
            assert tracked is not None
            role = await stream.read(4)
            if role == b"lock":
                async with chat.lock(tracked, ttl=60):
                    await stream.write(b"ok")
                    await drain(stream, tracked)
            else:
                await stream.write(b"ok")
                await drain(stream, tracked)

        managed.set_stream_handler(CHAT, chat_handler)
        # Nothing may be pruned while the scene is set up.
        for host in hosts:
            mgr.protect(host.get_id(), "setup")

        with trio.fail_after(20):
            # Four peers dial the managed host and open chat streams; one is locked.
            readies = []
            for host in [locked_peer, *chatters]:
                readies.append(ready := trio.Event())
                role = b"lock" if host is locked_peer else b"chat"
                nursery.start_soon(chat_client, host, role, ready)
            for ready in readies:
                await ready.wait()

            # The managed host dials two peers for a DHT lookup in a burst.
            async def lookup(host: IHost, burst: cm.Burst) -> None:
                started = trio.current_time()
                await managed.connect(info(host))
                (conn,) = managed.get_network().get_connections(host.get_id())
                tracked_conn = attachment.connection_for(conn)
                assert tracked_conn is not None
                up_after.append(tracked_conn.opened_at - started)
                stream = await managed.new_stream(host.get_id(), [DHT])
                tracked = attachment.stream_for(stream)
                assert tracked is not None
                assert tracked.protocol == DHT
                assert tracked.direction is cm.Direction.OUTBOUND
                burst.enlist(tracked)
                await stream.write(b"key")
                assert await stream.read(64) == b"found:key"
                await stream.close()
                assert tracked.closed

            async with dht.burst("lookup") as burst, trio.open_nursery() as lookups:
                lookups.start_soon(lookup, burst_a, burst)
                lookups.start_soon(lookup, burst_b, burst)

            stats = mgr.statistics()
            assert stats.connections == 6
            assert (stats.inbound, stats.outbound) == (4, 2)
            assert stats.protocols[CHAT].streams == 4
            assert stats.protocols[DHT].streams_opened == 2
            assert all(s is not None and s.protocol == CHAT for s in seen)
            assert all(s is not None and s.direction is cm.Direction.INBOUND for s in seen)

            # At hard=6 an inbound newcomer is refused: closed, and counted.
            try:
                await late.connect(info(managed))
            except SwarmException:
                pass  # the close overtook the end of the late peer's own handshake
            else:
                await observers[late].gone(managed.get_id()).wait()
            assert mgr.statistics().refusals == {"hard": 1}
            assert mgr.statistics().connections == 6

            # Let the grace periods pass, lift the protection: the next round
            # prunes the burst's connections first, then the lowest tally.
            before = {c.peer: c for c in mgr.connections}
            await trio.sleep(0.3)
            for host in hosts:
                mgr.unprotect(host.get_id(), "setup")
            await mgr.trim()
            stats = mgr.statistics()
            assert stats.connections == 3
            assert stats.connections_pruned == 3

            pruned = sorted(
                (c for c in before.values() if c.close_reason == "pruned"),
                key=lambda c: c.prune_reason.rank if c.prune_reason else 0,
            )
            assert [c.prune_reason.phase for c in pruned if c.prune_reason] == [
                cm.Phase.BURST,
                cm.Phase.BURST,
                cm.Phase.TALLY,
            ]
            assert {c.peer for c in pruned[:2]} == {burst_a.get_id(), burst_b.get_id()}
            assert pruned[0].prune_reason is not None
            assert pruned[0].prune_reason.protocol == DHT
            victim = next(h for h in chatters if h.get_id() == pruned[2].peer)
            survivors = {c.peer for c in mgr.connections}
            assert locked_peer.get_id() in survivors
            assert not before[locked_peer.get_id()].closed
            assert before[locked_peer.get_id()].locked

            # The peers on the other end observe the disconnections.
            for host in (burst_a, burst_b, victim):
                observer = observers[host]
                await observer.gone(managed.get_id()).wait()
                assert host.get_network().get_connections(managed.get_id()) == []
            await chat_ended[victim.get_id()].wait()
            # py-libp2p's own view agrees with the manager's.
            for host in (burst_a, burst_b, victim):
                await managed_observer.gone(host.get_id()).wait()
            assert {c.muxed_conn.peer_id for c in managed.get_network().get_connections()} == (
                survivors
            )
            for host in [locked_peer, *chatters]:
                if host is not victim:
                    assert not chat_ended[host.get_id()].is_set()
                    assert not observers[host].gone(managed.get_id()).is_set()

            # Dials of the managed host were reported, with the latency up to the
            # connection, not up to dial_peer's return (happy eyeballs keeps it
            # until 250 ms after it began): each latency is at most the time from
            # its lookup's start to its connection.
            assert [ok for _, ok, _ in recorder.dials] == [True, True]
            latencies = sorted(latency for _, _, latency in recorder.dials if latency is not None)
            bounds = sorted(up_after)
            assert all(
                0 < latency <= bound for latency, bound in zip(latencies, bounds, strict=True)
            ), (latencies, bounds)

            # A dial to a peer that does not listen is reported as a failure.
            managed.get_network().retry_config = RetryConfig(max_retries=0)
            with trio.socket.socket() as sock:
                await sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            nobody = ID.from_pubkey(create_new_key_pair().public_key)
            address = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
            with pytest.raises(SwarmException):
                await managed.connect(PeerInfo(nobody, [address]))
            assert [ok for _, ok, _ in recorder.dials] == [True, True, False]
            nursery.cancel_scope.cancel()
    # Every socket of the eight hosts is closed.
    assert len(os.listdir("/proc/self/fd")) == fds_before


async def test_attach_adopts_releases_and_restores() -> None:
    managed, managed_observer = make_host()
    first, _ = make_host()
    second, _ = make_host()
    small, _ = make_host(max_connections=5, min_connections=0, low_watermark=0, high_watermark=5)

    async def echo(stream: INetStream) -> None:
        await drain(stream)

    managed.set_stream_handler(ECHO_UNENROLLED, echo)
    async with cm.open_connection_manager(
        limits=cm.Limits(low=2, high=4, hard=8), grace_period=60
    ) as mgr:
        with pytest.raises(cm.ConfigError, match="attach manager must be a ConnectionManager"):
            async with attach(managed, None):  # type: ignore[arg-type]
                pytest.fail("attach() must refuse a non-manager")  # pragma: no cover
        with pytest.raises(cm.ConfigError, match=r"host\.run"):
            async with attach(managed, mgr):
                pytest.fail("attach() must refuse a host that is not running")  # pragma: no cover
        async with running(managed, first, second, small):
            with pytest.raises(cm.ConfigError, match="max_connections=5"):
                async with attach(small, mgr):
                    pytest.fail("max_connections below hard must be refused")  # pragma: no cover
            swarm: Any = managed.get_network()
            assert swarm.connection_pruner._started
            assert swarm.auto_connector._started
            with trio.fail_after(15):
                # A connection from before attach() is adopted.
                await first.connect(info(managed))
                async with attach(managed, mgr) as attachment:
                    assert isinstance(attachment, Attachment)
                    assert not swarm.connection_pruner._started
                    assert not swarm.auto_connector._started
                    with pytest.raises(cm.ConfigError, match="already attached"):
                        async with attach(managed, mgr):
                            pytest.fail("a second attach() must be refused")  # pragma: no cover
                    (conn,) = mgr.connections
                    assert conn.peer == first.get_id()
                    assert conn.direction is cm.Direction.INBOUND
                    assert conn.address == "127.0.0.1"
                    (libp2p_conn,) = swarm.get_connections(first.get_id())
                    assert attachment.connection_for(libp2p_conn) is conn

                    # A protocol nobody enrolled only counts as activity.
                    before = conn.last_active
                    stream = await first.new_stream(managed.get_id(), [ECHO_UNENROLLED])
                    await stream.write(b"ping")
                    assert await stream.read(4) == b"ping"
                    assert attachment.stream_for(stream) is None
                    await stream.close()
                    assert conn.last_active > before
                    assert mgr.statistics().streams == 0

                    # A connection the remote closes is released, not pruned.
                    await second.connect(info(managed))
                    await trio.testing.wait_all_tasks_blocked(0.05)
                    closer = next(c for c in mgr.connections if c.peer == second.get_id())
                    await second.disconnect(managed.get_id())
                    await managed_observer.gone(second.get_id()).wait()
                    await trio.testing.wait_all_tasks_blocked(0.05)
                    assert closer.close_reason == "released"
                    assert mgr.statistics().connections == 1

                # Leaving releases the rest (the host keeps them) and restores py-libp2p.
                assert conn.close_reason == "released"
                assert mgr.statistics().connections == 0
                assert swarm.get_connections(first.get_id()) == [libp2p_conn]
                assert not libp2p_conn.is_closed
                assert swarm.connection_pruner._started
                assert swarm.auto_connector._started
                assert "dial_peer" not in vars(swarm)


async def test_the_sweep_catches_what_notifications_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection py-libp2p never announced is adopted, and one that vanished
    without a ``disconnected`` notification is released, by the sweep."""

    async def unheard(self: Any, network: INetwork, what: Any) -> None:
        await trio.lowlevel.checkpoint()

    # (A stream opened on a connection would adopt it too: identify opens one.)
    for notification in ("connected", "disconnected", "opened_stream"):
        monkeypatch.setattr(libp2p_adapter._Notifee, notification, unheard)

    async def unwatched(self: Any, conn: INetConn, tracked: Any, closing: trio.Event) -> None:
        await trio.lowlevel.checkpoint()

    # Nor does the attachment see the close begin.
    monkeypatch.setattr(Attachment, "_release_when_closing", unwatched)
    # The test sweeps, once it has looked: the periodic sweep (every SWEEP_INTERVAL
    # seconds of the real clock) may come before that on a slow machine.
    monkeypatch.setattr(libp2p_adapter, "SWEEP_INTERVAL", math.inf)
    managed, managed_observer = make_host()
    remote, _ = make_host()

    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        mgr.subscribe() as events,
        running(managed, remote),
        attach(managed, mgr) as attachment,
    ):
        with trio.fail_after(15):
            await remote.connect(info(managed))
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert mgr.statistics().connections == 0  # nobody told the attachment
            attachment._sweep_once()
            opened = await events.receive()
            assert isinstance(opened, cm.ConnectionOpened)
            (conn,) = mgr.connections
            assert conn.peer == remote.get_id()
            assert conn.direction is cm.Direction.INBOUND

            await remote.disconnect(managed.get_id())
            await managed_observer.gone(remote.get_id()).wait()
            assert mgr.statistics().connections == 1  # nobody told it this either
            attachment._sweep_once()
            closed = await events.receive()
            assert isinstance(closed, cm.ConnectionClosed)
            assert conn.close_reason == "released"
            assert mgr.statistics().connections_pruned == 0


async def test_only_dials_that_dial_are_reported() -> None:
    recorder = DialRecorder()
    managed, _ = make_host()
    remote, _ = make_host()
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), triggers=[recorder]) as mgr,
        running(managed, remote),
        attach(managed, mgr),
    ):
        swarm: Any = managed.get_network()
        with trio.fail_after(15):
            # Two dials to one peer at once: one dials, the other waits for it.
            managed.get_peerstore().add_addrs(remote.get_id(), remote.get_addrs(), 60)
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(swarm.dial_peer, remote.get_id())
            assert [ok for _, ok, _ in recorder.dials] == [True]
            # Reusing the live connection dials nothing.
            await swarm.dial_peer(remote.get_id())
            # Nor does a peer without a known address.
            nobody = ID.from_pubkey(create_new_key_pair().public_key)
            with pytest.raises(SwarmException, match="No known addresses"):
                await swarm.dial_peer(nobody)
            assert len(recorder.dials) == 1
            # A dial whose every address fails is reported; py-libp2p's negative
            # cache then refuses the next one at once, which dials nothing.
            swarm.retry_config = RetryConfig(max_retries=0)
            with trio.socket.socket() as sock:
                await sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            address = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
            managed.get_peerstore().add_addrs(nobody, [address], 60)
            with pytest.raises(SwarmException):
                await swarm.dial_peer(nobody)
            with pytest.raises(SwarmException, match="negative cache"):
                await swarm.dial_peer(nobody)
            assert [ok for _, ok, _ in recorder.dials] == [True, False]


async def test_a_connection_closing_by_itself_is_released_at_once() -> None:
    """py-libp2p notifies ``disconnected`` about 0.2 s after a close begins: a
    round meanwhile must not count the connection and prune another instead."""
    managed, _ = make_host()
    peers = [make_host()[0] for _ in range(3)]
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=2, high=3), grace_period=0, silence_period=60
        ) as mgr,
        running(managed, *peers),
        attach(managed, mgr) as attachment,
    ):
        with trio.fail_after(15):
            for peer in peers:
                await peer.connect(info(managed))
            await until(lambda: mgr.statistics().connections == 3)
            leaving = peers[1]
            (conn,) = managed.get_network().get_connections(leaving.get_id())
            tracked = attachment.connection_for(conn)
            assert tracked is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leaving.disconnect, managed.get_id())
                await until(lambda: conn.is_closed, interval=0)
                # Closing has begun, the disconnection is not notified yet.
                assert managed.get_network().get_connections(leaving.get_id()) == [conn]
                assert await mgr.trim() == []
                assert tracked.close_reason == "released"
            assert mgr.statistics().connections == 2
            # One task watches each connection that is still tracked.
            assert len(attachment._watchers) == 2


async def test_a_pruned_peer_that_stopped_reading_is_torn_down() -> None:
    """Resetting its streams and yamux's GO_AWAY block on a full socket: after
    half of ``close_timeout`` the adapter closes the transport under them."""
    managed, _ = make_host()
    stalled, _ = make_host()
    other, _ = make_host()

    async def sink(stream: INetStream) -> None:
        await trio.sleep_forever()

    stalled.set_stream_handler(SINK, sink)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=1), grace_period=0, silence_period=0, close_timeout=1
        ) as mgr,
        running(managed, stalled, other),
    ):
        # attach() restarts py-libp2p's auto-connector on exit, which would dial
        # the pruned peer again as the host closes (and py-libp2p leaks the
        # socket of a dial that closing interrupts): keep it off.
        await managed.get_network().auto_connector.stop()  # type: ignore[attr-defined]
        async with attach(managed, mgr) as attachment, trio.open_nursery() as nursery:
            await _stalled_peer_pruned(mgr, attachment, nursery, managed, stalled, other)


async def stall_writes(
    nursery: trio.Nursery, conn: Any, remote_side: Any, stream: INetStream
) -> tuple[trio.Event, trio.Event]:
    """The remote side of ``conn`` stops reading its socket until the first
    event returned is set, and a task of ``nursery`` writes on ``stream`` until
    its writes block on the full socket, holding yamux's write lock; the second
    event is set once a write fails."""
    resume = trio.Event()
    remote_raw: Any = remote_side.muxed_conn.secured_conn.conn.conn
    read = remote_raw.read

    async def stuck_read(n: int | None = None) -> bytes:
        await resume.wait()
        return await read(n)  # type: ignore[no-any-return]

    remote_raw.read = stuck_read
    # yamux lets a stream send 256 KiB before the peer's window update: the
    # sockets must hold less, or the writer waits on the window (polling, with
    # the write lock free) instead of on the full socket. Loopback's buffers
    # grow as they are used; pin them small.
    local_raw: Any = conn.muxed_conn.secured_conn.conn.conn
    local_raw.stream.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    remote_raw.stream.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    writer_ended = trio.Event()

    async def writer() -> None:
        try:
            while True:
                await stream.write(b"x" * 65536)
        except Exception:
            writer_ended.set()

    nursery.start_soon(writer)
    muxed: Any = conn.muxed_conn
    await until(muxed._write_lock.locked)
    await trio.testing.wait_all_tasks_blocked(0.2)
    assert muxed._write_lock.locked()  # blocked on the full socket
    return resume, writer_ended


async def _stalled_peer_pruned(
    mgr: cm.ConnectionManager,
    attachment: Attachment,
    nursery: trio.Nursery,
    managed: IHost,
    stalled: IHost,
    other: IHost,
) -> None:
    with trio.fail_after(15):
        mgr.protect(stalled.get_id(), "setup")
        mgr.protect(other.get_id(), "keep")
        await stalled.connect(info(managed))
        await other.connect(info(managed))
        await until(lambda: mgr.statistics().connections == 2)
        (conn,) = managed.get_network().get_connections(stalled.get_id())
        (remote_side,) = stalled.get_network().get_connections(managed.get_id())
        tracked = attachment.connection_for(conn)
        assert tracked is not None
        stream = await managed.new_stream(stalled.get_id(), [SINK])

        # The remote stops reading its socket, and the managed side keeps writing.
        resume, writer_ended = await stall_writes(nursery, conn, remote_side, stream)

        mgr.unprotect(stalled.get_id(), "setup")
        await mgr.trim()
        assert tracked.close_reason == "pruned"
        await writer_ended.wait()
        await until(lambda: conn not in managed.get_network().get_connections())
        assert conn.is_closed
        assert mgr.statistics().close_timeouts == 0
        assert attachment.connection_for(conn) is None
        assert list(attachment._watchers) == managed.get_network().get_connections()
        # The peer reads again: it finds the connection gone, and closes its side.
        resume.set()
        await until(lambda: remote_side.is_closed)


async def test_outbound_streams_the_remote_ended_are_released_by_the_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The periodic sweep (every SWEEP_INTERVAL seconds of the real clock from
    # attach() on) starts once the test has looked: on a slow machine it could
    # otherwise come before that.
    looked = trio.Event()
    run_sweeper = Attachment._run_sweeper

    async def held_sweeper(
        self: Attachment, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await looked.wait()
        await run_sweeper(self)

    monkeypatch.setattr(Attachment, "_run_sweeper", held_sweeper)
    reset = DHT + "/reset"
    managed, _ = make_host()
    remote, _ = make_host()

    async def reset_handler(stream: INetStream) -> None:
        await stream.read(64)
        await stream.reset()

    async def answer_handler(stream: INetStream) -> None:
        request = await stream.read(64)
        await stream.write(b"found:" + request)
        await stream.close()

    remote.set_stream_handler(reset, reset_handler)
    remote.set_stream_handler(DHT, answer_handler)
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        running(managed, remote),
        mgr.enroll(DHT, quota=cm.Quota(0, 4)),
        mgr.enroll(reset, quota=cm.Quota(0, 4)),
        attach(managed, mgr) as attachment,
    ):
        with trio.fail_after(15):
            await managed.connect(info(remote))
            # A request answered, then ended by both sides without close() or reset().
            answered = await managed.new_stream(remote.get_id(), [DHT])
            await answered.write(b"key")
            await answered.close_write()
            with pytest.raises(StreamError):
                while await answered.read(64):
                    pass
            # A request the remote resets.
            refused = await managed.new_stream(remote.get_id(), [reset])
            await refused.write(b"key")
            with pytest.raises(StreamError):
                await refused.read(64)
            tracked = [attachment.stream_for(answered), attachment.stream_for(refused)]
            assert all(t is not None and not t.closed for t in tracked)
            looked.set()
            await until(lambda: all(t is not None and t.closed for t in tracked))  # a sweep
            assert mgr.statistics().streams == 0
