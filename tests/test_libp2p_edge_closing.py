"""trio_connmgr.libp2p: refused connections whose close does not go through.

Real py-libp2p hosts on 127.0.0.1, the real clock, every wait under
``trio.fail_after`` (as in test_libp2p).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from libp2p.abc import INetStream, INetwork
from test_libp2p import info, make_host, running, stall_writes, until

import trio_connmgr as cm
from trio_connmgr import libp2p as libp2p_adapter
from trio_connmgr.libp2p import attach

SINK = "/trio-connmgr-test/edge/sink/1.0.0"


async def test_a_refused_connection_whose_close_times_out_is_torn_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused connection to a peer that stopped reading: py-libp2p's close
    blocks on the full socket (and marks the connection closed at once, so no
    later close() does anything). After ``CLOSE_TIMEOUT`` the attachment closes
    its transport, and py-libp2p finishes the close: the connection leaves the
    swarm instead of staying there, closed but counted, for good."""

    async def unheard(self: Any, network: INetwork, what: Any) -> None:
        await trio.lowlevel.checkpoint()

    # The attachment learns of the connection from the test's sweep, once the
    # connection is stalled (a stream opened on it would adopt it too).
    for notification in ("connected", "opened_stream"):
        monkeypatch.setattr(libp2p_adapter._Notifee, notification, unheard)
    monkeypatch.setattr(libp2p_adapter, "SWEEP_INTERVAL", math.inf)
    monkeypatch.setattr(libp2p_adapter, "CLOSE_TIMEOUT", 0.5)
    managed, _ = make_host()
    stalled, _ = make_host()

    async def sink(stream: INetStream) -> None:
        await trio.sleep_forever()

    stalled.set_stream_handler(SINK, sink)
    swarm: Any = managed.get_network()
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=2, high=4), admission=cm.Admission(deny=["127.0.0.1"])
        ) as mgr,
        running(managed, stalled),
    ):
        # attach() restarts py-libp2p's auto-connector on exit, which would dial
        # the refused peer again as the hosts close: keep it off.
        await swarm.auto_connector.stop()
        async with attach(managed, mgr) as attachment, trio.open_nursery() as nursery:
            with trio.fail_after(15):
                await stalled.connect(info(managed))
                (conn,) = swarm.get_connections(stalled.get_id())
                (remote_side,) = stalled.get_network().get_connections(managed.get_id())
                stream = await managed.new_stream(stalled.get_id(), [SINK])

                # The peer stops reading its socket; the managed side keeps writing
                # until its writes block on the full socket (holding yamux's write
                # lock, which the close's GO_AWAY needs).
                resume, writer_ended = await stall_writes(nursery, conn, remote_side, stream)

                attachment._sweep_once()
                assert mgr.statistics().refusals == {"deny": 1}
                assert attachment._refused == {conn}
                await until(lambda: not attachment._refused)
                assert conn.is_closed
                assert conn not in swarm.get_connections()
                await writer_ended.wait()
                attachment._sweep_once()
                assert mgr.statistics().refusals == {"deny": 1}
                assert mgr.statistics().connections == 0
                resume.set()
                await until(lambda: remote_side.is_closed)
