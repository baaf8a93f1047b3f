"""Offender accounting when a stream closes while a round is planned (SPEC §8)."""

from __future__ import annotations

from test_planner import Core, check_plan, finish_plan, stale_closing_scorer, victim_ids

import trio_connmgr as cm
from trio_connmgr._core._planner import Phase, plan_round
from trio_connmgr._core._state import EnrollmentState


def population(core: Core) -> tuple[EnrollmentState, list[cm.Connection], cm.Stream]:
    """``m`` (grant.max 1) on a and b; a also carries two streams of ``n``, and
    c one of ``n``, the cheapest. Returns m, [a, b, c] and a's stream of m."""
    m = core.member("m", cm.Quota(0, 1))
    n = core.member("n")
    a, b, c = core.conn(), core.conn(), core.conn()
    stale = core.stream(m, a, score=0.0)
    core.stream(n, a, score=0.9)
    core.stream(n, a, score=0.9)
    core.stream(m, b, score=0.5)
    core.stream(n, c, score=0.1)
    return m, [a, b, c], stale


def test_a_stream_its_scorer_closes_makes_no_offender() -> None:
    # m's scorer closes a's stale stream as it scores it: m is then on b only,
    # within its grant.max, so the round takes the cheapest connection, c.
    core = Core(2, 10)
    m, (_, _, c), stale = population(core)
    stale.metadata["stale"] = True

    m.scorer = stale_closing_scorer
    plan = core.plan()
    assert stale.closed
    assert m.usage == 1
    assert victim_ids(plan) == [c.id]
    assert plan.reasons[0].phase is Phase.TALLY
    check_plan(core.state, plan, core.now, forced=False, burst_only={})


def test_a_stream_closed_while_the_round_yields_makes_no_offender() -> None:
    core = Core(2, 10)
    m, (_, _, c), stale = population(core)
    gen = plan_round(core.state, core.now, trigger="test", chunk=1)
    next(gen)  # a classified
    stale.close()
    plan = finish_plan(gen)
    assert m.usage == 1
    assert victim_ids(plan) == [c.id]
    assert plan.reasons[0].phase is Phase.TALLY
    check_plan(core.state, plan, core.now, forced=False, burst_only={})
