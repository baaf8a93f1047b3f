"""A round's plan when a scorer closes a connection or a stream as it scores (SPEC §8)."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing
from test_planner import Core, check_plan, finish_plan, metadata_scorer, victim_ids

import trio_connmgr as cm
from trio_connmgr._core._planner import plan_round
from trio_connmgr.testing import check_invariants, record_rounds


def test_a_connection_its_own_scorer_releases_leaves_the_others_candidates() -> None:
    # The scorer of the middle connection's stream releases that connection as
    # the round scores it: it is no victim and no candidate, and the two other
    # connections are still both candidates (one above low).
    core = Core(1, 10)
    p = core.member("p")
    cheap = core.conn()
    core.stream(p, cheap, score=0.1)
    gone = core.conn()
    core.stream(p, gone, score=0.0).metadata["release"] = True
    dear = core.conn()
    core.stream(p, dear, score=0.3)

    def scorer(stream: cm.Stream) -> float:
        if stream.metadata.get("release"):
            stream.connection.release()
        return metadata_scorer(stream)

    p.scorer = scorer
    plan = core.plan()
    assert gone.closed
    assert victim_ids(plan) == [cheap.id]
    assert plan.target == 1
    assert plan.candidates == 2
    check_plan(core.state, plan, core.now, forced=False, burst_only={})


def test_a_stream_closed_after_its_connection_was_classified_blocks_no_candidate() -> None:
    # The scorer of the second connection closes the first one's stream (a
    # stale one), after the round classified the first with p. p has no
    # grant.min to keep: every connection above low is a victim all the same.
    core = Core(1, 10)
    p = core.member("p")
    assert p.grant.min == 0
    kept = core.conn()
    core.state.protect(kept.peer, "keep")
    conns = [core.conn() for _ in range(4)]
    streams = [core.stream(p, conn, score=0.1 * (i + 1)) for i, conn in enumerate(conns)]
    streams[1].metadata["close"] = streams[0]

    def scorer(stream: cm.Stream) -> float:
        stale = stream.metadata.get("close")
        if stale is not None:
            stale.close()
        return metadata_scorer(stream)

    p.scorer = scorer
    plan = core.plan()
    assert streams[0].closed
    assert victim_ids(plan) == [conn.id for conn in conns]
    assert plan.min_blocked == ()
    assert plan.shortfall == 0


async def test_a_round_reaches_low_when_a_scorer_closes_a_stream_it_classified(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As above, on a live manager: the round leaves only the protected connection.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 10), grace_period=0, silence_period=1e6
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(1, 10)) as p,
    ):
        mgr.track("kept", direction="inbound", close=trio.lowlevel.checkpoint)
        mgr.protect("kept", "keep")
        others = [
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint) for i in range(4)
        ]
        streams = [p.track_stream(conn) for conn in others]
        # p keeps one connection for its grant.min of 1.
        assert p.grant.min == 1
        stale = streams[0]

        def scorer(stream: cm.Stream) -> float:
            if stream is streams[1]:
                stale.close()
            return 0.5

        p.scorer = scorer
        await trio.sleep(1)
        async with record_rounds(mgr) as rounds:
            pruned = await mgr.trim()
        assert stale.closed
        assert len(pruned) == 3
        assert p.usage == 1
        check_invariants(mgr, last_round=rounds.last)


def test_a_round_wants_no_victims_once_enough_connections_closed_while_it_planned() -> None:
    # Two connections above low as the round starts; three close while it
    # classifies the others: it wants no victim (not minus one).
    core = Core(3, 10)
    conns = [core.conn() for _ in range(5)]
    gen = plan_round(core.state, core.now, trigger="test", chunk=1)
    next(gen)  # the first connection is classified
    for conn in conns[1:4]:
        conn.release()
    plan = finish_plan(gen)
    assert plan.target == 0
    assert plan.connections == []
    assert plan.shortfall == 0
