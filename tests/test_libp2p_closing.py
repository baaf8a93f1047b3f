"""trio_connmgr.libp2p: what a pruned or refused py-libp2p connection goes through.

Real py-libp2p hosts on 127.0.0.1, the real clock, every wait under
``trio.fail_after`` (as in test_libp2p).
"""

from __future__ import annotations

import logging
import math
import struct
from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.stream.exceptions import StreamEOF, StreamError, StreamReset
from libp2p.network.stream.net_stream import StreamState
from libp2p.stream_muxer.mplex.constants import HeaderTags
from test_libp2p import info, running, until

import trio_connmgr as cm
from trio_connmgr import libp2p as libp2p_adapter
from trio_connmgr.libp2p import Attachment, attach

HOLD = "/trio-connmgr-test/prune/hold/1.0.0"

# yamux frames: version, type, flags, stream id, length.
YAMUX_HEADER = ">BBHII"
YAMUX_GO_AWAY = 0x3
YAMUX_RST = 0x8


def _record_wire(muxed: Any, log: list[tuple[str, Any]]) -> None:
    """Log, in order, the stream resets ``muxed`` sends and the start of its close."""
    close = muxed.close

    async def recorded_close(*args: Any) -> None:
        log.append(("close", None))
        await close(*args)

    muxed.close = recorded_close
    if type(muxed).__name__ == "Yamux":
        write_frame = muxed._write_frame

        async def recorded_frame(data: bytes) -> None:
            _, kind, flags, stream_id, _ = struct.unpack(YAMUX_HEADER, data[:12])
            if flags & YAMUX_RST:
                log.append(("reset", stream_id))
            elif kind == YAMUX_GO_AWAY:
                log.append(("go away", None))
            await write_frame(data)

        muxed._write_frame = recorded_frame
    else:
        send_message = muxed.send_message

        async def recorded_message(flag: HeaderTags, data: bytes | None, stream_id: Any) -> None:
            if flag in (HeaderTags.ResetInitiator, HeaderTags.ResetReceiver):
                log.append(("reset", stream_id))
            await send_message(flag, data, stream_id)

        muxed.send_message = recorded_message


@pytest.mark.parametrize(
    ("muxer", "size", "remote_error"),
    [
        # py-libp2p's yamux forgets a stream as soon as its reset arrives, before
        # the blocked reader looks: read(n) finds it gone, which it reports as EOF.
        ("YAMUX", 1024, StreamEOF),
        # read() without a size checks for the reset first.
        ("YAMUX", None, StreamReset),
        # py-libp2p's mplex wakes the reader before it records the reset.
        ("MPLEX", 1024, StreamEOF),
    ],
)
async def test_a_prune_resets_the_streams_before_closing_the_connection(
    caplog: pytest.LogCaptureFixture, muxer: str, size: int | None, remote_error: type[StreamError]
) -> None:
    """The streams are reset on the wire before the connection's close begins; a
    py-libp2p handler blocked in ``read()`` at the other end wakes with an error
    (which one depends on its muxer and on the read)."""
    caplog.set_level(logging.DEBUG, logger="trio_connmgr.libp2p")
    managed = new_host(key_pair=create_new_key_pair(), muxer_preference=muxer)
    remote = new_host(key_pair=create_new_key_pair(), muxer_preference=muxer)
    kept = new_host(key_pair=create_new_key_pair(), muxer_preference=muxer)
    reading = trio.Event()
    woken = trio.Event()
    errors: list[BaseException] = []

    async def hold(stream: INetStream) -> None:
        reading.set()
        try:
            await stream.read(size)
        except StreamError as exc:
            errors.append(exc)
        woken.set()

    remote.set_stream_handler(HOLD, hold)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=1), grace_period=0, silence_period=60
        ) as mgr,
        running(managed, remote, kept),
        mgr.enroll(HOLD, quota=cm.Quota(0, 4)),
    ):
        # attach() restarts py-libp2p's auto-connector on exit, which would dial
        # the pruned peer again as the hosts close: keep it off.
        await managed.get_network().auto_connector.stop()  # type: ignore[attr-defined]
        async with attach(managed, mgr) as attachment:
            with trio.fail_after(15):
                mgr.protect(kept.get_id(), "keep")
                mgr.protect(remote.get_id(), "setup")
                await managed.connect(info(kept))
                await managed.connect(info(remote))
                (conn,) = managed.get_network().get_connections(remote.get_id())
                tracked = attachment.connection_for(conn)
                assert tracked is not None
                stream: Any = await managed.new_stream(remote.get_id(), [HOLD])
                assert attachment.stream_for(stream) is not None
                await reading.wait()
                wire: list[tuple[str, Any]] = []
                _record_wire(conn.muxed_conn, wire)

                mgr.unprotect(remote.get_id(), "setup")
                await mgr.trim()  # (unless the round unprotect() wakes got there first)
                await woken.wait()
                await until(lambda: conn not in managed.get_network().get_connections())
                assert tracked.close_reason == "pruned"
                assert conn.is_closed
                assert stream._state is StreamState.RESET
                stream_id = stream.muxed_stream.stream_id
                assert wire[:2] == [("reset", stream_id), ("close", None)]
                if muxer == "YAMUX":
                    assert wire[2:] == [("go away", None)]
                (error,) = errors
                assert type(error) is remote_error
    # The close went through in time: nothing was torn down.
    assert [r for r in caplog.records if r.name == "trio_connmgr.libp2p"] == []


@pytest.mark.parametrize("close_fails", [False, True])
async def test_a_refused_connection_is_not_kept_once_its_close_is_done(
    monkeypatch: pytest.MonkeyPatch, close_fails: bool
) -> None:
    """Even when py-libp2p never notifies its disconnection, or its close fails, a
    refused connection is forgotten once the attachment has closed it; one still
    open after a failed close is refused (and closed) again by the sweep."""

    async def unheard(self: Any, network: INetwork, what: Any) -> None:
        await trio.lowlevel.checkpoint()

    # py-libp2p tells the attachment nothing: the test sweeps, once it has looked.
    for notification in ("connected", "disconnected", "opened_stream"):
        monkeypatch.setattr(libp2p_adapter._Notifee, notification, unheard)
    monkeypatch.setattr(libp2p_adapter, "SWEEP_INTERVAL", math.inf)
    close_refused = Attachment._close_refused
    closes_done: list[INetConn] = []

    async def watched_close_refused(self: Attachment, conn: INetConn) -> None:
        if close_fails and not closes_done:
            close = conn.close

            async def failing_close() -> None:
                conn.close = close  # type: ignore[method-assign]
                raise RuntimeError("the close failed")

            conn.close = failing_close  # type: ignore[method-assign]
        await close_refused(self, conn)
        closes_done.append(conn)

    monkeypatch.setattr(Attachment, "_close_refused", watched_close_refused)
    managed = new_host(key_pair=create_new_key_pair())
    remote = new_host(key_pair=create_new_key_pair())
    swarm: Any = managed.get_network()
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=2, high=4), admission=cm.Admission(deny=["127.0.0.1"])
        ) as mgr,
        running(managed, remote),
        attach(managed, mgr) as attachment,
    ):
        with trio.fail_after(15):
            await remote.connect(info(managed))
            (conn,) = swarm.get_connections(remote.get_id())
            attachment._sweep_once()
            assert mgr.statistics().refusals == {"deny": 1}
            assert attachment._refused == {conn}  # while it closes
            await until(lambda: len(closes_done) == 1)
            assert attachment._refused == set()
            if close_fails:
                assert not conn.is_closed
                assert swarm.get_connections(remote.get_id()) == [conn]
                attachment._sweep_once()
                assert mgr.statistics().refusals == {"deny": 2}
                await until(lambda: len(closes_done) == 2)
                assert closes_done == [conn, conn]
                assert attachment._refused == set()
            assert conn.is_closed
            assert conn not in swarm.get_connections()
            attachment._sweep_once()
            assert mgr.statistics().refusals == {"deny": 1 + close_fails}
            assert mgr.statistics().connections == 0
