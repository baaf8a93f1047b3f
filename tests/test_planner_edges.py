"""The round planner at its edges (SPEC §8): bursts closed at one instant, tallies
that overflow, and what a plan reports when connections close or protocols leave
while it is planned."""

from __future__ import annotations

from test_planner import Core, check_plan, finish_plan, victim_ids

import trio_connmgr as cm
from trio_connmgr._core._planner import Phase, plan_round
from trio_connmgr._core._state import Connection, EnrollmentState

OUTBOUND = cm.Direction.OUTBOUND


def test_bursts_closed_at_one_instant_name_the_first_protocol_by_name() -> None:
    # Each connection was used only by a burst of "b" and one of "a", closed at
    # the same instant: every reason names "a", whatever order the bursts were
    # opened, enlisted or enrolled in.
    core = Core(1, 100)
    b = core.member("b")
    a = core.member("a")
    conns = []
    for k in range(40):
        first, second = (a, b) if k % 2 else (b, a)
        conn = core.conn()
        for member in (first, second):
            core.stream(member, conn, burst=core.burst(member))
        conns.append(conn)
    core.conn()
    for burst in [*a._open_bursts, *b._open_bursts]:
        core.state.close_burst(burst)
    plan = core.plan()
    assert set(victim_ids(plan)) == {conn.id for conn in conns}
    assert {(r.phase, r.protocol) for r in plan.reasons} == {(Phase.BURST, "a")}
    check_plan(core.state, plan, core.now, forced=False, burst_only=dict.fromkeys(conns, core.now))


def test_the_burst_that_closed_last_names_the_protocol() -> None:
    core = Core(1, 10)
    a, b = core.member("a"), core.member("b")
    conn = core.conn()
    early, late = core.burst(a), core.burst(b)
    core.stream(a, conn, burst=early)
    core.stream(b, conn, burst=late)
    core.state.close_burst(early)
    core.now += 1.0
    core.state.close_burst(late)
    core.conn()
    [reason] = core.plan().reasons
    assert (reason.phase, reason.protocol) == (Phase.BURST, "b")


def test_infinite_tallies_leave_the_order_of_the_finite_ones() -> None:
    # Two protocols weighing 1e308: a connection both use has an infinite tally.
    # The finite tallies keep their order (lowest first), and the infinite ones,
    # equal, go last by the tie rule (inbound first, then newest first).
    core = Core(1, 10)
    big, bigger = core.member("big", weight=1e308), core.member("bigger", weight=1e308)
    plain = core.member("plain")
    dear_out = core.conn(direction=OUTBOUND, at=99.0)
    dear_old = core.conn(at=10.0)
    dear_new = core.conn(at=20.0)
    for conn in (dear_out, dear_old, dear_new):
        core.stream(big, conn, score=1.0)
        core.stream(bigger, conn, score=1.0)
    high = core.conn(at=95.0)
    core.stream(plain, high, score=0.9)
    low = core.conn(at=50.0)
    core.stream(plain, low, score=0.1)
    core.conn(peer="kept")
    core.state.protect("kept", "test")
    assert core.plan(target=1).connections == [low]
    plan = core.plan()
    assert plan.connections == [low, high, dear_new, dear_old, dear_out]
    assert [r.tally for r in plan.reasons][2:] == [float("inf")] * 3
    assert {r.phase for r in plan.reasons} == {Phase.TALLY}


def test_grace_ends_leaves_out_a_connection_that_closed_while_planned() -> None:
    core = Core(1, 2, grace=30.0)
    first = core.conn(at=80.0)  # in its grace period until 110
    core.conn(at=90.0)  # until 120
    core.conn(peer="kept", at=85.0)  # protected (and in grace) until 115
    core.state.protect("kept", "test")
    core.conn(at=0.0)
    gen = plan_round(core.state, core.now, chunk=1)
    next(gen)  # ``first`` classified
    first.release()
    plan = finish_plan(gen)
    assert plan.excluded == {"grace": 1, "protected": 1}
    assert plan.grace_ends == 120.0


def test_grace_ends_of_a_locked_connection_that_closed_while_planned() -> None:
    core = Core(1, 2, grace=30.0)
    member = core.member("m")
    locked = core.conn(at=80.0)  # revocable from 110
    core.lock(core.stream(member, locked))
    later = core.conn(at=90.0)
    core.lock(core.stream(member, later))  # revocable from 120
    core.conn(at=0.0)
    gen = plan_round(core.state, core.now, chunk=1)
    next(gen)
    locked.release()
    plan = finish_plan(gen)
    assert plan.excluded == {"locked": 1}
    assert plan.grace_ends == 120.0
    # Once the last one closes too, no grace period is left to wait for.
    gen = plan_round(core.state, core.now, chunk=1)
    next(gen)
    later.release()
    assert finish_plan(gen).grace_ends == float("inf")


def test_a_candidate_whose_blocking_protocol_left_is_no_forced_victim() -> None:
    # "p" is at its grant.min (2) on a and b, which a forced round takes last,
    # below it. "p" leaves while the round is planned, after a was found blocked:
    # taking a then takes no protocol below its grant.min.
    core = Core(1, 5)
    p = core.member("p", cm.Quota(2, 10))
    q = core.member("q")
    assert p.grant.min == 2
    a, b, c = core.conn(), core.conn(), core.conn()
    core.stream(p, a, score=0.1)
    core.stream(p, b, score=0.2)
    core.stream(q, c, score=0.9)
    assert core.plan(forced=True).reasons[1].forced  # (before it leaves)
    gen = plan_round(core.state, core.now, trigger="test", forced=True, chunk=1)
    for _ in range(3):  # two yields classifying, one after the first candidate
        next(gen)
    core.state.leave(p)
    plan = finish_plan(gen)
    assert plan.connections == [c, a]
    assert [(r.phase, r.forced) for r in plan.reasons] == [(Phase.TALLY, False)] * 2


def test_forced_victims_still_below_a_grant_min_come_after_those_set_free() -> None:
    # "p" (grant.min 2, on a and b) leaves while the round is planned; "r"
    # (grant.min 1, on d only) stays: d remains the last resort, after a and b.
    core = Core(1, 10)
    p = core.member("p", cm.Quota(2, 10))
    r = core.member("r", cm.Quota(1, 10))
    a, b, d = core.conn(), core.conn(), core.conn()
    core.stream(p, a, score=0.1)
    core.stream(p, b, score=0.2)
    core.stream(r, d, score=0.0)
    core.conn(peer="kept")
    core.state.protect("kept", "test")
    gen = plan_round(core.state, core.now, trigger="test", forced=True, chunk=1)
    for _ in range(4):  # three yields classifying, one after the first candidate
        next(gen)
    core.state.leave(p)
    plan = finish_plan(gen)
    assert [(v.connection, v.reason.forced) for v in plan.victims] == [
        (a, False),
        (b, False),
        (d, True),
    ]


def test_a_burst_only_connection_taken_in_the_tally_phase_names_no_protocol() -> None:
    # a1 and a2 were used only by a closed burst of "p", at its grant.min (3):
    # both are skipped in the burst phase... until the share falls while the
    # round is planned (grant.min 1): a2 goes as a burst victim, and a1, left
    # behind, later by its tally, a reason that names no protocol.
    core = Core(1, 6)
    p = core.member("p", cm.Quota(3, 6))
    core.member("r", cm.Quota(3, 6))
    burst = core.burst(p)
    a1, a2, b = core.conn(), core.conn(), core.conn()
    core.stream(p, a1, score=0.1, burst=burst)
    core.stream(p, a2, score=0.1, burst=burst)
    core.stream(p, b, score=0.9)
    core.state.close_burst(burst)
    assert p.grant.min == 3
    gen = plan_round(core.state, core.now, trigger="test", chunk=1)
    for _ in range(3):  # two yields classifying, one after a1 in the burst phase
        next(gen)
    core.state.set_share(2, "test")
    assert p.grant.min == 1
    plan = finish_plan(gen)
    assert [(v.connection, v.reason.phase, v.reason.protocol) for v in plan.victims] == [
        (a2, Phase.BURST, "p"),
        (a1, Phase.TALLY, None),
    ]
    assert str(plan.reasons[1]).startswith("tally #2,")


def test_a_burst_only_candidate_set_free_in_a_forced_round_is_no_late_burst_victim() -> None:
    # a1 was used only by a closed burst of "p", at its grant.min (2 on a1 and
    # a2): skipped in the burst phase of a forced round, which goes on to take
    # c by its tally. "p" leaves while the round is planned: a1, taken after c,
    # must not say it went in the burst phase, which comes first in every plan.
    core = Core(1, 10)
    p = core.member("p", cm.Quota(2, 10))
    q = core.member("q")
    burst = core.burst(p)
    a1, a2, c = core.conn(), core.conn(), core.conn()
    core.stream(p, a1, score=0.1, burst=burst)
    core.stream(p, a2, score=0.9)
    core.stream(q, c, score=0.5)
    core.state.close_burst(burst)
    assert p.grant.min == 2
    gen = plan_round(core.state, core.now, trigger="test", forced=True, target=2, chunk=1)
    for _ in range(3):  # two yields classifying, one after a1 in the burst phase
        next(gen)
    core.state.leave(p)
    plan = finish_plan(gen)
    assert [(v.connection, v.reason.phase, v.reason.forced) for v in plan.victims] == [
        (c, Phase.TALLY, False),
        (a1, Phase.TALLY, False),
    ]
    assert plan.reasons[1].protocol is None


def test_a_heavy_protocol_leaves_the_order_of_light_tallies() -> None:
    # One protocol weighing 1e9 gives a tally of 1e9: tallies 0.1 and 0.9 of a
    # light protocol are still far apart, the lower one goes first (the tie rule
    # would take the newer one, 0.9, first).
    core = Core(1, 10)
    heavy, light = core.member("heavy", weight=1e9), core.member("light")
    core.stream(heavy, core.conn(at=10.0), score=1.0)
    low = core.conn(at=20.0)
    core.stream(light, low, score=0.1)
    high = core.conn(at=30.0)
    core.stream(light, high, score=0.9)
    for chunk in (1, 1024):
        assert core.plan(target=1, chunk=chunk).connections == [low], chunk
        plan = core.plan(chunk=chunk)
        assert plan.connections == [low, high], chunk
        check_plan(core.state, plan, core.now, forced=False, burst_only={})


def offender_at_a_grant_min() -> tuple[Core, EnrollmentState, list[Connection]]:
    """ "x" (grant.max 1) offends on a, b and c; a, the lowest tally, is also the
    only connection of "y" (grant.min 1); d is "z"'s, with the highest tally."""
    core = Core(1, 10)
    x = core.member("x", cm.Quota(0, 1))
    y = core.member("y", cm.Quota(1, 10))
    z = core.member("z")
    a, b, c, d = core.conn(), core.conn(), core.conn(), core.conn()
    core.stream(x, a, score=0.1)
    core.stream(y, a, score=0.0)
    core.stream(x, b, score=0.5)
    core.stream(x, c, score=0.9)
    core.stream(z, d, score=0.95)
    return core, y, [a, b, c, d]


def test_a_forced_victim_of_a_protocol_back_within_its_max_names_no_offender() -> None:
    # a is skipped for y's grant.min, then b and c are taken and x is back
    # within its max. The forced pass takes a last: no longer for x.
    core, _, (a, b, c, d) = offender_at_a_grant_min()
    plan = core.plan(target=4, forced=True)
    assert [(v.connection, v.reason.phase, v.reason.protocol) for v in plan.victims] == [
        (b, Phase.OFFENDER, "x"),
        (c, Phase.OFFENDER, "x"),
        (d, Phase.TALLY, None),
        (a, Phase.TALLY, None),
    ]
    assert [v.reason.forced for v in plan.victims] == [False, False, False, True]
    assert str(plan.reasons[3]) == "tally #4, tally 0.100, trigger test, forced below grant.min"


def test_a_candidate_set_free_of_a_protocol_back_within_its_max_names_no_offender() -> None:
    # As above, but "y" leaves while the round is planned: a, set free, is taken
    # without going below any grant.min, and no longer for x either.
    core, y, (a, b, c, d) = offender_at_a_grant_min()
    gen = plan_round(core.state, core.now, trigger="test", forced=True, target=4, chunk=1)
    for _ in range(4):  # three yields classifying, one after the first offender victim
        next(gen)
    core.state.leave(y)
    plan = finish_plan(gen)
    assert [(v.connection, v.reason.phase, v.reason.protocol) for v in plan.victims] == [
        (b, Phase.OFFENDER, "x"),
        (c, Phase.OFFENDER, "x"),
        (d, Phase.TALLY, None),
        (a, Phase.TALLY, None),
    ]
    assert not any(r.forced for r in plan.reasons)


def test_candidates_whose_blocking_protocol_left_are_taken_in_a_round_not_forced() -> None:
    # "p" is at its grant.min (2) on a and b; it leaves while the round is planned,
    # after a was found blocked: a round that is not forced takes a and b too,
    # last, rather than fall short and report them held for p's grant.min.
    core = Core(1, 10)
    p = core.member("p", cm.Quota(2, 10))
    q = core.member("q")
    a, b, c, d = core.conn(), core.conn(), core.conn(), core.conn()
    core.stream(p, a, score=0.1)
    core.stream(p, b, score=0.2)
    core.stream(q, c, score=0.05)
    core.stream(q, d, score=0.9)
    core.conn(peer="kept")
    core.state.protect("kept", "test")
    assert core.plan().connections == [c, d]  # (before it leaves)
    gen = plan_round(core.state, core.now, trigger="test", chunk=1)
    for _ in range(6):  # four yields classifying, then one after c, one after a
        next(gen)
    core.state.leave(p)
    plan = finish_plan(gen)
    assert plan.connections == [c, d, a, b]
    assert [(r.phase, r.forced) for r in plan.reasons] == [(Phase.TALLY, False)] * 4
    assert plan.min_blocked == ()
    assert plan.shortfall == 0
