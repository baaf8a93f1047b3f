"""What a round reports when its world changes between planning and pruning (SPEC §8, §11)."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm
from trio_connmgr import _regulator
from trio_connmgr.testing import check_invariants, record_rounds


async def test_a_victim_protected_after_the_last_plan_counts_as_unprunable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every connection carries p, at its grant.min: a forced
    # round's victims are all below it. As the round plans them, the first
    # victim's peer is protected (here by the scorer, after the round has
    # classified it). The round skips it and prunes the other victim, below
    # p's grant.min, so it does not plan again: the protected connection is one
    # it could not prune, as is the one it kept for p's grant.min.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 10), grace_period=0, silence_period=1e6
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(3, 10)) as p,
    ):
        conns = [
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint) for i in range(3)
        ]
        calls = 0

        def scorer(stream: cm.Stream) -> float:
            nonlocal calls
            calls += 1
            if calls > len(conns):  # the round's second plan, the forced one
                mgr.protect(conns[0].peer, "keep")
            return 0.1 * stream.connection.id

        p.scorer = scorer
        for conn in conns:
            p.track_stream(conn)
        assert p.usage == p.grant.min == 3
        async with record_rounds(mgr) as rounds:
            pruned = await mgr.trim(force=True)
        assert pruned == [conns[1]]
        assert rounds.last is not None
        completed = rounds.last.completed
        assert (completed.count_before, completed.count_after) == (3, 2)
        assert completed.unprunable == 2
        check_invariants(mgr, last_round=rounds.last)


async def test_forced_victims_left_after_a_skip_count_when_no_plan_follows(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 connections, 1 above high: a (no streams, its peer protected) and b, c
    # carrying p at its grant.min; the regulator's own round can prune none.
    # A forced round: as its first plan is made, a's peer is unprotected, so
    # its forced plan takes a, then b below p's grant.min; as that plan is
    # made, a's peer is protected again. Applying it skips a, and leaves b for
    # a plan made again, which the round may not make here (no refills left).
    # It ends with all 3 connections: a protected, b and c kept for p's
    # grant.min, as the round reports.
    monkeypatch.setattr(_regulator, "REFILLS", 0)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=0, silence_period=1e6
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(2, 10)) as p,
        record_rounds(mgr) as rounds,
    ):
        mgr.protect("a", "keep")
        a, b, c = (
            mgr.track(name, direction="inbound", close=trio.lowlevel.checkpoint) for name in "abc"
        )
        p.track_stream(b)
        p.track_stream(c)
        await trio.testing.wait_all_tasks_blocked()
        assert rounds.last is not None
        assert rounds.last.completed.victims == 0
        calls = 0

        def scorer(stream: cm.Stream) -> float:
            nonlocal calls
            calls += 1
            if calls == 1:  # the round's first plan
                mgr.unprotect(a.peer, "keep")
            elif calls == 3:  # its second, the forced one
                mgr.protect(a.peer, "keep")
            return 0.1 * stream.connection.id

        p.scorer = scorer
        assert await mgr.trim(force=True) == []
        assert calls == 4
        completed = rounds.last.completed
        assert (completed.trigger, completed.forced) == ("force", True)
        assert (completed.count_before, completed.count_after) == (3, 3)
        assert completed.unprunable == 3
        check_invariants(mgr, last_round=rounds.last)
