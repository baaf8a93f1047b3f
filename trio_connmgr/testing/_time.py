"""Driving time and rounds: advance the clock, force a round, wait until idle."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import attrs
import trio
import trio.testing

from .._core._events import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionPruned,
    Event,
    RoundCompleted,
)
from .._core._state import PRUNED

if TYPE_CHECKING:
    from .._core._planner import PruneReason
    from .._core._state import Connection
    from .._events import EventReceiver
    from .._manager import ConnectionManager

# Smallest manual clock step: float rounding may leave a deadline a hair ahead.
_MIN_STEP = 1e-9


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
    """
    if not seconds >= 0:
        raise ValueError(f"advance seconds must be a non-negative number, got {seconds!r}")
    clock = _manual_clock()
    if clock is None:
        await trio.sleep(seconds)
        await settle()
        return
    target = trio.current_time() + seconds
    while True:
        await settle()
        now = trio.current_time()
        step = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if now + step > target:
            break
        clock.jump(max(step, _MIN_STEP))
    remaining = target - trio.current_time()
    if remaining > 0:
        clock.jump(remaining)
    await settle()


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
    """

    pruned: tuple[Connection, ...]
    completed: RoundCompleted

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
    async with manager.subscribe() as events:
        pruned = await manager.trim(force=force)
        completed = _last_round(events)
    await wait_idle(manager)
    ranked = sorted(pruned, key=lambda c: c.prune_reason.rank if c.prune_reason else 0)
    return RoundResult(tuple(ranked), completed)


def _last_round(events: EventReceiver) -> RoundCompleted:
    last: RoundCompleted | None = None
    while True:
        try:
            event = events.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        if isinstance(event, RoundCompleted):
            last = event
    if last is None:  # pragma: no cover - run_round always records its round
        raise AssertionError("the round emitted no RoundCompleted event")
    return last


@final
class RoundRecorder:
    """Records every regulation round of a manager (from :func:`record_rounds`).

    Attributes:
        rounds: Every round completed while recording, oldest first.
    """

    def __init__(self, manager: ConnectionManager) -> None:
        self._state = manager._state
        # Connections by id, so that a prune event can name the object.
        self._known: dict[int, Connection] = dict(manager._state.connections)
        self._pending: list[Connection] = []
        self.rounds: list[RoundResult] = []

    def _on_event(self, event: Event) -> None:
        # Called synchronously as each event is emitted, so a new connection is
        # still in the state and a pruned one has not been forgotten yet.
        if isinstance(event, ConnectionOpened):
            conn = self._state.connections.get(event.connection_id)
            if conn is not None:
                self._known[conn.id] = conn
        elif isinstance(event, ConnectionPruned):
            conn = self._known.get(event.connection_id)
            # Not an eviction by admission at hard (outside any round).
            if conn is not None and conn.close_reason == PRUNED:
                self._pending.append(conn)
        elif isinstance(event, ConnectionClosed):
            self._known.pop(event.connection_id, None)
        elif isinstance(event, RoundCompleted):
            self.rounds.append(RoundResult(tuple(self._pending), event))
            self._pending = []

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
            assert rounds.last is not None
            check_invariants(mgr, last_round=rounds.last)

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
