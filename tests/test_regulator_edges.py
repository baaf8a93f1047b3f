"""Regulation at its edges (SPEC §8): the failure window's bounds, and the
triggers a round resets as it completes."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr._core._planner import Plan, plan_round
from trio_connmgr.triggers import Trigger, TriggerView


async def test_a_failure_exactly_failure_window_old_still_counts(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second failure comes one back-off (0.5 s) after the first: with a
    # window of exactly 0.5 s, both are within it, and one failure is allowed.
    calls: list[float] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(trio.current_time())
        raise RuntimeError("injected regulator bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    with pytest.raises(cm.ConnMgrError, match=r"failed 2 times within 0\.5s") as info:
        async with cm.open_connection_manager(
            limits=cm.Limits(1, 2),
            grace_period=0,
            max_round_failures=1,
            failure_window=regulator_module.BACKOFF_BASE,
        ) as mgr:
            for i in range(3):
                mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
            await trio.sleep(10)  # a bounded wait: the manager stops long before
    assert isinstance(info.value.__cause__, RuntimeError)
    assert calls == [0.0, regulator_module.BACKOFF_BASE]
    assert mgr.statistics().rounds.failures == 2


class Latch(Trigger):
    """Fires once armed, at the next connection opened; a completed round resets it."""

    name = "latch"

    def __init__(self) -> None:
        self.armed = False
        self.fired = False
        self.resets: list[float] = []

    def connection_opened(self, now: float) -> bool:
        if self.armed:
            self.armed = False
            self.fired = True
            return True
        return False

    def check(self, view: TriggerView, now: float) -> bool:
        return self.fired

    def round_completed(self, now: float) -> None:
        self.fired = False
        self.resets.append(now)


async def test_a_trigger_fired_during_a_cancelled_trim_is_reset_by_the_next_round(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trigger fires while a trim() plans; the trim is then cancelled (which
    # leaves no trace). The regulator's round that follows plans after the
    # trigger fired: completing, it must reset it, or the trigger stays fired
    # and starts a second round, for nothing, once the silence period is over.
    planning = trio.Event()
    cancelled = False

    def pausing(*args: Any, **kwargs: Any) -> Generator[None, None, Plan]:
        planning.set()
        while not cancelled:
            yield  # (checkpoints, until the trim is cancelled)
        return (yield from plan_round(*args, **kwargs))

    monkeypatch.setattr(regulator_module, "plan_round", pausing)
    latch = Latch()
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 10), grace_period=0, silence_period=10, triggers=[latch]
    ) as mgr:
        for i in range(3):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        async with trio.open_nursery() as nursery:
            trimming = trio.CancelScope()

            async def trim() -> None:
                with trimming:
                    await mgr.trim()

            nursery.start_soon(trim)
            await planning.wait()
            latch.armed = True
            mgr.track("newcomer", direction="inbound", close=trio.lowlevel.checkpoint)
            trimming.cancel()
            cancelled = True
        assert trimming.cancelled_caught
        await trio.sleep(1)
        stats = mgr.statistics()
        assert stats.rounds.count == 1
        assert stats.rounds.last_trigger == "latch"
        assert stats.connections == 1
        assert latch.resets == [0.0]
        assert not latch.fired
        await trio.sleep(60)
        assert mgr.statistics().rounds.count == 1


async def test_a_trim_cancelled_while_planning_leaves_no_close_hook(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The Cancelled is kept (as an error reporter or a test harness would keep
    # it), and with it the frames it went through: the plan the trim abandoned
    # must still have ended, its hook gone from the state's close hooks (or
    # every connection closed from then on would stay alive in it).
    kept: list[BaseException] = []
    async with cm.open_connection_manager(
        limits=cm.Limits(low=10, high=5000), grace_period=0.0
    ) as mgr:
        state = mgr._state
        hooks = list(state.close_hooks)
        for i in range(5000):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)

        async def trimmer(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                try:
                    await mgr.trim()
                except trio.Cancelled as exc:
                    kept.append(exc)
                    raise

        async with trio.open_nursery() as nursery:
            scope = await nursery.start(trimmer)
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
            assert len(state.close_hooks) == len(hooks) + 1  # (planning)
            scope.cancel()
        assert kept
        assert state.close_hooks == hooks
