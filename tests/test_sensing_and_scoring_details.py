"""Sensors and scorers in detail: thresholds at their edges, argument checks, and
figures read through stand-ins (never this machine's own memory or descriptors)."""

from __future__ import annotations

import logging
import os
import resource
import types
from typing import Any

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr import sensing
from trio_connmgr._core._scoring import score, tally
from trio_connmgr._core._state import EnrollmentState, State
from trio_connmgr.sensing import (
    DialHealth,
    FakeSensor,
    FileDescriptors,
    LoopLag,
    Memory,
    Reading,
    Sensing,
    Sensor,
)

INTERVAL = 5.0

# ------------------------------------------------------------------- scoring


def member_and_connection(scorer: Any) -> tuple[State, EnrollmentState, cm.Connection]:
    state = State(cm.Limits(5, 10), clock=lambda: 0.0)
    member = EnrollmentState("p", cm.Quota(0, 10), scorer, 1.0, False, state)
    state.enrol(member)
    return state, member, state.open_connection("peer", cm.Direction.INBOUND)


class Ratio(float):
    """A float subclass a scorer might return."""


@pytest.mark.parametrize("value", [0, Ratio(0.25), Ratio(1.0)], ids=["int-zero", "sub", "sub-one"])
def test_in_range_scores_of_other_numeric_types_are_plain_floats(value: object) -> None:
    state, member, conn = member_and_connection(lambda stream: value)
    stream = state.open_stream(member, conn, cm.Direction.OUTBOUND)
    result = score(member, stream)
    assert type(result) is float
    assert result == float(value)  # type: ignore[arg-type]
    assert (member.scorer_clamped, member.scorer_errors) == (0, 0)


def test_a_scorer_returning_a_non_number_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    state, member, conn = member_and_connection(lambda stream: "0.9")
    for _ in range(2):
        stream = state.open_stream(member, conn, cm.Direction.OUTBOUND)
        assert score(member, stream) == 0.5
    assert member.scorer_errors == 2
    logged = [r for r in caplog.records if r.name == "trio_connmgr.scoring"]
    assert len(logged) == 1
    assert "returned a non-number" in logged[0].getMessage()


def test_the_recency_scorer_rates_a_stand_in_by_its_idle_time() -> None:
    stand_in: Any = types.SimpleNamespace(idle_time=20.0, last_active=0.0)
    assert cm.RecencyScorer(half_life=10.0)(stand_in) == pytest.approx(0.25)
    stand_in.idle_time = 0.0
    assert cm.RecencyScorer(half_life=10.0)(stand_in) == 1.0


def test_a_scorer_closing_streams_does_not_break_the_tally() -> None:
    def closing(stream: cm.Stream) -> float:
        for other in tuple(stream.connection.streams):
            if other is not stream:
                other.close()
        return 0.5

    state, member, conn = member_and_connection(closing)
    for _ in range(3):
        state.open_stream(member, conn, cm.Direction.OUTBOUND)
    assert tally(conn) == 0.5
    assert member.scorer_errors == 0


# ------------------------------------------------------------ the environment


def test_an_unlimited_or_meaningless_descriptor_limit_is_no_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = {"soft": 1024}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limits["soft"], 4096))
    assert sensing.nofile_limit() == 1024
    limits["soft"] = resource.RLIM_INFINITY
    assert sensing.nofile_limit() is None
    # Where the "unlimited" constant is a large positive number (macOS, BSD).
    monkeypatch.setattr(resource, "RLIM_INFINITY", 2**63 - 1)
    limits["soft"] = 2**63 - 1
    assert sensing.nofile_limit() is None
    limits["soft"] = 0
    assert sensing.nofile_limit() is None


def test_open_descriptors_leave_out_the_one_listing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "listdir", lambda path: ["0", "1", "2", "3", "4"])
    assert sensing.open_fds() == 4


# ------------------------------------------------------------------- sensors


def fake_descriptors(monkeypatch: pytest.MonkeyPatch, limit: int | None, count: int) -> None:
    monkeypatch.setattr(sensing, "nofile_limit", lambda: limit)
    monkeypatch.setattr(sensing, "open_fds", lambda: count)


def test_file_descriptor_ceiling_rounds_down(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_descriptors(monkeypatch, 1023, 10)
    assert FileDescriptors().sample(0.0).ceiling == 511  # half of 1023, rounded down


def test_file_descriptor_pressure_starts_at_its_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_descriptors(monkeypatch, 1000, 899)
    below = FileDescriptors(pressure_at=0.9).sample(0.0)
    assert not below.pressure
    assert below.values == {"open": 899.0, "limit": 1000.0, "used": 0.899}
    fake_descriptors(monkeypatch, 1000, 900)
    at = FileDescriptors(pressure_at=0.9).sample(0.0)
    assert at.pressure
    assert at.detail == "900 of 1000 file descriptors open"


def test_file_descriptors_without_a_limit_give_no_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_descriptors(monkeypatch, None, 10_000)
    assert FileDescriptors().sample(0.0) == Reading({"open": 10_000.0})


class FakePsutil:
    """Stands in for psutil: the figures a test sets."""

    def __init__(self, total: int, available: int, rss: int) -> None:
        self.total = total
        self.available = available
        self.rss = rss

    def Process(self) -> Any:  # psutil's name
        return types.SimpleNamespace(memory_info=lambda: types.SimpleNamespace(rss=self.rss))

    def virtual_memory(self) -> Any:
        return types.SimpleNamespace(total=self.total, available=self.available)


@pytest.fixture
def psutil(monkeypatch: pytest.MonkeyPatch) -> FakePsutil:
    fake = FakePsutil(total=8_000_000, available=4_000_000, rss=100_000)
    monkeypatch.setattr(sensing, "_psutil", lambda: fake)
    return fake


def test_memory_defaults_to_an_eighth_and_a_twentieth_of_the_machine(psutil: FakePsutil) -> None:
    memory = Memory(per_connection=1000)
    assert (memory.budget, memory.reserve) == (1_000_000, 400_000)
    reading = memory.sample(0.0)
    assert reading == Reading(
        {
            "rss": 100_000.0,
            "available": 4_000_000.0,
            "total": 8_000_000.0,
            "budget": 1_000_000.0,
            "used": 0.1,
        },
        ceiling=1000,
    )


def test_memory_pressure_starts_at_its_share_of_the_budget(psutil: FakePsutil) -> None:
    memory = Memory(budget=1_000_000, pressure_at=0.9)
    psutil.rss = 899_999
    assert not memory.sample(0.0).pressure
    psutil.rss = 900_000
    reading = memory.sample(0.0)
    assert reading.pressure
    assert reading.detail == "RSS 900000 bytes is 90% of the budget"


def test_memory_pressure_below_the_reserve(psutil: FakePsutil) -> None:
    memory = Memory(budget=1_000_000, reserve=500_000)
    psutil.available = 500_000
    assert not memory.sample(0.0).pressure
    psutil.available = 499_999
    reading = memory.sample(0.0)
    assert reading.pressure
    assert reading.detail == "499999 bytes available, below the reserve of 500000"


def test_a_zero_memory_reserve_is_no_reserve(psutil: FakePsutil) -> None:
    memory = Memory(budget=1_000_000, reserve=0)
    assert memory.reserve == 0
    psutil.available = 0
    assert not memory.sample(0.0).pressure


def test_dial_health_without_dials_reports_no_failures() -> None:
    assert DialHealth().sample(0.0) == Reading({"dials": 0, "failed": 0, "failure_ratio": 0.0})


def test_dial_health_figures_use_the_median_latency() -> None:
    dials = DialHealth(min_dials=1)
    for latency in (1.0, 1.0, 10.0):
        dials.dial_reported(True, latency, 0.0)
    assert dials.sample(0.0).values["latency"] == 1.0


def test_dial_health_counts_dials_exactly_one_window_old() -> None:
    dials = DialHealth(window=30.0, min_dials=1)
    dials.dial_reported(True, 0.1, 0.0)
    values = dials.sample(30.0).values
    assert (values["dials"], values["latency"]) == (1, 0.1)
    assert dials.sample(30.5).values["dials"] == 0


def test_dial_health_keeps_at_most_its_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DialHealth, "MAX_HISTORY", 3)
    dials = DialHealth(min_dials=1)
    for latency in (9.0, 9.0, 9.0, 1.0, 1.0):
        dials.dial_reported(True, latency, 0.0)
    values = dials.sample(0.0).values
    assert values["dials"] == 3
    assert values["latency"] == 1.0  # the median of 9, 1, 1: the oldest are forgotten


def test_dial_health_reused_by_a_later_run_forgets_its_latencies() -> None:
    dials = DialHealth(min_dials=1)
    dials.dial_reported(True, 5.0, 100.0)
    dials.dial_reported(True, 1.0, 2.0)  # a clock behind the window: a new Trio run
    values = dials.sample(2.0).values
    assert (values["dials"], values["latency"]) == (1, 1.0)


def test_dial_failures_at_exactly_the_ratio_and_the_minimum_are_pressure() -> None:
    dials = DialHealth(ratio=0.5, min_dials=4)
    for ok in (True, False, True):
        dials.dial_reported(ok, None, 0.0)
    assert not dials.sample(0.0).pressure  # 3 dials: fewer than min_dials
    dials.dial_reported(False, None, 0.0)
    reading = dials.sample(0.0)
    assert reading.pressure
    assert reading.detail == "2 of 4 dials failed within 30s"


def feed_slow_dials(dials: DialHealth) -> None:
    for latency in (0.1, 0.1, 0.1, 0.1):
        dials.dial_reported(True, latency, 0.0)
    for latency in (1.0, 1.0, 1.0):
        dials.dial_reported(True, latency, 40.0)


def test_dial_latency_at_exactly_the_factor_and_the_minimum_is_pressure() -> None:
    probe = DialHealth(min_dials=3, latency_factor=1000.0)
    feed_slow_dials(probe)
    inflation = probe.sample(40.0).values["inflation"]
    assert inflation > 1.0
    dials = DialHealth(min_dials=3, latency_factor=inflation)
    feed_slow_dials(dials)
    assert dials.sample(40.0).pressure  # 3 latencies, inflation equal to the factor
    too_few = DialHealth(min_dials=4, latency_factor=inflation)
    feed_slow_dials(too_few)
    assert not too_few.sample(40.0).pressure


def test_loop_lag_figures_over_a_window_that_includes_its_edge() -> None:
    lag = LoopLag(window=5.0, threshold=0.05)
    lag.record(0.0, 0.5)
    lag.record(1.0, 0.1)
    assert lag.sample(5.0).values == {
        "lag_max": 0.5,
        "lag_mean": 0.3,
        "lag_last": 0.1,
        "samples": 2.0,
    }
    assert lag.sample(5.5).values["samples"] == 1.0


async def test_loop_lag_forgets_lags_recorded_before_its_task_started(
    autojump_clock: Any,
) -> None:
    lag = LoopLag(period=1.0, window=5.0)
    lag.record(trio.current_time() + 1000.0, 10.0)  # from another run's clock
    sensing_ = Sensing([lag], interval=INTERVAL)
    async with cm.open_connection_manager(limits=cm.Limits(40, 100), sensing=sensing_) as mgr:
        # Its task is ready before the first sample, taken as the manager opens.
        assert mgr.statistics().sensors["loop-lag"] == {"samples": 0.0, "pressure": 0.0}
        await trio.sleep(INTERVAL * 1.5)
        figures = mgr.statistics().sensors["loop-lag"]
        assert (figures["lag_max"], figures["pressure"]) == (0.0, 0.0)


# --------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: FileDescriptors(per_connection=0), "FileDescriptors.per_connection"),
        (lambda: FileDescriptors(pressure_at=0.0), "FileDescriptors.pressure_at"),
        (lambda: FileDescriptors(pressure_at=1.5), "FileDescriptors.pressure_at"),
        (lambda: Memory(per_connection=0), "Memory.per_connection"),
        (lambda: Memory(pressure_at=0.0), "Memory.pressure_at"),
        (lambda: Memory(reserve=-1), "Memory.reserve"),
        (lambda: Memory(reserve=0.5), "Memory.reserve"),  # type: ignore[arg-type]
        (lambda: LoopLag(threshold=0.0), "LoopLag.threshold"),
        (lambda: FakeSensor(""), "FakeSensor name"),
        (lambda: FakeSensor(script=Reading(ceiling=5)), "FakeSensor script .*Reading"),  # type: ignore[arg-type]
    ],
)
def test_sensor_arguments_are_checked(make: Any, field: str, psutil: FakePsutil) -> None:
    with pytest.raises(cm.ConfigError, match=field):
        make()


class Unnamed(Sensor):
    name = ""

    def sample(self, now: float) -> Reading:
        return Reading()


def test_a_sensor_with_an_empty_name_is_refused() -> None:
    with pytest.raises(cm.ConfigError, match=r"names must be non-empty strings.*got ''"):
        Sensing([Unnamed()])


# ------------------------------------------------------------ the controller


async def test_the_default_increase_is_five_percent_of_high_rounded(autojump_clock: Any) -> None:
    fake = FakeSensor(pressure=True)
    sensing_ = Sensing([fake], interval=INTERVAL, floor=1, decrease=0.5)
    async with cm.open_connection_manager(limits=cm.Limits(20, 39), sensing=sensing_) as mgr:
        assert mgr.limits.high == 19
        await trio.sleep(INTERVAL / 2)
        fake.pressure = False
        await trio.sleep(INTERVAL)
        assert mgr.limits.high == 21  # 5% of 39 is 1.95: two connections


async def test_a_steady_share_logs_nothing(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_connmgr.sensing")
    sensing_ = Sensing([FakeSensor()], interval=INTERVAL)
    async with cm.open_connection_manager(limits=cm.Limits(40, 100), sensing=sensing_):
        await trio.sleep(INTERVAL * 3.5)
    assert [r.getMessage() for r in caplog.records if r.name == "trio_connmgr.sensing"] == []
