"""trio_connmgr.tcp at its edges: what it names, logs and refuses, on loopback sockets."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio
from test_tcp import wait_closed

import trio_connmgr as cm
from trio_connmgr.tcp import open_tcp_connection, serve_tcp


async def test_a_refused_connection_is_logged_with_the_client_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_connmgr.tcp")

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 1, hard=1)) as mgr,
        trio.open_nursery() as nursery,
    ):
        mgr.track("held", direction="outbound", close=trio.lowlevel.checkpoint)
        listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                host, client_port = client.socket.getsockname()[:2]
                await wait_closed(client)
        assert dict(mgr.statistics().refusals) == {"hard": 1}
        nursery.cancel_scope.cancel()
    [message] = [r.getMessage() for r in caplog.records if "not admitted" in r.getMessage()]
    # The refusal's detail does not name the client (count 1 is at hard=1): the log line does.
    assert message.startswith(f"inbound TCP connection from {host}:{client_port} not admitted")


async def test_the_default_peer_of_an_ipv6_dial_is_bracketed_like_a_served_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A served IPv6 client is "[host]:port"; a dialled IPv6 host is named the same
    # way, not "::1:8000" (which reads as the address ::1:8000). The dial itself
    # goes to an IPv4 loopback server.
    dialled: list[tuple[str, int]] = []
    real_dial = trio.open_tcp_stream

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        await wait_closed(stream)

    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        trio.open_nursery() as nursery,
    ):
        listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
        port = listeners[0].socket.getsockname()[1]

        async def dial(host: str, dial_port: int, **kwargs: Any) -> trio.SocketStream:
            dialled.append((host, dial_port))
            return await real_dial("127.0.0.1", port)

        monkeypatch.setattr(trio, "open_tcp_stream", dial)
        with trio.fail_after(10):
            async with open_tcp_connection(mgr, "::1", 8000) as (_, conn):
                assert conn.peer == "[::1]:8000"
            async with open_tcp_connection(mgr, "127.0.0.1", 8000) as (_, conn):
                assert conn.peer == "127.0.0.1:8000"
        assert dialled == [("::1", 8000), ("127.0.0.1", 8000)]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", [123, "", b""])
async def test_a_bad_serve_tcp_host_is_a_config_error_before_listening(host: object) -> None:
    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr,
        trio.open_nursery() as nursery,
    ):
        with pytest.raises(cm.ConfigError, match=rf"serve_tcp host .*got {host!r}"):
            await nursery.start(partial(serve_tcp, handler, 0, manager=mgr, host=host))
        nursery.cancel_scope.cancel()


async def test_serve_tcp_takes_a_bytes_host_as_trio_does() -> None:
    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        await stream.send_all(b"hi")

    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr,
        trio.open_nursery() as nursery,
    ):
        listeners = await nursery.start(
            partial(serve_tcp, handler, 0, manager=mgr, host=b"127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client:
                assert await client.receive_some(2) == b"hi"
        nursery.cancel_scope.cancel()
