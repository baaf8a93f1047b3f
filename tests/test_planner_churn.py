"""The round planner while connections keep closing (SPEC §8): every connection
that closes while a round is planned is left out, whichever step it closes at,
and the round leaves the state as it found it."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from test_planner import Core, check_plan, victim_ids

import trio_connmgr as cm
from trio_connmgr._core._planner import Plan, plan_now, plan_round


def churn_population(core: Core) -> list[cm.Connection]:
    """A locked connection, four busy ones ("reserved" has grant.min 2), two idle."""
    reserved = core.member("reserved", cm.Quota(2, 10))
    other = core.member("other")
    conns = [core.conn() for _ in range(7)]
    core.lock(core.stream(reserved, conns[0]))
    for i, conn in enumerate(conns[1:4]):
        core.stream(reserved, conn, score=0.1 * (i + 1))
    core.stream(other, conns[4], score=0.05)
    return conns


def chosen(gen: Generator[None, None, Plan]) -> list[cm.Connection]:
    """The victims a round under way has chosen so far."""
    frame = (gen.gi_yieldfrom or gen).gi_frame
    assert frame is not None
    return list(frame.f_locals.get("victims", ()))


@pytest.mark.parametrize("first", range(10))
async def test_connections_closing_one_per_step_are_all_left_out(first: int) -> None:
    # From step ``first`` on, a connection not chosen yet closes at every step of
    # the round: the plan holds none of them, and its target, candidates and
    # exclusions are those of the connections left.
    for order in (1, -1):
        core = Core(1, 10)
        conns = churn_population(core)
        gen = plan_round(core.state, core.now, trigger="test", chunk=1)
        for _ in range(first):
            next(gen)
        late = False  # a connection closed after victims were chosen
        while True:
            taken = chosen(gen)
            left = [c for c in conns[::order] if not c.closed and c not in taken]
            if left:
                left[0].release()
                late = late or bool(taken)
            try:
                next(gen)
            except StopIteration as stop:
                plan: Plan = stop.value
                break
        assert not any(v.closed for v in plan.connections), (first, order)
        still = [c for c in conns if not c.closed]
        assert plan.target == len(still) - 1
        assert all(not c.closed for c in plan.min_blocked)
        assert plan.excluded == ({"locked": 1} if not conns[0].closed else {})
        assert plan.candidates == len(still) - (0 if conns[0].closed else 1)
        if not late:  # (the plan need not fit what closes after its victims)
            check_plan(core.state, plan, core.now, forced=False, burst_only={})


async def test_a_round_leaves_the_close_hooks_as_it_found_them() -> None:
    core = Core(1, 10)
    conns = churn_population(core)
    hooks = list(core.state.close_hooks)
    plan_now(core.state, core.now)
    assert core.state.close_hooks == hooks
    # A round given up half-way (its generator closed), and one a scorer breaks.
    gen = plan_round(core.state, core.now, chunk=1)
    next(gen)
    gen.close()
    assert core.state.close_hooks == hooks

    class Stop(BaseException):
        pass

    def scorer(stream: cm.Stream) -> float:
        raise Stop

    broken = core.member("broken")
    broken.scorer = scorer
    stream = core.stream(broken, conns[5])
    with pytest.raises(Stop):
        plan_now(core.state, core.now)
    assert core.state.close_hooks == hooks
    stream.close()
    conns[6].release()
    assert victim_ids(core.plan()) == [conns[5].id, conns[4].id, conns[1].id, conns[2].id]
