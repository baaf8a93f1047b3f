"""Regulation triggers: what wakes the regulator to run a round (SPEC §8).

A trigger is a small synchronous object. The manager feeds it observations
(:meth:`Trigger.connection_opened`, :meth:`Trigger.dial_reported`) and, whenever
the regulator wakes, asks :meth:`Trigger.check` whether a round should run now.
:meth:`Trigger.next_check` tells the regulator when to wake up on its own (for
time-based triggers), and :meth:`Trigger.round_completed` resets any latched
state (:meth:`Trigger.manager_opened`, all of it, for a new manager). Every
method receives ``now`` from the manager's clock, so triggers are deterministic
under ``trio.testing.MockClock``.

:class:`HighWater` and :class:`Pressure` are always on; pass others to
``open_connection_manager(triggers=[...])``. To write your own, subclass
:class:`Trigger` and override what you need::

    class EveryHundredOpens(Trigger):
        name = "every-hundred"

        def __init__(self) -> None:
            self.opened = 0

        def connection_opened(self, now: float) -> bool:
            self.opened += 1
            return self.opened >= 100          # True: wake the regulator now

        def check(self, view: TriggerView, now: float) -> bool:
            return self.opened >= 100

        def round_completed(self, now: float) -> None:
            self.opened = 0

Hooks run synchronously on the manager's hot paths: keep them O(1). A hook
that raises is a bug its caller sees: from ``connection_opened``, the
``connection()`` or ``track()`` call raises it and nothing is counted; from
``dial_reported``, ``report_dial()`` raises it once sensing and the other
triggers have the dial; from ``check``, ``next_check`` or
``round_completed``, the regulator logs and counts a failed round and restarts
with back-off (repeated failures stop the manager, SPEC §8), except that
``round_completed`` after a round run by ``mgr.trim()`` makes that call raise it
(the round is recorded first, and the other triggers are told). A trigger may
keep state (its windows, what it latched, its last round), so it serves one
open manager at a time (another gets a ``ConfigError``); once that manager has
closed, it may serve a new one, which :meth:`Trigger.manager_opened` tells it
to start afresh. One whose hooks read nothing but their arguments (as
:class:`HighWater` and :class:`Pressure`) says so with ``keeps_state = False``
and may serve several managers at once.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import ClassVar, final

import attrs

from ._config import (
    MIN_PERIOD,
    check_count,
    check_open_fraction,
    check_period,
    check_positive_float,
)
from ._errors import ConfigError

__all__ = ["FailedDials", "HighWater", "Interval", "Pressure", "Spike", "Trigger", "TriggerView"]


@final
@attrs.frozen
class TriggerView:
    """What a trigger sees of the manager when asked to :meth:`Trigger.check`."""

    count: int
    low: int
    high: int
    hard: int | None
    pressure: bool = False
    """Whether sensing reports pressure now."""


class Trigger:
    """Base class of regulation triggers. Every method has a do-nothing default.

    Attributes:
        name: Recorded as the ``trigger`` of a round and of its prune reasons.
    """

    name: str = "trigger"
    keeps_state: ClassVar[bool] = True
    """Whether it keeps state between calls (then it serves one open manager at a
    time). Set it to False in a trigger whose hooks read nothing but their
    arguments, so that several managers may share it."""

    def manager_opened(self, now: float) -> None:
        """A manager opened with this trigger: forget the state an earlier manager
        left (its openings, dials, last round, what it latched). Called before
        any other hook of that manager; an exception from it fails the opening.
        """

    def connection_opened(self, now: float) -> bool:
        """A connection was admitted. Return True to wake the regulator now."""
        return False

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
        """``mgr.report_dial`` was called. Return True to wake the regulator now."""
        return False

    def check(self, view: TriggerView, now: float) -> bool:
        """Whether a round should run now."""
        return False

    def next_check(self, now: float) -> float:
        """When the regulator should wake to call :meth:`check` again (``inf``: never).

        Return a time later than ``now`` unless :meth:`check` is True now: the
        regulator wakes at once for a time that has come, so one that stays in
        the past keeps it busy.
        """
        return math.inf

    def round_completed(self, now: float) -> None:
        """A round finished (whatever triggered it): reset latched state.

        Not called on a trigger whose ``connection_opened`` or ``dial_reported``
        returned True while the round ran: the round may have planned before
        what fired it, so the trigger stays fired and starts the next round.
        """


@final
class HighWater(Trigger):
    """Fires while the connection count is above ``high``. Always on."""

    name = "high-water"
    keeps_state = False

    def check(self, view: TriggerView, now: float) -> bool:
        """True while ``count > high``."""
        return view.count > view.high


@final
class Pressure(Trigger):
    """Fires while sensing reports pressure and the count is above ``low``. Always on.

    Rounds it starts are emergencies: they skip the silence period and may revoke
    locks. Without ``sensing`` it never fires.
    """

    name = "pressure"
    keeps_state = False

    def check(self, view: TriggerView, now: float) -> bool:
        """True while sensing reports pressure and ``count > low``."""
        return view.pressure and view.count > view.low


@final
class Spike(Trigger):
    """Fires when more than ``connections`` connections open within ``window`` seconds.

    Args:
        connections: A spike is more openings than this within the window.
        window: Length of the sliding window, in seconds (an opening exactly
            ``window`` seconds old is within it).
    """

    name = "spike"

    def __init__(self, connections: int, window: float) -> None:
        self.connections = check_count("Spike.connections", connections)
        if self.connections >= sys.maxsize:  # (it keeps `connections + 1` openings)
            raise ConfigError(
                f"Spike.connections must be below {sys.maxsize}, got {connections!r}"
            )
        self.window = check_positive_float("Spike.window", window)
        # Only the last `connections + 1` openings matter.
        self._opened: deque[float] = deque(maxlen=self.connections + 1)
        self._fired = False

    def manager_opened(self, now: float) -> None:
        """Forget the openings (and any spike) of an earlier manager."""
        self.round_completed(now)

    def connection_opened(self, now: float) -> bool:
        """Record an opening; wake the regulator when it completes a spike."""
        opened = self._opened
        opened.append(now)
        # (`t + window >= now`, not `now - t <= window`: an opening exactly one
        # window old is within it, which the difference may miss by a rounding.)
        if not self._fired and len(opened) == opened.maxlen and opened[0] + self.window >= now:
            self._fired = True
            return True
        return False

    def check(self, view: TriggerView, now: float) -> bool:
        """True once a spike was seen, until the next round completes."""
        return self._fired

    def round_completed(self, now: float) -> None:
        """Forget the spike (and the openings that made it)."""
        self._fired = False
        self._opened.clear()


@final
class FailedDials(Trigger):
    """Fires when the failed share of dials within ``window`` reaches ``ratio``.

    Fed by ``mgr.report_dial(peer, ok=..., latency=...)`` (the adapters call it).

    Args:
        ratio: Failed share in ``(0, 1]`` that fires it (as for
            :class:`~trio_connmgr.sensing.DialHealth`: a share of 0 would be
            reached by dials that all succeeded).
        window: Seconds of dial history considered.
        min_dials: Fewer dials than this within the window never fire it.
    """

    name = "failed-dials"
    MAX_HISTORY = 65536
    """Most dials kept within a window, or ``min_dials`` if that is more: older
    ones are forgotten early (as by :class:`~trio_connmgr.sensing.DialHealth`),
    and the share is then that of the latest dials kept."""

    def __init__(self, ratio: float, window: float, min_dials: int = 10) -> None:
        self.ratio = check_open_fraction("FailedDials.ratio", ratio)
        self.window = check_positive_float("FailedDials.window", window)
        self.min_dials = check_count("FailedDials.min_dials", min_dials)
        self._history = max(self.MAX_HISTORY, self.min_dials)
        self._dials: deque[tuple[float, bool]] = deque()
        self._failed = 0
        self._fired = False

    def _forget(self, now: float) -> None:
        dials = self._dials
        # (A dial exactly one window old stays: see Spike.connection_opened.)
        while dials and (dials[0][0] + self.window < now or len(dials) > self._history):
            _, ok = dials.popleft()
            if not ok:
                self._failed -= 1

    def failure_ratio(self, now: float) -> float:
        """The failed share of dials within the window (0.0 when there were none)."""
        self._forget(now)
        return self._failed / len(self._dials) if self._dials else 0.0

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
        """Record a dial; wake the regulator when the failed share crosses ``ratio``."""
        self._dials.append((now, ok))
        if not ok:
            self._failed += 1
        self._forget(now)
        # The share as failure_ratio() reports it: 7 failed of 25 reaches 0.28
        # (while 7 >= 0.28 * 25 is false in floating point).
        if (
            not self._fired
            and len(self._dials) >= self.min_dials
            and self._failed / len(self._dials) >= self.ratio
        ):
            self._fired = True
            return True
        return False

    def check(self, view: TriggerView, now: float) -> bool:
        """True once the ratio was crossed, until the next round completes."""
        return self._fired

    def manager_opened(self, now: float) -> None:
        """Forget the dials (and any firing) of an earlier manager."""
        self._dials.clear()
        self._failed = 0
        self._fired = False

    def round_completed(self, now: float) -> None:
        """Re-arm (the dial history is kept)."""
        self._fired = False


@final
class Interval(Trigger):
    """Fires every ``period`` seconds (measured from the last round).

    Args:
        period: Seconds between rounds, at least ``1e-6`` (one microsecond: a
            shorter one can vanish in the clock's rounding, ``now + period ==
            now``, and keep the regulator busy at one instant).
    """

    name = "interval"

    def __init__(self, period: float) -> None:
        self.period = check_period("Interval.period", period, allow_zero=False, minimum=MIN_PERIOD)
        self._last: float | None = None

    def manager_opened(self, now: float) -> None:
        """Count the period from the new manager's opening."""
        self._last = now

    def next_check(self, now: float) -> float:
        """The time the next round is due."""
        if self._last is None:
            self._last = now
        return self._last + self.period

    def check(self, view: TriggerView, now: float) -> bool:
        """True when ``period`` seconds have passed since the last round."""
        return now >= self.next_check(now)

    def round_completed(self, now: float) -> None:
        """Restart the period."""
        self._last = now
