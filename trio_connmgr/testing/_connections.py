"""In-memory peers and connections: real manager connections without sockets."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import trio

from .._config import Direction
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
        """Return the next ``n`` peer ids."""
        return [self() for _ in range(n)]


# Default peer ids count per manager, so they do not depend on other tests.
_default_peers: weakref.WeakKeyDictionary[ConnectionManager, PeerIds] = weakref.WeakKeyDictionary()


def default_peer(manager: ConnectionManager) -> str:
    """The peer id a fake connection gets when none is given.

    ``"peer-1"``, ``"peer-2"``, ... counted per manager: the n-th fake connection
    opened on a manager without a peer gets ``"peer-<n>"``.
    """
    peers = _default_peers.get(manager)
    if peers is None:
        peers = _default_peers[manager] = PeerIds()
    return peers()


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
    id (``"peer-<n>"``, counted per manager) and direction (``"inbound"``): the body runs
    in the connection's cancel scope, so pruning cancels it quietly and
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

    Attributes:
        opened: Every connection opened through it, in order (open or closed).
        peers: The :class:`PeerIds` used by :meth:`peer`.
    """

    def __init__(self, nursery: trio.Nursery, *, prefix: str = "peer") -> None:
        self._nursery = nursery
        self._held: dict[Connection, _Held] = {}
        self.opened: list[Connection] = []
        self.peers = PeerIds(prefix)

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

        ``peer`` defaults to ``"peer-<n>"`` (counted per manager). Blocks only until the
        connection is admitted. Raises :class:`ConnectionRefused` if admission
        refuses it (nothing is left running then).
        """
        if peer is None:
            peer = default_peer(manager)
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
        """Open ``n`` connections with default peer ids, one after the other."""
        return [await self.open(manager, direction=direction, address=address) for _ in range(n)]

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
        never after ``conn.release()``).
        """
        if peer is None:
            peer = default_peer(manager)
        held = _Held(tracked=True)

        async def close() -> None:
            held.close_calls += 1
            await trio.sleep(close_delay)

        conn = manager.track(peer, direction=direction, address=address, close=close)
        self._held[conn] = held
        self.opened.append(conn)
        return conn

    def close_calls(self, conn: Connection) -> int:
        """How many times the manager called ``close()`` of a :meth:`track`-ed connection."""
        return self._held[conn].close_calls

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
async def open_fake_connections(*, prefix: str = "peer") -> AsyncIterator[FakeConnections]:
    """A :class:`FakeConnections` whose tasks live for an ``async with`` block.

    On exit, every connection it still holds is closed from the remote side and
    its task is awaited; tracked connections are released. Entering checkpoints;
    exiting waits for the holding tasks (they end at once).
    """
    async with trio.open_nursery() as nursery:
        connections = FakeConnections(nursery, prefix=prefix)
        try:
            yield connections
        finally:
            connections._shutdown()
