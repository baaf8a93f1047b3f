"""trio_connmgr.libp2p: attaching a host to a manager that has closed.

A real py-libp2p host on 127.0.0.1, the real clock, every wait under
``trio.fail_after`` (as in test_libp2p).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from test_libp2p import make_host, running

import trio_connmgr as cm
from trio_connmgr.libp2p import attach


async def test_attaching_to_a_closed_manager_raises_and_leaves_the_host_alone() -> None:
    """A closed manager can regulate nothing: ``attach`` raises ``ManagerClosed``
    before it stops py-libp2p's own pruner or auto-connector or wraps anything."""
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr:
        pass
    host, _ = make_host()
    swarm: Any = host.get_network()
    with trio.fail_after(15):
        async with running(host):
            notifees = list(swarm.notifees)
            with pytest.raises(cm.ManagerClosed):
                async with attach(host, mgr):
                    pytest.fail("attached to a closed manager")  # pragma: no cover
            assert swarm.connection_pruner._started
            assert swarm.auto_connector._started
            assert "dial_peer" not in swarm.__dict__
            assert swarm.notifees == notifees
