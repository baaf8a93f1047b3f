"""trio_connmgr.libp2p: py-libp2p's auto-connector after a short attach().

Real py-libp2p hosts on 127.0.0.1, the real clock, every wait under
``trio.fail_after`` (as in test_libp2p).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from libp2p.peer.id import ID
from test_libp2p import make_host, running, until
from test_libp2p_leaving import periodic_auto_connects

import trio_connmgr as cm
from trio_connmgr.libp2p import attach


@pytest.mark.parametrize("leaving", ["normally", "on an error"])
async def test_an_attach_shorter_than_an_auto_connect_cycle_leaves_one_loop(
    leaving: str,
) -> None:
    """py-libp2p's auto-connector loop, busy in a cycle (looking for peers to
    dial) while attach() stops it and restarts it, goes on when the cycle ends:
    leaving attach() starts no second loop beside it."""
    host, _ = make_host()
    swarm: Any = host.get_network()
    connector: Any = swarm.auto_connector
    in_cycle = trio.Event()
    finish_cycle = trio.Event()

    async def slow_candidates() -> list[ID]:
        in_cycle.set()
        await finish_cycle.wait()
        return []

    connector._get_candidate_peers = slow_candidates
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        running(host),
    ):
        with trio.fail_after(15):
            await in_cycle.wait()
            assert connector._is_connecting
            if leaving == "normally":
                async with attach(host, mgr):
                    assert not connector._started
            else:
                with pytest.raises(ValueError, match=r"^the block failed$"):
                    async with attach(host, mgr):
                        raise ValueError("the block failed")
            assert connector._started
            finish_cycle.set()
            await until(lambda: not connector._is_connecting)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert periodic_auto_connects(connector) == 1
            # Attaching again stops the one loop; leaving restarts one.
            async with attach(host, mgr):
                await until(lambda: periodic_auto_connects(connector) == 0)
            assert periodic_auto_connects(connector) == 1
