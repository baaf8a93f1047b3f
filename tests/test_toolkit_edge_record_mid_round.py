"""record_rounds entered while a round is running (it yields between chunks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing
from helpers import hooked_trio

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr._core._planner import plan_round
from trio_connmgr.testing import check_invariants, open_fake_connections, record_rounds


async def test_a_round_already_running_when_recording_begins_is_not_recorded(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=20), grace_period=0) as mgr,
        open_fake_connections() as fakes,
        AsyncExitStack() as stack,
    ):
        await fakes.open_many(mgr, 8)
        recorders: list[Any] = []

        async def start_recording() -> None:
            if not recorders:
                recorders.append(await stack.enter_async_context(record_rounds(mgr)))

        # The round prunes 3 victims, then yields: recording begins there.
        monkeypatch.setattr(regulator_module, "APPLY_CHUNK", 3)
        monkeypatch.setattr(regulator_module, "trio", hooked_trio(start_recording))
        await mgr.trim()
        monkeypatch.undo()
        (recorder,) = recorders
        assert recorder.rounds == []  # not 3 of its 6 victims as if they were all
        check_invariants(mgr)
        await mgr.trim()
        await trio.testing.wait_all_tasks_blocked()
        assert len(recorder.rounds) == 1
        check_invariants(mgr, last_round=recorder.last)


async def test_a_round_that_was_only_planning_when_recording_began_is_recorded(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trim() round is cancelled while it plans (which leaves no trace) just as
    # recording begins; the next round runs whole while recording: it is recorded.
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=20), grace_period=0) as mgr,
        open_fake_connections() as fakes,
        trio.open_nursery() as nursery,
    ):
        await fakes.open_many(mgr, 8)
        planning = trio.Event()
        defaults = plan_round.__kwdefaults__
        assert defaults is not None
        monkeypatch.setitem(defaults, "chunk", 2)  # planning yields every 2 connections

        async def cancelled_trim(scope: trio.CancelScope) -> None:
            with scope:
                await mgr.trim()

        scope = trio.CancelScope()
        monkeypatch.setattr(regulator_module, "trio", hooked_trio(_set(planning)))
        nursery.start_soon(cancelled_trim, scope)
        await planning.wait()
        async with record_rounds(mgr) as rounds:
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            monkeypatch.undo()
            assert scope.cancelled_caught
            assert mgr.statistics().rounds.count == 0
            pruned = await mgr.trim()
        assert len(pruned) == 6
        assert rounds.last is not None
        assert rounds.last.pruned == tuple(pruned)
        check_invariants(mgr, last_round=rounds.last)


def _set(event: trio.Event) -> Callable[[], Awaitable[None]]:
    async def set_it() -> None:
        event.set()

    return set_it
