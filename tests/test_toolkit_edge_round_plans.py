"""check_invariants on a round that plans more than once (SPEC §8, §12.4).

A round that skips a victim as it applies (its peer protected, a lock taken
meanwhile) plans again for the rest. A burst-only connection that became
prunable since the first plan (a burst closed, a protection lifted) goes first
in the plan made again, but after the first plan's victims: each plan puts
burst-only connections first, and ``RoundCompleted.replan_ranks`` tells the
checker where each plan made again begins.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest
import trio

import trio_connmgr as cm
from trio_connmgr._core._events import RoundCompleted
from trio_connmgr.testing import (
    RoundResult,
    assert_open,
    assert_pruned,
    check_invariants,
    force_round,
    open_fake_connections,
)


def scorer(stream: cm.Stream) -> float:
    """The stream's ``"score"``; runs its ``"on_score"`` action first, once."""
    action: Callable[[], None] | None = stream.metadata.pop("on_score", None)
    if action is not None:
        action()
    return float(stream.metadata["score"])


async def test_a_burst_only_connection_of_a_plan_made_again_is_no_invariant_4_violation(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=4, high=6), grace_period=0) as mgr,
        open_fake_connections() as fakes,
        mgr.enroll("/p", quota=cm.Quota(0, 10), scorer=scorer) as p,
    ):
        low_1, low_2, bursty, other, *rest = await fakes.open_many(mgr, 6)
        for conn, score in ((low_1, 0.1), (low_2, 0.1), (other, 0.9), *((c, 0.9) for c in rest)):
            p.track_stream(conn).metadata["score"] = score
        async with p.burst("lookup") as burst:
            p.track_stream(bursty, burst=burst).metadata["score"] = 0.9
        # A burst-only connection the first plan cannot take: its peer is protected.
        mgr.protect(bursty.peer, "keep")

        def meanwhile() -> None:
            # Once the first plan has classified them both: `bursty` becomes
            # prunable, and `low_1`, one of the plan's victims, is kept.
            mgr.unprotect(bursty.peer, "keep")
            mgr.protect(low_1.peer, "keep")

        next(iter(other.streams)).metadata["on_score"] = meanwhile
        result = await force_round(mgr)

        # The first plan took low_2 (and low_1, skipped), the second `bursty`.
        assert_open(low_1)
        assert_pruned(low_2, phase="tally")
        assert_pruned(bursty, phase="burst")
        assert [reason.rank for reason in result.reasons] == [1, 3]
        check_invariants(mgr, last_round=result)
        assert result.completed.replan_ranks == (3,)


async def test_burst_only_victims_after_others_within_one_plan_are_still_reported(
    autojump_clock: object,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=4), grace_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        a, b, c = await fakes.open_many(mgr, 3)
        reasons = (
            cm.PruneReason(cm.Phase.IDLE, None, 0.0, 1, "trim", False),
            cm.PruneReason(cm.Phase.IDLE, None, 0.0, 3, "trim", False),
            cm.PruneReason(cm.Phase.BURST, "/kad", 0.0, 4, "trim", False),
        )
        for conn, reason in zip((a, b, c), reasons, strict=True):
            mgr._prune(conn, reason)
        completed = RoundCompleted(
            trio.current_time(),
            1,
            "trim",
            False,
            4,
            1,
            3,
            (("burst", 1), ("idle", 2)),
            0.0,
            0,
            replan_ranks=(3,),
        )
        # The second plan (ranks 3 on) ranked a burst-only victim after another one.
        with pytest.raises(AssertionError, match=r"\(rank 4\) after another victim \(rank 3\)"):
            check_invariants(mgr, last_round=RoundResult((a, b, c), completed))
        # Had the second plan begun at rank 4, each plan would be in order.
        check_invariants(
            mgr,
            last_round=RoundResult((a, b, c), attrs.evolve(completed, replan_ranks=(4,))),
        )
