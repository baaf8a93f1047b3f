"""A trigger keeps state: it serves one open manager at a time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.triggers import Interval, Spike

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
