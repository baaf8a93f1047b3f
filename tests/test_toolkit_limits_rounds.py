"""Invariant 1 when sensing moves the limits while a round runs (SPEC §12.1):
check_invariants judges a round by the high it started above and the low its
last plan worked to, as its RoundCompleted event says."""

from __future__ import annotations

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr import RoundCompleted
from trio_connmgr.testing import RoundResult, check_invariants


def completed(
    count_before: int,
    count_after: int,
    *,
    high_before: int | None = None,
    low_planned: int | None = None,
) -> RoundCompleted:
    # (No victim here: the connections it took are not what is checked.)
    return RoundCompleted(
        trio.current_time(),
        1,
        "trim",
        False,
        count_before,
        count_after,
        0,
        (),
        0.0,
        0,
        high_before=high_before,
        low_planned=low_planned,
    )


async def test_a_round_that_started_at_high_is_not_judged_by_a_high_lowered_since() -> None:
    # Limits 4/8: a trim() at 8 connections planned down to low=4; sensing
    # lowered the limits to 3/6 as it applied. It did not start above high.
    async with cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr:
        mgr._state.set_share(6, "sensing")
        event = completed(8, 4, high_before=8, low_planned=4)
        check_invariants(mgr, last_round=RoundResult((), event, cm.Limits(3, 6)))
        check_invariants(mgr, last_round=event)


async def test_a_round_above_high_is_judged_by_the_low_it_planned_for() -> None:
    # Started at 10 > high=8 and pruned to the low=4 it planned for, while
    # sensing lowered the limits to 3/6: 4 is within invariant 1; 5 is not.
    async with cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr:
        mgr._state.set_share(6, "sensing")
        check_invariants(
            mgr,
            last_round=RoundResult(
                (), completed(10, 4, high_before=8, low_planned=4), cm.Limits(3, 6)
            ),
        )
        with pytest.raises(
            AssertionError,
            match=r"started at count 10 > high=8 and left 5 connections, above "
            r"max\(low=4, unprunable=0\) \(invariant 1\)",
        ):
            check_invariants(
                mgr,
                last_round=RoundResult(
                    (), completed(10, 5, high_before=8, low_planned=4), cm.Limits(3, 6)
                ),
            )


async def test_a_round_that_started_above_a_high_raised_since_is_still_checked() -> None:
    # Started at 7 > high=6 (limits 3/6), and sensing raised them to 4/8 since:
    # leaving 5 connections is above the low of 4 it stopped at.
    async with cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr:
        with pytest.raises(
            AssertionError,
            match=r"started at count 7 > high=6 and left 5 connections, above "
            r"max\(low=4, unprunable=0\) \(invariant 1\)",
        ):
            check_invariants(
                mgr,
                last_round=RoundResult(
                    (), completed(7, 5, high_before=6, low_planned=3), cm.Limits(4, 8)
                ),
            )
        # Sensing raised low as it applied: the round stops there (4), not at 3.
        check_invariants(
            mgr,
            last_round=RoundResult(
                (), completed(7, 4, high_before=6, low_planned=3), cm.Limits(4, 8)
            ),
        )


async def test_a_round_event_without_its_starting_limits_is_judged_by_the_limits_at_its_end() -> (
    None
):
    # An event of an earlier release (a replayed trace) carries neither field:
    # the limits as the round completed stand in for them.
    event = completed(8, 4)
    assert (event.high_before, event.low_planned) == (None, None)
    async with cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr:
        check_invariants(mgr, last_round=RoundResult((), event, cm.Limits(4, 8)))
        with pytest.raises(AssertionError, match=r"count 8 > high=6 .* max\(low=3, "):
            check_invariants(mgr, last_round=RoundResult((), event, cm.Limits(3, 6)))
