"""trio_connmgr.libp2p: leaving attach(), normally, on an error or cancelled.

Real py-libp2p hosts on 127.0.0.1, the real clock, every wait under
``trio.fail_after`` (as in test_libp2p).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from test_libp2p import drain, info, make_host, running, until

import trio_connmgr as cm
from trio_connmgr.libp2p import Attachment, attach

ECHO = "/trio-connmgr-test/leaving/echo/1.0.0"


def live_tasks() -> list[trio.lowlevel.Task]:
    """Every live task of the program."""
    tasks = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        tasks.append(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return tasks


def periodic_auto_connects(connector: Any) -> int:
    """How many loops of py-libp2p's auto-connector ``connector`` run."""
    return sum(
        task.name.endswith("AutoConnector._periodic_check_task")
        and task.coro.cr_frame.f_locals.get("self") is connector
        for task in live_tasks()
    )


def attachment_tasks() -> list[str]:
    return [task.name for task in live_tasks() if task.name.startswith("trio_connmgr.libp2p.")]


@pytest.mark.parametrize("py_libp2p_regulates", [True, False])
@pytest.mark.parametrize("leaving", ["normally", "on an error", "cancelled"])
async def test_leaving_attach_puts_the_host_back_as_it_was(
    leaving: str, py_libp2p_regulates: bool
) -> None:
    """However the block ends: its own error leaves unwrapped, the connections and
    streams are released (still open), no task is left, the swarm's notifees and
    ``dial_peer`` are as before, py-libp2p's pruner and auto-connector run again
    if (and only if) they ran before, and the host can be attached again."""
    managed, _ = make_host()
    remote, _ = make_host()
    managed.set_stream_handler(ECHO, drain)
    swarm: Any = managed.get_network()
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), grace_period=60) as mgr,
        running(managed, remote),
        mgr.enroll(ECHO, quota=cm.Quota(0, 4)),
    ):
        with trio.fail_after(15):
            if not py_libp2p_regulates:
                await swarm.connection_pruner.stop()
                await swarm.auto_connector.stop()
            await until(
                lambda: periodic_auto_connects(swarm.auto_connector) == int(py_libp2p_regulates)
            )
            await remote.connect(info(managed))
            (conn,) = swarm.get_connections(remote.get_id())
            remote_stream = await remote.new_stream(managed.get_id(), [ECHO])
            await remote_stream.write(b"ping")
            assert await remote_stream.read(4) == b"ping"
            (stream,) = conn.get_streams()
            notifees = list(swarm.notifees)
            assert "dial_peer" not in vars(swarm)
            attached: list[tuple[Attachment, cm.Connection, cm.Stream]] = []

            async def check_attached(attachment: Attachment) -> None:
                tracked = attachment.connection_for(conn)
                tracked_stream = attachment.stream_for(stream)
                assert tracked is not None
                assert tracked_stream is not None
                attached.append((attachment, tracked, tracked_stream))
                assert mgr.statistics().streams == 1
                assert not swarm.connection_pruner._started
                assert not swarm.auto_connector._started
                await until(lambda: periodic_auto_connects(swarm.auto_connector) == 0)
                assert attachment_tasks()  # the sweep, the watch on the connection

            if leaving == "on an error":
                with pytest.raises(ValueError, match=r"^the block failed$"):
                    async with attach(managed, mgr) as attachment:
                        await check_attached(attachment)
                        raise ValueError("the block failed")
            elif leaving == "cancelled":
                with trio.CancelScope() as scope:
                    async with attach(managed, mgr) as attachment:
                        await check_attached(attachment)
                        scope.cancel()
                        await trio.sleep_forever()
                assert scope.cancelled_caught
            else:
                async with attach(managed, mgr) as attachment:
                    await check_attached(attachment)

            ((attachment, tracked, tracked_stream),) = attached
            assert attachment.closed
            assert attachment.connection_for(conn) is None
            assert attachment.stream_for(stream) is None
            assert tracked.close_reason == "released"
            assert tracked_stream.closed
            assert mgr.statistics().connections == 0
            assert mgr.statistics().streams == 0
            assert attachment_tasks() == []
            # py-libp2p keeps the connection and its stream.
            assert swarm.get_connections(remote.get_id()) == [conn]
            assert not conn.is_closed
            await remote_stream.write(b"pong")
            assert await remote_stream.read(4) == b"pong"
            assert swarm.notifees == notifees
            assert "dial_peer" not in vars(swarm)
            assert swarm.connection_pruner._started is py_libp2p_regulates
            assert swarm.auto_connector._started is py_libp2p_regulates
            assert periodic_auto_connects(swarm.auto_connector) == int(py_libp2p_regulates)

            async with attach(managed, mgr) as again:
                assert again.connection_for(conn) is not None
                assert again.stream_for(stream) is not None
            await remote_stream.close()
