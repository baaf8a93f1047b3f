"""Readings and decisions as values, and admission's settings, addresses and details."""

from __future__ import annotations

import logging

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr._core._control import decide_share
from trio_connmgr.admission import enforce_hard_cap
from trio_connmgr.sensing import Decision, FakeSensor, Reading, Sensor


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def inbound(mgr: cm.ConnectionManager, peer: str, address: str | None) -> cm.Connection:
    return mgr.track(peer, direction="inbound", address=address, close=noop_close)


# ------------------------------------------------------------------ readings


def test_readings_hash_like_the_readings_they_equal() -> None:
    one = Reading({"open": 7, "limit": 1024.0}, 512, True, "busy")
    same = Reading({"limit": 1024, "open": 7.0}, 512, True, "busy")
    other = Reading({"open": 8, "limit": 1024.0}, 512, True, "busy")
    assert one == same
    assert hash(one) == hash(same)
    assert one != other
    assert {one, same, other, Reading(), Reading()} == {one, other, Reading()}
    assert {one: "seen"}[same] == "seen"


@pytest.mark.parametrize("figure", ["pressure", "ceiling", "errors"])
def test_a_figure_named_like_a_reported_one_is_refused(figure: str) -> None:
    with pytest.raises(cm.ConfigError, match=rf"Reading.values.*{figure!r}"):
        Reading({figure: 1.0})
    with pytest.raises(cm.ConfigError, match=rf"FakeSensor: Reading.values.*{figure!r}"):
        FakeSensor(values={"depth": 3.0, figure: 1.0})


class Clashing(Sensor):
    name = "clashing"

    def sample(self, now: float) -> Reading:
        return Reading({"depth": 3.0, "pressure": 0.25})


async def test_a_sensor_reporting_a_reserved_figure_is_a_failing_sensor(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    sensing = cm.Sensing([Clashing()], interval=1.0)
    with caplog.at_level(logging.ERROR, logger="trio_connmgr.sensing"):
        async with cm.open_connection_manager(limits=cm.Limits(40, 100), sensing=sensing) as mgr:
            await trio.sleep(1.5)
            # Its figure is not shown as its pressure (nor the other way round).
            assert dict(mgr.statistics().sensors["clashing"]) == {"errors": 2.0}
    (record,) = caplog.records
    assert "'clashing'" in record.getMessage()
    assert record.exc_info is not None
    assert "'pressure'" in str(record.exc_info[1])


# ----------------------------------------------------------------- decisions


def decide(*ceilings: int | None, floor: int, share: int = 100) -> Decision:
    readings = {f"s{i}": Reading(ceiling=c) for i, c in enumerate(ceilings)}
    return decide_share(share, readings, high=100, floor=floor, increase=5, decrease=0.5)


def test_the_floor_above_a_sensor_ceiling_is_what_limits_the_share() -> None:
    decision = decide(3, None, floor=10)
    assert (decision.share, decision.ceiling) == (10, 10)
    assert decision.limiting == ()
    assert decision.cause == "sensing ceiling (floor)"
    # A sensor whose ceiling is the floor binds as much as the floor does.
    decision = decide(10, 30, floor=10)
    assert decision.limiting == ("s0",)
    assert decision.cause == "sensing ceiling (s0)"
    # Held at the floor, the share does not move, and no sensor limits it.
    decision = decide(3, floor=10, share=10)
    assert (decision.share, decision.cause, decision.limiting) == (10, None, ())


async def test_limits_changed_names_the_floor_when_it_holds_the_share(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sensing = cm.Sensing([FakeSensor(ceiling=5)], interval=1.0, floor=20)
    async with (
        cm.open_connection_manager(limits=cm.Limits(40, 100), sensing=sensing) as mgr,
    ):
        assert mgr.limits.high == 20
        assert mgr.statistics().limits_source == "sensing ceiling (floor)"
        assert sensing.last is not None
        assert sensing.last.limiting == ()


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("allow", ["10.0.0.0/8"]),
        ("deny", ["10.0.0.0/8"]),
        ("ipv4_caps", {32: 1}),
        ("ipv6_caps", {64: 1}),
        ("rate", 1.0),
        ("burst", 1),
        ("exempt_loopback", False),
    ],
)
def test_admission_settings_that_cannot_change_are_read_only(name: str, value: object) -> None:
    admission = cm.Admission(rate=5.0)
    before = getattr(admission, name)
    with pytest.raises(AttributeError):
        setattr(admission, name, value)
    assert getattr(admission, name) == before


def test_admission_caps_read_as_given_and_cannot_be_changed_in_place() -> None:
    admission = cm.Admission(ipv4_caps={24: 16, 32: 4}, ipv6_caps={56: 16})
    assert admission.ipv4_caps == {32: 4, 24: 16}
    assert admission.ipv6_caps == {56: 16}
    with pytest.raises(TypeError):
        admission.ipv4_caps[16] = 1  # type: ignore[index]
    assert "ipv4_caps={24: 16, 32: 4} ipv6_caps={56: 16}" in repr(admission)


async def test_setting_evict_checks_it_and_applies_to_the_next_newcomer() -> None:
    admission = cm.Admission(allow=["192.0.2.0/24"])
    with pytest.raises(cm.ConfigError, match=r"Admission.evict .* got 'no'"):
        admission.evict = "no"  # type: ignore[assignment]
    assert admission.evict is True
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 1, 2), grace_period=0.0, admission=admission
    ) as mgr:
        inbound(mgr, "a", "198.51.100.1")
        inbound(mgr, "b", "198.51.100.2")
        admission.evict = False
        with pytest.raises(cm.ConnectionRefused, match=r"no connection can be evicted|at hard"):
            inbound(mgr, "trusted", "192.0.2.1")
        admission.evict = True
        inbound(mgr, "trusted", "192.0.2.1")
        assert mgr.statistics().connections == 2


async def test_enforce_hard_cap_checks_evict_is_a_flag() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 1, 2)) as mgr:
        inbound(mgr, "a", None)
        with pytest.raises(cm.ConfigError, match=r"evict must be True or False, got 'no'"):
            enforce_hard_cap(mgr, "b", None, evict="no")  # type: ignore[arg-type]
        inbound(mgr, "b", None)
        with pytest.raises(cm.ConfigError, match=r"evict must be True or False, got 1"):
            enforce_hard_cap(mgr, "c", None, evict=1)  # type: ignore[arg-type]
        assert mgr.statistics().connections == 2


# ----------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "address",
    [
        "/ip6zone/eth0/ip6/fe80::1/tcp/4001",
        "/ip6zone/eth0/ip6/fe80::1",
        "fe80::1%eth0",
        "[fe80::1%eth0]:4001",
    ],
)
async def test_scoped_link_local_addresses_meet_the_link_local_rules(address: str) -> None:
    capped = cm.Admission(ipv6_caps={64: 1})
    async with cm.open_connection_manager(limits=cm.Limits(50, 100), admission=capped) as mgr:
        inbound(mgr, "first", address)
        assert capped.subnet_counts() == {"fe80::/64": 1}
        with pytest.raises(cm.ConnectionRefused, match=r"subnet fe80::/64 has 1 inbound"):
            inbound(mgr, "second", "fe80::2%eth1")
    denied = cm.Admission(deny=["fe80::/10"])
    async with cm.open_connection_manager(limits=cm.Limits(50, 100), admission=denied) as mgr:
        with pytest.raises(cm.ConnectionRefused, match=r"deny-list entry fe80::/10"):
            inbound(mgr, "first", address)


async def test_a_zone_before_anything_but_ip6_names_no_address() -> None:
    admission = cm.Admission(deny=["0.0.0.0/0", "::/0"])
    async with cm.open_connection_manager(limits=cm.Limits(50, 100), admission=admission) as mgr:
        for address in ("/ip6zone/eth0/ip4/192.0.2.1", "/ip6zone//ip6/fe80::1", "/ip6zone/eth0"):
            assert not inbound(mgr, address, address).closed
        with pytest.raises(cm.ConnectionRefused, match=r"deny-list"):
            inbound(mgr, "zoned", "/ip6zone/eth0/ip6/fe80::1/tcp/1")


# ------------------------------------------------------------------- details


async def test_rate_detail_for_a_rate_too_low_to_ever_earn_a_token() -> None:
    admission = cm.Admission(rate=1e-320)
    async with cm.open_connection_manager(limits=cm.Limits(50, 100), admission=admission) as mgr:
        inbound(mgr, "first", "198.51.100.1")
        with pytest.raises(cm.ConnectionRefused) as info:
            inbound(mgr, "second", "198.51.100.2")
    assert info.value.reason == "rate"
    assert info.value.detail.endswith("; next admission never at this rate")
    assert "inf" not in info.value.detail


async def test_hard_detail_says_above_when_outbound_took_the_count_past_hard() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2, 3)) as mgr:
        for i in range(4):
            mgr.track(f"out{i}", direction="outbound", close=noop_close)
        with pytest.raises(cm.ConnectionRefused) as info:
            inbound(mgr, "late", None)
    assert info.value.detail == "inbound connection refused: count 4 is above hard=3"
