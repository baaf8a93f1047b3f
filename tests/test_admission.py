"""Admission control under Trio: real loopback connections and explicit addresses.

Addresses such as ``"198.51.100.7:4001"`` are only strings handed to
``mgr.connection`` / ``mgr.track``: nothing dials them.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trio_connmgr as cm


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


async def receive_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(64)
        if not chunk:
            break
        data += chunk
    return data.strip()


class Server:
    """A loopback server whose clients name their peer id in a first line."""

    def __init__(self, mgr: cm.ConnectionManager) -> None:
        self.mgr = mgr
        self.accepted: list[cm.Connection] = []
        self.refused: list[cm.ConnectionRefused] = []
        self.clients: list[trio.SocketStream] = []
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            peer = (await receive_line(stream)).decode()
            host, port = stream.socket.getpeername()[:2]
            try:
                async with self.mgr.connection(
                    peer, direction="inbound", address=f"{host}:{port}"
                ) as conn:
                    self.accepted.append(conn)
                    await stream.send_all(b"ok\n")
                    while await stream.receive_some(64):  # until the client hangs up
                        pass
            except cm.ConnectionRefused as exc:
                self.refused.append(exc)
                await stream.send_all(b"no\n")

    async def dial(self, peer: str) -> bytes:
        """Connect as ``peer``; return the server's answer (b"ok" or b"no")."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.clients.append(stream)
        await stream.send_all(peer.encode() + b"\n")
        return await receive_line(stream)

    async def aclose(self) -> None:
        for stream in self.clients:
            await stream.aclose()


async def run_server(mgr: cm.ConnectionManager, nursery: trio.Nursery) -> Server:
    server = Server(mgr)
    await server.start(nursery)
    return server


# ------------------------------------------------------------------- hard cap


@pytest.mark.parametrize("admission", [cm.Admission(), None], ids=["admission", "default"])
async def test_hard_cap_refuses_inbound_over_loopback(admission: cm.Admission | None) -> None:
    limits = cm.Limits(low=2, high=3, hard=4)
    async with (
        cm.open_connection_manager(limits=limits, admission=admission) as mgr,
        mgr.subscribe() as events,
        trio.open_nursery() as nursery,
    ):
        server = await run_server(mgr, nursery)
        assert [await server.dial(f"p{i}") for i in range(4)] == [b"ok"] * 4
        assert await server.dial("late") == b"no"
        (refusal,) = server.refused
        assert refusal.reason == "hard"
        assert refusal.detail == "inbound connection refused: count 4 is at hard=4"
        # Outbound is never refused by count.
        out = mgr.track("dialled", direction="outbound", address="127.0.0.1:1", close=noop_close)
        assert mgr.statistics().connections == 5
        assert mgr.statistics().refusals == {"hard": 1}
        # Below the cap again, inbound is admitted.
        out.release()
        await server.clients[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.accepted[0].close_reason == "closed"
        assert await server.dial("again") == b"ok"
        refused = [e async for e in _drain(events) if isinstance(e, cm.AdmissionRefused)]
        assert [(e.peer, e.reason, e.direction) for e in refused] == [("late", "hard", "inbound")]
        assert refused[0].address is not None
        assert refused[0].address.startswith("127.0.0.1:")
        await server.aclose()
        nursery.cancel_scope.cancel()


async def _drain(events: Any) -> Any:
    while True:
        try:
            yield events.receive_nowait()
        except trio.WouldBlock:
            return


# ------------------------------------------------------------------ deny-list


async def test_deny_list_applies_to_loopback() -> None:
    admission = cm.Admission(deny=["127.0.0.0/8"], allow=["127.0.0.2/32"])
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr,
        trio.open_nursery() as nursery,
    ):
        server = await run_server(mgr, nursery)
        assert await server.dial("intruder") == b"no"
        assert server.refused[0].reason == "deny"
        assert "deny-list entry 127.0.0.0/8" in server.refused[0].detail
        # The longer allow-list entry wins for its own address.
        conn = mgr.track("friend", direction="inbound", address="127.0.0.2:99", close=noop_close)
        assert not conn.closed
        with pytest.raises(cm.ConnectionRefused, match=r"deny-list"):
            mgr.track("x", direction="inbound", address="[::ffff:127.0.0.9]:1", close=noop_close)
        # Outbound dials are not subject to admission at all.
        mgr.track("out", direction="outbound", address="127.0.0.1:1", close=noop_close)
        assert mgr.statistics().refusals == {"deny": 2}
        await server.aclose()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------- per-subnet caps


async def test_subnet_caps_with_explicit_addresses() -> None:
    admission = cm.Admission(ipv4_caps={32: 1, 24: 3}, ipv6_caps={64: 2})
    limits = cm.Limits(50, 100)
    async with cm.open_connection_manager(limits=limits, admission=admission) as mgr:

        def inbound(peer: str, address: str) -> cm.Connection:
            return mgr.track(peer, direction="inbound", address=address, close=noop_close)

        a = inbound("a", "198.51.100.1:4001")
        with pytest.raises(cm.ConnectionRefused) as info:
            inbound("a2", "198.51.100.1:4002")
        assert info.value.reason == "subnet"
        assert "198.51.100.1/32 has 1 inbound connections, its cap is 1" in info.value.detail
        inbound("b", "198.51.100.2")
        async with mgr.connection("c", direction="inbound", address="/ip4/198.51.100.3/tcp/1"):
            with pytest.raises(cm.ConnectionRefused, match=r"198.51.100.0/24 has 3 inbound"):
                inbound("d", "198.51.100.4")
            assert admission.subnet_counts()["198.51.100.0/24"] == 3
        # Leaving the block released its slot.
        d = inbound("d", "198.51.100.4")
        a.release()
        inbound("a2", "198.51.100.1:4002")
        # Another /24 has its own count; outbound never counts.
        inbound("e", "198.51.101.1")
        mgr.track("out", direction="outbound", address="198.51.100.9", close=noop_close)
        # IPv6 per /64.
        inbound("v1", "[2001:db8:0:1::1]:1")
        inbound("v2", "[2001:db8:0:1::2]:1")
        with pytest.raises(cm.ConnectionRefused, match=r"2001:db8:0:1::/64 has 2"):
            inbound("v3", "[2001:db8:0:1:ffff::3]:1")
        inbound("v4", "[2001:db8:0:2::1]:1")
        # Loopback and addresses that are not IPs are exempt from subnet caps.
        for i in range(5):
            inbound(f"lo{i}", f"127.0.0.1:{1000 + i}")
            inbound(f"named{i}", f"peer-{i}.example")
        # A pruned connection releases its slot too.
        d._state.close_connection(d, "pruned")
        inbound("f", "198.51.100.5")
        assert mgr.statistics().refusals == {"subnet": 3}
    assert admission.subnet_counts() == {}  # closing the manager released everything


async def test_list_entries_in_the_ipv4_mapped_form_match_ipv4_peers() -> None:
    # A dual-stack server logs its IPv4 peers as ::ffff:a.b.c.d; entries copied
    # from such a log must apply to them, in whichever form they come.
    admission = cm.Admission(
        deny=["::ffff:203.0.113.0/120"], allow=["::ffff:192.0.2.1"], ipv4_caps={32: 0}
    )
    async with cm.open_connection_manager(limits=cm.Limits(50, 100), admission=admission) as mgr:
        for address in ("203.0.113.9", "::ffff:203.0.113.9", "[::ffff:203.0.113.9]:4001"):
            with pytest.raises(cm.ConnectionRefused) as info:
                mgr.track("p", direction="inbound", address=address, close=noop_close)
            assert info.value.reason == "deny", address
        # Allow-listed: exempt from the cap of 0 (which refuses everyone else).
        for address in ("192.0.2.1", "::ffff:192.0.2.1"):
            mgr.track("trusted", direction="inbound", address=address, close=noop_close)
        with pytest.raises(cm.ConnectionRefused, match="subnet"):
            mgr.track("other", direction="inbound", address="192.0.2.2", close=noop_close)
        assert mgr.statistics().refusals == {"deny": 3, "subnet": 1}


# ---------------------------------------------------------------- rate limits


async def test_rate_limit_per_subnet(autojump_clock: Any) -> None:
    admission = cm.Admission(rate=0.5, burst=2)
    async with cm.open_connection_manager(limits=cm.Limits(50, 100), admission=admission) as mgr:

        def inbound(address: str) -> str:
            try:
                mgr.track("p", direction="inbound", address=address, close=noop_close)
            except cm.ConnectionRefused as exc:
                return exc.reason
            return "ok"

        assert [inbound(f"203.0.113.{i}") for i in range(3)] == ["ok", "ok", "rate"]
        assert inbound("198.51.100.1") == "ok"  # another /24: its own bucket
        await trio.sleep(1.0)
        assert inbound("203.0.113.50") == "rate"  # half a token
        await trio.sleep(1.0)
        assert inbound("203.0.113.50") == "ok"
        await trio.sleep(3.9)
        assert [inbound("203.0.113.60") for _ in range(3)] == ["ok", "rate", "rate"]
        assert [inbound("127.0.0.1:9") for _ in range(10)] == ["ok"] * 10  # loopback exempt
        assert mgr.statistics().refusals == {"rate": 4}


async def test_rate_limit_over_loopback_when_not_exempt(autojump_clock: Any) -> None:
    admission = cm.Admission(rate=1.0, burst=1, exempt_loopback=False)
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr,
        trio.open_nursery() as nursery,
    ):
        server = await run_server(mgr, nursery)
        assert await server.dial("first") == b"ok"
        assert await server.dial("second") == b"no"
        assert server.refused[0].reason == "rate"
        assert "127.0.0.0/24 is over its rate limit of 1/s (burst 1)" in server.refused[0].detail
        await trio.sleep(1.0)
        assert await server.dial("third") == b"ok"
        await server.aclose()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------ priority eviction


async def test_allow_listed_newcomer_evicts_lowest_ranked(autojump_clock: Any) -> None:
    admission = cm.Admission(allow=["192.0.2.0/24"])
    limits = cm.Limits(low=2, high=3, hard=3)
    async with (
        cm.open_connection_manager(limits=limits, admission=admission, grace_period=5) as mgr,
        mgr.enroll("/app", quota=cm.Quota(0, 3)) as app,
    ):
        conns = [
            mgr.track(f"p{i}", direction="inbound", address=f"198.51.100.{i}", close=noop_close)
            for i in range(3)
        ]
        streams = [app.track_stream(conns[0]), app.track_stream(conns[2])]  # conns[1] is idle
        # During the grace period nothing can be evicted.
        with pytest.raises(cm.ConnectionRefused, match=r"no connection can be evicted"):
            mgr.track("vip", direction="inbound", address="192.0.2.7", close=noop_close)
        await trio.sleep(6)
        # An ordinary newcomer is refused; an allow-listed one evicts the idle connection.
        with pytest.raises(cm.ConnectionRefused, match=r"count 3 is at hard=3"):
            mgr.track("nobody", direction="inbound", address="198.51.100.9", close=noop_close)
        vip = mgr.track("vip", direction="inbound", address="192.0.2.7", close=noop_close)
        assert conns[1].close_reason == "evicted"
        reason = conns[1].prune_reason
        assert reason is not None
        assert (reason.phase, reason.trigger) == (cm.Phase.IDLE, "admission")
        assert not vip.closed
        assert mgr.statistics().connections == 3
        assert mgr.statistics().refusals == {"hard": 2}
        for stream in streams:
            stream.close()


async def test_protected_newcomer_evicts_over_loopback(autojump_clock: Any) -> None:
    limits = cm.Limits(low=1, high=2, hard=2)
    admission = cm.Admission()
    async with (
        cm.open_connection_manager(limits=limits, admission=admission, grace_period=1) as mgr,
        trio.open_nursery() as nursery,
    ):
        server = await run_server(mgr, nursery)
        assert [await server.dial("a"), await server.dial("b")] == [b"ok", b"ok"]
        await trio.sleep(2)
        assert await server.dial("c") == b"no"
        mgr.protect("vip", "operator")
        assert await server.dial("vip") == b"ok"
        victims = [conn for conn in server.accepted if conn.close_reason == "evicted"]
        assert len(victims) == 1
        assert victims[0].peer in ("a", "b")
        assert sorted(conn.peer for conn in mgr.connections) == sorted(
            ["vip", *({"a", "b"} - {victims[0].peer})]
        )
        # The evicted client sees its connection closed.
        evicted_client = server.clients[["a", "b"].index(victims[0].peer)]
        assert await evicted_client.receive_some(10) == b""
        await server.aclose()
        nursery.cancel_scope.cancel()


async def test_eviction_can_be_disabled() -> None:
    limits = cm.Limits(low=1, high=1, hard=1)
    admission = cm.Admission(allow=["192.0.2.0/24"], evict=False)
    async with cm.open_connection_manager(
        limits=limits, admission=admission, grace_period=0
    ) as mgr:
        mgr.track("a", direction="inbound", address="198.51.100.1", close=noop_close)
        with pytest.raises(cm.ConnectionRefused) as info:
            mgr.track("vip", direction="inbound", address="192.0.2.1", close=noop_close)
        assert info.value.reason == "hard"


async def test_without_admission_protected_newcomers_are_refused_at_hard() -> None:
    limits = cm.Limits(low=1, high=1, hard=1)
    async with cm.open_connection_manager(limits=limits, grace_period=0) as mgr:
        mgr.track("a", direction="inbound", close=noop_close)
        mgr.protect("vip", "t")
        with pytest.raises(cm.ConnectionRefused, match=r"count 1 is at hard=1"):
            mgr.track("vip", direction="inbound", close=noop_close)


async def test_no_eviction_when_choosing_the_victim_made_room(autojump_clock: Any) -> None:
    # A scorer that releases a stale connection of its own, while the victim
    # is chosen, brings the count under hard: the newcomer takes its place.
    def scorer(stream: cm.Stream) -> float:
        if stream.metadata.get("stale"):
            stream.connection.release()
        return 0.5

    admission = cm.Admission(allow=["192.0.2.0/24"])
    limits = cm.Limits(low=2, high=3, hard=3)
    async with (
        cm.open_connection_manager(limits=limits, admission=admission, grace_period=5) as mgr,
        mgr.enroll("/app", quota=cm.Quota(0, 3), scorer=scorer) as app,
    ):
        conns = [
            mgr.track(f"p{i}", direction="inbound", address=f"198.51.100.{i}", close=noop_close)
            for i in range(3)
        ]
        streams = [app.track_stream(conn) for conn in conns]
        streams[2].metadata["stale"] = True
        await trio.sleep(6)
        vip = mgr.track("vip", direction="inbound", address="192.0.2.7", close=noop_close)
        assert conns[2].close_reason == "released"
        assert not conns[0].closed
        assert not conns[1].closed
        assert not vip.closed
        assert mgr.statistics().connections == 3
        for stream in streams[:2]:
            stream.close()


async def test_eviction_keeps_a_protocol_at_its_min_when_a_scorer_closes_a_stale_stream(
    autojump_clock: Any,
) -> None:
    # m's scorer closes c's stale stream while the victim is chosen: m is then
    # on a and b only, at its grant.min, and the newcomer evicts c.
    def m_scorer(stream: cm.Stream) -> float:
        if stream.metadata.get("stale"):
            stream.close()
        return float(stream.metadata["score"])

    admission = cm.Admission(allow=["192.0.2.0/24"])
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 4, 4), grace_period=0, silence_period=1e6, admission=admission
        ) as mgr,
        mgr.enroll("m", quota=cm.Quota(2, 4), scorer=m_scorer) as m,
        mgr.enroll("n", quota=cm.Quota(0, 4), scorer=lambda stream: 0.9) as n,
    ):
        mgr.protect("kept", "keep")
        mgr.track("kept", direction="outbound", close=noop_close)
        a, b, c = (mgr.track(p, direction="outbound", close=noop_close) for p in "abc")
        m.track_stream(a).metadata["score"] = 0.0
        m.track_stream(b).metadata["score"] = 0.9
        m.track_stream(c).metadata.update(score=0.0, stale=True)
        streams = [n.track_stream(c), n.track_stream(c)]
        mgr.track("vip", direction="inbound", address="192.0.2.7", close=noop_close)
        assert c.close_reason == "evicted"
        assert not a.closed
        assert not b.closed
        assert m.usage == m.grant.min == 2
        for stream in streams:
            stream.close()
