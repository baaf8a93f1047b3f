"""Scorers (SPEC §5): the guard, the default recency scorer, weighted tallies."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._core._scoring import NEUTRAL, score, tally
from trio_connmgr._core._state import EnrollmentState, State


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup(
    scorer: Callable[[cm.Stream], Any], weight: float = 1.0
) -> tuple[State, EnrollmentState, cm.Connection, Clock]:
    clock = Clock()
    state = State(cm.Limits(5, 10), clock=clock)
    member = EnrollmentState("p", cm.Quota(0, 10), scorer, weight, False, state)
    state.enrol(member)
    conn = state.open_connection("peer", cm.Direction.INBOUND)
    return state, member, conn, clock


@pytest.mark.parametrize(
    ("value", "expected", "clamped", "errors"),
    [
        (0.0, 0.0, 0, 0),
        (0.7, 0.7, 0, 0),
        (1.0, 1.0, 0, 0),
        (1, 1.0, 0, 0),
        (1.5, 1.0, 1, 0),
        (math.inf, 1.0, 1, 0),
        (-0.2, 0.0, 1, 0),
        (-math.inf, 0.0, 1, 0),
        # Out of range, though too large for a float.
        pytest.param(10**400, 1.0, 1, 0, id="huge-int"),
        pytest.param(-(10**400), 0.0, 1, 0, id="huge-negative-int"),
        (Fraction(1, 3), 1 / 3, 0, 0),
        (Fraction(7, 2), 1.0, 1, 0),
        (math.nan, NEUTRAL, 0, 1),
        ("0.9", NEUTRAL, 0, 1),
        (None, NEUTRAL, 0, 1),
        ([0.3], NEUTRAL, 0, 1),
        (True, NEUTRAL, 0, 1),  # a yes/no is no score
        (False, NEUTRAL, 0, 1),
    ],
)
def test_guard(value: object, expected: float, clamped: int, errors: int) -> None:
    _, member, conn, _ = setup(lambda stream: value)
    stream = member._state.open_stream(member, conn, cm.Direction.OUTBOUND)
    result = score(member, stream)
    assert result == expected
    assert type(result) is float
    assert (member.scorer_clamped, member.scorer_errors) == (clamped, errors)


def test_raising_scorer_is_neutral_and_logged_once_per_protocol(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(stream: cm.Stream) -> float:
        raise ZeroDivisionError("scorer bug")

    state, member, conn, _ = setup(broken)
    other = EnrollmentState("other", cm.Quota(0, 10), broken, 1.0, False, state)
    state.enrol(other)
    streams = [state.open_stream(member, conn, cm.Direction.OUTBOUND) for _ in range(3)]
    theirs = state.open_stream(other, conn, cm.Direction.OUTBOUND)
    with caplog.at_level(logging.ERROR, logger="trio_connmgr"):
        assert [score(member, s) for s in streams] == [NEUTRAL] * 3
        assert score(member, streams[0]) == NEUTRAL
        assert score(other, theirs) == NEUTRAL
    assert member.scorer_errors == 4
    assert other.scorer_errors == 1
    logged = [r for r in caplog.records if r.name.startswith("trio_connmgr")]
    assert len(logged) == 2
    assert "'p'" in logged[0].getMessage()
    assert "'other'" in logged[1].getMessage()
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], ZeroDivisionError)


def test_base_exceptions_are_not_swallowed() -> None:
    def interrupt(stream: cm.Stream) -> float:
        raise KeyboardInterrupt

    state, member, conn, _ = setup(interrupt)
    stream = state.open_stream(member, conn, cm.Direction.OUTBOUND)
    with pytest.raises(KeyboardInterrupt):
        score(member, stream)


def test_recency_scorer() -> None:
    state, member, conn, clock = setup(cm.RecencyScorer(half_life=10.0))
    stream = state.open_stream(member, conn, cm.Direction.OUTBOUND)
    scorer = cm.RecencyScorer(half_life=10.0)
    assert scorer(stream) == 1.0
    clock.now = 10.0
    assert scorer(stream) == pytest.approx(0.5)
    clock.now = 30.0
    assert scorer(stream) == pytest.approx(0.125)
    stream.touch()
    assert scorer(stream) == 1.0
    clock.now = 35.0
    assert scorer(stream) == pytest.approx(2**-0.5)
    # The default half-life is 30 seconds.
    clock.now = 60.0
    assert cm.RecencyScorer()(stream) == pytest.approx(0.5)
    assert cm.RecencyScorer() == cm.RecencyScorer(30.0)
    # While a round plans, it scores at the round's time (touched at 30).
    state.round_now = 45.0
    assert scorer(stream) == pytest.approx(2**-1.5)
    state.round_now = None
    assert scorer(stream) == pytest.approx(2**-3)


def test_tally_is_weighted_sum_of_best_scores() -> None:
    state, heavy, conn, _ = setup(lambda s: s.metadata["v"], weight=2.5)
    light = EnrollmentState("light", cm.Quota(0, 10), lambda s: s.metadata["v"], 0.5, False, state)
    state.enrol(light)
    assert tally(conn) == 0.0
    for member, value in [(heavy, 0.2), (heavy, 0.6), (light, 0.9), (light, 3.0)]:
        stream = state.open_stream(member, conn, cm.Direction.OUTBOUND)
        stream.metadata["v"] = value
    # heavy: 2.5 * max(0.2, 0.6); light: 0.5 * max(0.9, clamp(3.0)).
    assert tally(conn) == pytest.approx(2.5 * 0.6 + 0.5 * 1.0)
    assert light.scorer_clamped == 1


async def test_scorer_statistics_and_default_scorer() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 3), grace_period=0) as mgr,
        mgr.enroll("bad", quota=cm.Quota(0, 3), scorer=lambda s: s.metadata["v"]) as bad,
        mgr.enroll("default", quota=cm.Quota(0, 3)) as default,
    ):
        assert isinstance(default.scorer, cm.RecencyScorer)
        conns = [
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint) for i in range(3)
        ]
        for conn, value in zip(conns, [7.0, math.nan, "x"], strict=True):
            bad.track_stream(conn).metadata["v"] = value
            default.track_stream(conn)
        await mgr.trim()
        stats = mgr.statistics().protocols["bad"]
        assert stats.scorer_clamped >= 1
        assert stats.scorer_errors >= 2
        assert mgr.statistics().protocols["default"].scorer_errors == 0
