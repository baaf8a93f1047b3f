"""Supervision of the regulator (SPEC §8): wake-ups that land while a round runs,
and back-off after failures, however many."""

from __future__ import annotations

import gc
import itertools
import logging
import weakref
from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr._core._planner import CHUNK, Plan, plan_round


@pytest.mark.parametrize("release", ["unprotect", "unlock"])
async def test_a_connection_freed_while_a_round_plans_is_pruned_without_waiting(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, release: str
) -> None:
    # The round plans over three chunks, yielding between them; the first chunk
    # holds the one connection that could go, protected or locked. It is freed
    # while the round yields, after being classified as safe: the round prunes
    # nothing and is left short, but the wake-up that freeing it sent must not
    # be lost to the round's "stuck" delay (here the silence period, 10 s).
    planning = trio.Event()

    def spying(*args: Any, **kwargs: Any) -> Generator[None, None, Plan]:
        planning.set()
        return (yield from plan_round(*args, **kwargs))

    monkeypatch.setattr(regulator_module, "plan_round", spying)
    with trio.fail_after(60):
        async with (
            cm.open_connection_manager(
                limits=cm.Limits(1, 2), grace_period=0, silence_period=10, lock_budget=1
            ) as mgr,
            mgr.enroll("p", quota=cm.Quota(0, 2)) as p,
        ):
            freed = mgr.track("freed", direction="inbound", close=trio.lowlevel.checkpoint)
            stream = p.track_stream(freed)

            async def fill_and_wait_for_the_round() -> None:
                mgr.protect("kept", "test")
                for _ in range(2 * CHUNK):
                    mgr.track("kept", direction="inbound", close=trio.lowlevel.checkpoint)
                await planning.wait()  # the round has classified the first chunk

            if release == "unlock":
                async with p.lock(stream, ttl=100):
                    await fill_and_wait_for_the_round()
            else:
                mgr.protect("freed", "test")
                await fill_and_wait_for_the_round()
                assert mgr.unprotect("freed", "test") is False
            start = trio.current_time()
            await trio.testing.wait_all_tasks_blocked()
            assert freed.closed
            assert freed.close_reason == "pruned"
            assert trio.current_time() == start  # at once, not after 10 s
            stats = mgr.statistics()
            assert stats.rounds.count == 2
            assert stats.connections == 2 * CHUNK


async def test_back_off_stays_capped_however_many_failures(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A manager told never to stop for failed rounds: past 1,024 failures within
    # the window, the back-off's 2 ** (failures - 1) no longer converted to a
    # float and the regulator died of an OverflowError.
    calls: list[float] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(trio.current_time())
        raise RuntimeError("injected regulator bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    caplog.set_level(logging.CRITICAL, logger="trio_connmgr.regulator")  # 1,100 tracebacks
    with trio.fail_after(100_000):
        async with cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=0, max_round_failures=10_000, failure_window=1e9
        ) as mgr:
            for i in range(3):
                mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
            # 0.5 + 1 + ... + 16, then 30 s between failures: past the 1,100th.
            await trio.sleep(33_000)
            assert mgr.statistics().rounds.failures > 1100
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert gaps[:7] == [0.5, 1, 2, 4, 8, 16, regulator_module.BACKOFF_MAX]
    assert set(gaps[6:]) == {regulator_module.BACKOFF_MAX}


async def test_backing_off_lets_go_of_the_failed_round(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the failed round's frames held (its plan, its victims) is not kept
    # alive by the traceback for the length of the back-off.
    class Held:
        pass

    held: list[weakref.ref[Held]] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        plan = Held()  # a local of the failing frame, as a plan would be
        held.append(weakref.ref(plan))
        raise RuntimeError("injected regulator bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    caplog.set_level(logging.CRITICAL, logger="trio_connmgr.regulator")
    with trio.fail_after(60):
        async with cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=0, max_round_failures=10
        ) as mgr:
            for i in range(3):
                mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
            await trio.testing.wait_all_tasks_blocked()
            assert mgr.statistics().rounds.failures == 1  # now backing off
            gc.collect()
            assert held[0]() is None
