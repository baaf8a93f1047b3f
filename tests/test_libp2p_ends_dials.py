"""trio_connmgr.libp2p: how dials end (cancelled) and what is reported.

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

from libp2p.network.config import RetryConfig
from test_libp2p import DialRecorder, info, make_host, running, until

import trio_connmgr as cm
from trio_connmgr.libp2p import attach


async def test_a_call_that_dials_again_after_a_cancelled_dial_is_reported() -> None:
    """A call waiting for another task's dial to the same peer dials again itself
    when that dial is cancelled before connecting: its success is reported
    (without a latency), the cancelled dial is not."""
    recorder = DialRecorder()
    managed, _ = make_host()
    remote, _ = make_host()
    swarm: Any = managed.get_network()
    swarm.retry_config = RetryConfig(max_retries=0)
    attempts: list[Any] = []
    first_attempt = trio.Event()
    dial_with_retry = swarm._dial_with_retry

    async def held_dial_with_retry(address: Any, peer: Any, source: Any = None) -> Any:
        attempts.append(address)
        if len(attempts) == 1:
            first_attempt.set()
            await trio.sleep_forever()
        return await dial_with_retry(address, peer, source)

    swarm._dial_with_retry = held_dial_with_retry
    results: list[Any] = []

    async def second_dial(peer: Any) -> None:
        results.append(await swarm.dial_peer(peer))

    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), triggers=[recorder]) as mgr,
        running(managed, remote),
        attach(managed, mgr),
    ):
        peer = info(remote)
        managed.get_peerstore().add_addrs(peer.peer_id, peer.addrs, 60)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as first:
                    async with trio.open_nursery() as inner:
                        inner.start_soon(swarm.dial_peer, peer.peer_id)
                        await first_attempt.wait()
                        nursery.start_soon(second_dial, peer.peer_id)
                        waiting = swarm._ongoing_dials[peer.peer_id]
                        await until(lambda: waiting.statistics().tasks_waiting == 1)
                        first.cancel()
            assert len(attempts) == 2  # the waiting call dialled the address itself
            assert len(results) == 1
            assert results[0]
        assert [(ok, latency) for _, ok, latency in recorder.dials] == [(True, None)]
