"""A trigger that keeps state serves one open manager at a time, and starts
afresh for each; one that keeps none may serve several."""

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

LIMITS = cm.Limits(low=1, high=100)


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


async def test_a_trigger_of_an_open_manager_is_refused_to_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spike = Spike(3, window=10.0)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]):
        with pytest.raises(cm.ConfigError, match=r"already serves another open connection"):
            async with cm.open_connection_manager(limits=LIMITS, triggers=[Interval(5), spike]):
                pass  # pragma: no cover


async def test_a_refused_manager_leaves_its_other_triggers_free(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spike = Spike(3, window=10.0)
    interval = Interval(5)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]):
        with pytest.raises(cm.ConfigError):
            async with cm.open_connection_manager(limits=LIMITS, triggers=[interval, spike]):
                pass  # pragma: no cover
        async with cm.open_connection_manager(limits=LIMITS, triggers=[interval]):
            pass


async def test_a_trigger_serves_a_manager_opened_after_its_first_one_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spike = Spike(1, window=10.0)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]) as mgr:
        mgr.track("a", direction="inbound", close=noop_close)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]) as mgr:
        for peer in ("b", "c"):
            mgr.track(peer, direction="inbound", close=noop_close)
        await trio.sleep(1)
        assert mgr.statistics().rounds.last_trigger == "spike"


async def test_a_trigger_is_free_again_after_its_manager_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spike = Spike(3, window=10.0)
    with pytest.raises(KeyError):
        async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]):
            raise KeyError("body")
    async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]):
        pass


async def test_a_manager_sees_no_spike_of_the_one_before() -> None:
    # Two openings in the first manager and one in the next, within the window:
    # the second manager saw one opening, no spike of 2 (or 3).
    spike = Spike(2, window=10.0)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]) as mgr:
        for peer in ("a", "b"):
            mgr.track(peer, direction="inbound", close=noop_close)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[spike]) as mgr:
        mgr.track("c", direction="inbound", close=noop_close)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().rounds.count == 0


async def test_a_manager_counts_no_failed_dial_of_the_one_before() -> None:
    failed = FailedDials(ratio=0.5, window=60.0, min_dials=2)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[failed]) as mgr:
        mgr.report_dial("x", ok=False, latency=None)
    async with cm.open_connection_manager(limits=LIMITS, triggers=[failed]) as mgr:
        mgr.report_dial("y", ok=False, latency=None)  # one dial in this manager
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().rounds.count == 0


def test_an_interval_counts_from_the_manager_of_each_run() -> None:
    # A trigger reused in a later Trio run (a test suite's shared configuration):
    # its period counts from the new manager's opening, not from the time of
    # the run before, which a new clock may be far behind.
    interval = Interval(5)
    runs: list[tuple[float, int]] = []

    async def run(start: float) -> None:
        async with cm.open_connection_manager(limits=LIMITS, triggers=[interval]) as mgr:
            await trio.sleep(6)
            runs.append((trio.current_time() - start, mgr.statistics().rounds.count))

    for start in (1000.0, 0.0):
        clock = trio.testing.MockClock(autojump_threshold=0)
        clock.jump(start)
        trio.run(run, start, clock=clock)
    assert runs == [(6.0, 1), (6.0, 1)]


async def test_triggers_that_keep_no_state_serve_two_open_managers() -> None:
    class AboveLow(Trigger):
        name = "above-low"
        keeps_state = False

        def check(self, view: TriggerView, now: float) -> bool:
            return view.count > view.low

    shared = [HighWater(), Pressure(), AboveLow()]
    async with (
        cm.open_connection_manager(limits=LIMITS, triggers=shared),
        cm.open_connection_manager(limits=LIMITS, triggers=shared),
    ):
        pass


async def test_a_trigger_keeping_state_in_check_alone_is_refused_to_a_second_manager() -> None:
    class Growth(Trigger):
        name = "growth"

        def __init__(self) -> None:
            self.last = 0

        def check(self, view: TriggerView, now: float) -> bool:
            grew, self.last = view.count - self.last >= 50, view.count
            return grew

    growth = Growth()
    async with cm.open_connection_manager(limits=LIMITS, triggers=[growth]):
        with pytest.raises(cm.ConfigError, match="already serves another open connection"):
            async with cm.open_connection_manager(limits=LIMITS, triggers=[growth]):
                pass  # pragma: no cover
