"""Scorers: the guard that keeps them bounded, the default scorer, and tallies (SPEC §5)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, final

import attrs

from .._config import check_positive_float

if TYPE_CHECKING:
    from ._state import Connection, EnrollmentState, Stream

logger = logging.getLogger("trio_connmgr.scoring")

NEUTRAL = 0.5
"""The score given for a stream whose scorer raised or returned a non-number."""


@final
@attrs.frozen
class RecencyScorer:
    """The default scorer: rates how recently a stream saw :meth:`Stream.touch` activity.

    ``score = 0.5 ** (idle_time / half_life)``: 1.0 for a stream active right now,
    0.5 after ``half_life`` seconds of silence, tending to 0.

    Args:
        half_life: Seconds of inactivity that halve the score.
    """

    half_life: float = attrs.field(default=30.0)

    @half_life.validator
    def _check(self, attribute: object, value: float) -> None:
        check_positive_float("RecencyScorer.half_life", value)

    def __call__(self, stream: Stream) -> float:
        """Score ``stream`` in ``[0, 1]``."""
        # stream.idle_time, inlined: every round calls this once per stream.
        try:
            state = stream._member._state
        except AttributeError:  # a stand-in with the public attributes only
            idle = stream.idle_time
        else:
            now = state.round_now
            if now is None:
                now = state.clock()
            idle = now - stream.last_active
        if idle <= 0.0:
            return 1.0
        score: float = 0.5 ** (idle / self.half_life)
        return score


def score(member: EnrollmentState, stream: Stream) -> float:
    """Call ``member``'s scorer on ``stream``, guarded: always a float in ``[0, 1]``.

    Out-of-range values are clamped and counted (``scorer_clamped``); NaN, a
    bool, an exception or a non-number counts as :data:`NEUTRAL`
    (``scorer_errors``) and an exception is logged once per protocol. Never
    raises (``BaseException`` aside).
    """
    try:
        value = member.scorer(stream)
    except Exception:
        return scorer_failed(member)
    if type(value) is float and 0.0 <= value <= 1.0:
        return value
    return checked(member, value)


def scorer_failed(member: EnrollmentState) -> float:
    """:func:`score` for a scorer that raised: count, log once, return :data:`NEUTRAL`.

    Call it inside the ``except`` block, so the log carries the exception.
    """
    member.scorer_errors += 1
    if not member._scorer_error_logged:
        member._scorer_error_logged = True
        logger.exception(
            "scorer of %r raised or returned a non-number; using %s (logged once)",
            member.name,
            NEUTRAL,
        )
    return NEUTRAL


def checked(member: EnrollmentState, value: Any) -> float:
    """:func:`score` for a value that is not a ``float`` in ``[0, 1]``: convert, clamp, count.

    (The planner inlines the fast path of :func:`score` and calls this for the rest.)
    """
    if isinstance(value, bool):  # a yes/no is no score: most likely a bug
        member.scorer_errors += 1
        return NEUTRAL
    try:
        if 0.0 <= value <= 1.0:
            return float(value)
        # Compared before converting: an int too large for a float is out of range.
        above = value > 1.0
        if above or value < 0.0:
            member.scorer_clamped += 1
            return 1.0 if above else 0.0
    except Exception:
        return scorer_failed(member)
    # Neither in [0, 1] nor outside it: NaN.
    member.scorer_errors += 1
    return NEUTRAL


def tally(conn: Connection) -> float:
    """A connection's tally: sum over protocols p of ``weight_p * max(score_p(s))``."""
    streams = conn.streams
    if not streams:
        return 0.0
    best: dict[EnrollmentState, float] = {}
    for stream in tuple(streams):  # a scorer may close a stream
        member = stream._member
        value = score(member, stream)
        if value > best.get(member, -1.0):
            best[member] = value
    return sum(member.weight * value for member, value in best.items())
