"""trio_connmgr.libp2p: the address admission sees for a py-libp2p connection.

No sockets: the connections are stand-ins with the methods the adapter reads
(``get_remote_address()`` and ``get_transport_addresses()`` of the muxed
connection), and the multiaddrs are real ``multiaddr.Multiaddr`` objects.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from multiaddr import Multiaddr

import trio_connmgr as cm
from trio_connmgr.libp2p import Attachment

CERTHASH = "uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1aluKR_tpevQ"


class MuxedConn:
    """What the adapter reads of a py-libp2p muxed connection."""

    def __init__(self, peer: str, remote: Any, addresses: list[Multiaddr]) -> None:
        self.peer_id = peer
        self.is_initiator = False
        self.is_closed = False
        self._remote = remote
        self._addresses = addresses

    def get_remote_address(self) -> Any:
        return self._remote

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self._addresses


class SwarmConn:
    """An inbound py-libp2p connection, without streams."""

    direction = "inbound"

    def __init__(self, muxed: MuxedConn) -> None:
        self.muxed_conn = muxed
        self.is_closed = False
        self.closes = 0

    def get_streams(self) -> tuple[()]:
        return ()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closes += 1
        self.is_closed = True


class Host:
    def get_network(self) -> object:
        return object()


def inbound(peer: str, remote: Any, *addresses: str) -> Any:
    return SwarmConn(MuxedConn(peer, remote, [Multiaddr(a) for a in addresses]))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("/ip4/203.0.113.7/udp/4001/webrtc-direct/certhash/" + CERTHASH, "203.0.113.7"),
        ("/ip6/2001:db8::7/udp/4001/webrtc-direct/certhash/" + CERTHASH, "2001:db8::7"),
        # The zone qualifies the address, as in a socket's "fe80::1%eth0" (which
        # multiaddr 0.2 would otherwise read as the IPv4 address 101.116.104.48).
        ("/ip6zone/eth0/ip6/fe80::1/udp/4001/webrtc-direct/certhash/" + CERTHASH, "fe80::1%eth0"),
        ("/ip6zone/eth0/ip6/fe80::1/tcp/4001", "fe80::1%eth0"),
        ("/ip4/192.0.2.1/tcp/4001/p2p-circuit", "192.0.2.1"),
        ("/dns4/example.com/tcp/4001", None),
    ],
)
async def test_a_connection_without_a_remote_endpoint_gets_its_multiaddr_ip(
    address: str, expected: str | None
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        trio.open_nursery() as nursery,
    ):
        attachment = Attachment(Host(), mgr, nursery)  # type: ignore[arg-type]
        tracked = attachment._adopt(inbound("peer", None, address))
        assert tracked is not None
        assert tracked.address == expected


async def test_the_remote_endpoint_comes_before_the_multiaddrs() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        trio.open_nursery() as nursery,
    ):
        attachment = Attachment(Host(), mgr, nursery)  # type: ignore[arg-type]
        conn = inbound("peer", ("198.51.100.9", 4001), "/ip4/203.0.113.7/tcp/4001")
        tracked = attachment._adopt(conn)
        assert tracked is not None
        assert tracked.address == "198.51.100.9"


async def test_admission_applies_to_a_link_local_peer_named_by_an_ip6zone_multiaddr() -> None:
    """The deny-list, and the loopback exemption, see the address of an
    ``/ip6zone/...`` multiaddr, zone aside."""
    webrtc = "/udp/4001/webrtc-direct/certhash/" + CERTHASH
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=8, high=16),
            admission=cm.Admission(deny=["fe80::/10"], ipv6_caps={128: 1}),
        ) as mgr,
        trio.open_nursery() as nursery,
    ):
        attachment = Attachment(Host(), mgr, nursery)  # type: ignore[arg-type]
        denied = inbound("denied", None, "/ip6zone/eth0/ip6/fe80::1" + webrtc)
        assert attachment._adopt(denied) is None
        assert mgr.statistics().refusals == {"deny": 1}
        # Loopback skips the subnet caps: two connections from ::1 are admitted.
        for peer in ("first", "second"):
            tracked = attachment._adopt(inbound(peer, None, "/ip6zone/lo/ip6/::1" + webrtc))
            assert tracked is not None
            assert tracked.address == "::1%lo"
        # A global address gets no such exemption.
        assert attachment._adopt(inbound("third", None, "/ip6/2001:db8::7" + webrtc))
        assert attachment._adopt(inbound("fourth", None, "/ip6/2001:db8::7" + webrtc)) is None
        assert mgr.statistics().refusals == {"deny": 1, "subnet": 1}
        assert mgr.statistics().connections == 3
        await trio.testing.wait_all_tasks_blocked()
        assert denied.closes == 1
        attachment.closed = True
        for tracked in mgr.connections:
            tracked.release()
