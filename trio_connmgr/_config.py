"""Limits, quotas and grants: the numbers users configure, and their validation."""

from __future__ import annotations

import enum
import inspect
import math
from typing import Any, final

import attrs

from ._errors import ConfigError


def exact_floor(value: float) -> int:
    """``math.floor`` of a count times configured fractions, without binary noise.

    ``0.57 * 100`` is ``56.99999999999999`` and ``0.07 * 100`` is
    ``7.000000000000001``: the noise is rounded away first, so that the
    documented formulas hold to the connection.
    """
    return math.floor(round(value, 9))


def exact_ceil(value: float) -> int:
    """``math.ceil`` without binary noise (see :func:`exact_floor`).

    A positive ``value`` gives at least 1, however small: the noise rounding
    must not take it to 0.
    """
    ceiling = math.ceil(round(value, 9))
    return 1 if ceiling == 0 and value > 0 else ceiling


def check_count(field: str, value: object, *, allow_zero: bool = False) -> int:
    """Return ``value`` if it is a non-negative (or positive) int, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{field} must be {kind} integer, got {value!r}")
    return value


def check_bool(field: str, value: object) -> bool:
    """Return ``value`` if it is ``True`` or ``False``, else raise ConfigError.

    For flags: ``bool("no")`` is true, so a flag is never converted.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be True or False, got {value!r}")
    return value


def check_not_async(field: str, value: object) -> None:
    """Raise ConfigError if ``value`` is an async function.

    For callbacks the manager calls without awaiting: an async one would only
    return a coroutine, never awaited (and never run).
    """
    # (An object whose __call__ is async returns a coroutine just the same.)
    if inspect.iscoroutinefunction(value) or (
        callable(value) and inspect.iscoroutinefunction(type(value).__call__)
    ):
        raise ConfigError(
            f"{field} must be a synchronous function (it is called, not awaited), "
            f"got the async function {value!r}"
        )


def check_peer(field: str, value: object) -> None:
    """Raise ConfigError unless ``value`` can identify a peer (hashable, not None)."""
    if value is None:
        raise ConfigError(f"{field} must identify a peer, got None")
    try:
        hash(value)
    except TypeError:
        raise ConfigError(f"{field} must be hashable, got {value!r}") from None


def check_address(field: str, value: object) -> None:
    """Raise ConfigError unless ``value`` is a string or None."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{field} must be a string or None, got {value!r}")


def _as_float(value: int | float) -> float:
    """``float(value)``; an int too large for a float becomes an infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


MIN_PERIOD = 1e-6
"""Shortest period, in seconds, of what sleeps in a loop (``Interval.period``,
``Sensing.interval``, ``LoopLag.period``): one microsecond.

A shorter one can vanish in the clock's rounding: at ``now = 100.0``,
``now + 1e-15 == now``, so the loop's next wake-up is due at once, for ever (a
busy loop; under ``MockClock(autojump_threshold=0)`` time never moves and the
run hangs). ``now + 1e-6 > now`` holds while the clock reads below ``2**34``
seconds (five centuries), and a loop woken more often than every microsecond
would keep the event loop busy anyway."""


def check_period(
    field: str, value: object, *, allow_zero: bool = True, minimum: float = 0.0
) -> float:
    """Return ``value`` as a float if it is a finite non-negative number of seconds
    (positive unless ``allow_zero``; at least ``minimum`` if that is above 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field} must be a number of seconds, got {value!r}")
    number = _as_float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{field} must be a finite, {kind} number of seconds, got {value!r}")
    if number < minimum:
        raise ConfigError(f"{field} must be at least {minimum:g} seconds, got {value!r}")
    return number


def check_fraction(
    field: str, value: object, *, above_zero: bool = False, below_one: bool = False
) -> float:
    """Return ``value`` as a float if it is a number in [0, 1] (without 0 if
    ``above_zero``, without 1 if ``below_one``); the error names that interval."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0.0 <= value <= 1.0)  # also rejects NaN
        or (above_zero and value == 0.0)
        or (below_one and value == 1.0)
    ):
        interval = f"{'(' if above_zero else '['}0, 1{')' if below_one else ']'}"
        raise ConfigError(f"{field} must be a number in {interval}, got {value!r}")
    return float(value)


def check_open_fraction(field: str, value: object) -> float:
    """Return ``value`` as a float if it is a number in ``(0, 1]``."""
    return check_fraction(field, value, above_zero=True)


def check_positive_float(field: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field} must be a positive number, got {value!r}")
    number = _as_float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{field} must be a finite, positive number, got {value!r}")
    return number


@final
class Direction(enum.Enum):
    """Which side opened a connection or stream."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"

    @classmethod
    def parse(cls, value: object, field: str = "direction") -> Direction:
        """Accept a :class:`Direction` or its string value; raise ConfigError otherwise."""
        if isinstance(value, Direction):
            return value
        if value == "inbound":
            return cls.INBOUND
        if value == "outbound":
            return cls.OUTBOUND
        raise ConfigError(f"{field} must be 'inbound' or 'outbound', got {value!r}")


@final
@attrs.frozen
class Limits:
    """Watermarks for the connection count.

    Regulation starts when the count exceeds ``high`` and prunes down to ``low``;
    ``hard`` (if set) is the inbound admission cap. ``0 < low <= high <= hard``.

    Args:
        low: Count a regulation round prunes down to.
        high: Count above which a round runs. Also the global share ``G`` that
            relative quotas resolve against.
        hard: Inbound connections are refused at this count. ``None`` means no cap.
    """

    low: int
    high: int
    hard: int | None = None

    def __attrs_post_init__(self) -> None:
        check_count("Limits.low", self.low)
        check_count("Limits.high", self.high)
        if self.low > self.high:
            raise ConfigError(
                f"Limits.low must be <= Limits.high, got low={self.low!r}, high={self.high!r}"
            )
        if self.hard is not None:
            check_count("Limits.hard", self.hard)
            if self.hard < self.high:
                raise ConfigError(
                    f"Limits.hard must be >= Limits.high, got hard={self.hard!r}, "
                    f"high={self.high!r}"
                )

    @classmethod
    def auto(cls, **kwargs: Any) -> Limits:
        """Infer limits from the environment (file descriptors and memory).

        See :func:`trio_connmgr.sensing.auto_limits` for the formula and arguments.
        """
        from .sensing import auto_limits

        return auto_limits(**kwargs)


@final
@attrs.frozen
class Quota:
    """What an enrollment asks for: a range of connections.

    Use ``Quota(min, max)`` for absolute connection counts, or
    :meth:`Quota.share` for fractions of the global share ``G``.

    Attributes:
        min: Connections reserved for the protocol (it is not pruned below this).
        max: Ceiling above which the protocol is an *offender* in regulation.
        relative: ``True`` when ``min``/``max`` are fractions of ``G``.
    """

    min: float
    max: float
    relative: bool = False

    def __attrs_post_init__(self) -> None:
        if check_bool("Quota.relative", self.relative):
            check_fraction("Quota.min", self.min)
            check_fraction("Quota.max", self.max)
        else:
            for field, value in (("Quota.min", self.min), ("Quota.max", self.max)):
                if type(value) is float and 0.0 <= value <= 1.0 and self._is_share():
                    # Most likely a share meant as one: say how to write it.
                    raise ConfigError(
                        f"{field} must be an integer, got {value!r} (for fractions of "
                        f"the global share: Quota.share({self.min!r}, {self.max!r}))"
                    )
                check_count(field, value, allow_zero=True)
        if self.min > self.max:
            raise ConfigError(
                f"Quota.min must be <= Quota.max, got min={self.min!r}, max={self.max!r}"
            )

    def _is_share(self) -> bool:
        """Whether ``Quota.share(min, max)`` would be a valid quota."""
        return all(
            type(value) in (int, float) and 0 <= value <= 1 for value in (self.min, self.max)
        ) and (self.min <= self.max)

    @classmethod
    def share(cls, min: float, max: float) -> Quota:
        """A quota as fractions in [0, 1] of the global share (``min <= max``)."""
        return cls(min, max, relative=True)

    def resolve(self, share: int) -> tuple[int, int]:
        """Resolve against the global share: ``(min, max)`` in connections, before scaling.

        Relative: ``min = ceil(fmin*G)``, ``max = max(min, floor(fmax*G))``; both
        forms are capped at ``G``.
        """
        lo = min(self._wanted_min(share), share)
        if self.relative:
            hi = max(lo, min(exact_floor(self.max * share), share))
        else:
            hi = max(lo, min(int(self.max), share))
        return lo, hi

    def _wanted_min(self, share: int) -> int:
        """The min asked for against the global share, in connections, not capped
        at ``G`` (what a ``strict`` enrollment insists on)."""
        if self.relative:
            return exact_ceil(self.min * share)
        return int(self.min)


@final
@attrs.frozen
class Grant:
    """What the manager accepted for an enrollment, in connections.

    Invariants: ``0 <= min <= max <= G`` and the sum of every grant's ``min`` is ``<= G``.
    """

    min: int
    max: int
