"""Event types: frozen records of what the manager did, for subscribers and traces."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar, final

import attrs

if TYPE_CHECKING:
    from ._planner import PruneReason


def _plain(instance: object, field: object, value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


@attrs.frozen
class Event:
    """Base class of every event. ``time`` is the manager's clock (``trio.current_time()``)."""

    kind: ClassVar[str] = "event"
    time: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this event, with its ``kind``."""
        out: dict[str, Any] = {"kind": self.kind}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if attrs.has(type(value)):
                value = attrs.asdict(value, value_serializer=_plain)
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out


@final
@attrs.frozen
class ConnectionOpened(Event):
    """A connection was admitted and is now counted."""

    kind: ClassVar[str] = "connection_opened"
    connection_id: int
    peer: str
    direction: str
    address: str | None
    count: int


@final
@attrs.frozen
class ConnectionClosed(Event):
    """A connection stopped being counted, for any reason (``reason``)."""

    kind: ClassVar[str] = "connection_closed"
    connection_id: int
    peer: str
    reason: str
    count: int


@final
@attrs.frozen
class ConnectionPruned(Event):
    """A regulation round chose this connection as a victim (followed by ConnectionClosed)."""

    kind: ClassVar[str] = "connection_pruned"
    connection_id: int
    peer: str
    reason: PruneReason


@final
@attrs.frozen
class RoundCompleted(Event):
    """A regulation round finished."""

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


@final
@attrs.frozen
class GrantChanged(Event):
    """An enrollment's grant changed (enrollment came or went, or the share moved)."""

    kind: ClassVar[str] = "grant_changed"
    protocol: str
    min: int
    max: int
    share: int


@final
@attrs.frozen
class LockGranted(Event):
    """A lock was granted on a stream's connection."""

    kind: ClassVar[str] = "lock_granted"
    protocol: str
    lock_id: int
    connection_id: int
    expires_at: float


@final
@attrs.frozen
class LockDeniedEvent(Event):
    """A lock was refused (``reason``: closed, grant or budget)."""

    kind: ClassVar[str] = "lock_denied"
    protocol: str
    connection_id: int
    reason: str


@final
@attrs.frozen
class LockRevoked(Event):
    """A lock was revoked under pressure; its connection is prunable again."""

    kind: ClassVar[str] = "lock_revoked"
    protocol: str
    lock_id: int
    connection_id: int


@final
@attrs.frozen
class LockReleased(Event):
    """A lock's holder left its ``async with`` block."""

    kind: ClassVar[str] = "lock_released"
    protocol: str
    lock_id: int
    connection_id: int


@final
@attrs.frozen
class LockExpired(Event):
    """A lock's ttl ran out."""

    kind: ClassVar[str] = "lock_expired"
    protocol: str
    lock_id: int
    connection_id: int


@final
@attrs.frozen
class BurstOpened(Event):
    """A protocol opened a burst."""

    kind: ClassVar[str] = "burst_opened"
    protocol: str
    burst_id: int
    name: str | None


@final
@attrs.frozen
class BurstClosed(Event):
    """A burst closed; its burst-only connections are first in line for ``linger`` seconds."""

    kind: ClassVar[str] = "burst_closed"
    protocol: str
    burst_id: int
    name: str | None
    connections: int
    streams: int


@final
@attrs.frozen
class LimitsChanged(Event):
    """The effective limits moved (sensing), with the ``cause``."""

    kind: ClassVar[str] = "limits_changed"
    low: int
    high: int
    hard: int | None
    cause: str


@final
@attrs.frozen
class AdmissionRefused(Event):
    """Admission refused a connection (``reason`` names the limit)."""

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
    LockDeniedEvent,
    LockRevoked,
    LockReleased,
    LockExpired,
    BurstOpened,
    BurstClosed,
    LimitsChanged,
    AdmissionRefused,
)
