"""Synchronous unit tests of the sensing controller and of the admission core.

No Trio here: the AIMD rule, the sensors' window arithmetic, token buckets,
subnet counts and CIDR matching are plain functions of their inputs and ``now``.
"""

from __future__ import annotations

import ipaddress
import math

import pytest

import trio_connmgr as cm
from trio_connmgr._core._admission import (
    SWEEP_EVERY,
    AdmissionPolicy,
    RateLimiter,
    SubnetCounts,
    TokenBucket,
    longest_match,
    parse_caps,
    parse_host,
    parse_networks,
)
from trio_connmgr._core._control import Reading, decide_share
from trio_connmgr.sensing import DialHealth, FakeSensor, LoopLag, Sensing, auto_limits

HIGH = 100


def decide(share: int, *readings: Reading, floor: int = 10, increase: int = 5, decrease=0.5):
    named = {f"s{i}": reading for i, reading in enumerate(readings)}
    return decide_share(share, named, high=HIGH, floor=floor, increase=increase, decrease=decrease)


# ------------------------------------------------------------------ the AIMD rule


def test_pressure_shrinks_multiplicatively() -> None:
    shares = [HIGH]
    for _ in range(3):
        shares.append(decide(shares[-1], Reading(pressure=True)).share)
    assert shares == [100, 50, 25, 12]


def test_pressure_decrease_without_binary_noise() -> None:
    # 90 * 0.7 is 62.99999999999999 in binary floating point: floor(share * decrease) is 63.
    assert decide(90, Reading(pressure=True), decrease=0.7).share == 63


def test_pressure_moves_at_least_one_connection() -> None:
    assert decide(12, Reading(pressure=True), floor=1, decrease=0.99).share == 11


def test_pressure_stops_at_the_floor() -> None:
    share = HIGH
    for _ in range(20):
        share = decide(share, Reading(pressure=True), floor=10).share
    assert share == 10
    decision = decide(10, Reading(pressure=True), floor=10)
    assert decision.share == 10
    assert decision.cause is None
    assert decision.pressure


def test_health_grows_additively_up_to_the_configured_high() -> None:
    shares = [40]
    while shares[-1] < HIGH:
        shares.append(decide(shares[-1], Reading()).share)
    assert shares[:4] == [40, 45, 50, 55]
    assert shares[-1] == HIGH
    assert decide(HIGH, Reading()).cause is None


def test_health_grows_up_to_a_sensor_ceiling() -> None:
    decision = decide(60, Reading(), Reading(ceiling=63))
    assert decision.share == 63
    assert decision.cause == "sensing recovery"
    assert decide(63, Reading(), Reading(ceiling=63)).cause is None


def test_a_ceiling_below_the_share_cuts_it_at_once() -> None:
    decision = decide(HIGH, Reading(ceiling=30), Reading(ceiling=70))
    assert decision.share == 30
    assert decision.ceiling == 30
    assert decision.limiting == ("s0",)
    assert decision.cause == "sensing ceiling (s0)"


def test_the_floor_wins_over_a_sensor_ceiling() -> None:
    decision = decide(HIGH, Reading(ceiling=3), floor=10)
    assert decision.share == 10
    assert decision.ceiling == 10


def test_pressure_cause_names_the_sensors() -> None:
    decision = decide(HIGH, Reading(), Reading(pressure=True), Reading(pressure=True))
    assert decision.cause == "sensing pressure (s1, s2)"
    assert decision.pressing == ("s1", "s2")


def test_no_readings_is_healthy() -> None:
    assert decide(50).share == 55


def test_reading_validation() -> None:
    with pytest.raises(cm.ConfigError, match=r"Reading.ceiling"):
        Reading(ceiling=-1)
    with pytest.raises(cm.ConfigError, match=r"Reading.ceiling"):
        Reading(ceiling=2.5)  # type: ignore[arg-type]
    with pytest.raises(cm.ConfigError, match=r"Reading.pressure"):
        Reading(pressure=1)  # type: ignore[arg-type]
    with pytest.raises(cm.ConfigError, match=r"Reading.values\['x'\]"):
        Reading({"x": "high"})  # type: ignore[dict-item]
    reading = Reading({"open": 3})
    assert reading.values == {"open": 3.0}
    with pytest.raises(TypeError):
        reading.values["open"] = 4.0  # type: ignore[index]


# ---------------------------------------------------------------- sensors, sync


def test_dial_health_failure_ratio_over_the_window() -> None:
    sensor = DialHealth(window=10.0, ratio=0.5, min_dials=4)
    for t in range(3):
        sensor.dial_reported(False, None, float(t))
    reading = sensor.sample(3.0)
    assert reading.values["failure_ratio"] == 1.0
    assert not reading.pressure  # fewer than min_dials
    sensor.dial_reported(True, 0.01, 3.0)
    reading = sensor.sample(3.0)
    assert reading.values["dials"] == 4
    assert reading.values["failure_ratio"] == 0.75
    assert reading.pressure
    assert "3 of 4 dials failed" in reading.detail
    # The failures age out of the window; the success stays.
    reading = sensor.sample(12.5)
    assert reading.values["dials"] == 1
    assert reading.values["failed"] == 0
    assert not reading.pressure


def test_dial_health_forgets_a_window_from_another_runs_clock() -> None:
    # A sensor reused by a later Trio run (the next test of a session) sees that
    # run's clock, which may be far behind the entries it holds.
    sensor = DialHealth(window=10.0, ratio=0.5, min_dials=4)
    for t in range(5):
        sensor.dial_reported(False, None, 1000.0 + t)
    assert sensor.sample(1004.0).pressure
    reading = sensor.sample(2.0)  # the new run's clock
    assert (reading.values["dials"], reading.values["failed"]) == (0, 0)
    assert not reading.pressure
    sensor.dial_reported(False, None, 3.0)  # and the new run's dials count afresh
    assert sensor.sample(3.0).values["dials"] == 1


def test_dial_health_latency_inflation() -> None:
    sensor = DialHealth(window=5.0, latency_factor=3.0, min_dials=5, baseline_dials=50)
    for i in range(50):
        sensor.dial_reported(True, 0.010, i * 0.1)
    reading = sensor.sample(5.0)
    assert reading.values["inflation"] == pytest.approx(1.0)
    assert not reading.pressure
    # Latency jumps tenfold: the window's median follows at once, the baseline slowly.
    for i in range(10):
        sensor.dial_reported(True, 0.100, 20.0 + i * 0.1)
    reading = sensor.sample(21.0)
    assert reading.values["latency"] == pytest.approx(0.100)
    assert reading.values["baseline"] < 0.02
    assert reading.values["inflation"] > 3.0
    assert reading.pressure
    assert "baseline" in reading.detail


def test_dial_health_ignores_failed_latencies_and_junk() -> None:
    sensor = DialHealth(min_dials=1)
    sensor.dial_reported(False, 5.0, 0.0)
    sensor.dial_reported(True, 0.0, 0.0)
    sensor.dial_reported(True, math.inf, 0.0)
    assert sensor.baseline is None
    assert "latency" not in sensor.sample(0.0).values


def test_loop_lag_statistics() -> None:
    sensor = LoopLag(window=1.0, threshold=0.05)
    assert sensor.sample(0.0).values == {"samples": 0.0}
    sensor.record(0.1, 0.0)
    sensor.record(0.2, 0.12)
    sensor.record(0.3, 0.03)
    sensor.record(0.35, -0.001)  # woke early (clock granularity): counts as no lag
    reading = sensor.sample(0.35)
    assert reading.values["lag_max"] == pytest.approx(0.12)
    assert reading.values["lag_mean"] == pytest.approx(0.0375)
    assert reading.values["lag_last"] == 0.0
    assert not reading.pressure
    sensor.record(0.4, 0.1)
    reading = sensor.sample(0.4)
    assert reading.values["lag_mean"] == pytest.approx(0.05)
    assert reading.pressure
    reading = sensor.sample(1.32)
    assert reading.values["samples"] == 2
    assert reading.values["lag_mean"] == pytest.approx(0.05)
    assert reading.pressure
    reading = sensor.sample(1.38)
    assert reading.values["samples"] == 1
    assert reading.pressure  # 0.1 s late
    assert sensor.sample(1.41).values == {"samples": 0.0}


def test_fake_sensor_script_repeats_its_last_reading() -> None:
    sensor = FakeSensor(script=[Reading(pressure=True), Reading(ceiling=5)])
    assert sensor.sample(0.0).pressure
    assert sensor.sample(1.0).ceiling == 5
    assert sensor.sample(2.0).ceiling == 5
    assert sensor.samples == [0.0, 1.0, 2.0]


def test_sensing_validation() -> None:
    fake = FakeSensor()
    with pytest.raises(cm.ConfigError, match=r"at least one"):
        Sensing([])
    with pytest.raises(cm.ConfigError, match=r"Sensor objects"):
        Sensing([object()])  # type: ignore[list-item]
    with pytest.raises(cm.ConfigError, match=r"list of Sensor"):
        Sensing(fake)  # type: ignore[arg-type]
    with pytest.raises(cm.ConfigError, match=r"unique, got 'fake' twice"):
        Sensing([fake, FakeSensor()])
    with pytest.raises(cm.ConfigError, match=r"other than 'controller'"):
        Sensing([FakeSensor("controller")])
    with pytest.raises(cm.ConfigError, match=r"Sensing.interval.*got 0"):
        Sensing([fake], interval=0)
    with pytest.raises(cm.ConfigError, match=r"Sensing.floor.*got 0"):
        Sensing([fake], floor=0)
    with pytest.raises(cm.ConfigError, match=r"Sensing.increase.*got 1.5"):
        Sensing([fake], increase=1.5)  # type: ignore[arg-type]
    for bad in (0, 1, 1.5, math.nan):
        with pytest.raises(cm.ConfigError, match=r"Sensing.decrease must be a number in \(0, 1\)"):
            Sensing([fake], decrease=bad)
    with pytest.raises(cm.ConfigError, match=r"DialHealth.latency_factor must be > 1"):
        DialHealth(latency_factor=1.0)
    with pytest.raises(cm.ConfigError, match=r"DialHealth.ratio"):
        DialHealth(ratio=0)
    with pytest.raises(cm.ConfigError, match=r"LoopLag.period"):
        LoopLag(period=-1)
    with pytest.raises(cm.ConfigError, match=r"FileDescriptors.fraction"):
        cm.sensing.FileDescriptors(fraction=2)
    with pytest.raises(cm.ConfigError, match=r"Memory.budget"):
        cm.sensing.Memory(budget=-5)
    with pytest.raises(cm.ConfigError, match=r"FakeSensor: Reading.ceiling .* got -1"):
        FakeSensor(ceiling=-1)
    with pytest.raises(cm.ConfigError, match=r"FakeSensor: Reading.pressure .* got 'yes'"):
        FakeSensor(pressure="yes")  # type: ignore[arg-type]
    with pytest.raises(cm.ConfigError, match=r"FakeSensor: .*'x'"):
        FakeSensor(values={"a": "x"})  # type: ignore[dict-item]


# ------------------------------------------------------------------- Limits.auto


def test_auto_limits_formula() -> None:
    limits = auto_limits(nofile=1024, memory=64 * 2**30)
    # fds bind: 1024 / 2 = 512 < 64 GiB / 8 / 256 KiB = 32768.
    assert limits == cm.Limits(low=306, high=409, hard=512)
    limits = auto_limits(nofile=1_000_000, memory=2**30)
    # memory binds: 1 GiB / 8 / 256 KiB = 512.
    assert limits == cm.Limits(low=306, high=409, hard=512)
    limits = cm.Limits.auto(nofile=1024, memory=2**40, maximum=100, high_ratio=0.9, low_ratio=0.5)
    assert limits == cm.Limits(low=45, high=90, hard=100)
    tiny = auto_limits(nofile=2, memory=2**40)
    assert tiny == cm.Limits(1, 1, 1)


def test_auto_limits_reads_this_machine() -> None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits = cm.Limits.auto()
    assert 0 < limits.low <= limits.high <= limits.hard
    if soft != resource.RLIM_INFINITY:
        assert limits.hard <= soft // 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nofile": 0}, "Limits.auto nofile"),
        ({"memory": -1}, "Limits.auto memory"),
        ({"fd_fraction": 0}, "Limits.auto fd_fraction"),
        ({"memory_fraction": 1.5}, "Limits.auto memory_fraction"),
        ({"bytes_per_connection": 0}, "Limits.auto bytes_per_connection"),
        ({"high_ratio": -0.1}, "Limits.auto high_ratio"),
        ({"maximum": "many"}, "Limits.auto maximum"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_auto_limits_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((cm.ConfigError, TypeError), match=match):
        cm.Limits.auto(**kwargs)


# -------------------------------------------------------------- admission core


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("10.1.2.3:4001", "10.1.2.3"),
        ("::1", "::1"),
        ("[2001:db8::7]:4001", "2001:db8::7"),
        ("fe80::1%eth0", "fe80::1"),
        ("/ip4/192.0.2.9/tcp/4001", "192.0.2.9"),
        ("/ip6/2001:db8::9/udp/4001/quic-v1", "2001:db8::9"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("/dns4/example.org/tcp/1", None),
        ("example.org:80", None),
        ("[::1", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_host(address: str | None, expected: str | None) -> None:
    ip = parse_host(address)
    assert (None if ip is None else str(ip)) == expected


def test_parse_networks_and_caps_errors() -> None:
    assert parse_networks("f", "10.0.0.0/8") == (ipaddress.ip_network("10.0.0.0/8"),)
    assert parse_networks("f", ["192.0.2.1"]) == (ipaddress.ip_network("192.0.2.1/32"),)
    with pytest.raises(cm.ConfigError, match=r"f entry '10.0.0.1/8' is not a valid CIDR"):
        parse_networks("f", ["10.0.0.1/8"])
    with pytest.raises(cm.ConfigError, match=r"f entry 'nonsense'"):
        parse_networks("f", ["nonsense"])
    with pytest.raises(cm.ConfigError, match=r"f entries must be CIDR strings, got 10"):
        parse_networks("f", [10])  # type: ignore[list-item]
    with pytest.raises(cm.ConfigError, match=r"iterable of CIDR"):
        parse_networks("f", 10)  # type: ignore[arg-type]
    with pytest.raises(cm.ConfigError, match=r"iterable of CIDR strings, got b'10.0.0.0/8'"):
        parse_networks("f", b"10.0.0.0/8")  # type: ignore[arg-type]
    assert parse_caps("c", {32: 2, 24: 8}, 32) == ((24, 8), (32, 2))
    with pytest.raises(cm.ConfigError, match=r"c prefix must be an integer in \[0, 32\], got 33"):
        parse_caps("c", {33: 1}, 32)
    with pytest.raises(cm.ConfigError, match=r"c\[24\] must be a non-negative integer, got -1"):
        parse_caps("c", {24: -1}, 32)
    with pytest.raises(cm.ConfigError, match=r"mapping"):
        parse_caps("c", [24], 32)  # type: ignore[arg-type]


def test_ipv4_mapped_networks_are_ipv4_networks() -> None:
    # parse_host() reads a mapped address as IPv4: an entry copied in the mapped
    # form from a dual-stack server's log must match it.
    nets = parse_networks("n", ["::ffff:203.0.113.0/120", "::ffff:198.51.100.7", "::/0"])
    assert nets == (
        ipaddress.ip_network("203.0.113.0/24"),
        ipaddress.ip_network("198.51.100.7/32"),
        ipaddress.ip_network("::/0"),  # not within the mapped range: stays IPv6
    )
    for address, prefix in [
        ("::ffff:203.0.113.9", 24),
        ("[::ffff:203.0.113.9]:4001", 24),
        ("203.0.113.9", 24),
        ("/ip6/::ffff:198.51.100.7/tcp/1", 32),
        ("2001:db8::1", 0),
    ]:
        ip = parse_host(address)
        assert ip is not None
        assert longest_match(ip, nets) == prefix, address


def test_longest_match() -> None:
    nets = parse_networks("n", ["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"])
    assert longest_match(ipaddress.ip_address("10.1.2.3"), nets) == 16
    assert longest_match(ipaddress.ip_address("10.2.0.1"), nets) == 8
    assert longest_match(ipaddress.ip_address("11.0.0.1"), nets) == -1
    assert longest_match(ipaddress.ip_address("2001:db8::1"), nets) == 32


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3.0, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.next_token_at() == pytest.approx(0.5)
    assert not bucket.take(0.4)
    assert bucket.take(0.5)
    assert bucket.full_at() == pytest.approx(2.0)
    assert bucket.take(100.0)
    assert bucket.tokens == pytest.approx(2.0)  # refilled to burst, then spent one
    # A clock going backwards earns nothing, and counts again from there (an
    # Admission reused by a manager in a new Trio run, whose clock is another).
    assert bucket.take(50.0)
    assert bucket.tokens == pytest.approx(1.0)
    assert bucket.take(50.0)
    assert not bucket.take(50.0)
    assert bucket.next_token_at() == pytest.approx(50.5)
    assert bucket.take(50.5)


def test_rate_limiter_buckets_per_subnet_and_sweep() -> None:
    limiter = RateLimiter(1.0, 2, ipv4_prefix=24, ipv6_prefix=48)
    ip = ipaddress.ip_address
    assert limiter.take(ip("10.0.0.1"), 0.0)[0]
    assert limiter.take(ip("10.0.0.2"), 0.0)[0]
    ok, subnet, _ = limiter.take(ip("10.0.0.3"), 0.0)
    assert not ok
    assert str(subnet) == "10.0.0.0/24"
    assert limiter.take(ip("10.0.1.1"), 0.0)[0]  # another /24
    assert str(limiter.take(ip("2001:db8:1:2::1"), 0.0)[1]) == "2001:db8:1::/48"
    assert len(limiter.buckets) == 3
    assert limiter.sweep(1.5) == 2  # the two buckets that spent one token are full again
    assert limiter.sweep(2.0) == 1
    assert not limiter.buckets
    # A bucket stamped by a clock that has since gone back (an earlier Trio run).
    assert limiter.take(ip("10.0.0.1"), 500.0)[0]  # full again at 501
    assert limiter.sweep(7.0) == 1
    # Sweeping is automatic: memory stays bounded under a scan of many subnets.
    for i in range(3 * SWEEP_EVERY):
        limiter.take(ipaddress.IPv4Address(i << 8), float(i) * 10)
    assert len(limiter.buckets) < SWEEP_EVERY + 1


def test_subnet_counts() -> None:
    counts = SubnetCounts(((24, 2), (32, 1)), ((64, 1),))
    a, b = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")
    assert counts.over(a) is None
    counts.add("c1", a)
    counts.add("c1", a)  # idempotent
    subnet, n, cap = counts.over(a)  # type: ignore[misc]
    assert (str(subnet), n, cap) == ("10.0.0.1/32", 1, 1)
    counts.add("c2", b)
    subnet, n, cap = counts.over(ipaddress.ip_address("10.0.0.3"))  # type: ignore[misc]
    assert (str(subnet), n, cap) == ("10.0.0.0/24", 2, 2)
    assert counts.remove("c1")
    assert not counts.remove("c1")
    assert counts.over(ipaddress.ip_address("10.0.0.3")) is None
    assert counts.remove("c2")
    assert counts.counts == {}
    assert len(counts) == 0


def policy(**kwargs: object) -> AdmissionPolicy:
    settings: dict[str, object] = {
        "allow": (),
        "deny": (),
        "ipv4_caps": (),
        "ipv6_caps": (),
        "rate": None,
        "exempt_loopback": True,
    }
    settings.update(kwargs)
    return AdmissionPolicy(**settings)  # type: ignore[arg-type]


def test_policy_allow_and_deny_longest_prefix_wins() -> None:
    p = policy(
        allow=parse_networks("a", ["10.1.0.0/16", "127.0.0.1/32"]),
        deny=parse_networks("d", ["10.0.0.0/8", "10.1.2.0/24", "127.0.0.0/8"]),
    )
    assert p.check("10.9.9.9", 0.0).refuse == "deny"
    verdict = p.check("10.1.9.9", 0.0)
    assert verdict.refuse is None
    assert verdict.trusted
    verdict = p.check("10.1.2.3:80", 0.0)
    assert verdict.refuse == "deny"
    assert "10.1.2.0/24" in verdict.detail
    # Deny applies to loopback too; the allow-list's /32 is longer than the /8.
    assert p.check("127.0.0.2", 0.0).refuse == "deny"
    assert p.check("127.0.0.1", 0.0).refuse is None
    # Ties go to deny.
    tie = policy(
        allow=parse_networks("a", ["192.0.2.0/24"]), deny=parse_networks("d", ["192.0.2.0/24"])
    )
    assert tie.check("192.0.2.1", 0.0).refuse == "deny"
    # Not an IP address: no list applies.
    assert p.check("peer-without-ip", 0.0).refuse is None


def test_policy_subnet_caps_and_loopback_exemption() -> None:
    p = policy(ipv4_caps=((24, 2),), ipv6_caps=((64, 1),))
    for n in range(2):
        verdict = p.check(f"198.51.100.{n}", 0.0)
        assert verdict.refuse is None
        p.admitted(f"c{n}", verdict.ip)
    verdict = p.check("198.51.100.77", 0.0)
    assert verdict.refuse == "subnet"
    assert "198.51.100.0/24 has 2 inbound connections, its cap is 2" in verdict.detail
    p.admitted("v6", parse_host("2001:db8:0:1::1"))
    assert p.check("2001:db8:0:1::2", 0.0).refuse == "subnet"
    assert p.check("2001:db8:0:2::2", 0.0).refuse is None
    for n in range(5):
        p.admitted(f"lo{n}", parse_host("127.0.0.1"))
    assert p.check("127.0.0.1", 0.0).refuse is None
    assert not p.released("lo0")  # loopback was never counted
    assert p.released("c0")
    assert p.check("198.51.100.77", 0.0).refuse is None


def test_policy_rate_limit() -> None:
    p = policy(rate=RateLimiter(0.5, 2, 24, 56))
    assert [p.check("203.0.113.1", 0.0).refuse for _ in range(3)] == [None, None, "rate"]
    verdict = p.check("203.0.113.200", 1.0)
    assert verdict.refuse == "rate"
    assert "203.0.113.0/24 is over its rate limit of 0.5/s (burst 2)" in verdict.detail
    assert "next admission in 1s" in verdict.detail
    assert p.check("203.0.113.1", 2.0).refuse is None
    assert p.check("198.51.100.1", 2.0).refuse is None  # another subnet, its own bucket
    assert all(p.check("127.0.0.1", 2.0).refuse is None for _ in range(10))


def test_admission_validation() -> None:
    with pytest.raises(cm.ConfigError, match=r"Admission.allow entry '300.0.0.0/8'"):
        cm.Admission(allow=["300.0.0.0/8"])
    with pytest.raises(cm.ConfigError, match=r"Admission.deny entry"):
        cm.Admission(deny=["10.0.0.0/33"])
    with pytest.raises(cm.ConfigError, match=r"Admission.ipv6_caps prefix .* got 129"):
        cm.Admission(ipv6_caps={129: 1})
    with pytest.raises(cm.ConfigError, match=r"Admission.ipv4_caps\[24\].*got 1.5"):
        cm.Admission(ipv4_caps={24: 1.5})  # type: ignore[dict-item]
    with pytest.raises(cm.ConfigError, match=r"Admission.rate.*got -1"):
        cm.Admission(rate=-1)
    with pytest.raises(cm.ConfigError, match=r"Admission.rate.*got nan"):
        cm.Admission(rate=math.nan)
    with pytest.raises(cm.ConfigError, match=r"Admission.burst.*got 0"):
        cm.Admission(rate=1, burst=0)
    with pytest.raises(cm.ConfigError, match=r"Admission.burst must be at most 2\*\*53, got 9007"):
        cm.Admission(rate=1, burst=2**53 + 1)  # later, float(burst) would not count tokens
    assert cm.Admission(rate=1, burst=2**53).burst == 2**53
    # The default burst follows the rate, up to the same bound.
    assert cm.Admission(rate=1e300).burst == 2**53
    with pytest.raises(cm.ConfigError, match=r"Admission.deny must be an iterable .* got b'10"):
        cm.Admission(deny=b"10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(cm.ConfigError, match=r"Admission.burst needs a rate"):
        cm.Admission(burst=3)
    with pytest.raises(cm.ConfigError, match=r"Admission.rate_ipv4_prefix"):
        cm.Admission(rate=1, rate_ipv4_prefix=40)
    with pytest.raises(cm.ConfigError, match=r"Admission.rate_ipv4_prefix .* got 99"):
        cm.Admission(rate_ipv4_prefix=99)  # checked without a rate too
    with pytest.raises(cm.ConfigError, match=r"Admission.rate_ipv6_prefix .* got 'x'"):
        cm.Admission(rate_ipv6_prefix="x")  # type: ignore[arg-type]
    with pytest.raises(cm.ConfigError, match=r"Admission.exempt_loopback"):
        cm.Admission(exempt_loopback="yes")  # type: ignore[arg-type]
    admission = cm.Admission(rate=2.5)
    assert admission.burst == 3
