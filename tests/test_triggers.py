"""Triggers (SPEC §8): HighWater, Spike, FailedDials, Interval, and user triggers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.triggers import (
    FailedDials,
    HighWater,
    Interval,
    Pressure,
    Spike,
    Trigger,
    TriggerView,
)

VIEW = TriggerView(count=5, low=2, high=10, hard=None)


def test_high_water() -> None:
    trigger = HighWater()
    assert trigger.name == "high-water"
    assert not trigger.check(TriggerView(10, 2, 10, None), 0.0)
    assert trigger.check(TriggerView(11, 2, 10, None), 0.0)
    assert trigger.next_check(0.0) == float("inf")


def test_spike_counts_openings_within_the_window() -> None:
    spike = Spike(3, window=1.0)
    # Three openings are not "more than three".
    assert [spike.connection_opened(t) for t in (0.0, 0.2, 0.4)] == [False] * 3
    assert not spike.check(VIEW, 0.4)
    # The fourth one within a second is.
    assert spike.connection_opened(0.9) is True
    assert spike.check(VIEW, 0.9)
    # Latched until a round completes, and fires once.
    assert spike.connection_opened(0.95) is False
    assert spike.check(VIEW, 5.0)
    spike.round_completed(5.0)
    assert not spike.check(VIEW, 5.0)
    # Spread-out openings never make a spike.
    assert not any(spike.connection_opened(10.0 + 0.5 * i) for i in range(10))
    # A round starts the count afresh, even within the window: the openings
    # before it do not add up with those after it; four after it do.
    assert [spike.connection_opened(t) for t in (20.0, 20.1, 20.2, 20.3)][-1] is True
    spike.round_completed(20.35)
    assert [spike.connection_opened(t) for t in (20.4, 20.5, 20.6)] == [False] * 3
    assert spike.connection_opened(20.7) is True


def test_failed_dials_ratio_window_and_minimum() -> None:
    trigger = FailedDials(0.5, window=10.0, min_dials=4)
    assert trigger.dial_reported(False, None, 0.0) is False  # 1 of 1, below min_dials
    assert trigger.dial_reported(False, None, 1.0) is False
    assert trigger.dial_reported(True, 0.1, 2.0) is False
    assert trigger.failure_ratio(2.0) == pytest.approx(2 / 3)
    assert trigger.dial_reported(True, 0.1, 3.0) is True  # 2 of 4 = 0.5
    assert trigger.check(VIEW, 3.0)
    trigger.round_completed(3.0)
    assert not trigger.check(VIEW, 3.0)
    # Old dials leave the window: two failures at t=0, 1 are forgotten by t=11.5.
    assert trigger.failure_ratio(11.5) == 0.0
    assert trigger.dial_reported(True, None, 11.6) is False
    assert trigger.failure_ratio(11.6) == 0.0


def test_interval_schedules_itself() -> None:
    interval = Interval(5.0)
    assert not interval.check(VIEW, 100.0)
    assert interval.next_check(100.0) == 105.0
    assert not interval.check(VIEW, 104.9)
    assert interval.check(VIEW, 105.0)
    interval.round_completed(106.0)
    assert interval.next_check(106.0) == 111.0


async def test_high_water_is_always_on(autojump_clock: trio.testing.MockClock) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 2), grace_period=0, triggers=[Interval(1000)]
    ) as mgr:
        assert any(isinstance(t, HighWater) for t in mgr._regulator.triggers)
        for i in range(3):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(1)
        assert mgr.statistics().connections == 1
        assert mgr.statistics().rounds.last_trigger == "high-water"


async def test_spike_fires_a_round_below_high(autojump_clock: trio.testing.MockClock) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 100), grace_period=0, triggers=[Spike(5, window=1.0)]
    ) as mgr:
        for i in range(5):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
            await trio.sleep(0.1)
        await trio.sleep(10)
        assert mgr.statistics().rounds.count == 0
        assert mgr.statistics().connections == 5
        # Six within a second: a spike. The round prunes down to low.
        for i in range(5, 11):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
            await trio.sleep(0.1)
        await trio.testing.wait_all_tasks_blocked()
        stats = mgr.statistics()
        assert stats.rounds.count == 1
        assert stats.rounds.last_trigger == "spike"
        assert stats.connections == 2


async def test_failed_dials_fire_a_round(autojump_clock: trio.testing.MockClock) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 100),
        grace_period=0,
        triggers=[FailedDials(0.5, window=30.0, min_dials=10)],
    ) as mgr:
        for i in range(6):
            mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
        for _ in range(6):
            mgr.report_dial("peer", ok=True, latency=0.05)
        for _ in range(3):
            mgr.report_dial("peer", ok=False)
        await trio.sleep(1)
        assert mgr.statistics().rounds.count == 0
        mgr.report_dial("peer", ok=False)  # 4 of 10 failed
        mgr.report_dial("peer", ok=False)  # 5 of 11
        await trio.sleep(1)
        assert mgr.statistics().rounds.count == 0
        mgr.report_dial("peer", ok=False)  # 6 of 12: the ratio is reached
        await trio.testing.wait_all_tasks_blocked()
        stats = mgr.statistics()
        assert stats.rounds.count == 1
        assert stats.rounds.last_trigger == "failed-dials"
        assert stats.connections == 2


async def test_interval_fires_rounds(autojump_clock: trio.testing.MockClock) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 100), grace_period=0, silence_period=0, triggers=[Interval(60.0)]
    ) as mgr:
        conns = [
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint) for i in range(5)
        ]
        await trio.sleep(59.9)
        assert mgr.statistics().rounds.count == 0
        await trio.sleep(0.2)
        assert mgr.statistics().rounds.count == 1
        assert mgr.statistics().rounds.last_trigger == "interval"
        assert sum(not c.closed for c in conns) == 2
        await trio.sleep(120)
        assert mgr.statistics().rounds.count == 3


async def test_user_trigger(autojump_clock: trio.testing.MockClock) -> None:
    class EveryThirdOpening(Trigger):
        name = "every-third"

        def __init__(self) -> None:
            self.opened = 0
            self.completed: list[float] = []

        def connection_opened(self, now: float) -> bool:
            self.opened += 1
            return self.opened >= 3

        def check(self, view: TriggerView, now: float) -> bool:
            return self.opened >= 3

        def round_completed(self, now: float) -> None:
            self.opened = 0
            self.completed.append(now)

    trigger = EveryThirdOpening()
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 100), grace_period=0, triggers=[trigger]
    ) as mgr:
        assert trigger in mgr._regulator.open_hooks
        assert trigger not in mgr._regulator.dial_hooks
        mgr.track("a", direction="inbound", close=trio.lowlevel.checkpoint)
        mgr.track("b", direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(1)
        assert trigger.completed == []
        await trio.sleep(1)
        mgr.track("c", direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert trigger.completed == [2.0]
        assert mgr.statistics().rounds.last_trigger == "every-third"
        assert mgr.statistics().connections == 1


def test_pressure_fires_only_under_pressure_above_low() -> None:

    trigger = Pressure()
    assert not trigger.check(TriggerView(10, 5, 8, None), 0.0)
    assert trigger.check(TriggerView(10, 5, 8, None, pressure=True), 0.0)
    assert not trigger.check(TriggerView(5, 5, 8, None, pressure=True), 0.0)


async def test_pressure_is_always_on_and_names_its_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:

    async with cm.open_connection_manager(
        limits=cm.Limits(2, 10), grace_period=0, silence_period=60
    ) as mgr:
        assert any(isinstance(t, Pressure) for t in mgr._regulator.triggers)
        for i in range(5):
            mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(1)
        assert mgr.statistics().connections == 5  # under high: no round
        mgr._regulator.pressure = True
        mgr._regulator.poke()
        await trio.sleep(1)
        assert mgr.statistics().connections == 2
        assert mgr.statistics().rounds.last_trigger == "pressure"


@pytest.mark.parametrize(("ratio", "failed", "dials"), [(0.28, 7, 25), (0.55, 55, 100)])
def test_failed_dials_fire_at_exactly_the_ratio(ratio: float, failed: int, dials: int) -> None:
    trigger = FailedDials(ratio, window=60.0, min_dials=dials)
    fired = [trigger.dial_reported(True, 0.1, 0.0) for _ in range(dials - failed)]
    fired += [trigger.dial_reported(False, None, 0.0) for _ in range(failed)]
    # The share reaches the ratio with the last dial, as failure_ratio() says.
    assert trigger.failure_ratio(0.0) == ratio
    assert fired == [False] * (dials - 1) + [True]
    assert trigger.check(VIEW, 0.0)


@pytest.mark.parametrize("ratio", [0, 0.0, -0.0])
def test_failed_dials_reject_a_ratio_of_zero(ratio: float) -> None:
    # Dials that all succeeded would reach a failed share of 0 (as DialHealth.ratio).
    with pytest.raises(cm.ConfigError, match=r"FailedDials\.ratio .*\(0, 1\].*got -?0"):
        FailedDials(ratio, window=10.0, min_dials=3)


@pytest.mark.parametrize("hook", ["check", "next_check"])
async def test_a_trigger_that_raises_fails_rounds_then_stops_the_manager(
    autojump_clock: trio.testing.MockClock, hook: str
) -> None:
    class Buggy(Trigger):
        name = "buggy"

        def check(self, view: TriggerView, now: float) -> bool:
            if hook == "check":
                raise RuntimeError("trigger bug")
            return False

        def next_check(self, now: float) -> float:
            if hook == "next_check":
                raise RuntimeError("trigger bug")
            return now + 1.0

    # As the module says: logged and counted, back-off, then the manager stops.
    with pytest.raises(cm.ConnMgrError, match="regulator failed 6 times") as raised:
        async with cm.open_connection_manager(
            limits=cm.Limits(2, 10), max_round_failures=5, triggers=[Buggy()]
        ) as mgr:
            await trio.sleep(1000)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert mgr.statistics().rounds.failures == 6


async def test_a_spike_while_a_round_runs_outlives_that_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    late = []

    async with cm.open_connection_manager(
        limits=cm.Limits(2, 8), grace_period=0, silence_period=1.0, triggers=[Spike(3, 1.0)]
    ) as mgr:

        def scorer(stream: cm.Stream) -> float:
            # Four openings inside the round, while it plans: after its snapshot.
            if not late:
                late.extend(
                    mgr.track(f"late-{i}", direction="inbound", close=trio.lowlevel.checkpoint)
                    for i in range(4)
                )
            return 0.5

        async with mgr.enroll("/p", quota=cm.Quota(0, 100), scorer=scorer) as p:
            for i in range(9):  # spread out: no spike; the ninth is over high
                p.track_stream(mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint))
                await trio.sleep(0.5)
            await trio.testing.wait_all_tasks_blocked()
            stats = mgr.statistics()
            # The high-water round pruned its snapshot of 9 down to 2; the 4 it
            # did not see are left, under high.
            assert (stats.rounds.count, stats.connections) == (1, 6)
            # The spike they made is still pending: a round of its own follows.
            await trio.sleep(2.0)
            stats = mgr.statistics()
            assert (stats.rounds.count, stats.rounds.last_trigger) == (2, "spike")
            assert stats.connections == 2


@pytest.mark.parametrize("hook", ["connection_opened", "dial_reported"])
async def test_a_hook_that_raises_does_not_swallow_another_triggers_wake_up(
    autojump_clock: trio.testing.MockClock, hook: str
) -> None:
    class Fires(Trigger):
        name = "fires"
        fired = False

        def connection_opened(self, now: float) -> bool:
            self.fired = True
            return True

        def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
            self.fired = True
            return True

        def check(self, view: TriggerView, now: float) -> bool:
            return self.fired

        def round_completed(self, now: float) -> None:
            self.fired = False

    class Raises(Trigger):
        name = "raises"

        def connection_opened(self, now: float) -> bool:
            raise RuntimeError("hook bug")

        def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
            raise RuntimeError("hook bug")

    async with cm.open_connection_manager(
        limits=cm.Limits(1, 10), triggers=[Fires(), Raises()]
    ) as mgr:
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="hook bug"):
            if hook == "connection_opened":
                mgr.track("a", direction="inbound", close=trio.lowlevel.checkpoint)
            else:
                mgr.report_dial("a", ok=False)
        await trio.testing.wait_all_tasks_blocked()
        # The first trigger fired before the second raised: its round runs.
        assert mgr.statistics().rounds.last_trigger == "fires"


async def test_a_round_completed_hook_that_raises_finds_the_round_recorded() -> None:
    class Raises(Trigger):
        name = "raises"

        def round_completed(self, now: float) -> None:
            raise RuntimeError("hook bug")

    class Counts(Trigger):
        name = "counts"
        completed = 0

        def round_completed(self, now: float) -> None:
            self.completed += 1

    counts = Counts()
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 4), grace_period=0, triggers=[Raises(), counts]
        ) as mgr,
        mgr.subscribe() as events,
    ):
        conns = [
            mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint) for i in range(4)
        ]
        # trim() raises the bug to its caller, after the round has pruned and
        # been recorded; the other trigger is told all the same.
        with pytest.raises(RuntimeError, match="hook bug"):
            await mgr.trim()
        assert [c.close_reason for c in conns] == ["pruned", "pruned", None, None]
        assert mgr.statistics().rounds.count == 1
        assert counts.completed == 1
        kinds = []
        while True:
            try:
                kinds.append(type(events.receive_nowait()))
            except trio.WouldBlock:
                break
        assert kinds[-1] is cm.RoundCompleted
