"""py-libp2p: make a connection manager the authority over a host's connections.

``async with attach(host, mgr) as attachment:`` (inside ``host.run(...)`` and
the manager's block) puts every connection of a running py-libp2p host under the
manager (install the ``libp2p`` extra: ``pip install 'trio_connmgr[libp2p]'``):

- every py-libp2p connection is tracked with :meth:`ConnectionManager.track`
  (peer = the remote ``peer.id.ID``, direction, address = the remote IP);
  inbound connections refused by admission are closed at once;
- a stream is tracked under the enrollment whose name equals its protocol id,
  as soon as the protocol is negotiated; streams of protocols nobody enrolled
  only count as activity on their connection;
- a prune resets the connection's streams and closes the py-libp2p connection
  (tearing its transport down if a peer that stopped reading holds that up);
  a connection that py-libp2p closes by itself is released as soon as it
  starts closing;
- dials (``Swarm.dial_peer``, which ``host.connect`` and ``host.new_stream``
  use) are reported to :meth:`ConnectionManager.report_dial`;
- py-libp2p's own trimming (its ``ConnectionPruner``) and its auto-connector
  (which re-dials peers whenever the count is under its watermarks) are stopped
  while attached, and restarted on exit.

See ``docs/adapters.md`` for the py-libp2p settings that must agree with the
manager (``ConnectionConfig.max_connections``, the resource manager's limits).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, final

import attrs
import trio

try:
    from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
    from libp2p.network.exceptions import SwarmDialAllFailedError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_connmgr.libp2p needs py-libp2p: pip install 'trio_connmgr[libp2p]'"
    ) from exc

from ._config import Direction
from ._core._state import Connection, Stream
from ._enrollment import Enrollment
from ._errors import ConfigError, ConnectionRefused, ManagerClosed
from ._manager import ConnectionManager, _carries_cancelled, check_manager

__all__ = ["Attachment", "attach"]

logger = logging.getLogger("trio_connmgr.libp2p")

SWEEP_INTERVAL = 1.0
"""Seconds between two reconciliations of the tracked connections with the swarm's."""
CLOSE_TIMEOUT = 5.0
"""Seconds a refused connection's close may take."""


def _direction(obj: object, attribute: str) -> Direction:
    """A py-libp2p ``rcmgr.Direction`` (``str()`` is "inbound", "outbound", "unknown")."""
    if str(getattr(obj, attribute, "unknown")) == "inbound":
        return Direction.INBOUND
    return Direction.OUTBOUND


def _connection_direction(conn: INetConn) -> Direction:
    text = str(getattr(conn, "direction", "unknown"))
    if text in ("inbound", "outbound"):
        return Direction(text)
    # Unknown: the side that initiated the muxed connection dialled it.
    initiator = getattr(conn.muxed_conn, "is_initiator", None)
    return Direction.INBOUND if initiator is False else Direction.OUTBOUND


def _multiaddr_ip(maddr: object) -> str | None:
    """The IP address a multiaddr begins with, or ``None``.

    ``/ip6zone/eth0/ip6/fe80::1/...`` gives ``"fe80::1%eth0"`` (the form a
    socket reports a scoped address in; admission matches the address, without
    the zone). Read from the text form: multiaddr 0.2 decodes an ``ip6zone``
    component's value as one more protocol (``protocols()`` and
    ``value_for_protocol("ip4")`` find a bogus ``ip4`` in ``eth0``).
    """
    parts = str(maddr).split("/")
    zone = None
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "ip6zone":
        zone = parts[2]
        parts = parts[2:]
    if len(parts) < 3 or parts[1] not in ("ip4", "ip6") or not parts[2]:
        return None
    if zone is None:
        return parts[2]
    if parts[1] != "ip6" or not zone:
        return None
    return f"{parts[2]}%{zone}"


def _remote_ip(conn: INetConn) -> str | None:
    """The remote IP address of ``conn``, or ``None``.

    From the transport's remote endpoint; failing that (py-libp2p's WebRTC
    connections give none), from the muxed connection's transport multiaddrs
    (not the swarm connection's, which fall back to the addresses the peer
    advertised).
    """
    muxed = conn.muxed_conn
    get_remote = getattr(muxed, "get_remote_address", None)
    try:
        remote = get_remote() if callable(get_remote) else None
    except Exception:
        remote = None
    if isinstance(remote, tuple | list) and len(remote) >= 2 and remote[0]:
        return str(remote[0])
    get_addresses = getattr(muxed, "get_transport_addresses", None)
    try:
        for maddr in (get_addresses() if callable(get_addresses) else None) or ():
            ip = _multiaddr_ip(maddr)
            if ip is not None:
                return ip
    except Exception:
        pass
    return None


def _stream_done(stream: INetStream) -> bool:
    """Whether both directions of ``stream`` have ended (or it was reset).

    py-libp2p notifies ``closed_stream`` only when local code closes or resets a
    stream: one the remote ended stays in the swarm until then.
    """
    muxed = getattr(stream, "muxed_stream", None)
    if getattr(muxed, "closed", False) is True:  # yamux: both ways closed, or reset
        return True
    reset = getattr(muxed, "event_reset", None)
    if reset is not None and reset.is_set():  # mplex
        return True
    local = getattr(muxed, "event_local_closed", None)
    remote = getattr(muxed, "event_remote_closed", None)
    return local is not None and remote is not None and local.is_set() and remote.is_set()


async def _abort(conn: INetConn) -> None:
    """Tear ``conn`` down under writes blocked on a peer that does not read.

    Closing the secured transport closes the socket, which fails the blocked
    writes at once (and releases yamux's write lock); py-libp2p's own close then
    goes through quickly: it removes the connection from the swarm and notifies
    ``disconnected``.
    """
    muxed = conn.muxed_conn
    secured = getattr(muxed, "secured_conn", None)
    if secured is not None:
        try:
            await secured.close()
        except Exception:
            logger.debug("closing the transport of %r failed", conn, exc_info=True)
    if not conn.is_closed:
        await conn.close()
        return
    # The graceful close was cut short after it began: finish its clean-up, unless
    # it already took the connection out of the swarm.
    swarm = getattr(conn, "swarm", None)
    live = getattr(swarm, "connections", {}).get(muxed.peer_id, ())
    cleanup = getattr(conn, "_cleanup", None)
    if conn in live and cleanup is not None:
        await cleanup()


@final
@attrs.define(eq=False)
class _Dial:
    """A dial in flight: when it started, when its connection arrived, whether
    it ended without one (every address failed, or it was cancelled first)."""

    started: float
    connected: float | None = None
    fruitless: bool = False


@final
class _Notifee(INotifee):
    """py-libp2p's network notifications, forwarded to the attachment (sync work only)."""

    def __init__(self, attachment: Attachment) -> None:
        self._attachment = attachment

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._attachment._adopt(conn)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._attachment._forget(conn)
        await trio.lowlevel.checkpoint()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        self._attachment._stream_opened(stream)
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        self._attachment._stream_closed(stream)
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: Any) -> None:
        await trio.lowlevel.checkpoint()


@final
class Attachment:
    """The link between a py-libp2p host and a manager (from :func:`attach`).

    Its methods are synchronous and never block.

    Attributes:
        closed: Whether the ``attach()`` block has ended (nothing is tracked any more).
    """

    def __init__(self, host: IHost, manager: ConnectionManager, nursery: trio.Nursery) -> None:
        self._host = host
        self._manager = manager
        self._swarm: Any = host.get_network()
        self._nursery = nursery
        self._conns: dict[INetConn, Connection] = {}
        self._refused: set[INetConn] = set()
        self._streams: dict[INetStream, Stream] = {}
        # The tracked streams of each connection (to forget them with it).
        self._conn_streams: dict[INetConn, set[INetStream]] = {}
        # The scope of each connection's _release_when_closing task.
        self._watchers: dict[INetConn, trio.CancelScope] = {}
        self._dials: dict[Hashable, list[_Dial]] = {}
        self._original_dial: Callable[[Any], Awaitable[Any]] | None = None
        self.closed = False

    @property
    def host(self) -> IHost:
        """The py-libp2p host."""
        return self._host

    @property
    def manager(self) -> ConnectionManager:
        """The connection manager."""
        return self._manager

    def connection_for(self, conn: INetConn) -> Connection | None:
        """The :class:`~trio_connmgr.Connection` tracking a py-libp2p connection, if any."""
        return self._conns.get(conn)

    def stream_for(self, stream: INetStream) -> Stream | None:
        """The :class:`~trio_connmgr.Stream` tracking a py-libp2p stream, if any.

        A stream is tracked once its protocol is negotiated (before the protocol
        handler runs, and before ``host.new_stream`` returns) if an enrollment of
        that name exists. Use the result to ``touch()`` it, lock it or enlist it
        in a burst.
        """
        return self._streams.get(stream)

    # ---------------------------------------------------------- connections

    def _adopt(self, conn: INetConn) -> Connection | None:
        """Track ``conn`` (idempotent); close it if admission refuses it."""
        if self.closed or conn in self._refused:
            return None
        tracked = self._conns.get(conn)
        if tracked is not None:
            return tracked
        if conn.is_closed:
            return None
        peer = conn.muxed_conn.peer_id
        direction = _connection_direction(conn)
        try:
            tracked = self._manager.track(
                peer,
                direction=direction,
                address=_remote_ip(conn),
                close=lambda: self._close_connection(conn),
            )
        except ConnectionRefused as exc:
            logger.debug("closing %s connection of %s: %s", direction.value, peer, exc)
            self._refused.add(conn)
            self._nursery.start_soon(self._close_refused, conn)
            return None
        except ManagerClosed:
            return None
        self._conns[conn] = tracked
        closing = getattr(conn, "event_closed", None)
        if closing is not None:
            self._nursery.start_soon(self._release_when_closing, conn, tracked, closing)
        if direction is Direction.OUTBOUND:
            for dial in self._dials.get(peer, ()):
                if dial.connected is None:
                    dial.connected = tracked.opened_at
        for stream in conn.get_streams():
            self._stream_opened(stream)
        return tracked

    async def _release_when_closing(
        self, conn: INetConn, tracked: Connection, closing: trio.Event
    ) -> None:
        """Release ``conn`` as soon as py-libp2p starts closing it.

        Its ``disconnected`` notification comes only once the close is done
        (after two 0.1 s pauses in py-libp2p 0.8.1): meanwhile a round would
        count a connection already going and prune another in its place.
        Forgetting ``conn`` otherwise (the sweep, a prune) ends this task.
        """
        if self._conns.get(conn) is not tracked:
            return  # forgotten before this task started
        with trio.CancelScope() as scope:
            self._watchers[conn] = scope
            await closing.wait()
        if self._watchers.get(conn) is scope:
            del self._watchers[conn]
            self._forget(conn)

    def _forget(self, conn: INetConn) -> None:
        """py-libp2p closed (or is closing) ``conn``, or the sweep found it gone: release it."""
        self._refused.discard(conn)
        watcher = self._watchers.pop(conn, None)
        if watcher is not None:
            watcher.cancel()
        tracked = self._conns.pop(conn, None)
        if tracked is None:
            return
        for stream in self._conn_streams.pop(conn, ()):
            self._streams.pop(stream, None)
        tracked.release()

    async def _close_connection(self, conn: INetConn) -> None:
        """The manager's ``close`` callback (pruned, or the manager closing).

        Runs under the manager's ``close_timeout``. The graceful close gets half
        of it: a peer that stopped reading leaves yamux's writes blocked on a
        full socket, and then the transport is torn down under them.
        """
        try:
            with trio.move_on_after(self._manager.close_timeout / 2):
                # Reset the streams first: the peer learns they were cut off, not
                # finished (a py-libp2p peer's read() may still report StreamEOF).
                for stream in list(conn.get_streams()):
                    try:
                        await stream.reset()
                    except Exception:
                        logger.debug("resetting %r before closing its connection failed", stream)
                await conn.close()
                return
            logger.warning(
                "closing the py-libp2p connection to %s did not finish within %ss "
                "(does the peer read?): closing its transport",
                conn.muxed_conn.peer_id,
                self._manager.close_timeout / 2,
            )
            await _abort(conn)
        finally:
            # Forget it whatever happened: if it is still open after all, the
            # sweep finds it and counts it again.
            self._forget(conn)

    async def _close_refused(self, conn: INetConn) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as graceful:
            try:
                await conn.close()
            except Exception:
                logger.exception("closing a refused connection failed")
        if graceful.cancelled_caught:
            # Cut short, py-libp2p's close leaves the connection in the swarm,
            # marked closed, so that no later close() does anything.
            logger.warning(
                "closing a refused py-libp2p connection of %s did not finish within %ss "
                "(does the peer read?): closing its transport",
                conn.muxed_conn.peer_id,
                CLOSE_TIMEOUT,
            )
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                try:
                    await _abort(conn)
                except Exception:
                    logger.exception("closing a refused connection failed")
        # Its disconnected notification may never come. Once closed, it cannot be
        # adopted again; if it is still open after all, the sweep refuses it again.
        self._refused.discard(conn)

    def _sweep_once(self) -> None:
        """Reconcile with the swarm: release vanished connections, adopt missed ones,
        close the tracked streams that both ends have finished."""
        swarm = self._swarm
        live: dict[Any, list[INetConn]] = getattr(swarm, "connections", {})
        for conn in list(self._conns):
            muxed = conn.muxed_conn
            if conn.is_closed or muxed.is_closed or conn not in live.get(muxed.peer_id, ()):
                self._forget(conn)
        for conn in swarm.get_connections():
            if conn not in self._conns and conn not in self._refused:
                self._adopt(conn)
        for stream in [s for s in self._streams if _stream_done(s)]:
            self._stream_closed(stream)

    async def _run_sweeper(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            self._sweep_once()

    # --------------------------------------------------------------- streams

    def _stream_opened(self, stream: INetStream) -> None:
        if self.closed or stream in self._streams:
            return
        swarm_conn = getattr(stream, "swarm_conn", None)
        tracked = None if swarm_conn is None else self._adopt(swarm_conn)
        if tracked is None:
            return
        tracked.last_active = trio.current_time()
        protocol = stream.get_protocol()
        if protocol is not None:
            self._negotiated(stream, str(protocol))
            return
        # The notification comes before multistream-select has chosen the
        # protocol: learn it when py-libp2p records it with set_protocol().
        original = stream.set_protocol

        def set_protocol(protocol_id: Any) -> None:
            original(protocol_id)
            self._negotiated(stream, str(protocol_id))

        stream.set_protocol = set_protocol  # type: ignore[method-assign]

    def _negotiated(self, stream: INetStream, protocol: str) -> None:
        if self.closed or stream in self._streams:
            return
        tracked = self._conns.get(getattr(stream, "swarm_conn", None))  # type: ignore[arg-type]
        if tracked is None or tracked.closed:
            return
        now = trio.current_time()
        tracked.last_active = now
        member = self._manager._state.members.get(protocol)
        if not isinstance(member, Enrollment) or member.closed:
            return  # not enrolled: activity on the connection only
        if getattr(stream, "is_closed", False):
            return
        self._streams[stream] = member.track_stream(
            tracked, direction=_direction(stream, "_direction")
        )
        self._conn_streams.setdefault(stream.swarm_conn, set()).add(stream)  # type: ignore[attr-defined]

    def _stream_closed(self, stream: INetStream) -> None:
        tracked = self._streams.pop(stream, None)
        if tracked is not None:
            streams = self._conn_streams.get(getattr(stream, "swarm_conn", None))  # type: ignore[arg-type]
            if streams is not None:
                streams.discard(stream)
            tracked.close()
            return
        swarm_conn = getattr(stream, "swarm_conn", None)
        conn = self._conns.get(swarm_conn) if swarm_conn is not None else None
        if conn is not None and not conn.closed:
            conn.last_active = trio.current_time()

    # ------------------------------------------------------------------ dials

    async def _dial_peer(self, peer_id: Any) -> Any:
        """``Swarm.dial_peer`` with its outcome reported to the manager."""
        original = self._original_dial
        assert original is not None
        swarm = self._swarm
        cache = getattr(swarm, "_negative_peer_cache", None)
        if (
            self.closed
            # Reuses a live connection: nothing is dialled.
            or any(not c.is_closed for c in swarm.get_connections(peer_id))
            # Fails at once from py-libp2p's negative cache: nothing is dialled.
            or (cache is not None and cache.is_blocked(str(peer_id)))
        ):
            return await original(peer_id)
        if peer_id in getattr(swarm, "_ongoing_dials", {}):
            # Waits for another task's dial, which reports itself. If that dial
            # leaves no live connection, py-libp2p dials again in this call (the
            # negative cache is not looked at again): that dial is reported,
            # without a latency (when it began is not known). It failed if this
            # call fails; it succeeded if this call succeeds after the dial it
            # waited for ended without a connection (failed, or was cancelled
            # first: known when that dial is one of ours).
            waited_for = list(self._dials.get(peer_id, ()))
            try:
                result = await original(peer_id)
            except SwarmDialAllFailedError:
                if not self.closed:
                    self._manager.report_dial(peer_id, ok=False)
                raise
            if waited_for and all(d.fruitless for d in waited_for) and not self.closed:
                self._manager.report_dial(peer_id, ok=True)
            return result
        dial = _Dial(trio.current_time())
        self._dials.setdefault(peer_id, []).append(dial)
        try:
            result = await original(peer_id)
        except SwarmDialAllFailedError:
            # Every address was tried and failed. (Other errors dial nothing: no
            # known address, all filtered out, the local connection cap.)
            dial.fruitless = True
            if not self.closed:
                self._manager.report_dial(
                    peer_id, ok=False, latency=trio.current_time() - dial.started
                )
            raise
        except BaseException:
            # Cancelled (not reported), or an error that dialled nothing: a call
            # waiting for this dial dials again itself unless a connection came.
            dial.fruitless = dial.connected is None
            raise
        finally:
            dials = self._dials[peer_id]
            dials.remove(dial)
            if not dials:
                del self._dials[peer_id]
        # Swarm.dial_peer lingers (happy eyeballs, 250 ms) after the connection is
        # up: the latency is the time to the connection, not to the return.
        end = dial.connected if dial.connected is not None else trio.current_time()
        if not self.closed:
            self._manager.report_dial(peer_id, ok=True, latency=end - dial.started)
        return result


def _service_running(swarm: Any) -> bool:
    """Whether the swarm's service is running (False once ``host.run()`` has ended)."""
    get_manager = getattr(swarm, "get_manager", None)
    if get_manager is None:
        return True  # no way to tell: the other checks decide
    try:
        return bool(get_manager().is_running)
    except Exception:  # LifecycleError: it never ran
        return False


def _runs_auto_connect_loop(nursery: trio.Nursery, connector: Any) -> bool:
    """Whether a task of ``nursery`` runs ``connector``'s periodic loop.

    ``AutoConnector.stop()`` only asks the loop to end: a loop busy in a cycle
    (dialling) ends after it, and only if the connector is still stopped then.
    """
    loop = getattr(type(connector), "_periodic_check_task", None)
    code = getattr(loop, "__code__", None)
    for task in nursery.child_tasks:
        frame = getattr(task.coro, "cr_frame", None)
        if (
            code is not None
            and getattr(task.coro, "cr_code", None) is code
            and frame is not None
            and frame.f_locals.get("self") is connector
        ):
            return True
    return False


def _check_settings(swarm: Any, manager: ConnectionManager) -> None:
    """Refuse py-libp2p settings that would fight the manager."""
    limits = manager._state.limits
    needed = limits.hard if limits.hard is not None else limits.high
    which = "hard" if limits.hard is not None else "high"
    config = getattr(swarm, "connection_config", None)
    max_connections = getattr(config, "max_connections", None)
    min_connections = getattr(config, "min_connections", 0)
    if not isinstance(max_connections, int):
        return
    if max_connections <= needed:
        raise ConfigError(
            f"py-libp2p ConnectionConfig.max_connections={max_connections} is not above the "
            f"manager's {which}={needed}: py-libp2p would close the connections the manager "
            "means to keep, and refuse outbound dials (which the manager never refuses by "
            "count) at that count; pass new_host(connection_config=ConnectionConfig("
            f"max_connections=...)) well above {needed}"
        )
    if isinstance(min_connections, int) and max_connections - min_connections < needed:
        raise ConfigError(
            f"py-libp2p admits at most max_connections - min_connections = "
            f"{max_connections} - {min_connections} = {max_connections - min_connections} "
            f"inbound connections, below the manager's {which}={needed}; pass "
            "ConnectionConfig(min_connections=0) and a larger max_connections"
        )


@asynccontextmanager
async def attach(host: IHost, manager: ConnectionManager) -> AsyncIterator[Attachment]:
    """Put a running py-libp2p host's connections under ``manager`` for an ``async with`` block.

    Enter it inside ``host.run(...)`` (the swarm must be running) and inside the
    manager's block. Entering adopts the connections the host already has,
    stops py-libp2p's ``ConnectionPruner`` and auto-connector, registers a
    network notifee and wraps the swarm's ``dial_peer`` (to report dials); it
    checkpoints. Leaving undoes all of it and releases the tracked connections
    (they stay open: the host keeps them, the manager stops counting them).

    Yields:
        The :class:`Attachment`, to find the manager's view of a py-libp2p
        connection or stream.

    Raises:
        ManagerClosed: ``manager`` is closed (nothing is changed).
        ConfigError: ``manager`` is not a ConnectionManager, the host is not
            running (or its ``host.run()`` has ended), is already attached, or
            its ``ConnectionConfig`` would fight the manager:
            ``max_connections`` not above the manager's ``hard`` (or ``high``
            without ``hard``), or ``max_connections - min_connections`` (its
            inbound slots) below it.
    """
    await trio.lowlevel.checkpoint()
    check_manager("attach manager", manager)
    swarm: Any = host.get_network()
    started = getattr(swarm, "event_background_nursery_created", None)
    if (
        started is None
        or not started.is_set()
        or getattr(swarm, "_closing", False)
        or not _service_running(swarm)
    ):
        raise ConfigError("attach() needs a running host: enter it inside host.run(...)")
    if getattr(swarm, "_trio_connmgr_attachment", None) is not None:
        raise ConfigError("this py-libp2p host is already attached to a connection manager")
    _check_settings(swarm, manager)
    manager._check_open()

    pruner: Any = getattr(swarm, "connection_pruner", None)
    connector: Any = getattr(swarm, "auto_connector", None)
    # A dial_peer already set on the swarm object (someone else's wrapper) is put back.
    previous_dial_peer = swarm.__dict__.get("dial_peer")
    pruner_was_started = bool(getattr(pruner, "_started", False))
    connector_was_started = bool(getattr(connector, "_started", False))

    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        attachment = Attachment(host, manager, nursery)
        notifee = _Notifee(attachment)
        swarm._trio_connmgr_attachment = attachment
        try:
            # py-libp2p's own regulation would fight the manager's: its pruner
            # closes connections above its high watermark, and its auto-connector
            # dials known peers whenever the count is under its low watermark
            # (that is, right after every prune).
            if pruner_was_started:
                await pruner.stop()
            if connector_was_started:
                await connector.stop()
            swarm.register_notifee(notifee)
            attachment._original_dial = swarm.dial_peer
            swarm.dial_peer = attachment._dial_peer
            attachment._sweep_once()  # adopt the connections the host already has
            await nursery.start(attachment._run_sweeper)
            try:
                yield attachment
            except BaseException as exc:
                if _carries_cancelled(exc):
                    raise
                # The body's own error leaves unwrapped, after the cleanup.
                body_error = exc
        finally:
            attachment.closed = True
            nursery.cancel_scope.cancel()
            if swarm.__dict__.get("dial_peer") == attachment._dial_peer:
                if previous_dial_peer is None:
                    del swarm.dial_peer
                else:
                    swarm.dial_peer = previous_dial_peer
            swarm.remove_notifee(notifee)
            for tracked in list(attachment._conns.values()):
                tracked.release()
            attachment._conns.clear()
            attachment._streams.clear()
            attachment._conn_streams.clear()
            attachment._watchers.clear()
            swarm._trio_connmgr_attachment = None
            with trio.CancelScope(shield=True):
                if pruner_was_started:
                    await pruner.start()
                if connector_was_started and not getattr(swarm, "_closing", False):
                    background = getattr(swarm, "background_nursery", None)
                    # A loop still in the cycle it was in when attach() stopped it
                    # goes on once the connector is started again: no second one.
                    running = background is not None and _runs_auto_connect_loop(
                        background, connector
                    )
                    await connector.start()
                    if background is not None and not running:
                        await connector.run_background_task(background)
    if body_error is not None:
        raise body_error
