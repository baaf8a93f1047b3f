"""In-memory peers and connections: real manager connections without sockets."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import trio

from .._config import Direction, check_count, check_period
from .._errors import ConfigError

if TYPE_CHECKING:
    from .._core._state import Connection
    from .._manager import ConnectionManager


@final
class PeerIds:
    """A factory of readable, unique peer ids: ``"peer-1"``, ``"peer-2"``, ...

    Call it for the next id; each factory counts on its own, so ids are the
    same from one test run to the next::

        peers = PeerIds("dht")
        peers()            # "dht-1"
        peers.take(3)      # ["dht-2", "dht-3", "dht-4"]

    Args:
        prefix: Put before the number.
    """

    def __init__(self, prefix: str = "peer") -> None:
        self.prefix = prefix
        self._numbers = itertools.count(1)

    def __call__(self) -> str:
        """Return the next peer id."""
        return f"{self.prefix}-{next(self._numbers)}"

    def take(self, n: int) -> list[str]:
        """Return the next ``n`` peer ids (``ConfigError`` unless ``n`` is an int >= 0)."""
        return [self() for _ in range(check_count("PeerIds.take n", n, allow_zero=True))]


# Default peer ids of open_fake_connection count per manager, so they do not
# depend on other tests.
_default_peers: weakref.WeakKeyDictionary[ConnectionManager, PeerIds] = weakref.WeakKeyDictionary()


def _fresh_peers(manager: ConnectionManager, peers: PeerIds, n: int) -> list[str]:
    """The next ``n`` ids of ``peers`` that no connection counted by ``manager`` has.

    Skipping the ids in use keeps a default id from landing on a peer the test
    named itself (protecting one would protect both).
    """
    in_use = {conn.peer for conn in manager._state.connections.values()}
    fresh: list[str] = []
    while len(fresh) < n:
        peer = peers()
        if peer not in in_use:
            fresh.append(peer)
    return fresh


def default_peer(manager: ConnectionManager) -> str:
    """The peer id :func:`open_fake_connection` gives when none is given.

    ``"peer-1"``, ``"peer-2"``, ... counted per manager, skipping ids that a
    connection counted by the manager already has.
    """
    peers = _default_peers.get(manager)
    if peers is None:
        peers = _default_peers[manager] = PeerIds()
    return _fresh_peers(manager, peers, 1)[0]


@asynccontextmanager
async def open_fake_connection(
    manager: ConnectionManager,
    peer: Hashable | None = None,
    *,
    direction: Direction | str = "inbound",
    address: str | None = None,
) -> AsyncIterator[Connection]:
    """Count an in-memory connection for the duration of an ``async with`` block.

    A thin wrapper over :meth:`ConnectionManager.connection` with a default peer
    id (``"peer-<n>"``, counted per manager, see :func:`default_peer`) and
    direction (``"inbound"``): the body runs in the connection's cancel scope,
    so pruning cancels it quietly and
    ``conn.close_reason``/``conn.prune_reason`` say why afterwards::

        async with open_fake_connection(mgr) as conn:
            await trio.sleep_forever()      # until pruned
        assert conn.close_reason == "pruned"

    Entering checkpoints and may raise :class:`ConnectionRefused`; exiting never
    blocks.
    """
    if peer is None:
        peer = default_peer(manager)
    async with manager.connection(peer, direction=direction, address=address) as conn:
        yield conn


@final
class _Held:
    """How one fake connection is held open and ended."""

    __slots__ = ("close_calls", "done", "remote", "tracked")

    def __init__(self, *, tracked: bool) -> None:
        self.tracked = tracked
        # Cancelled to close a task-held connection "from the remote side".
        self.remote = trio.CancelScope()
        # Set once the holding task has finished (at once for tracked ones).
        self.done = trio.Event()
        self.close_calls = 0


@final
class FakeConnections:
    """Opens in-memory connections on managers, each held open by a task of its own.

    Every connection is a real manager connection (admission, counting, grace,
    scoring, pruning all apply) whose "transport" is a task sleeping in the
    connection's cancel scope. It stays open until the manager prunes or closes
    it, or the test closes it from the remote side with :meth:`close`. Get one
    from :func:`open_fake_connections` or the ``fake_connections`` pytest fixture::

        conn = await fake_connections.open(mgr)                   # inbound, "peer-1"
        conns = await fake_connections.open_many(mgr, 5, direction="outbound")
        tracked = fake_connections.track(mgr)                     # like a libp2p swarm
        await fake_connections.close(conn)                        # the remote hung up
        assert fake_connections.close_calls(tracked) <= 1

    Connections opened without a peer get the next id of :attr:`peers` that no
    connection counted by the manager has (``"peer-1"``, ``"peer-2"``, ...), so
    a default id never lands on a peer the test chose: ids from :meth:`peer`
    come from the same counter, and the pytest fixtures give ``peer_ids`` the
    same counter as well.

    Attributes:
        opened: Every connection opened through it, in order (open or closed).
        peers: The :class:`PeerIds` that default peers and :meth:`peer` come from.
    """

    def __init__(
        self, nursery: trio.Nursery, *, prefix: str = "peer", peers: PeerIds | None = None
    ) -> None:
        self._nursery = nursery
        self._held: dict[Connection, _Held] = {}
        self.opened: list[Connection] = []
        self.peers = PeerIds(prefix) if peers is None else peers

    def peer(self) -> str:
        """A fresh peer id from :attr:`peers`."""
        return self.peers()

    @property
    def open_connections(self) -> list[Connection]:
        """The connections opened through it that are still counted."""
        return [conn for conn in self.opened if not conn.closed]

    async def _hold(
        self,
        manager: ConnectionManager,
        peer: Hashable,
        direction: Direction | str,
        address: str | None,
        *,
        task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        held = _Held(tracked=False)
        try:
            with held.remote:
                async with manager.connection(peer, direction=direction, address=address) as conn:
                    self._held[conn] = held
                    self.opened.append(conn)
                    task_status.started(conn)
                    await trio.sleep_forever()
        finally:
            held.done.set()

    async def open(
        self,
        manager: ConnectionManager,
        peer: Hashable | None = None,
        *,
        direction: Direction | str = "inbound",
        address: str | None = None,
    ) -> Connection:
        """Open a connection held by a new task; return it once it is counted.

        ``peer`` defaults to the next id of :attr:`peers` not in use on
        ``manager``. Blocks only until the connection is admitted. Raises
        :class:`ConnectionRefused` if admission refuses it (nothing is left
        running then).
        """
        if peer is None:
            peer = _fresh_peers(manager, self.peers, 1)[0]
        conn: Connection = await self._nursery.start(self._hold, manager, peer, direction, address)
        return conn

    async def open_many(
        self,
        manager: ConnectionManager,
        n: int,
        *,
        direction: Direction | str = "inbound",
        address: str | None = None,
    ) -> list[Connection]:
        """Open ``n`` connections with default peer ids, one after the other.

        Always checkpoints. Raises :class:`ConfigError` unless ``n`` is an int >= 0.
        """
        peers = _fresh_peers(manager, self.peers, check_count("open_many n", n, allow_zero=True))
        if not peers:
            await trio.lowlevel.checkpoint()
        return [await self.open(manager, p, direction=direction, address=address) for p in peers]

    def track(
        self,
        manager: ConnectionManager,
        peer: Hashable | None = None,
        *,
        direction: Direction | str = "inbound",
        address: str | None = None,
        close_delay: float = 0.0,
    ) -> Connection:
        """Count a connection the way a transport does, with :meth:`ConnectionManager.track`.

        Synchronous. Its ``close()`` callback sleeps ``close_delay`` seconds (on
        the manager clock) and is counted: :meth:`close_calls` tells how many
        times the manager awaited it (SPEC invariant 7: exactly once when pruned,
        never after ``conn.release()``). ``peer`` defaults as for :meth:`open`.
        A ``close_delay`` that is not a finite, non-negative number of seconds
        is a :class:`ConfigError`.
        """
        close_delay = check_period("track close_delay", close_delay)
        if peer is None:
            peer = _fresh_peers(manager, self.peers, 1)[0]
        held = _Held(tracked=True)

        async def close() -> None:
            held.close_calls += 1
            await trio.sleep(close_delay)

        conn = manager.track(peer, direction=direction, address=address, close=close)
        self._held[conn] = held
        self.opened.append(conn)
        return conn

    def close_calls(self, conn: Connection) -> int:
        """How many times the manager called ``close()`` of a :meth:`track`-ed connection.

        Raises:
            ConfigError: ``conn`` was not opened by these fake connections, or was
                opened with :meth:`open` (it has no ``close()`` to count).
        """
        held = self._held.get(conn)
        if held is None:
            raise ConfigError(f"{conn!r} was not opened by these fake connections")
        if not held.tracked:
            raise ConfigError(
                f"{conn!r} was opened with open(), which has no close() to count: use track()"
            )
        return held.close_calls

    async def close(self, conn: Connection) -> None:
        """Close ``conn`` from the remote side; return once the manager stopped counting it.

        For a connection from :meth:`open`, its task's body is cancelled, so it
        ends with ``close_reason == "closed"``, and this waits for the task; for
        one from :meth:`track`, the transport calls ``conn.release()``. Closing a
        closed connection does nothing. Always checkpoints.
        """
        held = self._held.get(conn)
        if held is None:
            raise ConfigError(f"{conn!r} was not opened by these fake connections")
        if held.tracked:
            conn.release()
            await trio.lowlevel.checkpoint()
            return
        held.remote.cancel()
        await held.done.wait()

    def _shutdown(self) -> None:
        """Close every connection still open, without waiting for the tasks."""
        for conn, held in self._held.items():
            if held.tracked:
                conn.release()
            else:
                held.remote.cancel()


@asynccontextmanager
async def open_fake_connections(
    *, prefix: str = "peer", peers: PeerIds | None = None
) -> AsyncIterator[FakeConnections]:
    """A :class:`FakeConnections` whose tasks live for an ``async with`` block.

    Its default peer ids are ``"<prefix>-<n>"``, or come from ``peers`` (a
    :class:`PeerIds` shared with the test's own ids, so that they never meet).

    On exit, every connection it still holds is closed from the remote side and
    its task is awaited; tracked connections are released. Entering checkpoints;
    exiting waits for the holding tasks (they end at once).
    """
    # (Opening a nursery does not checkpoint.)
    await trio.lowlevel.checkpoint()
    async with trio.open_nursery() as nursery:
        connections = FakeConnections(nursery, prefix=prefix, peers=peers)
        try:
            yield connections
        finally:
            connections._shutdown()
