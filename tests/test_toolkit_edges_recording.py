"""record_rounds around a round that raised as it pruned."""

from __future__ import annotations

import pytest
from helpers import Interrupt, InterruptingFile, hooked_trio

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr.testing import (
    advance,
    check_invariants,
    force_round,
    open_fake_connections,
    record_rounds,
)


async def test_rounds_after_a_round_interrupted_as_it_pruned_are_recorded(
    autojump_clock: object,
) -> None:
    trace = InterruptingFile('"connection_pruned"')
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=2, high=20), grace_period=0, trace=trace
        ) as mgr,
        open_fake_connections() as fakes,
    ):
        await fakes.open_many(mgr, 8)
        # The trace file raises what must not be caught as the first victim is
        # pruned: the trim() round stops there, unrecorded, and the manager goes on.
        with pytest.raises(Interrupt):
            await mgr.trim()
        assert mgr.statistics().rounds.count == 0
        assert mgr.statistics().connections == 7
        result = await force_round(mgr)
        assert result.completed.number == 1
        assert len(result.pruned) == 5
        check_invariants(mgr, last_round=result)


async def test_a_round_that_raised_as_it_pruned_leaves_its_victims_out_of_the_next(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=2, high=6), grace_period=0, silence_period=0
        ) as mgr,
        open_fake_connections() as fakes,
        record_rounds(mgr) as rounds,
    ):
        failed = []

        async def fail_once() -> None:
            if not failed:
                failed.append(True)
                raise RuntimeError("injected")

        # The regulator's round raises after pruning its first two victims; it
        # runs again after backing off and prunes the rest.
        monkeypatch.setattr(regulator_module, "APPLY_CHUNK", 2)
        monkeypatch.setattr(regulator_module, "trio", hooked_trio(fail_once))
        conns = await fakes.open_many(mgr, 9)
        await advance(1)
        monkeypatch.undo()
        assert failed
        assert sum(conn.closed for conn in conns) == 7
        assert mgr.statistics().rounds.failures == 1
        # Only the round that completed, with its own victims (ranked from 1).
        (result,) = rounds.rounds
        assert len(result.pruned) == result.completed.victims == 5
        assert [reason.rank for reason in result.reasons] == [1, 2, 3, 4, 5]
        check_invariants(mgr, last_round=result, allow_round_failures=True)
