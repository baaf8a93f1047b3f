"""A py-libp2p node under a connection manager, with five real peers on 127.0.0.1.

Run it: ``.venv/bin/python examples/libp2p_node.py`` (a few seconds; needs the
``libp2p`` extra).

The node allows ``Limits(low=2, high=3)`` and enrolls a chat protocol. Five
peers connect and chat; the node locks the first peer's stream. When the grace
period ends, the regulator prunes the node back under ``high``: the pruned peers
see the disconnection, the locked one stays. It ends at ``low`` (2) when every
connection has left its grace period by the round, at ``high`` (3) when the
round comes between two of their grace periods' ends (the connections open
milliseconds apart) and spares the one still in its grace: regulation starts
only above ``high``.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.peerinfo import info_from_p2p_addr

import trio_connmgr as cm
from trio_connmgr.libp2p import attach

CHAT = "/example/chat/1.0.0"
LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


async def chat(node: IHost, peer: IHost, name: str, ended: dict[str, str]) -> None:
    """A peer dials the node, opens a chat stream and talks until it is cut off."""
    await peer.connect(info_from_p2p_addr(node.get_addrs()[0]))
    stream = await peer.new_stream(node.get_id(), [CHAT])
    try:
        while True:
            await stream.write(f"hello from {name}".encode())
            await stream.read(64)
            await trio.sleep(0.1)
    except StreamError as exc:
        ended[name] = f"cut off ({type(exc).__name__})"


async def main() -> None:
    node = new_host(key_pair=create_new_key_pair())
    peers = {f"peer-{i}": new_host(key_pair=create_new_key_pair()) for i in range(5)}
    names = {host.get_id(): name for name, host in peers.items()}
    ended: dict[str, str] = {}

    async with AsyncExitStack() as stack:
        mgr = await stack.enter_async_context(
            cm.open_connection_manager(
                limits=cm.Limits(low=2, high=3), grace_period=1.0, silence_period=0.1
            )
        )
        for host in [node, *peers.values()]:
            await stack.enter_async_context(host.run(LOOPBACK))
            stack.push_async_callback(host.close)  # closes every socket on the way out
        chat_protocol = await stack.enter_async_context(mgr.enroll(CHAT, quota=cm.Quota(0, 5)))
        attachment = await stack.enter_async_context(attach(node, mgr))
        events = await stack.enter_async_context(mgr.subscribe())

        async def handler(stream: INetStream) -> None:
            tracked = attachment.stream_for(stream)  # negotiated: already tracked
            assert tracked is not None
            try:
                if names.get(stream.muxed_conn.peer_id) == "peer-0":
                    async with chat_protocol.lock(tracked, ttl=60):
                        await echo(stream, tracked)
                else:
                    await echo(stream, tracked)
            except StreamError:
                pass

        async def echo(stream: INetStream, tracked: cm.Stream) -> None:
            while data := await stream.read(64):
                tracked.touch(len(data))
                await stream.write(data)

        node.set_stream_handler(CHAT, handler)
        print(f"node {str(node.get_id())[:16]}... limits low=2 high=3")
        async with trio.open_nursery() as nursery:
            for name, peer in peers.items():
                nursery.start_soon(chat, node, peer, name, ended)
            with trio.fail_after(15):
                async for event in events:
                    if isinstance(event, cm.ConnectionOpened):
                        name = node_peer(event.peer, names)
                        print(f"  connected: {name} ({event.count} connections)")
                    if isinstance(event, cm.ConnectionPruned):
                        name = node_peer(event.peer, names)
                        print(f"  pruned {name}: {event.reason}")
                    if (
                        isinstance(event, cm.RoundCompleted)
                        and event.victims > 0
                        and event.count_after <= 3
                    ):
                        break
                await trio.sleep(0.5)  # the peers notice
            print(f"node count now {mgr.statistics().connections}")
            for name in peers:
                print(f"  {name}: {ended.get(name, 'still chatting')}")
            nursery.cancel_scope.cancel()


def node_peer(peer: str, names: dict[object, str]) -> str:
    """The example's name for a peer id string."""
    return next((name for pid, name in names.items() if str(pid) == peer), peer)


if __name__ == "__main__":
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # keep the output readable
    trio.run(main)
