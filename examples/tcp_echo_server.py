"""A TCP echo server whose connections a manager regulates, on real loopback sockets.

Run it: ``.venv/bin/python examples/tcp_echo_server.py`` (about a second).

The server allows ``Limits(low=5, high=8)``. Twenty clients connect and echo a
line each; two of them ask to be kept (the server locks their stream). When the
grace periods end, the regulator prunes the server back under ``high`` (in a
round or two): the pruned clients see their socket closed, the locked ones stay
open. It usually ends at ``low`` (5); it ends at 6 to 8 when the last round
comes while some connections are still in their grace period (they open
milliseconds apart) and spares them: regulation starts only above ``high``.
"""

from __future__ import annotations

from functools import partial

import trio

import trio_connmgr as cm
from trio_connmgr.tcp import serve_tcp

CLIENTS = 20


async def main() -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=5, high=8), grace_period=0.5, silence_period=0.1
        ) as mgr,
        mgr.enroll("echo", quota=cm.Quota(1, 8)) as echo,
    ):

        async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
            # A plain TCP connection carries one stream of one protocol.
            async with echo.stream(conn, direction="inbound") as s:
                first = await stream.receive_some(1024)
                if first.startswith(b"keep"):
                    async with echo.lock(s, ttl=60):
                        await echo_forever(stream, s, first)
                else:
                    await echo_forever(stream, s, first)

        async def echo_forever(stream: trio.SocketStream, s: cm.Stream, data: bytes) -> None:
            while data:
                s.touch(len(data))
                await stream.send_all(data)
                data = await stream.receive_some(1024)

        outcome: dict[str, str] = {}
        # Each client the server closes says so here.
        closed_send, closed_receive = trio.open_memory_channel[str](CLIENTS)

        async def client(i: int, port: int) -> None:
            name = f"client-{i:02}"
            line = b"keep me\n" if i in (3, 7) else b"hello\n"
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(line)
                await stream.receive_some(1024)
                outcome[name] = "open (locked)" if line.startswith(b"keep") else "open"
                try:
                    while await stream.receive_some(1024):
                        pass
                except trio.BrokenResourceError:
                    pass
                outcome[name] = "closed by the server"
                closed_send.send_nowait(name)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
            port = listeners[0].socket.getsockname()[1]
            print(f"echo server on 127.0.0.1:{port}, limits low=5 high=8")
            async with mgr.subscribe() as events, trio.open_nursery() as clients:
                for i in range(CLIENTS):
                    clients.start_soon(client, i, port)
                with trio.fail_after(10):
                    async for event in events:
                        if isinstance(event, cm.ConnectionOpened) and event.count == CLIENTS:
                            print(f"{CLIENTS} connections; the grace period ends in 0.5 s...")
                        if isinstance(event, cm.RoundCompleted) and event.victims:
                            print(
                                f"round {event.number} ({event.trigger}): "
                                f"{event.count_before} -> {event.count_after} connections, "
                                f"pruned by phase {dict(event.by_phase)}"
                            )
                            if event.count_after <= 8:
                                break
                # Every connection the server pruned, its client has seen closed.
                with trio.fail_after(5):
                    for _ in range(CLIENTS - mgr.statistics().connections):
                        await closed_receive.receive()
                for name in sorted(outcome):
                    print(f"  {name}: {outcome[name]}")
                print(f"server count now {mgr.statistics().connections} (low=5, high=8)")
                clients.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
