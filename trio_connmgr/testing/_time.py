"""Driving time and rounds: advance the clock, force a round, wait until idle."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import attrs
import trio
import trio.testing

from .._config import check_period
from .._core._events import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionPruned,
    Event,
    LockReleased,
    RoundCompleted,
)
from .._core._state import PRUNED

if TYPE_CHECKING:
    from .._config import Limits
    from .._core._planner import PruneReason
    from .._core._state import Connection
    from .._manager import ConnectionManager


def _manual_clock() -> trio.testing.MockClock | None:
    """The current MockClock if it only moves when told to (no autojump, rate 0)."""
    clock = trio.lowlevel.current_clock()
    if (
        isinstance(clock, trio.testing.MockClock)
        and math.isinf(clock.autojump_threshold)
        and clock.rate == 0
    ):
        return clock
    return None


async def settle() -> None:
    """Let every task run until all are blocked; the clock does not move.

    A thin name for :func:`trio.testing.wait_all_tasks_blocked`: after it, every
    task woken so far (a pruned connection's body, a lock's timer) has reacted.
    """
    await trio.testing.wait_all_tasks_blocked()


async def advance(seconds: float) -> None:
    """Let ``seconds`` pass on the manager clock, then wait until every task is blocked.

    Works under every clock:

    - pytest-trio's ``autojump_clock`` (``MockClock(autojump_threshold=0)``):
      it sleeps, and the clock jumps from deadline to deadline at once;
    - a manual ``MockClock()`` (the ``mock_clock`` fixture, ``rate=0``, no
      autojump): it steps the clock itself, deadline by deadline up to
      ``now + seconds``, letting tasks react at each one, exactly as autojump
      would (so a regulator that wakes at a grace end sees that time, not the end
      of the jump);
    - the real clock: it really sleeps (avoid in tests).

    Each task woken at ``now + seconds`` has run when it returns. ``seconds``
    may be 0 (then it only settles). Always checkpoints.

    Raises:
        ConfigError: ``seconds`` is not a finite, non-negative number.
    """
    seconds = check_period("advance seconds", seconds)
    clock = _manual_clock()
    if clock is None:
        await trio.sleep(seconds)
        await settle()
        return
    target = trio.current_time() + seconds
    await _step_clock(clock, until=target)
    remaining = target - trio.current_time()
    if remaining > 0:
        clock.jump(remaining)
    await settle()


async def _step_clock(
    clock: trio.testing.MockClock,
    *,
    until: float = math.inf,
    done: Callable[[], bool] = lambda: False,
) -> None:
    """Move a manual ``clock`` from deadline to deadline, letting every task react
    at each one, until ``done()``, or until the next deadline is past ``until``
    (or there is none). Leaves the clock at the last deadline it reached."""
    while True:
        await settle()
        if done():
            return
        step = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if math.isinf(step) or trio.current_time() + step > until:
            return
        # Exactly to the deadline, as autojump does (a fixed minimum step would pass
        # deadlines closer together than it, and ``until``); at least one ulp of the
        # clock, so that the clock always moves.
        clock.jump(max(step, math.ulp(trio.current_time())))


def _closers_pending(manager: ConnectionManager) -> bool:
    """Whether closer tasks of pruned tracked connections are still running."""
    return bool(manager._nursery.child_tasks)


async def wait_idle(manager: ConnectionManager) -> None:
    """Wait until the manager has nothing left to do at the current time.

    Returns once every task is blocked (:func:`trio.testing.wait_all_tasks_blocked`),
    so the regulator is parked (sleeping until its next trigger or deadline) and
    every pruned connection's body has been cancelled and has exited, and no
    closer task of a pruned tracked connection (``close()`` callbacks) is left
    running. Closers sleep on the clock at most ``close_timeout`` seconds: under
    ``autojump_clock`` (or the real clock) it lets the clock move to finish them;
    under a manual ``MockClock`` it never moves the clock and returns with such
    closers still pending (use :func:`advance`). Always checkpoints.
    """
    manual = _manual_clock() is not None
    while True:
        await settle()
        if not _closers_pending(manager) or manual:
            return
        # Every task is blocked and a closer is still running: it waits on the
        # clock (close() sleeping, or the close_timeout cut-off).
        step = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if math.isinf(step):  # pragma: no cover - closers always have a deadline
            return
        await trio.sleep(step)


@final
@attrs.frozen
class RoundResult:
    """One regulation round, as seen by a test.

    Attributes:
        pruned: The connections it pruned, in rank order (each has
            ``close_reason == "pruned"`` and a ``prune_reason``).
        completed: Its :class:`trio_connmgr.RoundCompleted` event (trigger,
            counts before and after, victims by phase, unprunable connections).
        limits: The manager's effective limits as the round completed (sensing
            may change them afterwards); ``None`` if not recorded.
    """

    pruned: tuple[Connection, ...]
    completed: RoundCompleted
    limits: Limits | None = None
    # What was seen as each victim was pruned and cannot be seen afterwards
    # (its peer protected, a lock dropped with it, a protocol taken below its
    # grant.min), in the words check_invariants reports.
    _violations: tuple[str, ...] = attrs.field(default=(), repr=False, alias="violations")
    # The manager clock as each victim was pruned, in the order of ``pruned``
    # (empty for a result made by hand: the round's end stands for them).
    _pruned_at: tuple[float, ...] = attrs.field(default=(), repr=False, alias="pruned_at")

    @property
    def reasons(self) -> tuple[PruneReason, ...]:
        """The ``prune_reason`` of each pruned connection, in rank order."""
        return tuple(conn.prune_reason for conn in self.pruned if conn.prune_reason is not None)


async def force_round(manager: ConnectionManager, *, force: bool = False) -> RoundResult:
    """Run one regulation round now, wait until the manager is idle, and describe it.

    The round runs whatever the triggers and the silence period say (it is
    :meth:`ConnectionManager.trim`). With ``force=True`` it is an emergency round:
    it may revoke locks and take protocols below their ``grant.min`` when nothing
    else is left. Pass the result to :func:`check_invariants` as ``last_round``.

    Blocks for the round and then as :func:`wait_idle` does.
    """
    async with record_rounds(manager) as recorder:
        await manager.trim(force=force)
    await wait_idle(manager)
    result = recorder.last
    if result is None:  # pragma: no cover - trim() always completes its round
        raise AssertionError("the round emitted no RoundCompleted event")
    return result


@final
class RoundRecorder:
    """Records every regulation round of a manager (from :func:`record_rounds`).

    Attributes:
        rounds: Every round completed while recording, oldest first.
    """

    def __init__(self, manager: ConnectionManager) -> None:
        self._manager = manager
        self._state = manager._state
        # Connections by id, so that a prune event can name the object.
        self._known: dict[int, Connection] = dict(manager._state.connections)
        self._pending: list[Connection] = []
        self._pruned_at: list[float] = []
        # The regulator's ``applying`` as they were pruned: a round that raised as
        # it pruned never completes, and its victims are not those of the next
        # round, which applies under another. (What was seen as they were pruned
        # is kept, and reported with the next round.)
        self._pending_round: tuple[int, int] | None = None
        self._violations: list[str] = []
        # Connections whose held lock was just dropped because they closed.
        self._dropped_locks: set[int] = set()
        # A round already pruning (it yields between chunks) may have pruned some
        # of its victims before recording began: it is not recorded, half seen.
        # It completes while the regulator's ``applying`` is still this one. (One
        # still planning has pruned nothing: it is recorded. Between rounds there
        # is none: the last round that pruned has completed, or raised as it
        # pruned, uncounted if a trim() raised, and then the next round applies
        # under the same ``applying``.)
        self._regulator = regulator = manager._regulator
        self._skip_round: tuple[int, int] | None = (
            regulator.applying if regulator._round_lock.locked() else None
        )
        self.rounds: list[RoundResult] = []

    def _on_event(self, event: Event) -> None:
        # Called synchronously as each event is emitted, so a new connection is
        # still in the state and a pruned one has not been forgotten yet.
        if isinstance(event, ConnectionOpened):
            conn = self._state.connections.get(event.connection_id)
            if conn is not None:
                self._known[conn.id] = conn
        elif isinstance(event, LockReleased):
            if event.how == "dropped":
                self._dropped_locks.add(event.connection_id)
        elif isinstance(event, ConnectionPruned):
            conn = self._known.get(event.connection_id)
            # Not an eviction by admission at hard (outside any round).
            if conn is not None and conn.close_reason == PRUNED:
                if self._pending_round != self._regulator.applying:
                    self._pending, self._pruned_at = [], []
                    self._pending_round = self._regulator.applying
                self._pending.append(conn)
                self._pruned_at.append(event.time)
                self._inspect(conn, event)
        elif isinstance(event, ConnectionClosed):
            self._known.pop(event.connection_id, None)
            self._dropped_locks.discard(event.connection_id)
        elif isinstance(event, RoundCompleted):
            skip, self._skip_round = self._skip_round, None
            if self._pending_round != self._regulator.applying:
                self._pending, self._pruned_at = [], []
            if skip != self._regulator.applying:
                self.rounds.append(
                    RoundResult(
                        tuple(self._pending),
                        event,
                        self._manager.limits,
                        violations=tuple(self._violations),
                        pruned_at=tuple(self._pruned_at),
                    )
                )
            self._pending = []
            self._pruned_at = []
            self._violations = []

    def _inspect(self, conn: Connection, event: ConnectionPruned) -> None:
        """Check what only the moment of pruning shows (SPEC §12.2 and §12.3).

        The connection's streams are closed and its usage given back by now;
        its locks, if it held any, were just dropped with it.
        """
        state = self._state
        if conn.peer in state.protected:
            self._violations.append(
                f"connection #{conn.id} was pruned though its peer {conn.peer!r} is protected "
                "(invariant 2)"
            )
        if conn.id in self._dropped_locks:
            self._violations.append(
                f"connection #{conn.id} was pruned while a lock protected it; a round revokes "
                "a lock before pruning its connection (invariant 2)"
            )
        if not event.reason.forced:
            for name in event.protocols:
                member = state.members.get(name)
                if member is not None and member.usage < member.grant.min:
                    self._violations.append(
                        f"pruning connection #{conn.id} ({event.reason}) took {name!r} to "
                        f"usage {member.usage}, below its grant.min of {member.grant.min}, "
                        "without being a forced take (invariant 3)"
                    )

    @property
    def last(self) -> RoundResult | None:
        """The latest round completed so far, or ``None``."""
        return self.rounds[-1] if self.rounds else None

    @property
    def pruned(self) -> list[Connection]:
        """Every connection pruned while recording, in order."""
        return [conn for result in self.rounds for conn in result.pruned]


@asynccontextmanager
async def record_rounds(manager: ConnectionManager) -> AsyncIterator[RoundRecorder]:
    """Record the rounds a manager runs during an ``async with`` block.

    Rounds started by the regulator itself (a trigger fired) and by
    :meth:`ConnectionManager.trim` are both recorded, with the connections
    they pruned::

        async with record_rounds(mgr) as rounds:
            await advance(31)                       # grace ends, a round runs
            check_invariants(mgr, last_round=rounds.last)  # fails if none ran

    A round already pruning as recording begins (a large round yields between
    chunks) is not recorded: some of its victims may have been pruned before.

    Recording is synchronous (nothing is buffered or dropped). Entering
    checkpoints; exiting never blocks.
    """
    await trio.lowlevel.checkpoint()
    recorder = RoundRecorder(manager)
    hub = manager._hub
    hub.add_writer(recorder._on_event)
    try:
        yield recorder
    finally:
        if recorder._on_event in hub._writers:
            hub._writers.remove(recorder._on_event)
            hub._update_sink()
