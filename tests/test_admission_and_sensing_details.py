"""Details of admission, the TCP adapter and the sensing controller.

Edge cases of what SPEC §9 and §10, ``docs/sensing-and-admission.md`` and
``docs/adapters.md`` promise: catch-all list entries, prefix settings, event
fields, the controller's defaults and figures, ``Limits.auto()`` at its bounds,
and the TCP adapter's reports and errors. Time comes from ``autojump_clock``;
the TCP tests use real loopback sockets under ``trio.fail_after``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import trio
from helpers import DialRecorder

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, FileDescriptors, Reading, Sensing, Sensor
from trio_connmgr.tcp import open_tcp_connection, serve_tcp

INTERVAL = 5.0


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def inbound(mgr: cm.ConnectionManager, address: str, peer: str = "p") -> str:
    """Track an inbound connection from ``address``: "ok" or the refusal's reason."""
    try:
        mgr.track(peer, direction="inbound", address=address, close=noop_close)
    except cm.ConnectionRefused as exc:
        return exc.reason
    return "ok"


# ------------------------------------------------------------------ admission


async def test_a_catch_all_deny_entry_refuses_everyone_not_allowed() -> None:
    admission = cm.Admission(deny=["0.0.0.0/0", "::/0"], allow=["192.0.2.0/24", "127.0.0.1"])
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr:
        assert inbound(mgr, "198.51.100.1") == "deny"
        assert inbound(mgr, "[2001:db8::1]:4001") == "deny"
        assert inbound(mgr, "127.0.0.2") == "deny"  # loopback too: the entry is explicit
        assert inbound(mgr, "192.0.2.9") == "ok"
        assert inbound(mgr, "127.0.0.1:9") == "ok"
        with pytest.raises(cm.ConnectionRefused) as info:
            mgr.track("p", direction="inbound", address="203.0.113.5", close=noop_close)
        assert info.value.detail == (
            "inbound connection from 203.0.113.5 refused: deny-list entry 0.0.0.0/0"
        )
        assert mgr.statistics().refusals == {"deny": 4}


async def test_a_catch_all_allow_entry_trusts_everyone() -> None:
    admission = cm.Admission(allow=["0.0.0.0/0"], ipv4_caps={32: 0})
    limits = cm.Limits(low=1, high=2, hard=2)
    async with cm.open_connection_manager(
        limits=limits, admission=admission, grace_period=0
    ) as mgr:
        # Trusted: exempt from the cap of 0, and evicting at hard.
        conns = [
            mgr.track(f"p{i}", direction="inbound", address=f"198.51.100.{i}", close=noop_close)
            for i in range(3)
        ]
        assert [conn.close_reason for conn in conns].count("evicted") == 1
        assert mgr.statistics().connections == 2
        assert mgr.statistics().refusals == {}
        # IPv6 is outside the IPv4 catch-all: refused at hard.
        assert inbound(mgr, "2001:db8::1") == "hard"


async def test_ipv6_caps_alone_are_applied() -> None:
    admission = cm.Admission(ipv6_caps={64: 1})
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr:
        assert inbound(mgr, "[2001:db8:0:1::1]:4001") == "ok"
        assert inbound(mgr, "[2001:db8:0:1::2]:4001") == "subnet"
        assert inbound(mgr, "2001:db8:0:2::1") == "ok"
        assert inbound(mgr, "198.51.100.1") == "ok"  # no IPv4 caps
        assert admission.subnet_counts() == {"2001:db8:0:1::/64": 1, "2001:db8:0:2::/64": 1}


async def test_a_bare_ip_multiaddr_is_matched() -> None:
    admission = cm.Admission(deny=["203.0.113.0/24", "2001:db8::/32"])
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr:
        assert inbound(mgr, "/ip4/203.0.113.9") == "deny"
        assert inbound(mgr, "/ip6/2001:db8::9") == "deny"
        assert inbound(mgr, "/ip4/198.51.100.9") == "ok"


async def test_rate_limit_subnet_sizes_are_configurable(autojump_clock: Any) -> None:
    admission = cm.Admission(rate=1.0, burst=1, rate_ipv4_prefix=16, rate_ipv6_prefix=32)
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr:
        assert inbound(mgr, "10.1.1.1") == "ok"
        with pytest.raises(cm.ConnectionRefused, match=r"subnet 10\.1\.0\.0/16 is over its rate"):
            mgr.track("p", direction="inbound", address="10.1.200.1", close=noop_close)
        assert inbound(mgr, "10.2.1.1") == "ok"  # another /16
        assert inbound(mgr, "2001:db8:1::1") == "ok"
        with pytest.raises(cm.ConnectionRefused, match=r"subnet 2001:db8::/32 is over its rate"):
            mgr.track("p", direction="inbound", address="2001:db8:ffff::1", close=noop_close)
        assert inbound(mgr, "2001:db9::1") == "ok"  # another /32
        await trio.sleep(1.0)
        assert inbound(mgr, "10.1.200.1") == "ok"
        assert mgr.statistics().refusals == {"rate": 2}


async def test_address_refusals_emit_inbound_events() -> None:
    admission = cm.Admission(deny=["203.0.113.0/24"], ipv4_caps={32: 1}, rate=100.0, burst=1)
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr,
        mgr.subscribe() as events,
    ):
        assert inbound(mgr, "203.0.113.1", "denied") == "deny"
        assert inbound(mgr, "198.51.100.1", "first") == "ok"
        assert inbound(mgr, "198.51.100.2", "fast") == "rate"
        refused = []
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(event, cm.AdmissionRefused):
                refused.append(event)
        assert [(e.peer, e.direction, e.address, e.reason) for e in refused] == [
            ("denied", "inbound", "203.0.113.1", "deny"),
            ("fast", "inbound", "198.51.100.2", "rate"),
        ]
        assert refused[0].detail.endswith("deny-list entry 203.0.113.0/24")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"evict": "yes"}, r"Admission.evict must be True or False, got 'yes'"),
        ({"evict": 1}, r"Admission.evict must be True or False, got 1"),
        ({"ipv4_caps": {True: 1}}, r"Admission.ipv4_caps prefix .* got True"),
        ({"rate": 1.0, "rate_ipv4_prefix": True}, r"Admission.rate_ipv4_prefix .* got True"),
        ({"rate_ipv6_prefix": False}, r"Admission.rate_ipv6_prefix .* got False"),
    ],
)
def test_admission_refuses_flags_where_numbers_or_bools_belong(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(cm.ConfigError, match=match):
        cm.Admission(**kwargs)


# ------------------------------------------------------------------- tcp


async def wait_closed(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some(1024):
            pass
    except trio.BrokenResourceError:
        pass


@pytest.mark.parametrize("port", [1, 65535])
async def test_a_cancelled_dial_is_not_reported(port: int) -> None:
    # The lowest and the highest port are valid; the dial is cancelled before
    # anything is sent (the scope is cancelled already).
    recorder = DialRecorder()
    async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[recorder]) as mgr:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with open_tcp_connection(mgr, "127.0.0.1", port):
                pytest.fail("a cancelled dial connected")  # pragma: no cover
        assert scope.cancelled_caught
        assert recorder.dials == []
        assert mgr.statistics().connections_opened == 0


async def test_a_host_name_that_cannot_be_encoded_is_not_a_failed_dial() -> None:
    # A 64-character label is not a host name: the error comes from encoding it,
    # before any lookup, and is the caller's, not the network's.
    recorder = DialRecorder()
    async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[recorder]) as mgr:
        with pytest.raises(UnicodeError):
            async with open_tcp_connection(mgr, "a" * 64 + ".example", 1):
                pytest.fail("dialled")  # pragma: no cover
        assert recorder.dials == []


async def test_an_outbound_connection_records_the_remote_address() -> None:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(64):
                await stream.send_all(data)

    async with trio.open_nursery() as servers:
        listeners = await servers.start(trio.serve_tcp, echo, 0)
        port = listeners[0].socket.getsockname()[1]
        async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
            with trio.fail_after(10):
                async with open_tcp_connection(mgr, "127.0.0.1", port, peer="srv") as (_, conn):
                    assert (conn.peer, conn.address) == ("srv", "127.0.0.1")
        servers.cancel_scope.cancel()


async def test_a_refusal_inside_the_handler_stops_the_server() -> None:
    # Only admission's refusal of the accepted socket is quiet: the handler's
    # own ConnectionRefused is its error, and stops the server like any other.
    admission = cm.Admission(deny=["203.0.113.0/24"])

    async with cm.open_connection_manager(limits=cm.Limits(5, 10), admission=admission) as mgr:

        async def relay(stream: trio.SocketStream, conn: cm.Connection) -> None:
            # The client speaks for another origin, which the deny-list refuses.
            mgr.track("origin", direction="inbound", address="203.0.113.7", close=noop_close)

        error = pytest.RaisesExc(cm.ConnectionRefused, match="deny-list")
        with pytest.RaisesGroup(error, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(serve_tcp, relay, 0, manager=mgr))
                port = listeners[0].socket.getsockname()[1]
                with trio.fail_after(10):
                    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                        await wait_closed(client)
                        await trio.sleep_forever()
        assert mgr.statistics().refusals == {"deny": 1}


async def test_a_server_outliving_its_manager_closes_new_sockets() -> None:
    handled: list[cm.Connection] = []

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        handled.append(conn)  # pragma: no cover

    async with trio.open_nursery() as nursery:
        async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
            listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            for _ in range(2):
                async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                    await wait_closed(client)
        assert handled == []
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------ the controller


def manager(sensing: Sensing, limits: cm.Limits) -> Any:
    return cm.open_connection_manager(limits=limits, sensing=sensing)


async def highs_under_pressure(
    mgr: cm.ConnectionManager, fake: FakeSensor, intervals: int
) -> list[int]:
    await trio.sleep(INTERVAL / 2)  # between two samples
    fake.pressure = True
    highs = []
    for _ in range(intervals):
        await trio.sleep(INTERVAL)
        highs.append(mgr.limits.high)
    return highs


async def test_the_default_floor_is_half_of_low(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL, decrease=0.5)
    async with manager(sensing, cm.Limits(low=40, high=100)) as mgr:
        assert await highs_under_pressure(mgr, fake, 4) == [50, 25, 20, 20]
        assert mgr.statistics().sensors["controller"]["floor"] == 20.0


async def test_the_default_floor_is_at_least_one(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL, decrease=0.5)
    async with manager(sensing, cm.Limits(low=1, high=4)) as mgr:
        assert await highs_under_pressure(mgr, fake, 3) == [2, 1, 1]
        assert mgr.statistics().sensors["controller"] == {
            "share": 1.0,
            "ceiling": 4.0,
            "floor": 1.0,
            "pressure": 1.0,
        }
        assert sensing.last is not None
        assert (sensing.last.share, sensing.last.cause) == (1, None)


async def test_the_default_increase_is_at_least_one(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL, decrease=0.5)
    async with manager(sensing, cm.Limits(low=2, high=5)) as mgr:
        assert await highs_under_pressure(mgr, fake, 2) == [2, 1]
        fake.pressure = False
        highs = []
        for _ in range(5):
            await trio.sleep(INTERVAL)
            highs.append(mgr.limits.high)
        assert highs == [2, 3, 4, 5, 5]  # 5% of 5, rounded up to one connection


async def test_the_decrease_takes_the_floor_of_share_times_factor(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL, floor=1, decrease=0.7)
    async with manager(sensing, cm.Limits(low=40, high=100)) as mgr:
        # floor(49 * 0.7) = floor(34.3); floor(34 * 0.7) = floor(23.8), not 24.
        assert await highs_under_pressure(mgr, fake, 4) == [70, 49, 34, 23]


async def test_a_decrease_close_to_one_still_moves_one_connection(autojump_clock: Any) -> None:
    fake = FakeSensor()
    # floor(100 * (1 - 1e-12)) is 100 once the binary noise is rounded away.
    sensing = Sensing([fake], interval=INTERVAL, floor=1, decrease=1 - 1e-12)
    async with manager(sensing, cm.Limits(low=40, high=100)) as mgr:
        assert await highs_under_pressure(mgr, fake, 3) == [99, 98, 97]


async def test_a_floor_equal_to_high_is_accepted_and_holds(autojump_clock: Any) -> None:
    fake = FakeSensor(pressure=True, ceiling=10)
    sensing = Sensing([fake], interval=INTERVAL, floor=100)
    async with manager(sensing, cm.Limits(low=40, high=100)) as mgr:
        await trio.sleep(INTERVAL * 2.5)
        assert mgr.limits == cm.Limits(low=40, high=100)
        assert mgr.statistics().sensors["controller"]["ceiling"] == 100.0


async def test_sensor_figures_show_its_ceiling_and_its_errors(autojump_clock: Any) -> None:
    fake = FakeSensor(ceiling=60, values={"queue": 3})
    plain = FakeSensor("plain")
    sensing = Sensing([fake, plain], interval=INTERVAL)
    async with manager(sensing, cm.Limits(low=40, high=100)) as mgr:
        sensors = mgr.statistics().sensors
        assert sensors["fake"] == {"queue": 3.0, "pressure": 0.0, "ceiling": 60.0}
        assert sensors["plain"] == {"pressure": 0.0}  # no ceiling: none shown
        await trio.sleep(INTERVAL / 2)
        fake.error = OSError("unplugged")
        await trio.sleep(INTERVAL)
        assert mgr.statistics().sensors["fake"] == {"errors": 1.0}
        fake.error = None
        await trio.sleep(INTERVAL)
        # Working again: its figures, and still the count of its errors.
        assert mgr.statistics().sensors["fake"] == {
            "queue": 3.0,
            "pressure": 0.0,
            "ceiling": 60.0,
            "errors": 1.0,
        }


class FailingDials(Sensor):
    """A user sensor whose ``dial_reported`` raises."""

    name = "failing-dials"

    def sample(self, now: float) -> Reading:
        return Reading()

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> None:
        raise RuntimeError("bug in dial_reported")


async def test_a_sensor_raising_on_a_dial_report_is_counted_not_raised(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeSensor()
    sensing = Sensing([FailingDials(), fake], interval=INTERVAL)
    async with manager(sensing, cm.Limits(low=40, high=100)) as mgr:
        mgr.report_dial("a", ok=False)
        mgr.report_dial("b", ok=True, latency=0.5)
        assert [ok for ok, _, _ in fake.dials] == [False, True]  # the others still get them
        await trio.sleep(INTERVAL * 1.5)  # past the next sample
        assert mgr.statistics().sensors["failing-dials"] == {"pressure": 0.0, "errors": 2.0}
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1
    assert "'failing-dials' raised in dial_reported" in logged[0].getMessage()


# ---------------------------------------------------------------- Limits.auto


def test_auto_limits_never_go_below_one_connection() -> None:
    # Half of one descriptor is no connection at all: hard is still 1.
    assert cm.Limits.auto(nofile=1, memory=1 << 40) == cm.Limits(1, 1, 1)
    assert cm.Limits.auto(nofile=1 << 20, memory=1) == cm.Limits(1, 1, 1)


def test_auto_limits_without_any_bound_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trio_connmgr.sensing.nofile_limit", lambda: None)
    monkeypatch.setattr("trio_connmgr.sensing._total_memory", lambda: None)
    with pytest.raises(cm.ConfigError, match=r"cannot infer limits.*pass maximum=N"):
        cm.Limits.auto()
    assert cm.Limits.auto(maximum=100) == cm.Limits(low=60, high=80, hard=100)


def test_file_descriptor_ceiling_counts_descriptors_per_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("trio_connmgr.sensing.nofile_limit", lambda: 10_000)
    assert FileDescriptors(per_connection=2).sample(0.0).ceiling == 2500
    assert FileDescriptors(fraction=0.25, per_connection=4).sample(0.0).ceiling == 625
