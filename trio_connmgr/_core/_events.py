"""Event types: frozen records of what the manager did, for subscribers and traces.

The state builds an event only while somebody listens (``State.sink`` is set),
so events cost nothing when unused. Every event has a ``kind`` (a class-level
string, also the ``kind`` of its JSON form) and a ``time`` on the manager's
clock. ``docs/trace.md`` documents the JSON form of each.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, final

import attrs

from ._planner import PruneReason


def _plain(instance: object, field: object, value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


@attrs.frozen
class Event:
    """Base class of every event.

    Attributes:
        kind: The event's type as a string (class attribute; ``"connection_opened"``...).
        time: The manager's clock (``trio.current_time()``) when it happened.
    """

    kind: ClassVar[str] = "event"
    time: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this event: ``kind`` first, then every field."""
        out: dict[str, Any] = {"kind": self.kind}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if attrs.has(type(value)):
                value = attrs.asdict(value, value_serializer=_plain)
            elif isinstance(value, PruneReason):
                value = {name: _plain(None, None, item) for name, item in value._asdict().items()}
            elif isinstance(value, tuple):
                value = [list(item) if isinstance(item, tuple) else item for item in value]
            out[field.name] = value
        return out


@final
@attrs.frozen
class ConnectionOpened(Event):
    """A connection was admitted and is now counted.

    Attributes:
        connection_id: The connection's id.
        peer: ``str()`` of its peer.
        direction: ``"inbound"`` or ``"outbound"``.
        address: Its address, if given.
        count: Connections counted after it opened.
    """

    kind: ClassVar[str] = "connection_opened"
    connection_id: int
    peer: str
    direction: str
    address: str | None
    count: int


@final
@attrs.frozen
class ConnectionClosed(Event):
    """A connection stopped being counted, for any reason.

    Attributes:
        connection_id: The connection's id.
        peer: ``str()`` of its peer.
        reason: Its ``close_reason``: ``"closed"``, ``"released"``, ``"pruned"``,
            ``"evicted"`` or ``"manager closed"``.
        count: Connections counted after it closed.
        direction: ``"inbound"`` or ``"outbound"``.
    """

    kind: ClassVar[str] = "connection_closed"
    connection_id: int
    peer: str
    reason: str
    count: int
    direction: str = ""


@final
@attrs.frozen
class ConnectionPruned(Event):
    """A round, or an admission eviction at ``hard``, chose this connection as a
    victim (a ConnectionClosed follows at once).

    Attributes:
        connection_id: The connection's id.
        peer: ``str()`` of its peer.
        reason: Its :class:`PruneReason` (phase, protocol, tally, rank, trigger, forced).
        protocols: Protocols that had streams on it (each counts it in ``pruned``).
    """

    kind: ClassVar[str] = "connection_pruned"
    connection_id: int
    peer: str
    reason: PruneReason
    protocols: tuple[str, ...] = ()


@final
@attrs.frozen
class RoundCompleted(Event):
    """A regulation round finished.

    Attributes:
        number: The round's number (1 for the first).
        trigger: Name of what started it (``"high-water"``, ``"trim"``, ``"force"``...).
        forced: Whether it was forced (``trim(force=True)``).
        count_before: Connections counted when it started.
        count_after: Connections counted when it ended.
        victims: Connections it pruned.
        by_phase: ``(phase, victims)`` pairs, sorted by phase name.
        duration: Wall-clock seconds it took to plan and apply.
        revoked_locks: Locks it revoked to reach its target.
        unprunable: Connections it could not prune (grace, protected, locked, or
            kept for a ``grant.min``).
        arrived: Connections opened while it ran, after it last planned, and
            still open at its end: it did not know them. Invariant 1 says
            ``count_after - arrived <= max(low, unprunable)``.
        replan_ranks: Where each plan it made again begins: the rank given to
            that plan's first victim, in order (empty if it planned once). A
            round plans again, a bounded number of times, when it skipped
            victims as it applied (locked, protected or needed for a
            ``grant.min`` meanwhile); each plan orders its own victims (SPEC
            §8), ranked after those of the plans before it, so a burst-only
            connection that became prunable meanwhile may follow an earlier
            plan's victims (invariant 4 holds within each plan).
        high_before: The effective ``high`` when it started (sensing may move
            the limits while it runs); ``None`` if not known (a trace of an
            earlier release).
        low_planned: The effective ``low`` its last plan worked to (it prunes
            no further, and stops at the effective ``low`` if sensing raises it
            meanwhile); ``None`` if not known.
    """

    kind: ClassVar[str] = "round_completed"
    number: int
    trigger: str
    forced: bool
    count_before: int
    count_after: int
    victims: int
    by_phase: tuple[tuple[str, int], ...]
    duration: float
    revoked_locks: int
    unprunable: int = 0
    arrived: int = 0
    replan_ranks: tuple[int, ...] = ()
    high_before: int | None = None
    low_planned: int | None = None


@final
@attrs.frozen
class GrantChanged(Event):
    """An enrollment's grant changed (an enrollment came or went, or the share moved).

    Attributes:
        protocol: The enrollment's name.
        min: Its new ``grant.min``.
        max: Its new ``grant.max``.
        share: The global share ``G`` the grant was computed against.
    """

    kind: ClassVar[str] = "grant_changed"
    protocol: str
    min: int
    max: int
    share: int


@final
@attrs.frozen
class LockGranted(Event):
    """A lock was granted on a stream's connection.

    Attributes:
        protocol: The enrollment holding it.
        lock_id: The lock's id.
        connection_id: The connection it protects.
        expires_at: Manager clock time its ttl runs out (after the ``max_lock_ttl`` cap).
    """

    kind: ClassVar[str] = "lock_granted"
    protocol: str
    lock_id: int
    connection_id: int
    expires_at: float


@final
@attrs.frozen
class LockExtended(Event):
    """A held lock's expiry moved (``lock.extend(ttl)``).

    Attributes:
        protocol: The enrollment holding it.
        lock_id: The lock's id.
        connection_id: The connection it protects.
        expires_at: Manager clock time its ttl now runs out (after the
            ``max_lock_ttl`` cap).
    """

    kind: ClassVar[str] = "lock_extended"
    protocol: str
    lock_id: int
    connection_id: int
    expires_at: float


@final
@attrs.frozen
class LockDeniedEvent(Event):
    """A lock was refused (the holder got :class:`LockDenied`).

    Attributes:
        protocol: The enrollment that asked.
        connection_id: The connection it asked to protect.
        reason: ``"closed"``, ``"grant"`` (locks on ``grant.max`` connections
            already) or ``"budget"`` (the manager's lock budget is spent).
    """

    kind: ClassVar[str] = "lock_denied"
    protocol: str
    connection_id: int
    reason: str


@final
@attrs.frozen
class LockRevoked(Event):
    """A lock was revoked under pressure; its connection is prunable again.

    Attributes:
        protocol: The enrollment that held it.
        lock_id: The lock's id.
        connection_id: The connection it protected.
    """

    kind: ClassVar[str] = "lock_revoked"
    protocol: str
    lock_id: int
    connection_id: int


@final
@attrs.frozen
class LockReleased(Event):
    """A held lock ended without pressure.

    Attributes:
        protocol: The enrollment that held it.
        lock_id: The lock's id.
        connection_id: The connection it protected.
        how: ``"released"`` (the holder left its ``async with`` block, or the
            enrollment left) or ``"dropped"`` (its connection closed under it).
    """

    kind: ClassVar[str] = "lock_released"
    protocol: str
    lock_id: int
    connection_id: int
    how: str = "released"


@final
@attrs.frozen
class LockExpired(Event):
    """A lock's ttl ran out; its connection is prunable again.

    Attributes:
        protocol: The enrollment that held it.
        lock_id: The lock's id.
        connection_id: The connection it protected.
    """

    kind: ClassVar[str] = "lock_expired"
    protocol: str
    lock_id: int
    connection_id: int


@final
@attrs.frozen
class BurstOpened(Event):
    """A protocol opened a burst.

    Attributes:
        protocol: The enrollment that opened it.
        burst_id: The burst's id.
        name: Its label, if given.
    """

    kind: ClassVar[str] = "burst_opened"
    protocol: str
    burst_id: int
    name: str | None


@final
@attrs.frozen
class BurstClosed(Event):
    """A burst closed; its burst-only connections go first for ``burst_linger`` seconds.

    Attributes:
        protocol: The enrollment that opened it.
        burst_id: The burst's id.
        name: Its label, if given.
        connections: Distinct connections its streams used.
        streams: Streams enlisted in it, in total.
    """

    kind: ClassVar[str] = "burst_closed"
    protocol: str
    burst_id: int
    name: str | None
    connections: int
    streams: int


@final
@attrs.frozen
class LimitsChanged(Event):
    """The effective limits moved (sensing moved the global share).

    Attributes:
        low: The new effective ``low``.
        high: The new effective ``high`` (the global share ``G``).
        hard: The inbound cap (unchanged by sensing).
        cause: What moved them (the sensing controller's explanation).
    """

    kind: ClassVar[str] = "limits_changed"
    low: int
    high: int
    hard: int | None
    cause: str


@final
@attrs.frozen
class AdmissionRefused(Event):
    """Admission refused a connection (the caller got :class:`ConnectionRefused`).

    Attributes:
        peer: ``str()`` of the refused peer.
        direction: ``"inbound"`` or ``"outbound"``.
        address: Its address, if given.
        reason: The limit that refused it (``"hard"``, ``"subnet"``, ``"rate"``...).
        detail: A readable sentence with the figures.
    """

    kind: ClassVar[str] = "admission_refused"
    peer: str
    direction: str
    address: str | None
    reason: str
    detail: str


EVENT_TYPES: tuple[type[Event], ...] = (
    ConnectionOpened,
    ConnectionClosed,
    ConnectionPruned,
    RoundCompleted,
    GrantChanged,
    LockGranted,
    LockExtended,
    LockDeniedEvent,
    LockRevoked,
    LockReleased,
    LockExpired,
    BurstOpened,
    BurstClosed,
    LimitsChanged,
    AdmissionRefused,
)
"""Every concrete event type."""

EVENTS_BY_KIND: dict[str, type[Event]] = {t.kind: t for t in EVENT_TYPES}
"""Event types by their ``kind`` string."""
