"""check_invariants judges the grace period at the moment each victim was pruned."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from helpers import hooked_trio

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr._core import _planner
from trio_connmgr.testing import check_invariants, force_round, open_fake_connections


def _ignore_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the regulator plan and apply as if no connection were in its grace period."""

    @contextlib.contextmanager
    def without_grace(state: Any) -> Iterator[None]:
        saved, state.grace_period = state.grace_period, 0.0
        try:
            yield
        finally:
            state.grace_period = saved

    def plan_round(state: Any, now: float, **kwargs: Any) -> Generator[None, None, Any]:
        with without_grace(state):
            return _planner.plan_now(state, now, **kwargs)
        yield  # pragma: no cover - a generator, like the real one

    def exclusion(state: Any, conn: cm.Connection, now: float) -> str | None:
        with without_grace(state):
            return _planner.exclusion(state, conn, now)

    monkeypatch.setattr(regulator_module, "plan_round", plan_round)
    monkeypatch.setattr(regulator_module, "exclusion", exclusion)


async def test_a_victim_pruned_in_its_grace_period_is_reported_after_a_long_round(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round prunes its first chunk of victims 1s after they opened (grace 30s),
    # then the clock moves 60s before its next chunk: by the round's end every
    # victim is long past its grace period, but the first ones were not when pruned.
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=8), grace_period=30) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 6)
        await trio.sleep(1)

        async def jump_once_pruning() -> None:
            if any(conn.closed for conn in conns) and trio.current_time() < 60:
                autojump_clock.jump(60)

        _ignore_grace(monkeypatch)
        monkeypatch.setattr(regulator_module, "APPLY_CHUNK", 2)
        monkeypatch.setattr(regulator_module, "trio", hooked_trio(jump_once_pruning))
        result = await force_round(mgr)
        monkeypatch.undo()
        assert len(result.pruned) == 5
        assert result.completed.time > 60
        with pytest.raises(AssertionError) as info:
            check_invariants(mgr, last_round=result)
        message = str(info.value)
        first, second, *later = result.pruned
        for conn in (first, second):
            assert (
                f"connection #{conn.id} was pruned at t=1.000, 1.000s after opening, within "
                "its grace period of 30.0s (invariant 2)"
            ) in message
        for conn in later:
            assert f"connection #{conn.id} was pruned at" not in message


async def test_a_victim_pruned_the_instant_its_grace_period_ends_is_not_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Far along the clock, ``now - opened_at`` loses precision: the round rightly
    # prunes at ``opened_at + grace_period`` exactly, where that difference comes
    # out a few nanoseconds short of the grace period.
    autojump_clock.jump(1e8)
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=8), grace_period=0.1) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 3)
        opened_at = conns[0].opened_at
        autojump_clock.jump(opened_at + 0.1 - trio.current_time())
        assert trio.current_time() == opened_at + 0.1
        assert trio.current_time() - opened_at < 0.1 - 1e-9
        result = await force_round(mgr)
        assert len(result.pruned) == 2
        check_invariants(mgr, last_round=result)
