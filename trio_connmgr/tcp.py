"""Plain TCP with Trio: a server and a client whose connections the manager counts.

:func:`serve_tcp` is :func:`trio.serve_tcp` with a manager in the middle: every
accepted :class:`trio.SocketStream` is admitted as an inbound connection, and
the handler runs inside the connection's cancel scope, so pruning the
connection cancels the handler and closes the socket.
:func:`open_tcp_connection` dials with :func:`trio.open_tcp_stream`, reports the
dial to :meth:`ConnectionManager.report_dial` and counts the outbound connection
for the duration of an ``async with`` block.

A plain TCP connection usually carries a single stream of a single protocol:
open it with ``async with enrollment.stream(conn) as s:`` inside the handler (or
the client's block) and call ``s.touch(nbytes)`` as bytes flow.

Peers and addresses: unless told otherwise, a connection's ``peer`` is the
remote ``"host:port"`` string and its ``address`` the remote IP address (what
admission's subnet rules match).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from ._config import Direction, check_address, check_not_async, check_peer
from ._errors import ConfigError, ConnectionRefused, ManagerClosed
from ._manager import _ConnectionContext, check_manager

if TYPE_CHECKING:
    from ._core._state import Connection
    from ._manager import ConnectionManager

__all__ = ["open_tcp_connection", "serve_tcp"]

logger = logging.getLogger("trio_connmgr.tcp")

_INBOUND = Direction.INBOUND
_OUTBOUND = Direction.OUTBOUND

Handler = Callable[[trio.SocketStream, "Connection"], Awaitable[object]]
"""A connection handler: ``await handler(stream, conn)``."""


def _remote(stream: trio.SocketStream) -> tuple[str, str | None] | None:
    """``("host:port", "host")`` of the socket's remote end (``None`` if it is gone)."""
    try:
        sockaddr: Any = stream.socket.getpeername()
    except OSError:
        return None  # not connected: reset by the remote end
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host, port = str(sockaddr[0]), sockaddr[1]
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), host
    return str(sockaddr), None


def _check_port(field: str, port: object, *, lowest: int) -> None:
    # trio takes a port of 70000 for 4464 (the kernel keeps 16 bits) and a bool
    # for an int: say so, rather than listen elsewhere or report a failed dial.
    if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port <= 65535:
        raise ConfigError(f"{field} must be an integer from {lowest} to 65535, got {port!r}")


async def _close_socket(stream: trio.SocketStream) -> None:
    # SocketStream.aclose() closes the file descriptor before its checkpoint,
    # so the socket is closed even when we are being cancelled; the shield only
    # keeps that checkpoint from raising Cancelled out of cleanup code.
    with trio.CancelScope(shield=True):
        await stream.aclose()


async def serve_tcp(
    handler: Handler,
    port: int,
    *,
    manager: ConnectionManager,
    host: str | bytes | None = "127.0.0.1",
    peer_of: Callable[[trio.SocketStream], Hashable] | None = None,
    address_of: Callable[[trio.SocketStream], str | None] | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on ``host:port`` and run ``handler(stream, conn)`` for each admitted connection.

    The shape of :func:`trio.serve_tcp`: it opens the listeners, calls
    ``task_status.started(listeners)`` and serves until cancelled (use
    ``await nursery.start(serve_tcp, ...)`` to learn the port when ``port=0``).

    For every accepted socket it enters ``manager.connection(peer,
    direction="inbound", address=ip)``:

    - if admission refuses (:class:`ConnectionRefused`, counted by the manager in
      ``statistics().refusals``) or the manager is closed, the socket is closed
      at once and the handler never runs;
    - a socket whose remote end is already gone (reset before it was accepted:
      its address can no longer be read, so admission could not apply its
      lists, caps and rate limits) is closed at once, neither admitted nor
      refused, and the handler never runs;
    - otherwise the handler runs inside the connection's cancel scope: when the
      manager prunes the connection the handler is cancelled, quietly, and the
      socket is closed, so the remote end sees end-of-file or a reset.

    The socket is closed as soon as the handler returns (by
    :func:`trio.serve_listeners`, as for :func:`trio.serve_tcp`), whatever happens,
    including when the handler raises (the error then propagates and stops the server, as with
    :func:`trio.serve_tcp`).

    Args:
        handler: ``async def handler(stream, conn)``; ``conn`` is the
            :class:`~trio_connmgr.Connection`.
        port: TCP port, from 0 to 65535 (``0`` picks a free one).
        manager: The :class:`~trio_connmgr.ConnectionManager` that counts the connections.
        host: Interface to listen on (``None``: every interface).
        peer_of: Returns the peer identity of a new stream (a synchronous
            function, called before admission); default: the remote ``"host:port"``.
        address_of: Returns the address admission matches for a new stream
            (its subnet caps, rate limits, allow- and deny-lists; a synchronous
            function, like ``peer_of``); default: the remote IP address. For
            servers that know a client's origin better than the socket does.
        handler_nursery: Nursery to run the handlers in (default: an internal one).
        task_status: Receives the list of :class:`trio.SocketListener`.

    Raises:
        ConfigError: ``manager`` is not a ConnectionManager, ``handler`` is not
            callable, ``port`` is not an integer from 0 to 65535, ``host`` is
            not a non-empty string (or bytes) or ``None``, or ``peer_of``
            or ``address_of`` is not a synchronous function (before listening).
            An exception from ``peer_of`` or ``address_of`` stops the server
            like one from the handler, and so does a ``ConfigError`` naming the
            hook when one returns what is not a peer (``None`` or unhashable) or
            an address (a string or ``None``).
        ManagerClosed: The manager is closed (before listening).
    """
    check_manager("serve_tcp manager", manager)
    if not callable(handler):
        raise ConfigError(f"serve_tcp handler must be callable, got {handler!r}")
    _check_port("serve_tcp port", port, lowest=0)
    # (trio.open_tcp_listeners takes a str or bytes host, as getaddrinfo does.)
    if host is not None and (not isinstance(host, str | bytes) or not host):
        raise ConfigError(
            f"serve_tcp host must be a non-empty string (or bytes) or None, got {host!r}"
        )
    for field, hook in (("peer_of", peer_of), ("address_of", address_of)):
        if hook is not None and not callable(hook):
            raise ConfigError(f"serve_tcp {field} must be callable or None, got {hook!r}")
        check_not_async(f"serve_tcp {field}", hook)
    manager._check_open()
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def serve_one(stream: trio.SocketStream) -> None:
        remote = _remote(stream)
        if remote is None:
            logger.debug("inbound TCP connection reset before it was accepted: not served")
            return
        peer: Hashable
        key, address = remote
        # Outside the try below: whatever a hook raises (even ConnectionRefused)
        # is the hook's error and stops the server, as documented.
        if peer_of is None:
            peer = key
        else:
            peer = peer_of(stream)
            check_peer("serve_tcp peer_of(stream)", peer)
        if address_of is not None:
            address = address_of(stream)
            check_address("serve_tcp address_of(stream)", address)
        admitted = False
        try:
            # The task has just started: no schedule point before admission.
            async with _ConnectionContext(manager, peer, _INBOUND, address, False) as conn:
                admitted = True
                await handler(stream, conn)
        except (ConnectionRefused, ManagerClosed) as exc:
            if admitted:
                raise  # the handler's own error, not admission
            logger.debug("inbound TCP connection from %s not admitted: %s", key, exc)
        # No close here: trio.serve_listeners closes every handler's stream
        # (aclose_forcefully) as soon as the handler returns, whatever happened.

    await trio.serve_listeners(
        serve_one, listeners, handler_nursery=handler_nursery, task_status=task_status
    )


@asynccontextmanager
async def open_tcp_connection(
    manager: ConnectionManager,
    host: str,
    port: int,
    *,
    peer: Hashable | None = None,
) -> AsyncIterator[tuple[trio.SocketStream, Connection]]:
    """Dial ``host:port`` and count the connection for the duration of an ``async with`` block.

    Entering dials with :func:`trio.open_tcp_stream` (it blocks for the dial),
    reports the outcome and its latency (on the manager's clock) to
    :meth:`ConnectionManager.report_dial`, then counts the outbound connection and
    yields ``(stream, conn)``. A failed dial is reported and its ``OSError``
    propagates; a cancelled dial is not reported, nor is a bad argument (a
    :class:`ConfigError`, raised before dialling).

    The block runs inside the connection's cancel scope: if the manager prunes
    the connection, the block is cancelled and exits quietly (check
    ``conn.close_reason``). Exiting, for any reason, closes the socket and stops
    counting the connection; it never blocks beyond closing the socket.

    Args:
        manager: The :class:`~trio_connmgr.ConnectionManager`.
        host: Host name or IP address to dial (a non-empty string).
        port: TCP port to dial, from 1 to 65535.
        peer: The peer identity (default: ``"host:port"``, ``"[host]:port"`` for
            an IPv6 address).

    Raises:
        ConfigError: ``manager`` is not a ConnectionManager, ``host`` is not a
            non-empty string, ``port`` is not an integer from 1 to 65535, or
            ``peer`` is not hashable (before dialling).
        OSError: The dial failed.
        ManagerClosed: The manager is closed (nothing is dialled), or closed
            during the dial (the socket is closed).
    """
    check_manager("open_tcp_connection manager", manager)
    if not isinstance(host, str) or not host:
        raise ConfigError(f"open_tcp_connection host must be a non-empty string, got {host!r}")
    _check_port("open_tcp_connection port", port, lowest=1)
    key: Hashable = peer
    if peer is None:
        # As serve_tcp names its peers: an IPv6 address in brackets.
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    check_peer("open_tcp_connection peer", key)
    manager._check_open()
    started = trio.current_time()
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        # A failed dial (refused, unreachable, no such host). A TypeError or
        # ValueError from a bad argument is the caller's bug, not the network's.
        manager.report_dial(key, ok=False, latency=trio.current_time() - started)
        raise
    try:
        # Inside the try: if reporting raises (a user trigger's hook), the socket
        # is closed all the same.
        manager.report_dial(key, ok=True, latency=trio.current_time() - started)
        remote = _remote(stream)
        address = None if remote is None else remote[1]
        # The dial has just been a schedule point: none again before counting.
        async with _ConnectionContext(manager, key, _OUTBOUND, address, False) as conn:
            yield stream, conn
    finally:
        await _close_socket(stream)
