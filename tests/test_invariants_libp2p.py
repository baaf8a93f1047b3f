"""SPEC §12.7 on the py-libp2p adapter's close path, with real hosts on 127.0.0.1.

A connection the manager prunes has its close callback awaited exactly once,
its streams closed, in the manager and at both ends, and its py-libp2p
connection closed. (The real clock, as in test_libp2p: every wait is under
``trio.fail_after``.)
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.network.stream.net_stream import StreamState
from test_libp2p import info, make_host, running, until

import trio_connmgr as cm
from trio_connmgr.libp2p import attach

SINK = TProtocol("/trio-connmgr-test/invariants/sink/1.0.0")


async def test_a_pruned_connection_is_closed_once_with_its_streams() -> None:
    managed, _ = make_host()
    kept, _ = make_host()
    pruned, _ = make_host()
    ended: list[BaseException | None] = []
    reading = trio.Event()
    handler_done = trio.Event()

    async def sink(stream: INetStream) -> None:
        # The remote end of a stream on the connection to prune, blocked in read().
        try:
            while await stream.read(1024):
                reading.set()
        except BaseException as exc:
            ended.append(exc)
            raise
        else:
            ended.append(None)  # end of file
        finally:
            handler_done.set()

    pruned.set_stream_handler(SINK, sink)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=2), grace_period=0, silence_period=1000, close_timeout=4
        ) as mgr,
        mgr.enroll(SINK, quota=cm.Quota(0, 2)) as enrollment,
        running(managed, kept, pruned),
    ):
        # (attach() restarts py-libp2p's auto-connector as it exits: keep it off, as
        # test_libp2p does, or it dials the pruned peer again while the host closes.)
        await managed.get_network().auto_connector.stop()  # type: ignore[attr-defined]
        async with attach(managed, mgr) as attachment:
            with trio.fail_after(15):
                mgr.protect(kept.get_id(), "keep")
                mgr.protect(pruned.get_id(), "setup")
                await kept.connect(info(managed))
                await pruned.connect(info(managed))
                await until(lambda: mgr.statistics().connections == 2)
                (conn,) = managed.get_network().get_connections(pruned.get_id())
                tracked = attachment.connection_for(conn)
                assert tracked is not None
                stream = await managed.new_stream(pruned.get_id(), [SINK])
                counted = attachment.stream_for(stream)
                assert counted is not None
                assert tracked.streams == {counted}
                await stream.write(b"hello")
                await reading.wait()  # the remote handler is blocked in its next read()

                # The manager's close callback for it (track(close=...)), counted.
                closes: list[Any] = []
                close_connection = attachment._close_connection

                async def counting_close(libp2p_conn: Any) -> None:
                    closes.append(libp2p_conn)
                    await close_connection(libp2p_conn)

                attachment._close_connection = counting_close  # type: ignore[method-assign, assignment]
                mgr.unprotect(pruned.get_id(), "setup")
                assert await mgr.trim() == [tracked]
                # In the manager, at once: the stream is closed and counts no more.
                assert counted.closed
                assert tracked.streams == set()
                assert enrollment.usage == 0
                await handler_done.wait()
                await until(lambda: conn not in managed.get_network().get_connections())
                await until(lambda: not mgr._nursery.child_tasks)  # the closer is done
                assert closes == [conn]
                assert conn.is_closed
                assert attachment.connection_for(conn) is None
                assert attachment.stream_for(stream) is None
        # At both ends: the remote handler's read() stopped, and the local
        # stream was reset rather than left open.
        assert len(ended) == 1
        assert ended[0] is None or isinstance(ended[0], StreamError), ended
        netstream: Any = stream  # (INetStream does not declare its state)
        assert await netstream.state is StreamState.RESET
        assert mgr.statistics().close_errors == 0
        assert mgr.statistics().close_timeouts == 0
