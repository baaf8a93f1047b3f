"""Enrollment and its stream, lock and burst context managers: the Trio half of §4 to §7."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._config import Direction, Grant, check_not_async, check_positive_float
from ._core._state import (
    BurstState,
    Connection,
    EnrollmentState,
    LockState,
    Stream,
)
from ._errors import ConfigError, ResourceClosed

if TYPE_CHECKING:
    from ._manager import ConnectionManager

logger = logging.getLogger("trio_connmgr.enrollment")

_DIRECTIONS: dict[object, Direction] = {
    "inbound": Direction.INBOUND,
    "outbound": Direction.OUTBOUND,
    Direction.INBOUND: Direction.INBOUND,
    Direction.OUTBOUND: Direction.OUTBOUND,
}


def parse_direction(value: object) -> Direction:
    """Fast path for the common values; :meth:`Direction.parse` for the errors."""
    try:
        return _DIRECTIONS[value]
    except (KeyError, TypeError):
        return Direction.parse(value)


@final
@attrs.define(eq=False, repr=False)
class Enrollment(EnrollmentState):
    """A protocol's membership in a manager (from ``async with mgr.enroll(...)``).

    Besides the attributes of its state (``name``, ``quota``, ``grant``,
    ``usage``, ``streams``), it owns a nursery for the protocol's tasks: leaving
    the ``async with`` block cancels them, closes the protocol's streams and
    returns its quota to the pool.
    """

    _manager: ConnectionManager | None = None
    _nursery: trio.Nursery | None = None
    _body_done: bool = False  # its block's body has exited
    _on_grant: Callable[[Grant], object] | None = None
    _grant_event: trio.Event | None = None

    # ------------------------------------------------------------------ tasks

    def _open_nursery(self) -> trio.Nursery:
        # Closed with its nursery still open: the manager's exit closed it while
        # its block is still exiting (the nursery cancelled, its tasks finishing).
        # And once the body has exited with no task left, trio closes the nursery
        # (refusing new tasks with a RuntimeError of its own) before the block
        # has finished leaving: that is leaving too.
        nursery = self._nursery
        if nursery is None or self.closed or (self._body_done and not nursery.child_tasks):
            raise ResourceClosed(f"enrollment {self.name!r} has left")
        return nursery

    def start_soon(
        self, fn: Callable[..., Awaitable[object]], *args: Any, name: object = None
    ) -> None:
        """Start ``fn(*args)`` in the enrollment's nursery (cancelled when it leaves).

        Raises:
            ResourceClosed: The enrollment has left.
        """
        self._open_nursery().start_soon(fn, *args, name=name)

    async def start(
        self, fn: Callable[..., Awaitable[object]], *args: Any, name: object = None
    ) -> Any:
        """Start ``fn(*args, task_status=...)`` in the nursery and wait for ``started()``.

        Raises:
            ResourceClosed: The enrollment has left (after a checkpoint).
        """
        try:
            nursery = self._open_nursery()
        except ResourceClosed:
            await trio.lowlevel.checkpoint()
            raise
        return await nursery.start(fn, *args, name=name)

    # ---------------------------------------------------------------- streams

    def stream(
        self,
        conn: Connection,
        *,
        direction: Direction | str = "outbound",
        burst: BurstState | None = None,
    ) -> StreamContext:
        """Open a stream of this protocol on ``conn`` (async context manager).

        Entering checkpoints and then counts the stream; the body runs in the
        stream's own cancel scope, cancelled if the stream is closed by the manager
        (its connection pruned or closed, the enrollment leaving). Exiting never
        blocks. Raises :class:`ResourceClosed` if ``conn`` is closed or the
        enrollment has left.
        """
        return StreamContext(self, conn, parse_direction(direction), burst)

    def track_stream(
        self,
        conn: Connection,
        *,
        direction: Direction | str = "outbound",
        burst: BurstState | None = None,
    ) -> Stream:
        """Count a stream whose lifetime the caller manages; call ``stream.close()``.

        Synchronous and cheap (the hot path for transports).
        """
        return self._state.open_stream(self, conn, parse_direction(direction), burst)

    # ----------------------------------------------------------- locks, bursts

    def lock(
        self,
        stream: Stream,
        *,
        ttl: float,
        on_revoke: Callable[[Lock], object] | None = None,
    ) -> Lock:
        """A lock protecting ``stream``'s connection from pruning (async context manager).

        Entering checkpoints, then grants the lock or raises :class:`LockDenied`.
        Exiting releases it synchronously. ``ttl`` is capped by the manager's
        ``max_lock_ttl``. Under pressure the manager may revoke it: ``on_revoke(lock)``
        (a synchronous function) is called, ``lock.revoked`` becomes true and
        ``wait_revoked()`` returns. The same happens when it expires.
        """
        ttl = check_positive_float("lock ttl", ttl)
        if type(stream) is not Stream:
            raise ConfigError(f"lock stream must be a Stream, got {stream!r}")
        if on_revoke is not None and not callable(on_revoke):
            raise ConfigError(f"lock on_revoke must be callable, got {on_revoke!r}")
        check_not_async("lock on_revoke", on_revoke)
        if stream._member is not self:
            raise ConfigError(
                f"stream #{stream.id} belongs to {stream.protocol!r}, not to {self.name!r}"
            )
        return Lock(self._state.new_lock_id(), self, stream, ttl, on_revoke=on_revoke)

    def burst(self, name: str | None = None) -> Burst:
        """A burst of transient work (async context manager).

        Streams opened with ``burst=`` or enlisted with ``burst.enlist(stream)``
        (once entered: a burst not yet entered raises :class:`ConfigError`) count
        for the protocol but, while the burst is open, never make it an offender.
        On exit the burst's burst-only connections become the first prune
        candidates for ``burst_linger`` seconds, and its streams still open count
        like any other. Entering checkpoints; exiting never blocks.
        """
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"burst name must be a string or None, got {name!r}")
        return Burst(self._state.new_burst_id(), self, name, trio.current_time())

    # ----------------------------------------------------------------- grants

    async def wait_grant_changed(self) -> Grant:
        """Wait until this enrollment's grant changes; return the new grant.

        Raises:
            ResourceClosed: The enrollment has left (or leaves while waiting).
        """
        if self.closed:
            await trio.lowlevel.checkpoint()
            raise ResourceClosed(f"enrollment {self.name!r} has left")
        if self._grant_event is None:
            self._grant_event = trio.Event()
        await self._grant_event.wait()
        if self.closed:
            raise ResourceClosed(f"enrollment {self.name!r} has left")
        return self.grant

    def _left(self) -> None:
        """Wake the tasks waiting for a grant change: there will be none."""
        if self._grant_event is not None:
            self._grant_event.set()
            self._grant_event = None

    def _grant_changed(self, old: Grant, new: Grant) -> None:
        if self._grant_event is not None:
            self._grant_event.set()
            self._grant_event = None
        if self._on_grant is not None:
            try:
                self._on_grant(new)
            except Exception:
                logger.exception("on_grant callback of %r raised", self.name)

    def __repr__(self) -> str:
        return (
            f"<Enrollment {self.name!r} grant=({self.grant.min}, {self.grant.max}) "
            f"usage={self.usage} streams={len(self.streams)}>"
        )


@final
class StreamContext:
    """``async with enrollment.stream(conn)``: see :meth:`Enrollment.stream`."""

    __slots__ = ("_burst", "_conn", "_direction", "_entered", "_member", "_scope", "_stream")
    # Set by __aenter__ (``async with`` never calls __aexit__ without it).
    _stream: Stream
    _scope: trio.CancelScope

    def __init__(
        self,
        member: Enrollment,
        conn: Connection,
        direction: Direction,
        burst: BurstState | None,
    ) -> None:
        self._member = member
        self._conn = conn
        self._direction = direction
        self._burst = burst
        self._entered = False

    async def __aenter__(self) -> Stream:
        await trio.lowlevel.checkpoint()
        if self._entered:
            # A second stream and scope would replace the first's: that stream
            # would never close, and the scopes would exit out of order.
            raise ConfigError("this stream context is already entered")
        stream = self._member._state.open_stream(
            self._member, self._conn, self._direction, self._burst
        )
        scope = trio.CancelScope()
        scope.__enter__()
        stream._scope = scope
        self._stream = stream
        self._scope = scope
        self._entered = True
        return stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._entered = False
        stream = self._stream
        stream._scope = None
        if not stream.closed:
            stream._member._state.close_stream(stream)
        return self._scope.__exit__(exc_type, exc, tb)


@final
@attrs.define(eq=False, repr=False)
class Lock(LockState):
    """A lock on a stream's connection (from :meth:`Enrollment.lock`).

    Attributes (besides those of its state: ``id``, ``stream``, ``ttl``,
    ``expires_at``, ``status``, ``held``, ``revoked``) are read-only.
    """

    _on_revoke: Callable[[Lock], object] | None = None
    _revoked_event: trio.Event | None = None

    def _manager(self) -> ConnectionManager:
        manager = self._member._manager  # type: ignore[attr-defined]
        assert manager is not None
        return manager  # type: ignore[no-any-return]

    async def __aenter__(self) -> Lock:
        await trio.lowlevel.checkpoint()
        if self.status != "new":
            raise ConfigError(f"lock #{self.id} was already used ({self.status})")
        manager = self._manager()
        try:
            manager._state.acquire_lock(self)
        except BaseException:
            if self.status == "denied":  # (LockDenied, or its event interrupted)
                # It will never protect anything: wake a wait_revoked() already
                # waiting (one called from now on returns at once).
                self._ended("denied")
            raise
        manager._lock_deadline(self.expires_at)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        manager = self._manager()
        try:
            ended = manager._state.end_lock(self, "released")
        except BaseException:
            # An event writer raised what must not be caught (a KeyboardInterrupt)
            # once the lock had ended: the regulator is still told.
            manager._wake_if_above_high()
            raise
        if ended:
            manager._wake_if_above_high()

    def extend(self, ttl: float) -> float:
        """Push the expiry to ``ttl`` seconds from now (capped); return the new expiry.

        Emits a :class:`LockExtended` event. Raises :class:`ResourceClosed` if
        the lock is not held.
        """
        ttl = check_positive_float("lock ttl", ttl)
        manager = self._manager()
        try:
            return manager._state.extend_lock(self, ttl)
        finally:
            if self.held:
                # (Even if an event writer raised what must not be caught once
                # the expiry had moved: the lock timer follows it.)
                manager._lock_deadline(self.expires_at)

    async def wait_revoked(self) -> None:
        """Wait until the lock stops protecting its connection; return at once if it has.

        It returns when the lock is revoked or expires (``lock.revoked``), when its
        connection closes (status ``"dropped"``), when it is released, or when
        entering it is denied (status ``"denied"``: it never protected anything).
        """
        if self.status not in ("new", "held"):
            await trio.lowlevel.checkpoint()
            return
        if self._revoked_event is None:
            self._revoked_event = trio.Event()
        await self._revoked_event.wait()

    def _ended(self, how: str) -> None:
        if self._revoked_event is not None:
            self._revoked_event.set()
        # The holder is told when protection was taken from it, not when it gave
        # the lock up or its connection went away.
        if self._on_revoke is not None and how in ("revoked", "expired"):
            try:
                self._on_revoke(self)
            except Exception:
                logger.exception("on_revoke callback of %r raised", self._member.name)

    def __repr__(self) -> str:
        return (
            f"<Lock #{self.id} {self._member.name} on connection "
            f"#{self.stream.connection.id} {self.status}>"
        )


@final
@attrs.define(eq=False, repr=False)
class Burst(BurstState):
    """A burst of transient work (from :meth:`Enrollment.burst`)."""

    async def __aenter__(self) -> Burst:
        await trio.lowlevel.checkpoint()
        if self.closed_at is not None or self in self._member._open_bursts:
            raise ConfigError(f"burst #{self.id} was already used")
        self._member._state.new_burst(self._member, self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._member._state.close_burst(self)
        finally:
            # (Even if an event writer raised what must not be caught once the
            # burst had closed: the regulator is still told.)
            manager = self._member._manager  # type: ignore[attr-defined]
            if manager is not None:
                manager._wake_if_above_high()

    def __repr__(self) -> str:
        state = "open" if self.closed_at is None else "closed"
        return f"<Burst #{self.id} {self.protocol} {self.name or ''} {state}>"
