"""The round planner in detail (SPEC §8, §12): what a plan reports besides its
victims, and the edges of exclusions, offender accounting, grant.min, ties and
forced rounds."""

from __future__ import annotations

import pytest
from test_planner import (
    Core,
    check_plan,
    finish_plan,
    metadata_scorer,
    stale_closing_scorer,
    victim_ids,
)

import trio_connmgr as cm
from trio_connmgr._core import _planner
from trio_connmgr._core._planner import Phase, Plan, plan_round
from trio_connmgr._core._state import EnrollmentState


def test_offender_usage_counts_connections_that_cannot_be_pruned() -> None:
    # Usage is every connection a protocol has a stream on: protected and
    # locked ones make it an offender too, though only its prunable ones go.
    core = Core(1, 20)
    dht = core.member("dht", cm.Quota(0, 2))
    other = core.member("other")
    for _ in range(2):
        core.stream(dht, core.conn(peer="friend"), score=0.0)
    core.state.protect("friend", "tag")
    core.lock(core.stream(dht, core.conn(), score=0.0))
    prunable = core.conn()
    core.stream(dht, prunable, score=0.9)
    cheap = core.conn()
    core.stream(other, cheap, score=0.1)
    assert dht.usage == 4
    plan = core.plan(target=1)
    assert [(v.connection, v.reason.phase, v.reason.protocol) for v in plan.victims] == [
        (prunable, Phase.OFFENDER, "dht")
    ]
    check_plan(core.state, plan, core.now, forced=False, burst_only={}, target=1)


def test_grant_min_holds_for_a_protocol_whose_streams_all_score_zero() -> None:
    core = Core(1, 20)
    reserved = core.member("reserved", cm.Quota(1, 10))
    other = core.member("other")
    kept = core.conn()
    core.stream(reserved, kept, score=0.0)
    core.stream(reserved, kept, score=0.0)
    dear = core.conn()
    core.stream(other, dear, score=0.9)
    plan = core.plan(target=1)
    assert victim_ids(plan) == [dear.id]
    assert plan.min_blocked == (kept,)
    check_plan(core.state, plan, core.now, forced=False, burst_only={}, target=1)


def test_grace_ends_is_the_earliest_end_of_a_grace_period_locked_or_not() -> None:
    core = Core(1, 20, grace=30.0)
    p = core.member("p")
    # Locked connections in grace: the plan reports when the first one's ends
    # (from then on it is revocable under pressure).
    for at in (90.0, 85.0):
        core.lock(core.stream(p, core.conn(at=at)))
    # A locked one whose grace ends right now is out of its grace period.
    core.lock(core.stream(p, core.conn(at=70.0)))
    core.stream(p, core.conn(at=95.0))
    assert core.plan().grace_ends == 115.0
    # None left in grace: nothing to wait for.
    core.now = 200.0
    assert core.plan().grace_ends == float("inf")


def test_tallies_exactly_tie_apart_are_tied_whatever_the_chunk_size() -> None:
    core = Core(1, 10)
    p = core.member("p")
    older = core.conn(at=10.0)
    core.stream(p, older, score=0.0)
    newer = core.conn(at=20.0)
    core.stream(p, newer, score=_planner.TIE)
    # Within the tolerance (TIE, the largest tally being below 1): tied, and the
    # tie rule takes the newer first although its tally is higher.
    for chunk in (1, 2, _planner.CHUNK):
        plan = core.plan(target=2, chunk=chunk)
        assert victim_ids(plan) == [newer.id, older.id], chunk


def test_a_connection_closed_while_the_round_plans_is_never_a_victim() -> None:
    core = Core(1, 10)
    p = core.member("p")
    first = core.conn()
    core.stream(p, first, score=0.9)
    gone = core.conn()  # idle: the first victim otherwise
    kept = core.conn()
    core.stream(p, kept, score=0.5)
    gen = plan_round(core.state, core.now, trigger="test", chunk=1)
    next(gen)  # the first connection classified; the others not yet
    gone.release()
    plan = finish_plan(gen)
    assert gone.closed
    # Two connections are left, one above low: one victim.
    assert victim_ids(plan) == [kept.id]
    assert plan.target == 1
    assert plan.candidates == 2


def test_candidates_count_a_burst_only_connection_once() -> None:
    core = Core(1, 20)
    dht = core.member("dht")
    burst = core.burst(dht)
    leftover = core.conn()
    core.stream(dht, leftover, score=0.9, burst=burst)
    core.state.close_burst(burst)
    core.conn()  # idle
    core.stream(dht, core.conn(), score=0.1)
    core.conn(peer="friend")
    core.state.protect("friend", "tag")
    plan = core.plan(target=1)
    assert plan.victims[0].connection is leftover
    assert plan.victims[0].reason.phase is Phase.BURST
    assert plan.candidates == 3
    assert plan.excluded == {"protected": 1}


def offender_holding_a_reserved_protocol(core: Core) -> tuple[cm.Connection, cm.Connection]:
    """An offending protocol on two connections; the cheaper one also holds the
    only connection of a protocol with a grant.min of 1."""
    offender = core.member("offender", cm.Quota(0, 1))
    reserved = core.member("reserved", cm.Quota(1, 10))
    both = core.conn()
    core.stream(offender, both, score=0.1)
    core.stream(reserved, both, score=0.1)
    alone = core.conn()
    core.stream(offender, alone, score=0.9)
    return both, alone


def test_a_forced_round_takes_a_candidate_blocked_in_two_phases_once() -> None:
    # Blocked by the grant.min in the offender phase and again in the tally phase.
    core = Core(1, 20)
    both, alone = offender_holding_a_reserved_protocol(core)
    plan = core.plan(target=2)
    assert victim_ids(plan) == [alone.id]
    assert plan.victims[0].reason.phase is Phase.OFFENDER
    forced = core.plan(target=3, forced=True)
    assert victim_ids(forced) == [alone.id, both.id]
    assert [v.reason.forced for v in forced.victims] == [False, True]
    assert forced.shortfall == 1
    check_plan(core.state, forced, core.now, forced=True, burst_only={}, target=3)


def test_min_blocked_leaves_out_what_a_forced_round_took() -> None:
    core = Core(1, 20)
    both, _ = offender_holding_a_reserved_protocol(core)
    assert core.plan(target=2).min_blocked == (both,)
    forced = core.plan(target=2, forced=True)
    assert both in forced.connections
    assert forced.min_blocked == ()


def test_a_connection_a_scorer_releases_after_it_was_classified_is_never_a_victim() -> None:
    core = Core(1, 10)
    reserved = core.member("reserved", cm.Quota(1, 10))
    other = core.member("other")
    gone = core.conn()
    core.stream(reserved, gone, score=0.0)  # the first victim otherwise
    cheap = core.conn()
    core.stream(reserved, cheap, score=0.1)
    dear = core.conn()
    core.stream(reserved, dear, score=0.9)
    last = core.conn()
    core.stream(other, last, score=0.5).metadata["release"] = gone

    def scorer(stream: cm.Stream) -> float:
        if "release" in stream.metadata:
            stream.metadata["release"].release()
        return metadata_scorer(stream)

    other.scorer = scorer
    plan = core.plan()
    assert gone.closed
    # Three connections are left, two above low.
    assert victim_ids(plan) == [cheap.id, last.id]
    assert plan.target == 2
    assert plan.candidates == 3
    check_plan(core.state, plan, core.now, forced=False, burst_only={})


def test_a_held_connection_closed_while_victims_are_chosen_leaves_its_protocols_usage() -> None:
    core = Core(1, 10)
    reserved = core.member("reserved", cm.Quota(1, 10))
    other = core.member("other")
    held = core.conn()
    core.lock(core.stream(reserved, held))
    first = core.conn()
    core.stream(other, first, score=0.05)
    second = core.conn()
    core.stream(reserved, second, score=0.1)
    third = core.conn()
    core.stream(other, third, score=0.9)
    gen = plan_round(core.state, core.now, trigger="test", chunk=1)
    for _ in range(4):  # classified all four; chosen the first victim
        next(gen)
    held.release()
    plan = finish_plan(gen)
    # "reserved" is left on one connection: its grant.min keeps it.
    assert victim_ids(plan) == [first.id, third.id]
    assert plan.min_blocked == (second,)
    assert plan.target == 2
    assert plan.excluded == {}
    check_plan(core.state, plan, core.now, forced=False, burst_only={})


@pytest.mark.parametrize("closing", range(6))
def test_whenever_a_connection_closes_while_the_round_plans_the_plan_fits_what_is_left(
    closing: int,
) -> None:
    # Closing each connection in turn, at each step of the round: the plan never
    # holds a connection closed before it was chosen, and its target, candidates
    # and exclusions are those of the connections left.
    for step in range(12):
        core = Core(1, 10)
        reserved = core.member("reserved", cm.Quota(1, 10))
        other = core.member("other")
        conns = [core.conn() for _ in range(6)]
        core.lock(core.stream(reserved, conns[0]))
        for i, conn in enumerate(conns[1:4]):
            core.stream(reserved, conn, score=0.1 * (i + 1))
        core.stream(other, conns[4], score=0.05)
        # conns[5] is idle.
        gen = plan_round(core.state, core.now, trigger="test", chunk=1)
        taken_before: list[cm.Connection] = []
        try:
            for _ in range(step):
                next(gen)
        except StopIteration as stop:
            plan: Plan = stop.value
        else:
            # (The round's body runs in the generator plan_round delegates to.)
            frame = (gen.gi_yieldfrom or gen).gi_frame
            assert frame is not None
            taken_before = list(frame.f_locals.get("victims", ()))
            conns[closing].release()
            plan = finish_plan(gen)
        left = [conn for conn in conns if not conn.closed]
        assert all(not v.closed or v in taken_before for v in plan.connections), step
        if conns[closing] in taken_before:
            continue
        assert plan.target == len(left) - 1, step
        assert all(not c.closed for c in plan.min_blocked), step
        assert plan.excluded == ({"locked": 1} if not conns[0].closed else {}), step
        prunable = len(left) - (0 if conns[0].closed else 1)
        assert plan.candidates == prunable, step
        check_plan(core.state, plan, core.now, forced=False, burst_only={})


def stale_stream_population(core: Core) -> tuple[EnrollmentState, list[cm.Connection], cm.Stream]:
    """``m`` (grant.min 2) on a, b and c; c also carries two streams of ``n``.
    Returns m, [a, b, c] and c's stream of m."""
    m = core.member("m", cm.Quota(2, 1000))
    n = core.member("n")
    kept = core.conn()
    core.state.protect(kept.peer, "keep")
    a, b, c = core.conn(), core.conn(), core.conn()
    core.stream(m, a, score=0.0)
    core.stream(m, b, score=0.9)
    stale = core.stream(m, c, score=0.0)
    core.stream(n, c, score=0.9)
    core.stream(n, c, score=0.9)
    return m, [a, b, c], stale


def test_a_stream_its_scorer_closes_leaves_the_protocols_a_take_lowers() -> None:
    # m's scorer closes c's stale stream as it scores it: m is then on a and b
    # only, both kept for its grant.min, and c (no longer m's) may go.
    core = Core(1, 10)
    m, (a, b, c), stale = stale_stream_population(core)
    stale.metadata["stale"] = True

    m.scorer = stale_closing_scorer
    plan = core.plan()
    assert stale.closed
    assert victim_ids(plan) == [c.id]
    assert set(plan.min_blocked) == {a, b}
    check_plan(core.state, plan, core.now, forced=False, burst_only={})


def test_a_stream_closed_while_the_round_yields_leaves_the_protocols_a_take_lowers() -> None:
    core = Core(1, 10)
    m, (a, b, c), stale = stale_stream_population(core)
    idle = core.conn()  # one more to classify: the round yields after c
    gen = plan_round(core.state, core.now, trigger="test", chunk=1)
    for _ in range(4):  # the protected connection, a, b and c classified
        next(gen)
    stale.close()
    plan = finish_plan(gen)
    assert m.usage == 2
    assert victim_ids(plan) == [idle.id, c.id]
    assert set(plan.min_blocked) == {a, b}
    check_plan(core.state, plan, core.now, forced=False, burst_only={})
