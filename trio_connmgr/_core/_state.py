"""The one source of truth: connections, streams, enrollments, locks and bursts.

Everything here is synchronous and never blocks. Time comes from an injected
``clock`` (the Trio layer passes ``trio.current_time``). Where the state must
stop something that runs in Trio (a connection's or stream's body), it calls
``cancel(reason)`` on the object the Trio layer attached (a ``trio.CancelScope``
or a tracked connection's closer): that is the only effect it has on the world.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, final

import attrs

from .._config import Direction, Grant, Limits, Quota, check_count
from .._errors import (
    ConfigError,
    LockDenied,
    ManagerClosed,
    QuotaDenied,
    ResourceClosed,
    call_each,
)
from . import _events as ev
from ._quota import allocate

if TYPE_CHECKING:
    from ._planner import PruneReason

logger = logging.getLogger("trio_connmgr")

_NO_GRANT = Grant(0, 0)
# Enum member lookups cost ~60 ns on Python 3.11; the hot paths use these.
_INBOUND = Direction.INBOUND

Scorer = Callable[["Stream"], float]
"""A protocol's scorer: rates one of its streams in ``[0, 1]`` (higher = keep)."""

EventSink = Callable[[ev.Event], None]


class Cancellable(Protocol):
    """What the state calls to stop a connection's or stream's body."""

    def cancel(self, reason: str | None = None) -> None: ...


# Why a connection stopped being counted (Connection.close_reason).
CLOSED = "closed"
RELEASED = "released"
PRUNED = "pruned"
EVICTED = "evicted"
MANAGER_CLOSED = "manager closed"


@final
@attrs.define(eq=False, repr=False)
class Connection:
    """A connection the manager counts (live object).

    Created by :meth:`ConnectionManager.connection` or :meth:`ConnectionManager.track`.

    Attributes:
        id: Unique (per manager) integer id.
        peer: The remote peer's identity (any hashable: a peer id, an address).
        direction: :class:`Direction` of the connection.
        address: Remote address as a string, if known.
        opened_at: Manager clock time at which it was admitted.
        streams: The open :class:`Stream` objects on it (do not modify).
        closed: Whether it has stopped being counted.
        close_reason: Why it closed: ``"closed"``, ``"released"``, ``"pruned"``,
            ``"evicted"`` or ``"manager closed"``; ``None`` while open.
        prune_reason: The :class:`PruneReason` if a round pruned it.
        last_active: Manager clock time of the last stream activity on it.
    """

    id: int
    peer: Hashable
    direction: Direction
    address: str | None
    opened_at: float
    _state: State
    _scope: Cancellable | None = None
    streams: set[Stream] = attrs.Factory(set)
    closed: bool = False
    close_reason: str | None = None
    prune_reason: PruneReason | None = None
    last_active: float = 0.0
    # Open streams per enrollment: the source of `protocols` and of usage.
    _protocols: dict[EnrollmentState, int] = attrs.Factory(dict)
    # Held locks on it; an empty tuple until the first lock (most never have one).
    _locks: list[LockState] | tuple[()] = ()
    _bursts: set[BurstState] | None = None
    # Set once a stream outside any burst has closed on it: not burst-only.
    _plain_use: bool = False

    @property
    def protocols(self) -> tuple[str, ...]:
        """Names of the enrolled protocols with at least one open stream on it."""
        return tuple(member.name for member in self._protocols)

    @property
    def locked(self) -> bool:
        """Whether an unrevoked lock currently protects it."""
        return bool(self._locks)

    def release(self) -> None:
        """Tell the manager a tracked connection has ended by itself.

        Synchronous and idempotent. The connection stops being counted, its streams
        close and its ``close`` callback is *not* called (the transport already closed).
        """
        self._state.close_connection(self, RELEASED)

    def __repr__(self) -> str:
        state = self.close_reason if self.closed else "open"
        return (
            f"<Connection #{self.id} {self.direction.value} peer={self.peer!r} "
            f"streams={len(self.streams)} {state}>"
        )


@final
@attrs.define(eq=False, repr=False)
class Stream:
    """A protocol's stream on a connection (live object).

    Attributes:
        id: Unique (per manager) integer id.
        connection: The :class:`Connection` it runs on.
        direction: :class:`Direction` of the stream.
        opened_at: Manager clock time at which it opened.
        last_active: Manager clock time of its last :meth:`touch` (or opening).
        nbytes: Total bytes reported through :meth:`touch`.
        closed: Whether it has closed.
        burst: The :class:`Burst` it is enlisted in, if any.
    """

    id: int
    connection: Connection
    direction: Direction
    opened_at: float
    last_active: float
    _member: EnrollmentState
    burst: BurstState | None = None
    nbytes: int = 0
    closed: bool = False
    _metadata: dict[str, Any] | None = None
    _scope: Cancellable | None = None

    @property
    def protocol(self) -> str:
        """Name of the enrollment (protocol) that owns the stream."""
        return self._member.name

    @property
    def metadata(self) -> dict[str, Any]:
        """The protocol's own dict, for its scorer (created on first use)."""
        if self._metadata is None:
            self._metadata = {}
        return self._metadata

    @property
    def idle_time(self) -> float:
        """Seconds since the last activity, on the manager's clock.

        While a round scores the stream, it is measured at the round's time, so
        every scorer of the round sees the same instant; a stream active since
        that instant (the round yields between chunks) is idle for ``0.0``.
        """
        state = self._member._state
        now = state.round_now
        if now is None:
            now = state.clock()
        idle = now - self.last_active
        return idle if idle > 0.0 else 0.0

    def touch(self, nbytes: int = 0) -> None:
        """Record activity (and ``nbytes`` transferred) for scorers. Synchronous, cheap.

        Raises:
            ConfigError: ``nbytes`` is not a non-negative integer (pass ``len(data)``).
        """
        if type(nbytes) is not int or nbytes < 0:
            check_count("touch nbytes", nbytes, allow_zero=True)  # raises, or an int subclass
        if nbytes:
            self.nbytes += nbytes
        now = self._member._state.clock()
        self.last_active = now
        self.connection.last_active = now

    def close(self) -> None:
        """Close the stream: it stops counting for its protocol. Synchronous, idempotent.

        For a stream opened with ``async with enrollment.stream(...)``, closing it
        from elsewhere cancels the body.
        """
        if not self.closed:
            scope = self._scope
            self._scope = None
            self._member._state.close_stream(self)
            if scope is not None:
                scope.cancel("stream closed")

    def __repr__(self) -> str:
        return (
            f"<Stream #{self.id} {self.protocol} on connection #{self.connection.id}"
            f"{' closed' if self.closed else ''}>"
        )


@attrs.define(eq=False, repr=False)
class EnrollmentState:
    """A protocol's membership: grant, scorer, weight, streams, locks and bursts.

    The public :class:`Enrollment` extends this with its nursery and context managers.

    Attributes:
        name: The protocol's name (unique per manager).
        quota: The :class:`Quota` as requested.
        grant: The :class:`Grant` currently accepted by the manager.
        usage: Number of distinct connections on which it has an open stream.
        streams: Its open streams (do not modify).
    """

    name: str
    quota: Quota
    scorer: Scorer
    weight: float
    strict: bool
    _state: State
    grant: Grant = _NO_GRANT
    usage: int = 0
    streams: set[Stream] = attrs.Factory(set)
    closed: bool = False
    # Active locks of this enrollment, per connection.
    _locked: dict[Connection, int] = attrs.Factory(dict)
    _open_bursts: set[BurstState] = attrs.Factory(set)
    # Counters for statistics().
    streams_opened: int = 0
    locks_granted: int = 0
    locks_denied: dict[str, int] = attrs.Factory(dict)
    locks_revoked: int = 0
    locks_expired: int = 0
    bursts_opened: int = 0
    bursts_closed: int = 0
    pruned: int = 0
    scorer_errors: int = 0
    scorer_clamped: int = 0
    _scorer_error_logged: bool = False

    @property
    def locks_held(self) -> int:
        """Number of connections this enrollment currently holds locks on."""
        return len(self._locked)

    def _grant_changed(self, old: Grant, new: Grant) -> None:
        """Hook: called after ``grant`` changed. The Trio layer wakes waiters here."""


@attrs.define(eq=False, repr=False)
class LockState:
    """The state of one lock; the public :class:`Lock` adds the async parts.

    Attributes:
        id: Unique (per manager) integer id.
        stream: The stream whose connection it protects.
        ttl: The requested time to live, in seconds.
        expires_at: Manager clock time at which it lapses (after the ``max_lock_ttl`` cap).
        status: ``"new"``, ``"held"``, ``"released"``, ``"revoked"``, ``"expired"``,
            ``"denied"`` or ``"dropped"`` (its connection closed).
    """

    id: int
    _member: EnrollmentState
    stream: Stream
    ttl: float
    expires_at: float = math.inf
    status: str = "new"

    @property
    def held(self) -> bool:
        """Whether it currently protects its connection."""
        return self.status == "held"

    @property
    def revoked(self) -> bool:
        """Whether protection ended under pressure or by expiry (``status`` says which)."""
        return self.status in ("revoked", "expired")

    def _ended(self, how: str) -> None:
        """Hook: called once when a held lock ends, however (``how`` is the new status)."""


@attrs.define(eq=False, repr=False)
class BurstState:
    """The state of one burst; the public :class:`Burst` adds the async parts.

    Attributes:
        id: Unique (per manager) integer id.
        name: Optional label given by the protocol.
        opened_at: Manager clock time at which it opened.
        closed_at: Manager clock time at which it closed, or ``None`` while open.
        streams: Its enlisted streams that are still open.
        streams_enlisted: How many streams were ever enlisted.
        connections_touched: How many distinct connections its streams used.
    """

    id: int
    _member: EnrollmentState
    name: str | None
    opened_at: float
    closed_at: float | None = None
    streams: set[Stream] = attrs.Factory(set)
    streams_enlisted: int = 0
    connections_touched: int = 0
    # Open connections its streams used (closed ones are dropped: nothing here
    # keeps a closed connection alive).
    _connections: set[Connection] = attrs.Factory(set)

    @property
    def protocol(self) -> str:
        """Name of the enrollment that opened the burst."""
        return self._member.name

    def enlist(self, stream: Stream) -> None:
        """Enlist an open stream of the same protocol in this burst. Synchronous.

        A stream is in one burst at a time: one still open after its burst has
        closed moves to this one; one in another open burst is a ``ConfigError``.
        """
        self._member._state.enlist(self, stream)


@final
@attrs.define(eq=False)
class RoundRecord:
    """Totals about regulation rounds (kept by the state, read by statistics())."""

    count: int = 0
    last_trigger: str | None = None
    last_duration: float = 0.0
    last_victims: int = 0
    last_at: float | None = None
    victims_by_phase: dict[str, int] = attrs.Factory(dict)
    failures: int = 0
    total_duration: float = 0.0
    locks_revoked: int = 0


class State:
    """Connections, streams, enrollments, locks, bursts and protections.

    Args:
        limits: The configured :class:`Limits` (``high`` is the initial global share).
        clock: Returns the current time (``trio.current_time`` in the manager).
        grace_period: Seconds during which a new connection is never pruned.
        burst_linger: Seconds a closed burst's connections stay first in line.
        max_lock_ttl: Cap on any lock's ttl.
        lock_budget: Maximum number of locked connections; ``None`` = half of ``low``.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        clock: Callable[[], float],
        grace_period: float = 30.0,
        burst_linger: float = 30.0,
        max_lock_ttl: float = 300.0,
        lock_budget: int | None = None,
    ) -> None:
        self.clock = clock
        # The time of the round whose planner is calling scorers right now, else None.
        self.round_now: float | None = None
        self.limits = limits
        self.low = limits.low
        self.high = limits.high
        self.hard = limits.hard
        self.limits_source = "configured"
        self.grace_period = grace_period
        self.burst_linger = burst_linger
        self.max_lock_ttl = max_lock_ttl
        self._lock_budget = lock_budget
        # By id, in admission order (ids only grow): the newest come last, which
        # the regulator relies on to count the connections opened during a round.
        self.connections: dict[int, Connection] = {}
        self.inbound = 0
        self.outbound = 0
        self.members: dict[str, EnrollmentState] = {}
        self.protected: dict[Hashable, set[str]] = {}
        self.locked_connections = 0
        self.lingering: deque[BurstState] = deque()
        self.sink: EventSink | None = None
        self.closed = False
        self.rounds = RoundRecord()
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_pruned = 0
        self.streams_opened = 0
        self.streams_closed = 0
        self.refusals: dict[str, int] = {}
        # Called with every connection that stops being counted (admission's
        # per-subnet counts are released here, and a round being planned lists
        # the connections that close meanwhile).
        self.close_hooks: list[Callable[[Connection], None]] = []
        # The message a closing connection's scopes are cancelled with, by close
        # reason or prune phase (built once, not per connection).
        self._cancel_messages: dict[object, str] = {}
        self._expiries: list[tuple[float, int, LockState]] = []
        self._held_locks = 0
        self._connection_ids = itertools.count(1)
        self._stream_ids = itertools.count(1)
        self._lock_ids = itertools.count(1)
        self._burst_ids = itertools.count(1)

    # ------------------------------------------------------------------ limits

    @property
    def share(self) -> int:
        """The global share ``G``: the effective ``high``."""
        return self.high

    @property
    def count(self) -> int:
        """Number of connections currently counted."""
        return len(self.connections)

    @property
    def lock_budget(self) -> int:
        """Maximum number of connections that may be locked at once."""
        if self._lock_budget is not None:
            return self._lock_budget
        return self.low // 2

    def set_share(self, share: int, cause: str) -> list[EnrollmentState]:
        """Move the global share (effective ``high``) and re-run quota allocation.

        ``low`` scales with it; ``hard`` stays as configured. Returns the enrollments
        whose grant changed.
        """
        share = max(1, min(share, self.limits.high))
        if share == self.high:
            return []
        self.high = share
        self.low = max(1, min(share, round(self.limits.low * share / self.limits.high)))
        # Back at the configured limits is "configured", whatever brought it back.
        self.limits_source = "configured" if share == self.limits.high else cause
        # The grants follow the share before anything is announced: an event
        # writer raising what must not be caught (a KeyboardInterrupt) leaves no
        # grant behind, nor an enrollment untold of its change (see regrant).
        changes = self._set_grants()
        limits_changed = ev.LimitsChanged(self.clock(), self.low, self.high, self.hard, cause)
        self._tell(changes, first=limits_changed)
        return [member for member, _ in changes]

    # ------------------------------------------------------------- connections

    def open_connection(
        self,
        peer: Hashable,
        direction: Direction,
        address: str | None = None,
        scope: Cancellable | None = None,
    ) -> Connection:
        """Count a new connection and return it."""
        if self.closed:
            raise ManagerClosed("the connection manager is closed")
        now = self.clock()
        conn = Connection(next(self._connection_ids), peer, direction, address, now, self, scope)
        conn.last_active = now
        self.connections[conn.id] = conn
        if direction is _INBOUND:
            self.inbound += 1
        else:
            self.outbound += 1
        self.connections_opened += 1
        if self.sink is not None:
            try:
                self.sink(
                    ev.ConnectionOpened(
                        now, conn.id, str(peer), direction.value, address, len(self.connections)
                    )
                )
            except BaseException:
                # An event writer raised what must not be caught (a KeyboardInterrupt):
                # the caller never gets the connection, so nothing stays counted (nor
                # is its scope cancelled or its close() called).
                conn._scope = None
                self.close_connection(conn, CLOSED)
                raise
        return conn

    def close_connection(
        self, conn: Connection, reason: str, prune: PruneReason | None = None
    ) -> bool:
        """Stop counting ``conn``: close its streams, drop its locks, cancel its body.

        Returns False if it was already closed. Idempotent.
        """
        if conn.closed:
            return False
        conn.closed = True
        conn.close_reason = reason
        conn.prune_reason = prune
        del self.connections[conn.id]
        if conn.direction is _INBOUND:
            self.inbound -= 1
        else:
            self.outbound -= 1
        self.connections_closed += 1
        for hook in self.close_hooks:
            hook(conn)
        pruned_from: tuple[str, ...] = ()
        if prune is not None:
            self.connections_pruned += 1
            if self.sink is not None:
                pruned_from = conn.protocols
            for member in conn._protocols:
                member.pruned += 1
        bursts = conn._bursts
        if bursts:
            for burst in bursts:
                burst._connections.discard(conn)
            conn._bursts = None
        scopes: list[Cancellable] | None = None
        if conn.streams:
            scopes = self._drop_streams(conn)
        # Bodies are cancelled before anything is announced: an event writer may
        # raise what must not be caught (a KeyboardInterrupt), which must leave no
        # body running (nor a close() not awaited) on a connection no longer counted.
        if scopes or conn._scope is not None:
            key = reason if prune is None else prune.phase
            message = self._cancel_messages.get(key)
            if message is None:
                why = reason if prune is None else f"pruned ({prune.phase.value})"
                message = self._cancel_messages[key] = f"connection {why}"
            if scopes:
                for scope in scopes:
                    scope.cancel(message)
            if conn._scope is not None:
                scope_, conn._scope = conn._scope, None
                scope_.cancel(message)
        try:
            if conn._locks:
                # (Each one ends, whichever event raised.)
                call_each(self._drop_lock, list(conn._locks))
        finally:
            sink = self.sink  # one look: a failing trace writer may unset it meanwhile
            if sink is not None:
                now = self.clock()
                closed = ev.ConnectionClosed(
                    now, conn.id, str(conn.peer), reason, self.count, conn.direction.value
                )
                if prune is None:
                    sink(closed)
                else:
                    pruned = ev.ConnectionPruned(now, conn.id, str(conn.peer), prune, pruned_from)
                    call_each(sink, (pruned, closed))
        return True

    # ----------------------------------------------------------------- streams

    def open_stream(
        self,
        member: EnrollmentState,
        conn: Connection,
        direction: Direction,
        burst: BurstState | None = None,
    ) -> Stream:
        """Count a new stream of ``member`` on ``conn`` and return it."""
        if type(conn) is not Connection or conn._state is not self:
            raise ConfigError(f"expected a Connection of this manager, got {conn!r}")
        if member.closed:
            raise ResourceClosed(f"enrollment {member.name!r} has left")
        if conn.closed:
            raise ResourceClosed(f"connection #{conn.id} is closed ({conn.close_reason})")
        if burst is not None:
            if not isinstance(burst, BurstState):
                raise ConfigError(f"burst must be a Burst or None, got {burst!r}")
            self._check_burst(burst, member)
        now = self.clock()
        stream = Stream(next(self._stream_ids), conn, direction, now, now, member, burst)
        conn.streams.add(stream)
        member.streams.add(stream)
        protocols = conn._protocols
        n = protocols.get(member, 0)
        protocols[member] = n + 1
        if not n:
            member.usage += 1
        conn.last_active = now
        member.streams_opened += 1
        self.streams_opened += 1
        if burst is not None:
            self._enlist(burst, stream)
        return stream

    def close_stream(self, stream: Stream) -> None:
        """Stop counting ``stream``. Idempotent. Does not cancel its body."""
        if stream.closed:
            return
        stream.closed = True
        self.streams_closed += 1  # (planning reads it: see plan_round)
        conn = stream.connection
        member = stream._member
        conn.streams.discard(stream)
        member.streams.discard(stream)
        protocols = conn._protocols
        n = protocols[member] - 1
        if n:
            protocols[member] = n
        else:
            del protocols[member]
            member.usage -= 1
        burst = stream.burst
        if burst is None:
            conn._plain_use = True
        else:
            burst.streams.discard(stream)
        conn.last_active = self.clock()

    def _drop_streams(self, conn: Connection) -> list[Cancellable] | None:
        """:meth:`close_stream` for every stream of a closing ``conn``, at once.

        Returns the scopes of the streams' bodies, to be cancelled by the caller.
        """
        scopes: list[Cancellable] | None = None
        streams = conn.streams
        for stream in streams:
            stream.closed = True
            stream._member.streams.discard(stream)
            burst = stream.burst
            if burst is not None:
                burst.streams.discard(stream)
            scope = stream._scope
            if scope is not None:
                stream._scope = None
                if scopes is None:
                    scopes = [scope]
                else:
                    scopes.append(scope)
        streams.clear()
        for member in conn._protocols:
            member.usage -= 1
        conn._protocols.clear()
        return scopes

    # -------------------------------------------------------------- enrollment

    def enrol(self, member: EnrollmentState) -> list[EnrollmentState]:
        """Admit an enrollment and re-run allocation; return the enrollments told of a change.

        Raises:
            ConfigError: duplicate name.
            QuotaDenied: ``member.strict`` and its min cannot be granted in full
                (above ``G``, or more than the other strict enrollments leave);
                its ``offer`` is what the enrollment would get without ``strict``.
        """
        if self.closed:
            raise ManagerClosed("the connection manager is closed")
        if member.name in self.members:
            raise ConfigError(f"enroll name {member.name!r} is already enrolled")
        share = self.share
        members = [*self.members.values(), member]
        quotas = [m.quota for m in members]
        strict = [m.strict for m in members]
        if member.strict:
            # What the strict enrollments already hold is theirs (not a
            # proportional cut of it, which rounding could hand the newcomer).
            firm = sum(m.quota.resolve(share)[0] for m in members[:-1] if m.strict)
            if member.quota._wanted_min(share) > max(0, share - firm):
                raise QuotaDenied(member.name, allocate(share, quotas, strict[:-1])[-1])
        self.members[member.name] = member
        return self.regrant(allocate(share, quotas, strict), new=member)

    def leave(self, member: EnrollmentState) -> list[EnrollmentState]:
        """Remove an enrollment: close its streams, end its locks, return its quota.

        Returns the enrollments regranted; none once the state is closed (the
        manager closing regrants nobody as its enrollments leave).
        """
        if member.closed:
            return []
        member.closed = True
        for stream in list(member.streams):
            stream.close()
        if self.members.get(member.name) is member:
            del self.members[member.name]
        ending: list[LockState | BurstState] = [
            lock for conn in member._locked for lock in conn._locks if lock._member is member
        ]
        ending += member._open_bursts

        def end(item: LockState | BurstState) -> None:
            if isinstance(item, LockState):
                self.end_lock(item, "released")
            else:
                self.close_burst(item)

        # An event writer may raise what must not be caught (a KeyboardInterrupt):
        # every lock and burst ends all the same and the quota is returned (the
        # others regranted), and then it is raised. Not while the manager closes,
        # which takes every enrollment away: no grant changes on the way out.
        try:
            call_each(end, ending)
        finally:
            changed = [] if self.closed else self.regrant()
        return changed

    def regrant(
        self, grants: list[Grant] | None = None, *, new: EnrollmentState | None = None
    ) -> list[EnrollmentState]:
        """Recompute every grant; notify and return those that changed.

        ``new``, an enrollment just admitted, is told its first grant even if that
        is ``Grant(0, 0)`` (which it held, unannounced, before it was admitted).
        Should a callback raise what it must not catch (a ``KeyboardInterrupt``),
        the others are told all the same, and then it is raised.
        """
        changes = self._set_grants(grants, new=new)
        self._tell(changes)
        return [member for member, _ in changes]

    def _set_grants(
        self, grants: list[Grant] | None = None, *, new: EnrollmentState | None = None
    ) -> list[tuple[EnrollmentState, Grant]]:
        """Set every grant (recomputed unless given); return ``(member, old grant)``
        for those that changed, and for ``new``."""
        members = list(self.members.values())
        if grants is None:
            grants = allocate(self.share, [m.quota for m in members], [m.strict for m in members])
        changes: list[tuple[EnrollmentState, Grant]] = []
        for member, grant in zip(members, grants, strict=True):
            if grant != member.grant or member is new:
                changes.append((member, member.grant))
                member.grant = grant
        return changes

    def _tell(
        self, changes: list[tuple[EnrollmentState, Grant]], first: ev.Event | None = None
    ) -> None:
        """Announce grants set by :meth:`_set_grants` (after ``first``, an event of
        what moved them): GrantChanged events, waiters woken, callbacks called."""

        # Every grant is set before anyone is told: a callback sees them all as
        # they are now, and one that raises (even a KeyboardInterrupt) leaves no
        # grant behind. Nor anyone untold: the others still get their event,
        # their waiters woken and their callback; then the first error is raised.
        def tell(change: tuple[EnrollmentState, Grant] | None) -> None:
            sink = self.sink
            if change is None:
                if sink is not None and first is not None:
                    sink(first)
                return
            member, old = change
            grant = member.grant
            if sink is not None:
                sink(ev.GrantChanged(self.clock(), member.name, grant.min, grant.max, self.share))
            member._grant_changed(old, grant)

        call_each(tell, changes if first is None else [None, *changes])

    # -------------------------------------------------------------- protection

    def protect(self, peer: Hashable, tag: str) -> None:
        """Protect ``peer`` from pruning under ``tag``."""
        self.protected.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: Hashable, tag: str) -> bool:
        """Remove ``tag``; return whether ``peer`` is still protected under another tag."""
        tags = self.protected.get(peer)
        if tags is None:
            return False
        tags.discard(tag)
        if not tags:
            del self.protected[peer]
            return False
        return True

    # ------------------------------------------------------------------- locks

    def new_lock_id(self) -> int:
        """A fresh lock id."""
        return next(self._lock_ids)

    def acquire_lock(self, lock: LockState) -> None:
        """Grant ``lock`` or raise :class:`LockDenied` (reason closed, grant or budget)."""
        member = lock._member
        stream = lock.stream
        conn = stream.connection
        reason = detail = None
        if member.closed or stream.closed or conn.closed:
            reason = "closed"
            detail = f"stream #{stream.id} or its connection is closed"
        elif conn not in member._locked and len(member._locked) >= member.grant.max:
            reason = "grant"
            detail = (
                f"enrollment {member.name!r} already holds locks on grant.max="
                f"{member.grant.max} connections"
            )
        elif not conn._locks and self.locked_connections + 1 > self.lock_budget:
            reason = "budget"
            detail = f"lock budget of {self.lock_budget} locked connections is spent"
        if reason is not None:
            lock.status = "denied"
            member.locks_denied[reason] = member.locks_denied.get(reason, 0) + 1
            if self.sink is not None:
                self.sink(ev.LockDeniedEvent(self.clock(), member.name, conn.id, reason))
            raise LockDenied(reason, detail)
        now = self.clock()
        lock.status = "held"
        lock.expires_at = now + min(lock.ttl, self.max_lock_ttl)
        if conn._locks:
            assert isinstance(conn._locks, list)
            conn._locks.append(lock)
        else:
            self.locked_connections += 1
            conn._locks = [lock]
        member._locked[conn] = member._locked.get(conn, 0) + 1
        member.locks_granted += 1
        self._held_locks += 1
        heapq.heappush(self._expiries, (lock.expires_at, lock.id, lock))
        if self.sink is not None:
            try:
                self.sink(ev.LockGranted(now, member.name, lock.id, conn.id, lock.expires_at))
            except BaseException:
                # An event writer raised what must not be caught (a KeyboardInterrupt):
                # the caller never holds the lock, which must not stay held.
                self.end_lock(lock, "released")
                raise

    def extend_lock(self, lock: LockState, ttl: float) -> float:
        """Set a held lock to expire ``ttl`` seconds from now (capped); return the expiry."""
        if not lock.held:
            raise ResourceClosed(f"lock #{lock.id} is not held ({lock.status})")
        lock.ttl = ttl
        now = self.clock()
        lock.expires_at = now + min(ttl, self.max_lock_ttl)
        heapq.heappush(self._expiries, (lock.expires_at, lock.id, lock))
        # The entry for the old expiry stays behind: a lock extended at every
        # message would grow the heap by one entry per call for a whole ttl.
        self._compact_expiries()
        if self.sink is not None:
            self.sink(
                ev.LockExtended(
                    now, lock._member.name, lock.id, lock.stream.connection.id, lock.expires_at
                )
            )
        return lock.expires_at

    def _compact_expiries(self) -> None:
        """Drop the heap's stale entries (ended locks, superseded expiries) once
        they are well over twice the held locks."""
        if len(self._expiries) > 2 * self._held_locks + 64:
            # Ended locks stay in the heap until their expiry would have come:
            # compact it, or it keeps their streams and connections alive.
            self._expiries = [e for e in self._expiries if e[2].held and e[2].expires_at == e[0]]
            heapq.heapify(self._expiries)

    def end_lock(self, lock: LockState, how: str) -> bool:
        """End a held lock (``released``, ``revoked``, ``expired`` or ``dropped``)."""
        if not lock.held:
            return False
        lock.status = how
        self._held_locks -= 1
        self._compact_expiries()
        member = lock._member
        conn = lock.stream.connection
        assert isinstance(conn._locks, list)
        conn._locks.remove(lock)
        if not conn._locks:
            self.locked_connections -= 1
            conn._locks = ()
        n = member._locked[conn] - 1
        if n:
            member._locked[conn] = n
        else:
            del member._locked[conn]
        if how == "revoked":
            member.locks_revoked += 1
        elif how == "expired":
            member.locks_expired += 1
        try:
            if self.sink is not None:
                args = (self.clock(), member.name, lock.id, conn.id)
                if how == "revoked":
                    self.sink(ev.LockRevoked(*args))
                elif how == "expired":
                    self.sink(ev.LockExpired(*args))
                else:  # released or dropped
                    self.sink(ev.LockReleased(*args, how))
        finally:
            # (Even if an event writer raised what must not be caught: the
            # holder's waiters still learn that the lock has ended.)
            try:
                lock._ended(how)
            except Exception:
                logger.exception("lock notification for %r raised", member.name)
        return True

    def _drop_lock(self, lock: LockState) -> None:
        self.end_lock(lock, "dropped")

    def next_lock_expiry(self) -> float:
        """The earliest expiry among held locks (``inf`` if none)."""
        heap = self._expiries
        while heap:
            at, _, lock = heap[0]
            if lock.held and lock.expires_at == at:
                return at
            heapq.heappop(heap)
        return math.inf

    def expire_locks(self, now: float) -> int:
        """Expire every held lock whose time is up; return how many expired.

        Should a callback or an event writer raise what must not be caught (a
        ``KeyboardInterrupt``), the other locks due expire all the same, and then
        it is raised.
        """
        expired = 0

        def due() -> Iterator[LockState]:
            # One at a time: a callback may extend a lock due too, or re-enter.
            while self.next_lock_expiry() <= now:
                yield heapq.heappop(self._expiries)[2]

        def expire(lock: LockState) -> None:
            nonlocal expired
            expired += self.end_lock(lock, "expired")

        call_each(expire, due())
        return expired

    # ------------------------------------------------------------------ bursts

    def new_burst(self, member: EnrollmentState, burst: BurstState) -> None:
        """Register an opened burst (it opens now: ``burst.opened_at``)."""
        if member.closed:
            raise ResourceClosed(f"enrollment {member.name!r} has left")
        burst.opened_at = now = self.clock()
        member._open_bursts.add(burst)
        member.bursts_opened += 1
        if self.sink is not None:
            try:
                self.sink(ev.BurstOpened(now, member.name, burst.id, burst.name))
            except BaseException:
                # An event writer raised what must not be caught (a KeyboardInterrupt):
                # the caller never enters the burst, which must not stay open.
                self.close_burst(burst)
                raise

    def new_burst_id(self) -> int:
        """A fresh burst id."""
        return next(self._burst_ids)

    def close_burst(self, burst: BurstState) -> None:
        """Close a burst: its burst-only connections go first for ``burst_linger`` seconds."""
        if burst.closed_at is not None:
            return
        now = self.clock()
        burst.closed_at = now
        member = burst._member
        member._open_bursts.discard(burst)
        member.bursts_closed += 1
        self.lingering.append(burst)
        self.forget_bursts(now)
        if self.sink is not None:
            self.sink(
                ev.BurstClosed(
                    now,
                    member.name,
                    burst.id,
                    burst.name,
                    burst.connections_touched,
                    burst.streams_enlisted,
                )
            )

    def forget_bursts(self, now: float) -> None:
        """Drop closed bursts whose linger has passed (they no longer rank first)."""
        lingering = self.lingering
        while lingering and lingering[0].closed_at is not None:
            if lingering[0].closed_at + self.burst_linger >= now:
                break
            burst = lingering.popleft()
            for conn in burst._connections:
                if conn._bursts is not None:
                    conn._bursts.discard(burst)
            burst._connections.clear()

    def _check_burst(self, burst: BurstState, member: EnrollmentState) -> None:
        if burst._member is not member:
            raise ConfigError(f"burst belongs to {burst.protocol!r}, not to {member.name!r}")
        if burst.closed_at is not None:
            raise ResourceClosed(f"burst #{burst.id} is closed")
        if burst not in member._open_bursts:
            raise ConfigError(f"burst #{burst.id} is not open yet: enter it with `async with`")

    def enlist(self, burst: BurstState, stream: Stream) -> None:
        """Enlist ``stream`` in ``burst`` (same protocol, both open; a stream of a
        burst that has closed moves to this one)."""
        if type(stream) is not Stream or stream._member._state is not self:
            raise ConfigError(f"expected a Stream of this manager, got {stream!r}")
        self._check_burst(burst, stream._member)
        if stream.closed:
            raise ResourceClosed(f"stream #{stream.id} is closed")
        old = stream.burst
        if old is not None and old is not burst:
            if old.closed_at is None:
                raise ConfigError(f"stream #{stream.id} is already enlisted in burst #{old.id}")
            # Its burst has closed: it moves to the new one (a long-lived stream
            # serving one burst after another).
            old.streams.discard(stream)
        stream.burst = burst
        self._enlist(burst, stream)

    def _enlist(self, burst: BurstState, stream: Stream) -> None:
        if stream not in burst.streams:
            burst.streams.add(stream)
            burst.streams_enlisted += 1
        conn = stream.connection
        if conn not in burst._connections:
            burst._connections.add(conn)
            burst.connections_touched += 1
        if conn._bursts is None:
            conn._bursts = {burst}
        else:
            conn._bursts.add(burst)

    # --------------------------------------------------------------- shutdown

    def close(self) -> list[Connection]:
        """Mark the state closed and close every connection; return them."""
        self.closed = True
        conns = list(self.connections.values())
        for conn in conns:
            self.close_connection(conn, MANAGER_CLOSED)
        return conns
