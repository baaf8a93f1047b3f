"""A trigger whose dial_reported raises keeps the dial from no one else."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import DialRecorder

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing
from trio_connmgr.triggers import Trigger


async def test_a_raising_dial_hook_still_lets_sensing_and_other_triggers_see_the_dial(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Raises(Trigger):
        name = "raises"

        def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
            raise RuntimeError("hook bug")

    fake = FakeSensor()
    recorder = DialRecorder()
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 10), triggers=[Raises(), recorder], sensing=Sensing([fake])
    ) as mgr:
        with pytest.raises(RuntimeError, match="hook bug"):
            mgr.report_dial("a", ok=False, latency=0.5)
        assert recorder.dials == [(False, 0.5)]
        assert [(ok, latency) for ok, latency, _ in fake.dials] == [(False, 0.5)]
