"""Rounds as grants move and as the manager closes (SPEC §4, §8): an enrollment
whose arrival lowers the others' grant.mins lets a round left short go on, and a
trim() overtaken by the manager's close raises ManagerClosed."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing
from helpers import hooked_trio

import trio_connmgr as cm
from trio_connmgr import _regulator as regulator_module
from trio_connmgr._core import _planner as planner_module
from trio_connmgr.testing import record_rounds


async def test_an_enrollment_lowering_the_others_grant_mins_lets_a_round_left_short_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # p reserves the whole share (grant.min = G = 10) and carries 10 of the 11
    # connections; the 11th is protected. The round at t=0 prunes nothing and
    # is left short. At t=1, q's arrival scales p's grant.min down to 5: five
    # of p's connections can go at once, not after the 60 s a round left short
    # otherwise waits.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(5, 10), grace_period=0, silence_period=60
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota.share(1.0, 1.0)) as p,
        record_rounds(mgr) as rounds,
    ):
        mgr.protect("kept", "test")
        mgr.track("kept", direction="outbound", close=trio.lowlevel.checkpoint)
        for i in range(10):
            p.track_stream(mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint))
        await trio.sleep(1)
        assert [(r.completed.time, r.completed.victims) for r in rounds.rounds] == [(0.0, 0)]
        async with mgr.enroll("q", quota=cm.Quota.share(1.0, 1.0)):
            assert p.grant.min == 5
            await trio.sleep(1)
            done = [(r.completed.time, r.completed.victims) for r in rounds.rounds]
            assert done == [(0.0, 0), (1.0, 5)]
            assert (p.usage, mgr.statistics().connections) == (5, 6)


async def trim_into(outcome: list[object], mgr: cm.ConnectionManager) -> None:
    """Append what ``mgr.trim()`` returned, or the ManagerClosed it raised."""
    try:
        outcome.append(await mgr.trim())
    except cm.ManagerClosed as exc:
        outcome.append(exc)


async def test_a_trim_waiting_for_a_round_under_way_as_the_manager_closes_raises_manager_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A trim() from a task outside the manager waits for the round under way
    # (here: the round lock held by another task); the manager closes meanwhile.
    # It then raises ManagerClosed, as a trim() called after the close does,
    # rather than run (and record) a round over the closed manager.
    outcome: list[object] = []
    release = trio.Event()

    async def hold(lock: trio.Lock) -> None:
        async with lock:
            await release.wait()

    async with trio.open_nursery() as outer:
        async with cm.open_connection_manager(limits=cm.Limits(1, 10), grace_period=0) as mgr:
            for i in range(3):
                mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
            outer.start_soon(hold, mgr._regulator._round_lock)
            await trio.testing.wait_all_tasks_blocked()
            outer.start_soon(trim_into, outcome, mgr)
            await trio.testing.wait_all_tasks_blocked()
            assert mgr._regulator._round_lock.statistics().tasks_waiting == 1
        release.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], cm.ManagerClosed)
    assert mgr.statistics().rounds.count == 0


async def test_a_trim_planning_as_the_manager_closes_raises_manager_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The manager closes while a trim() from a task outside it plans its round
    # (at the planner's first checkpoint, past its first chunk of connections):
    # the round has changed nothing yet, so it leaves no trace and trim()
    # raises ManagerClosed.
    planning = trio.Event()
    closed = trio.Event()

    async def before() -> None:
        if not planning.is_set():
            planning.set()
            await closed.wait()

    outcome: list[object] = []

    async with trio.open_nursery() as outer:
        async with cm.open_connection_manager(limits=cm.Limits(1, 2000), grace_period=0) as mgr:
            for i in range(planner_module.CHUNK + 1):
                mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
            monkeypatch.setattr(regulator_module, "trio", hooked_trio(before))
            outer.start_soon(trim_into, outcome, mgr)
            await planning.wait()
        closed.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], cm.ManagerClosed)
    assert mgr.statistics().rounds.count == 0
