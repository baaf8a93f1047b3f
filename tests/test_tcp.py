"""trio_connmgr.tcp on real loopback sockets: serve_tcp and open_tcp_connection.

These tests use real sockets and the real clock (short durations, every wait
under ``trio.fail_after``): the kernel's TCP stack does not run on a mock clock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections import Counter
from functools import partial

import pytest
import trio
import trio.testing
from helpers import DialRecorder

import trio_connmgr as cm
from trio_connmgr.tcp import open_tcp_connection, serve_tcp

CLIENTS = 100
LOCKED = 5
PROTECTED = 5


def open_fds() -> int:
    """Number of file descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counting fds needs /proc/self/fd"
)


async def read_line(stream: trio.SocketStream) -> bytes:
    """Read up to and including b"\\n" (b"" if the peer closed first)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(64)
        if not chunk:
            return b""
        data += chunk
    return data


async def wait_closed(stream: trio.SocketStream) -> None:
    """Return once the remote end closed or reset the connection."""
    try:
        while await stream.receive_some(1024):
            pass
    except trio.BrokenResourceError:
        pass  # reset by the peer: closed as well


@needs_proc
async def test_server_regulates_a_hundred_connections() -> None:
    fds_before = open_fds()
    roles = ["lock"] * LOCKED + ["protect"] * PROTECTED + ["plain"] * (CLIENTS - 10)
    server_conns: dict[str, list[cm.Connection]] = {"lock": [], "protect": [], "plain": []}
    ready = 0
    all_ready = trio.Event()
    closed_send, closed_receive = trio.open_memory_channel[str](CLIENTS)

    async with (
        cm.open_connection_manager(
            # A grace period long enough for every client to say its role and
            # be locked or protected, even on a loaded machine.
            limits=cm.Limits(low=20, high=30),
            grace_period=3.0,
            silence_period=0.05,
        ) as mgr,
        mgr.enroll("echo", quota=cm.Quota(0, 100)) as echo,
        mgr.subscribe() as events,
    ):

        async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
            async with echo.stream(conn, direction="inbound") as s:
                role = (await read_line(stream)).strip().decode()
                server_conns[role].append(conn)
                if role == "protect":
                    mgr.protect(conn.peer, "test")
                if role == "lock":
                    async with echo.lock(s, ttl=60):
                        await stream.send_all(b"ok\n")
                        await trio.sleep_forever()
                await stream.send_all(b"ok\n")
                s.touch(3)
                await trio.sleep_forever()

        async def client(role: str, port: int) -> None:
            nonlocal ready
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(role.encode() + b"\n")
                assert await read_line(stream) == b"ok\n"
                ready += 1
                if ready == CLIENTS:
                    all_ready.set()
                await wait_closed(stream)
                closed_send.send_nowait(role)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
            port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as clients:
                for role in roles:
                    clients.start_soon(client, role, port)
                with trio.fail_after(20):
                    await all_ready.wait()
                    # Grace ends three seconds after each connection opened;
                    # the regulator then prunes down to low.
                    if mgr.statistics().connections > 30:
                        async for event in events:
                            if isinstance(event, cm.RoundCompleted) and event.count_after <= 30:
                                break
                    stats = mgr.statistics()
                    pruned = stats.connections_pruned
                    closed_clients = Counter(
                        [await closed_receive.receive() for _ in range(pruned)]
                    )
                await trio.sleep(0.2)  # nothing else closes by itself
                stats = mgr.statistics()
                assert stats.connections <= 30
                assert stats.connections_pruned == pruned == CLIENTS - stats.connections
                assert stats.rounds.count >= 1
                with pytest.raises(trio.WouldBlock):
                    closed_receive.receive_nowait()
                assert closed_clients == {"plain": pruned}
                for role in ("lock", "protect"):
                    assert all(not c.closed for c in server_conns[role]), role
                plain_pruned = [c for c in server_conns["plain"] if c.closed]
                assert len(plain_pruned) == pruned
                assert all(c.close_reason == "pruned" for c in plain_pruned)
                assert all(c.prune_reason is not None for c in plain_pruned)
                clients.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    assert open_fds() == fds_before


@needs_proc
async def test_admission_refusal_closes_the_socket() -> None:
    fds_before = open_fds()
    async with cm.open_connection_manager(
        limits=cm.Limits(low=2, high=3, hard=4), grace_period=60
    ) as mgr:
        handled = 0

        async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
            nonlocal handled
            handled += 1
            await stream.send_all(b"ok\n")
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
            port = listeners[0].socket.getsockname()[1]
            answers = []
            streams = []
            with trio.fail_after(10):
                for _ in range(6):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    streams.append(stream)
                    answers.append(await read_line(stream))
            assert answers == [b"ok\n"] * 4 + [b""] * 2
            assert handled == 4
            stats = mgr.statistics()
            assert stats.connections == stats.inbound == 4
            assert dict(stats.refusals) == {"hard": 2}
            assert all(c.peer.startswith("127.0.0.1:") for c in mgr.connections)
            assert all(c.address == "127.0.0.1" for c in mgr.connections)
            for stream in streams:
                await stream.aclose()
            nursery.cancel_scope.cancel()
    assert open_fds() == fds_before


async def test_client_reports_dials_and_is_pruned_quietly() -> None:
    recorder = DialRecorder()
    server_saw_eof = trio.Event()

    async def echo_server(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(1024):
                await stream.send_all(data)
        server_saw_eof.set()

    async with trio.open_nursery() as servers:
        listeners = await servers.start(trio.serve_tcp, echo_server, 0)
        port = listeners[0].socket.getsockname()[1]
        async with cm.open_connection_manager(
            limits=cm.Limits(low=1, high=1), grace_period=0, triggers=[recorder]
        ) as mgr:
            async with mgr.enroll("echo", quota=cm.Quota(0, 1)) as echo:
                busy_ready = trio.Event()

                async def busy() -> None:
                    async with open_tcp_connection(mgr, "127.0.0.1", port) as (stream, conn):
                        assert conn.direction is cm.Direction.OUTBOUND
                        assert conn.peer == f"127.0.0.1:{port}"
                        async with echo.stream(conn) as s:
                            await stream.send_all(b"hello")
                            assert await stream.receive_some(5) == b"hello"
                            s.touch(5)
                            busy_ready.set()
                            await trio.sleep_forever()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(busy)
                    with trio.fail_after(10):
                        await busy_ready.wait()
                        # A second, idle connection takes the count over high=1:
                        # the regulator prunes the idle one, which cancels this
                        # block quietly and closes its socket.
                        async with open_tcp_connection(mgr, "127.0.0.1", port, peer="idle") as (
                            _,
                            idle,
                        ):
                            await trio.sleep_forever()
                        assert idle.close_reason == "pruned"
                        assert idle.prune_reason is not None
                        assert idle.prune_reason.phase is cm.Phase.IDLE
                        await server_saw_eof.wait()
                    assert mgr.statistics().connections == 1
                    nursery.cancel_scope.cancel()

            # A refused dial raises OSError and is reported as a failure.
            with trio.socket.socket() as sock:
                await sock.bind(("127.0.0.1", 0))
                closed_port = sock.getsockname()[1]
            with pytest.raises(OSError, match="connect"):
                async with open_tcp_connection(mgr, "127.0.0.1", closed_port):
                    pytest.fail("the dial should have failed")  # pragma: no cover
            assert mgr.statistics().connections == 0
        servers.cancel_scope.cancel()

    assert [ok for ok, _ in recorder.dials] == [True, True, False]
    assert all(latency is not None and latency >= 0 for _, latency in recorder.dials)


async def test_a_bad_dial_argument_is_not_reported_as_a_failed_dial() -> None:
    recorder = DialRecorder()
    async with cm.open_connection_manager(
        limits=cm.Limits(low=1, high=2), triggers=[recorder]
    ) as mgr:
        with pytest.raises(cm.ConfigError, match="open_tcp_connection port"):
            async with open_tcp_connection(mgr, "127.0.0.1", None):  # type: ignore[arg-type]
                pytest.fail("dialled without a port")  # pragma: no cover
        assert recorder.dials == []
        assert mgr.statistics().connections == 0


async def test_a_cancelled_handler_task_is_not_admitted() -> None:
    # serve_tcp skips the schedule point before admission (the task has just
    # started), but a handler task whose nursery is being cancelled must not be
    # admitted: at hard it would evict a live connection for nothing.
    ran = 0

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        nonlocal ran
        ran += 1

    # Allow-listed newcomers at hard evict a connection to get in.
    admission = cm.Admission(allow=["127.0.0.1"])
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=1, high=2, hard=2), grace_period=0, admission=admission
        ) as mgr,
        trio.open_nursery() as nursery,
    ):
        held = [
            mgr.track(f"held-{i}", direction="inbound", close=trio.lowlevel.checkpoint)
            for i in range(2)
        ]
        async with trio.open_nursery() as handlers:
            handlers.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.fail_after(10):
                listeners = await nursery.start(
                    partial(serve_tcp, handler, 0, manager=mgr, handler_nursery=handlers)
                )
                port = listeners[0].socket.getsockname()[1]
                client = await trio.open_tcp_stream("127.0.0.1", port)
                await wait_closed(client)
                await client.aclose()
        assert ran == 0
        assert mgr.statistics().connections_opened == 2
        assert not any(conn.closed for conn in held)
        nursery.cancel_scope.cancel()


@needs_proc
async def test_bad_arguments_are_config_errors_before_any_socket() -> None:
    recorder = DialRecorder()
    fds_before = open_fds()

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[recorder]) as mgr:
        with pytest.raises(cm.ConfigError, match="serve_tcp manager must be a ConnectionManager"):
            await serve_tcp(handler, 0, manager=None)  # type: ignore[arg-type]
        with pytest.raises(cm.ConfigError, match="serve_tcp address_of must be callable"):
            await serve_tcp(handler, 0, manager=mgr, address_of="10.0.0.1")  # type: ignore[arg-type]
        with pytest.raises(cm.ConfigError, match="open_tcp_connection manager"):
            async with open_tcp_connection(None, "127.0.0.1", 1):  # type: ignore[arg-type]
                pass  # pragma: no cover
        with pytest.raises(cm.ConfigError, match=r"open_tcp_connection peer must be hashable"):
            async with open_tcp_connection(mgr, "127.0.0.1", 1, peer=["unhashable"]):
                pass  # pragma: no cover
        assert recorder.dials == []
    assert open_fds() == fds_before


@needs_proc
async def test_a_failing_dial_hook_still_closes_the_socket() -> None:
    class Failing(DialRecorder):
        def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
            raise RuntimeError("trigger bug")

    server_saw_eof = trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some():
                pass  # pragma: no cover
        server_saw_eof.set()

    fds_before = open_fds()
    async with trio.open_nursery() as servers:
        listeners = await servers.start(trio.serve_tcp, server, 0)
        port = listeners[0].socket.getsockname()[1]
        async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[Failing()]) as mgr:
            with pytest.raises(RuntimeError, match="trigger bug"):
                async with open_tcp_connection(mgr, "127.0.0.1", port):
                    pass  # pragma: no cover
            assert mgr.statistics().connections == 0
        with trio.fail_after(10):
            await server_saw_eof.wait()
        servers.cancel_scope.cancel()
    assert open_fds() == fds_before


async def test_address_of_tells_admission_where_a_client_comes_from() -> None:
    origins = ["10.1.1.1", "10.1.1.2", "10.1.2.1"]
    admission = cm.Admission(ipv4_caps={24: 1})

    def origin(stream: trio.SocketStream) -> str:
        return origins.pop(0)

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        await stream.send_all(b"ok\n")
        await trio.sleep_forever()

    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10), admission=admission) as mgr,
        trio.open_nursery() as nursery,
    ):
        listeners = await nursery.start(
            partial(serve_tcp, handler, 0, manager=mgr, address_of=origin)
        )
        port = listeners[0].socket.getsockname()[1]
        answers = []
        async with contextlib.AsyncExitStack() as stack:
            with trio.fail_after(10):
                for _ in range(3):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stack.enter_async_context(stream)
                    answers.append(await read_line(stream))
            # 10.1.1.0/24 has room for one: its second client is refused.
            assert answers == [b"ok\n", b"", b"ok\n"]
            assert sorted(c.address for c in mgr.connections) == ["10.1.1.1", "10.1.2.1"]
            assert dict(mgr.statistics().refusals) == {"subnet": 1}
        nursery.cancel_scope.cancel()


async def test_open_tcp_connection_on_a_closed_manager_does_not_dial() -> None:
    recorder = DialRecorder()
    async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[recorder]) as mgr:
        pass
    # Nothing listens on this port: a dial would fail (and be reported).
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(cm.ManagerClosed):
        async with open_tcp_connection(mgr, "127.0.0.1", closed_port):
            pytest.fail("counted on a closed manager")  # pragma: no cover
    assert recorder.dials == []


@needs_proc
async def test_serve_tcp_on_a_closed_manager_does_not_listen() -> None:
    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        pass
    fds_before = open_fds()
    async with trio.open_nursery() as nursery:
        with pytest.raises(cm.ManagerClosed):
            await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
        assert open_fds() == fds_before
        nursery.cancel_scope.cancel()


@needs_proc
@pytest.mark.parametrize("port", [-1, 65536, 70000, True, None, "80", 8000.0])
async def test_a_bad_port_is_a_config_error_before_any_socket(port: object) -> None:
    recorder = DialRecorder()
    fds_before = open_fds()

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[recorder]) as mgr:
        async with trio.open_nursery() as nursery:
            with pytest.raises(cm.ConfigError, match=rf"serve_tcp port .*got {port!r}"):
                await nursery.start(partial(serve_tcp, handler, port, manager=mgr))
            nursery.cancel_scope.cancel()
        with pytest.raises(cm.ConfigError, match=rf"open_tcp_connection port .*got {port!r}"):
            async with open_tcp_connection(mgr, "127.0.0.1", port):  # type: ignore[arg-type]
                pytest.fail("dialled a bad port")  # pragma: no cover
        # Port 0 picks a free port to listen on, but cannot be dialled.
        with pytest.raises(cm.ConfigError, match=r"open_tcp_connection port .*got 0"):
            async with open_tcp_connection(mgr, "127.0.0.1", 0):
                pytest.fail("dialled port 0")  # pragma: no cover
        # The caller's bug is not a network failure: nothing is reported.
        assert recorder.dials == []
    assert open_fds() == fds_before


@pytest.mark.parametrize("host", ["", None, b"127.0.0.1"])
async def test_a_bad_host_is_a_config_error_before_dialling(host: object) -> None:
    recorder = DialRecorder()
    async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[recorder]) as mgr:
        with pytest.raises(cm.ConfigError, match=rf"open_tcp_connection host .*got {host!r}"):
            async with open_tcp_connection(mgr, host, 1):  # type: ignore[arg-type]
                pytest.fail("dialled a bad host")  # pragma: no cover
        assert recorder.dials == []


@needs_proc
async def test_a_handler_that_is_not_callable_is_a_config_error_before_listening() -> None:
    fds_before = open_fds()
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr,
        trio.open_nursery() as nursery,
    ):
        with pytest.raises(cm.ConfigError, match="serve_tcp handler must be callable, got None"):
            await nursery.start(partial(serve_tcp, None, 0, manager=mgr))
        nursery.cancel_scope.cancel()
    assert open_fds() == fds_before


@pytest.mark.parametrize(
    ("hook", "value", "message"),
    [
        ("peer_of", None, r"serve_tcp peer_of\(stream\) must identify a peer, got None"),
        ("peer_of", ["x"], r"serve_tcp peer_of\(stream\) must be hashable, got \['x'\]"),
        (
            "address_of",
            167837953,
            r"serve_tcp address_of\(stream\) must be a string or None, got 167837953",
        ),
    ],
)
async def test_a_bad_peer_of_or_address_of_result_names_the_hook(
    hook: str, value: object, message: str
) -> None:
    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        # As documented, an exception from a hook stops the server.
        error = pytest.RaisesExc(cm.ConfigError, match=message)
        with pytest.RaisesGroup(error, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(serve_tcp, handler, 0, manager=mgr, **{hook: lambda stream: value})
                )
                port = listeners[0].socket.getsockname()[1]
                with trio.fail_after(10):
                    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                        await wait_closed(client)
                        await trio.sleep_forever()
        assert mgr.statistics().connections_opened == 0


@pytest.mark.parametrize("hook", ["peer_of", "address_of"])
@pytest.mark.parametrize("error", [cm.ConnectionRefused, cm.ManagerClosed])
async def test_a_hook_raising_an_admission_error_stops_the_server_like_any_other(
    hook: str, error: type[Exception]
) -> None:
    def raising(stream: trio.SocketStream) -> str:
        raise error("from the hook")

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        # The hook's own error, not a refusal by admission: it is not swallowed.
        error_ = pytest.RaisesExc(error, match="from the hook")
        with pytest.RaisesGroup(error_, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(serve_tcp, handler, 0, manager=mgr, **{hook: raising})
                )
                port = listeners[0].socket.getsockname()[1]
                with trio.fail_after(10):
                    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                        await wait_closed(client)
                        await trio.sleep_forever()
        assert mgr.statistics().refusals == {}
        assert mgr.statistics().connections_opened == 0


def reset_connection(port: int) -> None:
    """Connect to ``port`` and reset the connection at once (a blocking call).

    Trio's scheduler does not run in between: the server accepts a connection
    already reset, whose remote address can no longer be read.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.connect(("127.0.0.1", port))


async def test_a_connection_reset_before_it_is_accepted_is_not_served() -> None:
    # Without the remote address admission cannot apply its deny-list, caps
    # and rate limits: such a connection must not reach the handler.
    served: list[object] = []

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        served.append(conn.peer)

    admission = cm.Admission(deny=["127.0.0.0/8"])
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10), admission=admission) as mgr,
        trio.open_nursery() as nursery,
    ):
        listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
        port = listeners[0].socket.getsockname()[1]
        for _ in range(3):
            reset_connection(port)
        with trio.fail_after(10):
            # A client still there is refused by the deny-list.
            async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                await wait_closed(client)
            await trio.testing.wait_all_tasks_blocked()
        assert served == []
        stats = mgr.statistics()
        assert stats.connections_opened == 0
        assert dict(stats.refusals) == {"deny": 1}
        nursery.cancel_scope.cancel()


async def test_a_half_closed_client_is_served() -> None:
    # A client that sent its request and shut its writing half before the
    # server accepted it is still connected: it is admitted and gets its answer.
    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        request = b""
        while data := await stream.receive_some(64):
            request += data
        await stream.send_all(request.upper())

    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        trio.open_nursery() as nursery,
    ):
        listeners = await nursery.start(partial(serve_tcp, handler, 0, manager=mgr))
        port = listeners[0].socket.getsockname()[1]
        with socket.socket() as sock:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"hello")
            sock.shutdown(socket.SHUT_WR)
            client = trio.SocketStream(trio.socket.from_stdlib_socket(sock.dup()))
        async with client:
            answer = b""
            with trio.fail_after(10):
                while data := await client.receive_some(64):
                    answer += data
        assert answer == b"HELLO"
        assert mgr.statistics().connections_opened == 1
        nursery.cancel_scope.cancel()


@needs_proc
@pytest.mark.parametrize("hook", ["peer_of", "address_of"])
async def test_an_async_peer_of_or_address_of_is_a_config_error_before_listening(
    hook: str,
) -> None:
    # Called synchronously before admission, it would hand a coroutine, never
    # awaited, to the manager as the peer or the address.
    async def from_handshake(stream: trio.SocketStream) -> str:
        return "10.0.0.1"  # pragma: no cover

    async def handler(stream: trio.SocketStream, conn: cm.Connection) -> None:
        pass  # pragma: no cover

    fds_before = open_fds()
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr,
        trio.open_nursery() as nursery,
    ):
        with pytest.raises(cm.ConfigError, match=rf"serve_tcp {hook} must be a synchronous"):
            await nursery.start(
                partial(serve_tcp, handler, 0, manager=mgr, **{hook: from_handshake})
            )
        assert open_fds() == fds_before
        nursery.cancel_scope.cancel()
