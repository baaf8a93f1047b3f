"""Rounds whose world changes while they run, and ties the planner must not leave
to chance (SPEC §8)."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing
from test_planner import Core, check_plan, finish_plan, victim_ids
from test_regulator import ChunkedRound, noop_close

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr._config import Direction
from trio_connmgr._core._planner import Phase, plan_round
from trio_connmgr._core._scoring import tally

INBOUND, OUTBOUND = Direction.INBOUND, Direction.OUTBOUND


async def test_connections_closing_while_a_round_plans_do_not_take_it_below_low() -> None:
    # The round plans (over three chunks) 90 victims to bring the count down to
    # low. Meanwhile 5 connections it did not choose close on their own: the
    # round needs 85 victims now, and pruning all 90 would leave 5 below low.
    setup = ChunkedRound(2)
    n = setup.n
    async with (
        setup.manager() as mgr,
        mgr.enroll("p", quota=cm.Quota(0, n), scorer=setup.scorer) as p,
    ):
        conns = setup.connections(mgr)
        for i, conn in enumerate(conns):
            p.track_stream(conn).metadata["score"] = 0.1 if i < 200 else 0.9
        leaving = conns[-5:]

        async def leave() -> None:
            await setup.scored.wait()
            for conn in leaving:
                conn.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leave)
            pruned = await mgr.trim()
        assert all(conn.close_reason == "released" for conn in leaving)
        assert len(pruned) == 85
        assert mgr.statistics().connections == mgr.limits.low


async def test_connections_closing_while_a_round_prunes_do_not_take_it_below_low() -> None:
    # As above, but the connections close while the round applies its plan (it
    # checkpoints after each chunk of victims): the first victim's close(),
    # awaited in a task of the manager's within two of those checkpoints,
    # releases them.
    victims = 3 * regulator_module.APPLY_CHUNK + 44
    n = victims + 100
    conns: list[cm.Connection] = []

    async def close_and_release_others() -> None:
        for conn in conns[-5:]:
            conn.release()

    async with (
        cm.open_connection_manager(
            limits=cm.Limits(n - victims, n + 10), grace_period=0, silence_period=1e6
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, n), scorer=lambda s: s.metadata["score"]) as p,
    ):
        for i in range(n):
            close = close_and_release_others if i == 0 else noop_close
            conn = mgr.track(i, direction="inbound", close=close)
            p.track_stream(conn).metadata["score"] = 0.0 if i == 0 else 0.1 if i < n - 5 else 0.9
            conns.append(conn)
        pruned = await mgr.trim()
        assert pruned[0] is conns[0]
        assert all(conn.close_reason == "released" for conn in conns[-5:])
        assert len(pruned) == victims - 5
        assert mgr.statistics().connections == mgr.limits.low


def test_a_protocol_that_leaves_while_a_round_plans_keeps_nothing_for_its_grant_min() -> None:
    # The round classifies p's connections (the cheapest), then yields; p leaves
    # meanwhile (its streams close). A protocol that is gone has no grant.min to
    # keep: its connections stay the round's first victims, not "blocked".
    core = Core(15, 20)
    p = core.member("p")
    q = core.member("q")
    cheap = [core.stream(p, core.conn(), score=0.1).connection for _ in range(10)]
    for _ in range(10):
        core.stream(q, core.conn(), score=0.9)
    gen = plan_round(core.state, core.now, trigger="test", chunk=10)
    next(gen)  # p's connections are classified
    core.state.leave(p)
    plan = finish_plan(gen)
    assert plan.min_blocked == ()
    # (Equal tallies: newest first.)
    assert victim_ids(plan) == [c.id for c in reversed(cheap[5:])]


def test_offender_phase_breaks_ties_like_the_tally_phase() -> None:
    # Every connection carries the same three scores (0.1 + 0.2 + 0.3), summed in
    # the order of its set of streams: the sums differ in their last bits from
    # one connection to the next. They are equal tallies all the same, and the
    # offender phase takes them in the tally phase's order of ties (inbound
    # before outbound, newest first), not by that noise.
    core = Core(1, 1000)
    a = core.member("a", cm.Quota(0, 2))
    b = core.member("b")
    c = core.member("c")
    conns = []
    for i in range(200):
        conn = core.conn(direction=OUTBOUND if i % 3 else INBOUND)
        for member, score in ((a, 0.1), (b, 0.2), (c, 0.3)):
            core.stream(member, conn, score=score)
        conns.append(conn)
    assert len({tally(conn) for conn in conns}) > 1, "every sum came out the same"
    plan = core.plan(target=10)
    assert [v.reason.phase for v in plan.victims] == [Phase.OFFENDER] * 10
    inbound_newest_first = [conn.id for conn in reversed(conns) if conn.direction is INBOUND]
    assert victim_ids(plan) == inbound_newest_first[:10]
    check_plan(core.state, plan, core.now, forced=False, burst_only={}, target=10)


async def test_a_round_left_short_by_grace_runs_again_once_as_grace_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A round left short by connections in their grace period waits for
    # opened_at + grace_period (here 0.7 + 0.1 == 0.7999999999999999), and the
    # connections must be out of their grace period then: were they still in it
    # (0.7999999999999999 - 0.7 < 0.1), the regulator would run round after
    # round at that one instant, which the clock never leaves.
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 2), grace_period=0.1, silence_period=10
    ) as mgr:
        await trio.sleep(0.7)
        for i in range(3):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().rounds.count == 1  # at 0.7: all in their grace period
        await trio.sleep(0.1)
        for _ in range(100):
            await trio.lowlevel.checkpoint()
        stats = mgr.statistics()
        assert stats.rounds.count == 2
        assert stats.connections == 1
