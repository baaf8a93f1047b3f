"""The admission examples of docs/sensing-and-admission.md, run against real clients."""

from __future__ import annotations

import logging
import re
import socket
import struct
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trio_connmgr as cm

PAGE = Path(__file__).resolve().parent.parent / "docs" / "sensing-and-admission.md"


def public_node_example() -> str:
    """The python block of the "Example: a public node" section."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("### Example: a public node", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match is not None
    return match.group(1)


def reset_connection(port: int) -> None:
    """Connect to ``port`` and reset the connection at once (a blocking call).

    Trio's scheduler does not run in between: the server accepts a connection
    already reset, whose remote address can no longer be read.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.connect(("127.0.0.1", port))


async def test_the_public_node_handler_outlives_a_client_reset_before_accept() -> None:
    served: list[cm.Connection] = []

    async def serve(stream: trio.SocketStream, conn: cm.Connection) -> None:
        served.append(conn)
        await stream.send_all(b"ok")

    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
        namespace: dict[str, Any] = {
            "cm": cm,
            "trio": trio,
            "mgr": mgr,
            "peer_of": lambda stream: "client",
            "serve": serve,
            "log": logging.getLogger("public-node"),
        }
        exec(public_node_example(), namespace)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, namespace["handler"], 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            reset_connection(port)
            with trio.fail_after(10):
                async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                    assert await client.receive_some(2) == b"ok"
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert len(served) == 1
