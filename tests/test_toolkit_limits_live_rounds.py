"""Invariant 1 on rounds while sensing moves the limits (SPEC §12.1): a round is
judged by the high it started above and the low its last plan worked to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr import _regulator
from trio_connmgr.testing import check_invariants, record_rounds, wait_idle


def _closing_moves_share(mgr: cm.ConnectionManager, share: int) -> Callable[[], Awaitable[None]]:
    """A close() for tracked connections: the first one closed moves the share."""
    moves = [share]

    async def close() -> None:
        if moves:
            mgr._state.set_share(moves.pop(), "sensing")

    return close


@pytest.mark.parametrize("trim", [True, False])
async def test_a_round_is_judged_by_its_starting_high_and_its_planned_low(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, trim: bool
) -> None:
    # Limits 4/8, and a round that plans down to low=4: a trim() at 8
    # connections (= high), or the regulator's own at 10. As it applies (one
    # victim between two checkpoints), the first victim's close() lowers the
    # share to 6 (limits 3/6). The round keeps to its plan and leaves 4
    # connections: it started at or above high=8 and worked to low=4, which
    # invariant 1 allows, judged on its result or its bare event.
    monkeypatch.setattr(_regulator, "APPLY_CHUNK", 1)
    count = 8 if trim else 10
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(4, 8), grace_period=0, silence_period=1e6
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        close = _closing_moves_share(mgr, 6)
        for peer in range(count):
            mgr.track(peer, direction="inbound", close=close)
        if trim:
            await mgr.trim()
        await wait_idle(mgr)
        result = rounds.last
        assert result is not None
        assert len(rounds.rounds) == 1
        completed = result.completed
        assert (completed.count_before, completed.count_after) == (count, 4)
        assert (completed.high_before, completed.low_planned) == (8, 4)
        assert result.limits == cm.Limits(3, 6)
        check_invariants(mgr, last_round=result)
        check_invariants(mgr, last_round=completed)


async def test_a_round_that_sensing_stops_at_a_raised_low_meets_invariant_1(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Limits 4/8 at share 6 (3/6): the regulator's round at 8 connections plans
    # down to low=3; as it applies, the share goes back to 8 (limits 4/8) and
    # the round stops at the new low=4, above the low it planned for.
    monkeypatch.setattr(_regulator, "APPLY_CHUNK", 1)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(4, 8), grace_period=0, silence_period=1e6
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        mgr._state.set_share(6, "sensing")
        close = _closing_moves_share(mgr, 8)
        for peer in range(8):
            mgr.track(peer, direction="inbound", close=close)
        await wait_idle(mgr)
        result = rounds.last
        assert result is not None
        completed = result.completed
        assert (completed.count_before, completed.count_after) == (8, 4)
        assert (completed.high_before, completed.low_planned) == (6, 3)
        assert result.limits == cm.Limits(4, 8)
        check_invariants(mgr, last_round=result)
