"""Stream.idle_time while a round is planned in chunks and streams see activity."""

from __future__ import annotations

import trio_connmgr as cm
from trio_connmgr._core._planner import plan_round
from trio_connmgr._core._state import EnrollmentState, State


def test_a_stream_touched_after_the_round_began_is_never_idle_for_a_negative_time() -> None:
    now = [100.0]
    state = State(cm.Limits(1, 2), clock=lambda: now[0], grace_period=0.0)
    seen: dict[int, float] = {}

    def readme_scorer(stream: cm.Stream) -> float:
        seen[stream.id] = stream.idle_time
        return float(0.5 ** (stream.idle_time / 30))

    member = EnrollmentState("p", cm.Quota(0, 10), readme_scorer, 1.0, False, state)
    state.enrol(member)
    streams = [
        state.open_stream(
            member, state.open_connection(i, cm.Direction.OUTBOUND), cm.Direction.OUTBOUND
        )
        for i in range(3)
    ]
    round_time = now[0] = 110.0
    gen = plan_round(state, round_time, trigger="test", chunk=1)
    next(gen)  # the first connection is classified; the round yields
    # Time passes and a task sees traffic on a stream not yet scored.
    now[0] = 115.0
    streams[2].touch(10)
    for _ in gen:
        pass
    # It was active after the round's instant: idle for no time at all, not -5 s
    # (which made a scorer like the README's return more than 1.0).
    assert seen == {streams[0].id: 10.0, streams[1].id: 10.0, streams[2].id: 0.0}
    assert member.scorer_clamped == 0
    assert streams[2].idle_time == 0.0
    now[0] = 116.0
    assert streams[2].idle_time == 1.0
