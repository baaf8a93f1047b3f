"""Limits of the timed loops and of the dial histories: the shortest periods, and
the most dials a trigger or sensor keeps."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import trio_connmgr as cm
from trio_connmgr.sensing import DialHealth, FakeSensor, LoopLag, Sensing
from trio_connmgr.triggers import FailedDials, Interval, TriggerView

VIEW = TriggerView(count=5, low=2, high=10, hard=None)

PERIODS: list[tuple[str, Callable[[float], object]]] = [
    ("Interval.period", lambda period: Interval(period)),
    ("Sensing.interval", lambda period: Sensing([FakeSensor()], interval=period)),
    ("LoopLag.period", lambda period: LoopLag(period=period)),
]


@pytest.mark.parametrize(("field", "build"), PERIODS, ids=[field for field, _ in PERIODS])
@pytest.mark.parametrize("period", [1e-15, 9.99e-7])
def test_a_period_shorter_than_a_microsecond_is_a_config_error(
    field: str, build: Callable[[float], object], period: float
) -> None:
    # At a clock of 100 s, 100.0 + 1e-15 == 100.0: the loop would be due again
    # at once, for ever (and time would never move under an autojump clock).
    with pytest.raises(
        cm.ConfigError, match=rf"^{field} must be at least 1e-06 seconds, got {period!r}$"
    ):
        build(period)


@pytest.mark.parametrize(("field", "build"), PERIODS, ids=[field for field, _ in PERIODS])
def test_a_period_of_one_microsecond_is_accepted(
    field: str, build: Callable[[float], object]
) -> None:
    built = build(1e-6)
    assert (getattr(built, "period", None) or getattr(built, "interval", None)) == 1e-6


@pytest.mark.parametrize(("field", "build"), PERIODS, ids=[field for field, _ in PERIODS])
def test_a_period_of_zero_is_still_refused_as_not_positive(
    field: str, build: Callable[[float], object]
) -> None:
    with pytest.raises(cm.ConfigError, match=rf"^{field} must be a finite, positive .*got 0$"):
        build(0)


def test_the_shortest_period_is_not_lost_in_the_rounding_of_a_late_clock() -> None:
    interval = Interval(1e-6)
    late = 2.0**33  # some 272 years of uptime
    interval.round_completed(late)
    assert interval.next_check(late) > late
    assert not interval.check(VIEW, late)


def test_failed_dials_keep_a_bounded_history() -> None:
    trigger = FailedDials(ratio=0.5, window=60.0, min_dials=10)
    for i in range(100_000):
        trigger.dial_reported(i % 2 == 0, None, 1.0)
    assert len(trigger._dials) == FailedDials.MAX_HISTORY
    assert trigger.failure_ratio(1.0) == 0.5


def test_failed_dials_share_is_that_of_the_latest_dials_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(FailedDials, "MAX_HISTORY", 4)
    trigger = FailedDials(ratio=0.75, window=10.0, min_dials=4)
    for _ in range(10):
        assert trigger.dial_reported(True, None, 0.0) is False
    assert len(trigger._dials) == 4
    # Three failures among the latest four dials: 0.75, although three of the
    # thirteen dials within the window is far less.
    assert trigger.dial_reported(False, None, 1.0) is False
    assert trigger.dial_reported(False, None, 1.0) is False
    assert trigger.failure_ratio(1.0) == 0.5
    assert trigger.dial_reported(False, None, 1.0) is True
    assert trigger.failure_ratio(1.0) == 0.75


def test_failed_dials_window_includes_its_edge_with_a_full_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A history no longer than min_dials: the edges are where they were.
    monkeypatch.setattr(FailedDials, "MAX_HISTORY", 3, raising=False)
    trigger = FailedDials(ratio=1.0, window=10.0, min_dials=3)
    for t in (0.0, 5.0):
        assert trigger.dial_reported(False, None, t) is False
    # The first failure is exactly one window old: still within it.
    assert trigger.dial_reported(False, None, 10.0) is True
    trigger.round_completed(10.0)
    assert (trigger.failure_ratio(10.0), len(trigger._dials)) == (1.0, 3)
    # Just past that edge it is forgotten.
    assert (trigger.failure_ratio(10.5), len(trigger._dials)) == (1.0, 2)
    # The failure at 5.0 is exactly one window old at 15.0: 2 failed of 3.
    assert trigger.dial_reported(True, None, 15.0) is False
    assert trigger.failure_ratio(15.0) == 2 / 3
    assert trigger.failure_ratio(15.5) == 0.5


def test_failed_dials_keep_at_least_min_dials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FailedDials, "MAX_HISTORY", 3, raising=False)
    trigger = FailedDials(ratio=1.0, window=10.0, min_dials=5)
    assert [trigger.dial_reported(False, None, 0.0) for _ in range(5)] == [False] * 4 + [True]


def test_dial_health_with_more_min_dials_than_its_history_can_report_pressure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DialHealth, "MAX_HISTORY", 3)
    health = DialHealth(ratio=1.0, latency_factor=2.0, min_dials=5)
    for _ in range(5):
        health.dial_reported(False, None, 0.0)
    reading = health.sample(0.0)
    assert (reading.values["dials"], reading.pressure) == (5, True)
    # Slow latencies too: five of them are kept, enough for min_dials.
    for latency in (0.1,) * 5 + (1.0,) * 5:
        health.dial_reported(True, latency, 1.0)
    reading = health.sample(1.0)
    assert reading.values["latency"] == 1.0
    assert "dial latency" in reading.detail
