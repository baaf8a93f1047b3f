"""Sensing, triggers and admission as documented (SPEC §9, §10).

``docs/sensing-and-admission.md`` lists their defaults in its tables and gives
the formulas of ``Limits.auto()``; users who pass nothing get exactly these.
"""

from __future__ import annotations

from typing import Any

import psutil
import pytest
import trio

import trio_connmgr as cm
from trio_connmgr.sensing import (
    DEFAULT_BYTES_PER_CONNECTION,
    DialHealth,
    FakeSensor,
    FileDescriptors,
    LoopLag,
    Memory,
    Sensing,
)
from trio_connmgr.triggers import FailedDials


async def test_sensing_samples_every_five_seconds_by_default(autojump_clock: Any) -> None:
    fake = FakeSensor()
    async with cm.open_connection_manager(limits=cm.Limits(40, 100), sensing=Sensing([fake])):
        start = trio.current_time()
        await trio.sleep(12.0)
    assert [t - start for t in fake.samples] == [0.0, 5.0, 10.0]


def test_sensor_defaults_are_the_documented_ones() -> None:
    dials = DialHealth()
    assert (dials.window, dials.ratio, dials.latency_factor) == (30.0, 0.5, 3.0)
    assert (dials.min_dials, dials.baseline_dials) == (10, 200)
    lag = LoopLag()
    assert (lag.period, lag.window, lag.threshold) == (0.25, 5.0, 0.05)
    fds = FileDescriptors()
    assert (fds.fraction, fds.per_connection, fds.pressure_at) == (0.5, 1, 0.9)
    memory = Memory()
    total = psutil.virtual_memory().total
    assert DEFAULT_BYTES_PER_CONNECTION == 256 * 1024
    assert memory.per_connection == DEFAULT_BYTES_PER_CONNECTION
    assert memory.pressure_at == 0.9
    assert (memory.budget, memory.reserve) == (total // 8, total // 20)


def test_failed_dials_fires_from_the_tenth_dial_by_default() -> None:
    trigger = FailedDials(ratio=0.5, window=30.0)
    assert trigger.min_dials == 10
    assert not any(trigger.dial_reported(False, None, float(t)) for t in range(9))
    assert trigger.dial_reported(False, None, 9.0)


def test_dial_health_needs_ten_dials_by_default_for_pressure() -> None:
    sensor = DialHealth()
    for t in range(9):
        sensor.dial_reported(False, None, float(t))
    assert not sensor.sample(9.0).pressure
    sensor.dial_reported(False, None, 9.0)
    assert sensor.sample(9.0).pressure


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 1), (1.0, 1), (2.5, 3)])
def test_admission_burst_defaults_to_the_rate_rounded_up(rate: float, burst: int) -> None:
    assert cm.Admission(rate=rate).burst == burst


async def test_admission_rate_buckets_are_per_slash_56_for_ipv6_by_default(
    autojump_clock: Any,
) -> None:
    admission = cm.Admission(rate=1.0, burst=1)
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr:
        mgr.track("a", direction="inbound", address="2001:db8:0:100::1", close=_close)
        # Same /56 (2001:db8:0:100::/56): the bucket is spent.
        with pytest.raises(cm.ConnectionRefused) as refused:
            mgr.track("b", direction="inbound", address="2001:db8:0:1ff::1", close=_close)
        assert refused.value.reason == "rate"
        assert "2001:db8:0:100::/56" in refused.value.detail
        # Another /56: a bucket of its own.
        mgr.track("c", direction="inbound", address="2001:db8:0:200::1", close=_close)


async def test_a_ceiling_below_the_count_starts_a_round_at_that_sample(
    autojump_clock: Any,
) -> None:
    # No pressure: only the sample that cuts the share can wake the regulator.
    fake = FakeSensor()
    sensing = Sensing([fake], interval=5.0, floor=1)
    async with cm.open_connection_manager(
        limits=cm.Limits(8, 10), sensing=sensing, grace_period=0.0, silence_period=0.0
    ) as mgr:
        for peer in range(9):
            mgr.track(peer, direction="outbound", close=_close)
        await trio.sleep(2.5)
        fake.ceiling = 5
        await trio.sleep(2.6)  # just past the next sample
        stats = mgr.statistics()
        assert (stats.high, stats.low) == (5, 4)
        assert stats.connections == 4
        assert stats.rounds.last_trigger == "high-water"


def test_auto_limits_follow_the_documented_formula() -> None:
    gib = 1024**3
    # The documented example: 1024 descriptors and 8 GiB, the descriptors bind.
    assert cm.Limits.auto(nofile=1024, memory=8 * gib) == cm.Limits(306, 409, 512)
    # Memory binds: 8 GiB / 8 / 256 KiB = 4096.
    assert cm.Limits.auto(nofile=1_000_000, memory=8 * gib) == cm.Limits(2457, 3276, 4096)
    # Two descriptors per connection halve the descriptor bound.
    limits = cm.Limits.auto(nofile=1024, memory=8 * gib, fds_per_connection=2)
    assert limits.hard == 256


async def _close() -> None:
    await trio.lowlevel.checkpoint()
