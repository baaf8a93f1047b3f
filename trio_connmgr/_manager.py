"""open_connection_manager and ConnectionManager: the Trio shell around the state.

The manager owns one internal nursery holding the regulator, the lock timer,
sensing (when enabled) and the closer tasks of pruned tracked connections.
Everything that decides lives in ``_core``; this module applies decisions.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from os import PathLike, fspath
from types import TracebackType
from typing import IO, Any, final

import attrs
import trio

from ._config import (
    Direction,
    Limits,
    Quota,
    check_address,
    check_bool,
    check_count,
    check_not_async,
    check_peer,
    check_period,
    check_positive_float,
)
from ._core._events import AdmissionRefused
from ._core._planner import Phase, PruneReason, exclusion, plan_now
from ._core._scoring import RecencyScorer, tally
from ._core._state import CLOSED, PRUNED, RELEASED, Connection, EnrollmentState, Scorer, State
from ._core._stats import Statistics, snapshot
from ._enrollment import Enrollment, parse_direction
from ._errors import ConfigError, ConnectionRefused, ConnMgrError, ManagerClosed, call_each
from ._events import EventHub, EventReceiver, TraceWriter
from ._regulator import Regulator, lock_revocations
from .admission import Admission, enforce_hard_cap
from .sensing import Sensing
from .triggers import HighWater, Pressure, Trigger

logger = logging.getLogger("trio_connmgr")

CloseFn = Callable[[], Awaitable[object]]
# Enum member lookups cost ~60 ns on Python 3.11; admission is a hot path.
_INBOUND = Direction.INBOUND


@final
@attrs.frozen
class Explanation:
    """Why a connection is or is not prunable right now (:meth:`ConnectionManager.explain`).

    Attributes:
        connection_id: The connection's id.
        prunable: Whether a round could prune it at all now: it is not closed,
            protected, locked or in its grace period (``excluded_by`` is ``None``).
            A locked one is not, even where a round would revoke its locks
            first (see ``would_prune``).
        would_prune: Whether a round run now (not forced) would prune it. At
            ``hard`` or under sensing pressure that round may first revoke its
            locks (``excluded_by`` still says ``"locked"``); ``phase``, ``rank``
            and ``reason`` then come from the plan it makes after revoking.
        excluded_by: ``"closed"``, ``"protected"``, ``"locked"``, ``"grace"`` or ``None``.
        protected_tags: Tags protecting its peer.
        grace_until: Manager clock time its grace period ends.
        locked_by: Protocols holding locks on it.
        tally: Its tally now (``None`` if closed).
        phase: The phase that would take it (``None`` if it would not be taken).
        rank: Its position among the victims of a round run now (``None`` if not one).
        min_blocked: Whether it is kept only to hold a protocol at its ``grant.min``.
        text: The whole answer in one readable sentence (also ``str(explanation)``).
        reason: The :class:`PruneReason` a round run now would give it (its
            ``protocol`` names the burst's or offending protocol), or ``None``.
        safe_because: Every reason it is safe, in order: ``"protected"``,
            ``"locked"``, ``"grace"`` (``excluded_by`` is the first; empty if none).
        lock_expires_at: Manager clock time its last lock expires, if locked.
        min_blocked_by: The protocols a prune would take below ``grant.min``.
    """

    connection_id: int
    prunable: bool
    would_prune: bool
    excluded_by: str | None
    protected_tags: tuple[str, ...]
    grace_until: float
    locked_by: tuple[str, ...]
    tally: float | None
    phase: Phase | None
    rank: int | None
    min_blocked: bool
    text: str
    reason: PruneReason | None = None
    safe_because: tuple[str, ...] = ()
    lock_expires_at: float | None = None
    min_blocked_by: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.text


_BOTH_FAILED = "the connection manager failed and the body of its block raised"
_TRIGGER_HOOKS = (
    "manager_opened",
    "check",
    "next_check",
    "connection_opened",
    "dial_reported",
    "round_completed",
)
"""A trigger's methods the manager calls without awaiting."""

_TRIGGERS_IN_USE: set[int] = set()
"""The ids of the triggers that keep state (``Trigger.keeps_state``) of the managers
open now: such a trigger (its windows, what it latched) serves one manager at a
time, as a Sensing does."""


def check_manager(field: str, value: object) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a :class:`ConnectionManager`.

    For the adapters and extras that take one (``field`` names the argument).
    """
    if not isinstance(value, ConnectionManager):
        raise ConfigError(f"{field} must be a ConnectionManager, got {value!r}")


def _carries_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is, or is a group holding, a :class:`trio.Cancelled`.

    Such an exception must travel through the nurseries and scopes it crosses:
    holding it back to re-raise later would take it out of the scope it
    belongs to.
    """
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None


@final
class _ConnectionContext:
    """``async with mgr.connection(...)``: see :meth:`ConnectionManager.connection`."""

    __slots__ = (
        "_address",
        "_checkpoint",
        "_conn",
        "_direction",
        "_entered",
        "_manager",
        "_peer",
        "_scope",
    )
    # Set by __aenter__ (``async with`` never calls __aexit__ without it).
    _conn: Connection
    _scope: trio.CancelScope

    def __init__(
        self,
        manager: ConnectionManager,
        peer: Hashable,
        direction: Direction,
        address: str | None,
        checkpoint: bool = True,
    ) -> None:
        self._manager = manager
        self._peer = peer
        self._direction = direction
        self._address = address
        # False only for adapters that have just had a schedule point.
        self._checkpoint = checkpoint
        self._entered = False

    async def __aenter__(self) -> Connection:
        if self._checkpoint:
            await trio.lowlevel.checkpoint()
        else:
            # Just after a checkpoint (an accept, a dial): no schedule point
            # again, but a cancelled caller is not admitted.
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._entered:
            # A second connection and scope would replace the first's: that
            # connection would stay counted, and the scopes would exit out of order.
            raise ConfigError("this connection context is already entered")
        scope = trio.CancelScope()
        conn = self._manager._admit(self._peer, self._direction, self._address, scope)
        scope.__enter__()
        self._conn = conn
        self._scope = scope
        self._entered = True
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._entered = False
        conn = self._conn
        try:
            if not conn.closed:
                conn._scope = None
                self._manager._state.close_connection(conn, CLOSED)
        except BaseException:
            # An event writer raised what it must not catch (a KeyboardInterrupt):
            # the scope exits all the same (Trio's scopes must exit in order).
            self._scope.__exit__(exc_type, exc, tb)
            raise
        return self._scope.__exit__(exc_type, exc, tb)


@final
class _Closer:
    """Attached to a tracked connection: when the state closes it, run ``close()``."""

    __slots__ = ("_close", "_manager", "conn")

    def __init__(self, manager: ConnectionManager, close: CloseFn) -> None:
        self._manager = manager
        self._close = close
        self.conn: Connection | None = None

    def cancel(self, reason: str | None = None) -> None:
        conn = self.conn
        if conn is not None and conn.close_reason == RELEASED:
            return  # the transport ended it; nothing to close
        self._manager._schedule_close(self)

    async def run(self, failures: list[BaseException]) -> None:
        """Await ``close()`` once, in a task of a batch (see ``_run_closers``).

        Never lets an exception reach the batch's nursery, which would cancel
        the other closes: a ``BaseException`` that is not a cancellation goes to
        ``failures``, raised once the whole batch is done.
        """
        manager = self._manager
        try:
            closing = self._close()
            if not inspect.isawaitable(closing):
                # It ran (a plain function): say what went wrong, not just that
                # None cannot be awaited.
                raise TypeError(
                    f"close() returned {closing!r}, not an awaitable: track(close=...) "
                    "takes an async function, such as stream.aclose"
                )
            await closing
        except BaseException as exc:
            # Split off the cancellation (the batch's scope is shielded: only its
            # deadline cancels a close), which a close using a nursery may raise
            # in a group together with errors of its own.
            cancelled: BaseException | None
            error: BaseException | None
            if isinstance(exc, trio.Cancelled):
                cancelled, error = exc, None
            elif isinstance(exc, BaseExceptionGroup):
                cancelled, error = exc.split(trio.Cancelled)
            else:
                cancelled, error = None, exc
            if isinstance(error, Exception):  # an error, or a group of errors only
                manager._close_errors += 1
                logger.error("close() of %r raised", self.conn, exc_info=error)
            elif error is not None:
                failures.append(error)
            if cancelled is not None:
                manager._close_timeouts += 1
                logger.warning(
                    "close() of %r did not finish within %ss", self.conn, manager.close_timeout
                )
                if cancelled is exc:
                    raise
                raise cancelled from None


@final
class ConnectionManager:
    """A connection manager (from :func:`open_connection_manager`).

    All methods are safe to call from any task of the Trio run that opened it.
    Synchronous methods never block; async ones always checkpoint.
    """

    def __init__(
        self,
        state: State,
        nursery: trio.Nursery,
        *,
        triggers: Sequence[Trigger],
        silence_period: float,
        close_timeout: float,
        max_round_failures: int,
        failure_window: float,
        admission: Admission | None,
    ) -> None:
        self._state = state
        self._nursery = nursery
        self.close_timeout = close_timeout
        self._admission = admission
        if admission is not None:
            state.close_hooks.append(admission.released)
        self._hub = EventHub(self._set_sink)
        self._regulator = Regulator(
            self,
            triggers,
            silence_period=silence_period,
            max_failures=max_round_failures,
            failure_window=failure_window,
        )
        self._open_hooks = self._regulator.open_hooks
        self._timer: trio.CancelScope | None = None
        self._services: trio.Nursery | None = None
        self._fatal: ConnMgrError | None = None
        self._close_errors = 0
        self._close_timeouts = 0
        # Closers waiting for the next batch (see _schedule_close).
        self._closing: list[_Closer] = []
        self._sensing: Sensing | None = None
        self._sensor_readings: dict[str, dict[str, float]] = {}

    # -------------------------------------------------------------- internals

    def _set_sink(self, sink: Callable[[Any], None] | None) -> None:
        self._state.sink = sink

    def _check_connection(self, conn: object) -> None:
        if not isinstance(conn, Connection) or conn._state is not self._state:
            raise ConfigError(f"expected a Connection of this manager, got {conn!r}")

    def _check_open(self) -> None:
        if self._state.closed:
            raise ManagerClosed("the connection manager is closed")

    def _refuse(
        self, reason: str, detail: str, peer: Hashable, direction: Direction, address: str | None
    ) -> ConnectionRefused:
        state = self._state
        state.refusals[reason] = state.refusals.get(reason, 0) + 1
        if state.sink is not None:
            state.sink(
                AdmissionRefused(
                    trio.current_time(), str(peer), direction.value, address, reason, detail
                )
            )
        return ConnectionRefused(reason, detail)

    def _admit(
        self, peer: Hashable, direction: Direction, address: str | None, scope: Any
    ) -> Connection:
        """Admission, then counting: the common half of connection() and track()."""
        state = self._state
        if state.closed:
            raise ManagerClosed("the connection manager is closed")
        if type(peer) is not str:  # a str always identifies a peer
            check_peer("peer", peer)
        if address is not None and type(address) is not str:
            check_address("address", address)
        admission = self._admission
        if direction is _INBOUND:
            if admission is not None:
                admission.admit(self, peer, address)
            elif state.hard is not None:
                enforce_hard_cap(self, peer, address)
        conn = state.open_connection(peer, direction, address, scope)
        try:
            if admission is not None and direction is _INBOUND:
                admission.admitted(conn)
            if self._open_hooks:
                now = conn.opened_at
                for trigger in self._open_hooks:
                    if trigger.connection_opened(now):
                        # (Before any later hook may raise: the wake-up stands.)
                        self._regulator.fired(trigger)
        except BaseException:
            # A trigger's hook raised: the caller gets its error and nothing
            # stays counted (nor is its scope cancelled or its close() called).
            conn._scope = None
            state.close_connection(conn, CLOSED)
            raise
        if len(state.connections) > state.high:
            self._regulator.poke()
        return conn

    def _wake_if_above_high(self) -> None:
        state = self._state
        # (Under sensing pressure, rounds run above low: SPEC §8.)
        if state.count > state.high or (self._regulator.pressure and state.count > state.low):
            # A lock ended, a burst closed, an enrollment left or a protection
            # was lifted: connections may have become prunable.
            self._regulator.poke(prunable_changed=True)

    def _lock_deadline(self, expires_at: float) -> None:
        timer = self._timer
        if timer is not None and expires_at < timer.deadline:
            timer.deadline = expires_at

    def _prune(self, conn: Connection, reason: PruneReason | None) -> bool:
        """Prune ``conn`` now with ``reason``: close its streams, cancel its scope.

        The one path by which rounds remove their victims. Returns False if it
        was already closed.
        """
        return self._state.close_connection(conn, PRUNED, reason)

    def _schedule_close(self, closer: _Closer) -> None:
        """Have ``closer``'s ``close()`` awaited in the next batch of closes.

        The closes requested in one step (a chunk of a round, the manager's
        exit) are awaited together, each in a task of its own, under one
        shielded scope cut off after ``close_timeout``: one task and one scope
        per batch besides the closes, instead of a scope for each.
        """
        if not self._closing:
            self._nursery.start_soon(self._run_closers)
        self._closing.append(closer)

    async def _run_closers(self) -> None:
        closers, self._closing = self._closing, []
        failures: list[BaseException] = []
        with trio.move_on_after(self.close_timeout, shield=True):
            async with trio.open_nursery() as nursery:
                for closer in closers:
                    nursery.start_soon(closer.run, failures)
                # Each close keeps only its own closer alive from here on.
                del closers
        if failures:
            if len(failures) == 1:
                raise failures[0]
            raise BaseExceptionGroup("close() of tracked connections raised", failures)

    def _fail(self, error: ConnMgrError) -> None:
        """A service failed for good: stop the manager and raise ``error`` from it."""
        if self._fatal is None:
            self._fatal = error
        if self._services is not None:
            self._services.cancel_scope.cancel()

    async def _run_lock_timer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        state = self._state
        task_status.started()
        while True:
            with trio.CancelScope(deadline=state.next_lock_expiry()) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            if state.expire_locks(trio.current_time()):
                self._wake_if_above_high()

    def _close(self) -> None:
        """Close everything synchronously: enrollments' tasks, connections, events."""
        state = self._state
        if state.closed:
            return
        state.closed = True

        def leave(member: EnrollmentState) -> None:
            assert isinstance(member, Enrollment)
            if member._nursery is not None:
                member._nursery.cancel_scope.cancel("connection manager closed")
            try:
                state.leave(member)
            finally:
                # Its block may take a while yet to exit (its tasks finishing):
                # tasks waiting for its grant to change learn now that it has left.
                member._left()

        # (A trace writer raising what it must not catch meanwhile, such as a
        # KeyboardInterrupt from its file, is held by the hub until the end.)
        with self._hub.closing():
            try:
                # (The state is closed: leaving regrants nobody, so no on_grant
                # runs. Should one leaving raise all the same (a trace file's
                # KeyboardInterrupt), the others leave, their tasks cancelled;
                # then it is raised.)
                call_each(leave, list(state.members.values()))
            finally:
                # Whatever a callback raised, every connection is closed (tracked
                # ones' close() awaited) and every subscription ended.
                state.close()

    # ------------------------------------------------------------ connections

    def connection(
        self,
        peer: Hashable,
        *,
        direction: Direction | str,
        address: str | None = None,
    ) -> _ConnectionContext:
        """Count a connection for the duration of an ``async with`` block.

        Entering checkpoints, then runs admission (raising
        :class:`ConnectionRefused`) and yields the :class:`Connection`. The body
        runs inside the connection's cancel scope: pruning cancels it (quietly:
        the block then exits without an exception; ``conn.close_reason`` says
        why). Exiting never blocks.
        """
        return _ConnectionContext(self, peer, parse_direction(direction), address)

    def track(
        self,
        peer: Hashable,
        *,
        direction: Direction | str,
        address: str | None = None,
        close: CloseFn,
    ) -> Connection:
        """Count a connection whose lifetime a transport owns. Synchronous.

        When the manager prunes it (or closes), it awaits ``close()`` exactly once
        in a task of its own, shielded and cut off after ``close_timeout``. The
        transport calls ``conn.release()`` when the connection ends by itself
        (``close()`` is then not called). Raises :class:`ConnectionRefused` on
        admission failure.

        ``close`` is an async function (such as ``stream.aclose``) or any callable
        returning an awaitable. A plain function (``sock.close``) is called all
        the same, then logged and counted in ``close_errors`` as a ``TypeError``.
        An error raised by ``close()`` is logged and counted too.
        """
        if not callable(close):
            # (Whether it is async shows only when it is called: a plain function
            # may return an awaitable. One that does not is logged and counted.)
            raise ConfigError(f"track close must be an async callable, got {close!r}")
        closer = _Closer(self, close)
        conn = self._admit(peer, parse_direction(direction), address, closer)
        closer.conn = conn
        return conn

    @property
    def connections(self) -> tuple[Connection, ...]:
        """The connections counted now (a new tuple each call)."""
        return tuple(self._state.connections.values())

    @property
    def limits(self) -> Limits:
        """The effective limits now (``high`` is the global share)."""
        state = self._state
        return Limits(state.low, state.high, state.hard)

    # ------------------------------------------------------------- enrollment

    @asynccontextmanager
    async def enroll(
        self,
        name: str,
        *,
        quota: Quota,
        scorer: Scorer | None = None,
        weight: float = 1.0,
        strict: bool = False,
        on_grant: Callable[[Any], object] | None = None,
    ) -> AsyncIterator[Enrollment]:
        """Enrol a protocol for the duration of an ``async with`` block.

        Yields an :class:`Enrollment` whose nursery runs the protocol's tasks.
        Leaving the block cancels those tasks, closes the protocol's streams and
        returns its quota. A task that crashes cancels the block and its error
        propagates out of it (as an exception group, like a nursery's, which
        also holds the body's error if the body raised one while cancelled).
        An error of the body alone propagates unwrapped.

        Args:
            name: The protocol's name, unique among the manager's enrollments.
            quota: The share of the node's connections asked for (:class:`Quota`,
                or :meth:`Quota.share` for fractions of ``G``).
            scorer: ``scorer(stream) -> float`` in ``[0, 1]``, called only when
                connections are ranked: rounds, :meth:`explain`, eviction at
                ``hard`` (default: a :class:`RecencyScorer`).
            weight: The protocol's weight in a connection's tally.
            strict: Refuse (:class:`QuotaDenied`) rather than accept less than
                ``quota.min``.
            on_grant: ``on_grant(grant)``, a synchronous function called each time
                the enrollment's grant changes, first with its initial grant during
                ``enroll()``; an exception from it is logged, not raised.

        Raises:
            ConfigError: empty or duplicate ``name``, bad ``quota``, ``weight`` or
                ``scorer``, a ``strict`` that is not ``True`` or ``False``, or an
                ``async`` scorer or ``on_grant`` (both are called, not awaited).
            QuotaDenied: ``strict=True`` and the min cannot be granted in full:
                it is above ``G``, or more than the other strict enrollments'
                mins leave. A strict enrollment's min is reserved before the
                others', so enrollments that come later do not reduce it (only
                ``G`` shrinking below the strict mins together does).
            ManagerClosed: the manager is closed.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"enroll name must be a non-empty string, got {name!r}")
        if not isinstance(quota, Quota):
            raise ConfigError(f"enroll quota must be a Quota, got {quota!r}")
        weight = check_positive_float("enroll weight", weight)
        if scorer is None:
            scorer = RecencyScorer()
        elif not callable(scorer):
            raise ConfigError(f"enroll scorer must be callable, got {scorer!r}")
        if on_grant is not None and not callable(on_grant):
            raise ConfigError(f"enroll on_grant must be callable, got {on_grant!r}")
        check_not_async("enroll scorer", scorer)
        check_not_async("enroll on_grant", on_grant)
        check_bool("enroll strict", strict)
        await trio.lowlevel.checkpoint()
        self._check_open()
        state = self._state
        enrollment = Enrollment(
            name, quota, scorer, weight, strict, state, manager=self, on_grant=on_grant
        )
        mins = {member: member.grant.min for member in state.members.values()}
        try:
            state.enrol(enrollment)
        except BaseException:
            # Counted, then an on_grant callback raised what it must not catch
            # (a KeyboardInterrupt, a SystemExit): enroll() fails, so leave.
            if state.members.get(name) is enrollment:
                state.leave(enrollment)
            raise
        if any(member.grant.min < before for member, before in mins.items()):
            # Its arrival scaled the others' grant.mins down: connections kept
            # for one may be prunable now.
            self._wake_if_above_high()
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                enrollment._nursery = nursery
                try:
                    yield enrollment
                except BaseException as exc:
                    if _carries_cancelled(exc):
                        raise  # cancellation belongs to the scopes around us
                    # The body's own error leaves unwrapped, after the tasks stop.
                    body_error = exc
                finally:
                    enrollment._body_done = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if body_error is None:
                raise
            # A task crashed and the body raised too: both in one group, as a
            # nursery reports them.
            raise BaseExceptionGroup(group.message, [*group.exceptions, body_error]) from None
        finally:
            enrollment._nursery = None
            try:
                # (Its leaving regrants the others: their on_grant callbacks may
                # raise what they must not catch, a KeyboardInterrupt.)
                state.leave(enrollment)
            finally:
                enrollment._left()
                self._wake_if_above_high()
        if body_error is not None:
            raise body_error

    # ---------------------------------------------------------- protection

    def protect(self, peer: Hashable, tag: str) -> None:
        """Never prune connections of ``peer`` while it has at least one tag."""
        check_peer("protect peer", peer)
        if not isinstance(tag, str) or not tag:
            raise ConfigError(f"protect tag must be a non-empty string, got {tag!r}")
        self._state.protect(peer, tag)

    def unprotect(self, peer: Hashable, tag: str) -> bool:
        """Remove ``tag`` from ``peer``; return whether it is still protected by another."""
        check_peer("unprotect peer", peer)
        if not isinstance(tag, str):
            raise ConfigError(f"unprotect tag must be a string, got {tag!r}")
        state = self._state
        was_protected = peer in state.protected
        still = state.unprotect(peer, tag)
        if was_protected and not still:
            # Its connections may be prunable now. (Not when nothing changed: a
            # wake-up would cut short a round's wait after it fell short, and
            # one called from a scorer would make rounds follow each other.)
            self._wake_if_above_high()
        return still

    def is_protected(self, peer: Hashable) -> bool:
        """Whether ``peer`` has at least one protection tag."""
        check_peer("is_protected peer", peer)
        return peer in self._state.protected

    # ------------------------------------------------------------ regulation

    def report_dial(self, peer: Hashable, *, ok: bool, latency: float | None = None) -> None:
        """Report a dial's outcome (adapters call it); feeds triggers and sensing.

        Once the manager has closed, a report (a dial that ended after it) is
        ignored: its sensing may drive another manager by then.
        """
        check_peer("report_dial peer", peer)
        check_bool("report_dial ok", ok)
        if latency is not None:
            latency = check_period("report_dial latency", latency)
        if self._state.closed:
            return
        now = trio.current_time()
        if self._sensing is not None:
            # (It never raises: a sensor that does is counted.)
            self._sensing.dial_reported(ok, latency, now)
        regulator = self._regulator

        def tell(trigger: Trigger) -> None:
            if trigger.dial_reported(ok, latency, now):
                regulator.fired(trigger)

        # Every trigger is told even if one's hook raises (a bug its caller sees,
        # raised after): the dial happened all the same.
        call_each(tell, regulator.dial_hooks)

    async def trim(self, *, force: bool = False) -> list[Connection]:
        """Run one regulation round now; return the connections it pruned.

        The round runs at once: the silence period holds back only the regulator's
        own rounds (a round that prunes starts it again for them).

        With ``force=True`` the round may revoke locks (lowest tally first) and
        take protocols below their ``grant.min`` when nothing else is left. Without
        it, the round revokes locks only in an emergency, as the regulator's do: the
        count at ``hard``, or sensing pressure.

        Cancelling the caller while the round plans leaves no trace. Once the
        round has planned it runs to its end (it revokes and prunes in chunks,
        which must all be recorded) and returns; the cancellation then reaches
        the caller at its next checkpoint.

        Raises:
            ManagerClosed: the manager is closed, or closed while this call
                waited for a round under way to end or while its round planned
                (which then leaves no trace either).
        """
        check_bool("trim force", force)
        await trio.lowlevel.checkpoint()
        self._check_open()
        return await self._regulator.run_round("force" if force else "trim", forced=force)

    # --------------------------------------------------------- observability

    def statistics(self) -> Statistics:
        """A frozen :class:`Statistics` snapshot: counts, limits, protocols, rounds,
        sensors, refusals and events (every field is documented on the class).

        Synchronous and cheap: it copies counters (one pass over the enrollments,
        never over connections, and no scorer is called).
        """
        return snapshot(
            self._state,
            close_errors=self._close_errors,
            close_timeouts=self._close_timeouts,
            sensors={k: dict(v) for k, v in self._sensor_readings.items()},
            events_emitted=self._hub.emitted,
            events_dropped=self._hub.dropped,
            subscribers=self._hub.subscribers,
        )

    @asynccontextmanager
    async def subscribe(self, buffer: int = 1024) -> AsyncIterator[EventReceiver]:
        """Receive events for the duration of an ``async with`` block.

        Yields an :class:`EventReceiver`, a receive channel of frozen events. Its
        buffer holds ``buffer`` events; when full, the oldest is dropped and
        counted, so a slow subscriber never blocks the manager. Once the manager
        closes, the receiver drains its buffer and then raises
        :class:`trio.EndOfChannel` (an ``async for`` loop ends). Entering
        checkpoints; exiting never blocks and discards what is still buffered.

        Raises:
            ConfigError: ``buffer`` is not a positive integer.
        """
        receiver = self._hub.subscribe(buffer)
        try:
            await trio.lowlevel.checkpoint()
            yield receiver
        finally:
            receiver.close()

    def explain(self, conn: Connection) -> Explanation:
        """Would ``conn`` be pruned by a round run now, and why or why not.

        Synchronous. It plans a round over the current state without applying it
        (so it calls the scorers, like a round would) and reports every reason the
        connection is safe, or the phase, rank and reason that would take it.
        Like a round, it first expires the locks whose ttl is up.
        """
        state = self._state
        self._check_connection(conn)
        now = trio.current_time()
        if state.expire_locks(now):
            # As a round run now would first (the lock timer may not have run yet
            # at this instant): a lock whose ttl is up keeps nothing.
            self._wake_if_above_high()
        why = exclusion(state, conn, now)
        tags = tuple(sorted(state.protected.get(conn.peer, ())))
        grace_until = conn.opened_at + state.grace_period
        locks = conn._locks
        locked_by = tuple(sorted({lock._member.name for lock in locks}))
        lock_expires_at = max((lock.expires_at for lock in locks), default=None)
        safe: list[str] = []
        if not conn.closed:
            if tags:
                safe.append("protected")
            if locks:
                safe.append("locked")
            if now < grace_until:
                safe.append("grace")
        value = None if conn.closed else tally(conn)
        reason = None
        min_blocked = False
        blocked_by: tuple[str, ...] = ()
        revocable = False
        emergency = self._regulator.emergency()
        if why is None or (why == "locked" and emergency):
            plan = plan_now(state, now, trigger="explain")
            if emergency:
                # At hard or under sensing pressure a round revokes locks for what
                # it is short of (SPEC §6), as the regulator does, then plans again
                # and prunes that plan's victims: the answer is that plan's.
                wanted = plan.shortfall - plan.excluded.get("grace", 0)
                if wanted > 0:
                    revoked = set(lock_revocations(state, now, wanted, forced=False, plan=plan))
                    if revoked:
                        revocable = conn in revoked
                        plan = plan_now(state, now, trigger="explain", unlocked=revoked)
        if why is None or revocable:
            for victim, why_pruned in zip(plan.connections, plan.reasons, strict=True):
                if victim is conn:
                    reason = why_pruned
                    break
            min_blocked = any(c is conn for c in plan.min_blocked)
            if min_blocked:
                # The protocols the plan's victims leave at (or below) their
                # grant.min: usage only falls as a plan takes victims.
                taken: dict[object, int] = {}
                for victim in plan.connections:
                    for m in victim._protocols:
                        taken[m] = taken.get(m, 0) + 1
                members = conn._protocols
                blocked_by = tuple(
                    sorted(m.name for m in members if m.usage - taken.get(m, 0) <= m.grant.min)
                ) or tuple(sorted(m.name for m in members))
        if conn.closed and why != "closed":
            # A scorer closed it while it was being scored: report what is now true.
            why, safe, value, reason, min_blocked = "closed", [], None, None, False
        head = f"connection #{conn.id} ({conn.direction.value}, peer {conn.peer!r})"
        quiet = ""
        regulator = self._regulator
        if (
            reason is not None
            and state.count <= state.high
            and not regulator.pressure
            # (Other triggers, an Interval say, may start one below high.)
            and all(type(t) in (HighWater, Pressure) for t in regulator.triggers)
        ):
            quiet = f"; no round starts on its own until the count exceeds high={state.high}"
        if why == "closed":
            text = f"{head} is closed ({conn.close_reason})"
            if conn.prune_reason is not None:
                text += f", pruned as {conn.prune_reason}"
        elif why is not None:
            parts = []
            for kind in safe:
                if kind == "protected":
                    parts.append(f"its peer is protected by {', '.join(map(repr, tags))}")
                elif kind == "locked":
                    assert lock_expires_at is not None
                    parts.append(
                        f"it is locked by {', '.join(locked_by)} until t={lock_expires_at:.3f}"
                    )
                else:
                    parts.append(
                        f"it is in its grace period until t={grace_until:.3f} "
                        f"({grace_until - now:.3f}s from now)"
                    )
            text = f"{head} is safe: {'; '.join(parts)}"
            if revocable:
                cause = "sensing pressure" if regulator.pressure else "the count at hard"
                text += f"; but with {cause}, a round run now would revoke its locks{quiet}"
        elif reason is not None:
            assert value is not None
            phase = reason.phase.value
            if reason.protocol is not None:
                phase = f"{phase} ({reason.protocol})"
            target = state.count - state.low
            text = (
                f"{head} would be pruned by a round run now: victim {reason.rank} of "
                f"{target} in the {phase} phase, tally {value:.3f} "
                f"(count {state.count} > low {state.low})"
            )
            text += quiet
        elif min_blocked:
            text = f"{head} is kept: pruning it would take {', '.join(blocked_by)} below grant.min"
        elif state.count <= state.low:
            text = (
                f"{head} is prunable (tally {value:.3f}) but the count "
                f"{state.count} is at or below low={state.low}"
            )
        else:
            wanted = state.count - state.low
            victims = "the victim" if wanted == 1 else f"the {wanted} victims"
            text = (
                f"{head} is prunable (tally {value:.3f}) but ranks below "
                f"{victims} a round would take now"
            )
        return Explanation(
            conn.id,
            why is None,
            reason is not None,
            why,
            tags,
            grace_until,
            locked_by,
            value,
            None if reason is None else reason.phase,
            None if reason is None else reason.rank,
            min_blocked,
            text,
            reason=reason,
            safe_because=tuple(safe),
            lock_expires_at=lock_expires_at,
            min_blocked_by=blocked_by,
        )


@asynccontextmanager
async def open_connection_manager(
    *,
    limits: Limits,
    grace_period: float = 30.0,
    silence_period: float = 10.0,
    triggers: Sequence[Trigger] | None = None,
    sensing: Sensing | None = None,
    admission: Admission | None = None,
    burst_linger: float = 30.0,
    max_lock_ttl: float = 300.0,
    lock_budget: int | None = None,
    close_timeout: float = 10.0,
    max_round_failures: int = 5,
    failure_window: float = 60.0,
    trace: str | PathLike[str] | IO[str] | None = None,
) -> AsyncIterator[ConnectionManager]:
    """Open a connection manager for the duration of an ``async with`` block.

    Args:
        limits: The watermarks (:class:`Limits`).
        grace_period: Seconds a new connection is never pruned.
        silence_period: Minimum seconds between the regulator's rounds
            (emergencies excepted; :meth:`~ConnectionManager.trim` runs at once).
        triggers: Extra :mod:`trio_connmgr.triggers`, each listed once; ``HighWater``
            and ``Pressure`` are always on. Their methods are called, not awaited: an ``async``
            one is a ``ConfigError``.
        sensing: A :class:`Sensing` controller moving the global share.
        admission: An :class:`Admission` policy for inbound connections.
        burst_linger: Seconds a closed burst's connections stay first in line.
        max_lock_ttl: Cap on every lock's ttl.
        lock_budget: Maximum locked connections (default: half of ``low``).
        close_timeout: Seconds a tracked connection's ``close()`` may take.
        max_round_failures: More failed rounds than this within ``failure_window``
            seconds stop the manager with :class:`ConnMgrError`.
        failure_window: See ``max_round_failures``.
        trace: A path or text file to write every event to as JSON lines.

    Entering starts the regulator (it checkpoints). Leaving closes every
    connection (awaiting tracked ``close()`` callbacks, bounded by
    ``close_timeout``) and every enrollment, and leaves no task behind.

    Raises:
        ConfigError: a bad argument (the message names it and its value).
        ConnMgrError: a service failed for good (the regulator, more than
            ``max_round_failures`` times within ``failure_window``); the
            block's body is cancelled first.
            Should the body raise an error of its own while it is being
            cancelled, both come out in one exception group.
    """
    if not isinstance(limits, Limits):
        raise ConfigError(f"limits must be a Limits, got {limits!r}")
    grace_period = check_period("grace_period", grace_period)
    silence_period = check_period("silence_period", silence_period)
    burst_linger = check_period("burst_linger", burst_linger)
    max_lock_ttl = check_positive_float("max_lock_ttl", max_lock_ttl)
    close_timeout = check_positive_float("close_timeout", close_timeout)
    failure_window = check_positive_float("failure_window", failure_window)
    max_round_failures = check_count("max_round_failures", max_round_failures, allow_zero=True)
    if lock_budget is not None:
        lock_budget = check_count("lock_budget", lock_budget, allow_zero=True)
    if triggers is None:
        triggers = []
    elif isinstance(triggers, Trigger | str) or not isinstance(triggers, Iterable):
        raise ConfigError(f"triggers must be a sequence of Trigger instances, got {triggers!r}")
    else:
        triggers = list(triggers)
    seen: set[int] = set()
    claimed: set[int] = set()  # (the triggers that keep state)
    for trigger in triggers:
        if not isinstance(trigger, Trigger):
            raise ConfigError(f"triggers must be Trigger instances, got {trigger!r}")
        if not isinstance(trigger.name, str) or not trigger.name:
            # Rounds and traces record it as the trigger that started them.
            raise ConfigError(
                f"trigger names must be non-empty strings, got {trigger.name!r} for {trigger!r}"
            )
        if id(trigger) in seen:
            # Its hooks would be called twice for each event: a Spike would count
            # every connection twice.
            raise ConfigError(f"triggers lists the same trigger twice: {trigger!r}")
        if type(trigger).keeps_state is not False:
            if id(trigger) in _TRIGGERS_IN_USE:
                # It would count both managers' connections and dials, and each
                # manager's rounds would reset what it latched for the other.
                raise ConfigError(
                    f"trigger {trigger!r} already serves another open connection manager; "
                    "give each manager its own"
                )
            claimed.add(id(trigger))
        seen.add(id(trigger))
        for hook in _TRIGGER_HOOKS:
            check_not_async(f"trigger {trigger.name!r}: {hook}()", getattr(trigger, hook))
    if admission is not None and not isinstance(admission, Admission):
        raise ConfigError(f"admission must be an Admission or None, got {admission!r}")
    if sensing is not None:
        if not isinstance(sensing, Sensing):
            raise ConfigError(f"sensing must be a Sensing or None, got {sensing!r}")
        sensing._check(limits)
    trace_file: IO[str] | None = None
    owns_trace = False
    if trace is not None:
        if isinstance(trace, str | PathLike):
            if not isinstance(fspath(trace), str):
                raise ConfigError(
                    "trace must be a path or a text file open for writing, "
                    f"got {trace!r} (a bytes path)"
                )
            trace_file = open(trace, "w", encoding="utf-8")  # noqa: SIM115, ASYNC230
            owns_trace = True
        else:
            trace_file = trace

    state = State(
        limits,
        # The run's own clock, bound: what trio.current_time() returns, minus two
        # layers of indirection on the hot paths (stream open, close, touch).
        clock=trio.lowlevel.current_clock().current_time,
        grace_period=grace_period,
        burst_linger=burst_linger,
        max_lock_ttl=max_lock_ttl,
        lock_budget=lock_budget,
    )
    writer = None if trace_file is None else TraceWriter(trace_file, state)
    if sensing is not None:
        # Claimed before the first checkpoint (checked above, nothing awaited
        # since): a second manager opened meanwhile gets a plain ConfigError.
        sensing._claim()
    _TRIGGERS_IN_USE.update(claimed)  # (so are the triggers that keep state)
    body_error: BaseException | None = None
    manager: ConnectionManager | None = None
    try:
        # Whatever an earlier manager left in them is not this one's.
        opened_at = trio.current_time()
        for trigger in triggers:
            trigger.manager_opened(opened_at)
        async with trio.open_nursery() as nursery:
            manager = ConnectionManager(
                state,
                nursery,
                triggers=triggers,
                silence_period=silence_period,
                close_timeout=close_timeout,
                max_round_failures=max_round_failures,
                failure_window=failure_window,
                admission=admission,
            )
            if writer is not None:
                manager._hub.add_writer(writer)
            try:
                async with trio.open_nursery() as services:
                    manager._services = services
                    await services.start(manager._regulator.run)
                    await services.start(manager._run_lock_timer)
                    if sensing is not None:
                        await sensing._attach(manager, services)
                    try:
                        yield manager
                    except BaseException as exc:
                        if _carries_cancelled(exc):
                            raise  # cancellation belongs to the scopes around us
                        # The body's own error leaves unwrapped, after cleanup.
                        body_error = exc
                    finally:
                        services.cancel_scope.cancel()
            finally:
                # Closing spawns closer tasks for tracked connections in `nursery`,
                # which waits for them (each shielded and bounded by close_timeout).
                manager._close()
    except BaseException as exc:
        fatal = manager._fatal if manager is not None else None
        if fatal is None:
            if body_error is None or not isinstance(exc, BaseExceptionGroup):
                raise
            # The body raised, then the cleanup did too (a close() or a callback
            # raising what it must not catch): both, as a nursery reports them.
            raise BaseExceptionGroup(exc.message, [*exc.exceptions, body_error]) from None
        if isinstance(exc, trio.Cancelled) or (
            isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None
        ):
            # Only the cancellation of a scope around the manager came out (the
            # body raised nothing of its own): the failure alone, as documented.
            # (An error may take a Cancelled's place; its scope stays cancelled.
            # No `from`: that would replace its cause, the round's error.)
            raise fatal  # noqa: B904
        # The manager failed, and an error came out of the nurseries as well: the
        # body's cleanup raised while being cancelled, in a group with that
        # cancellation (a nursery in the body). Report both.
        raise BaseExceptionGroup(_BOTH_FAILED, [fatal, exc]) from None
    finally:
        state.closed = True
        _TRIGGERS_IN_USE.difference_update(claimed)
        if sensing is not None:
            sensing._release()
        if writer is not None:
            writer.finish(close=owns_trace)
    fatal = manager._fatal if manager is not None else None
    if fatal is not None and body_error is not None:
        # Both failed (the body's cleanup raised while the manager stopped it):
        # report both, as a nursery reports its tasks' concurrent errors.
        raise BaseExceptionGroup(_BOTH_FAILED, [fatal, body_error])
    if fatal is not None:
        raise fatal
    if body_error is not None:
        raise body_error
