"""What a round reports when its world changes between planning and pruning (SPEC §8, §11)."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm
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
