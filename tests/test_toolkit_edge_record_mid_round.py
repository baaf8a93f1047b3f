"""record_rounds entered while a round is running (it yields between chunks)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr.testing import check_invariants, open_fake_connections, record_rounds


class _Lowlevel:
    """``trio.lowlevel`` as the regulator sees it: ``before`` runs at its checkpoints."""

    def __init__(self, before: Any) -> None:
        self._before = before

    async def checkpoint(self) -> None:
        await self._before()
        await trio.lowlevel.checkpoint()

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)


class _Trio:
    def __init__(self, lowlevel: _Lowlevel) -> None:
        self.lowlevel = lowlevel

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


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
        monkeypatch.setattr(regulator_module, "trio", _Trio(_Lowlevel(start_recording)))
        await mgr.trim()
        monkeypatch.undo()
        (recorder,) = recorders
        assert recorder.rounds == []  # not 3 of its 6 victims as if they were all
        check_invariants(mgr)
        await mgr.trim()
        await trio.testing.wait_all_tasks_blocked()
        assert len(recorder.rounds) == 1
        check_invariants(mgr, last_round=recorder.last)
