"""trio_connmgr.libp2p: a dial that waited for another task's dial to the same peer.

A real py-libp2p host on 127.0.0.1, the real clock, every wait under
``trio.fail_after`` (as in test_libp2p).
"""

from __future__ import annotations

from typing import Any

import multiaddr
import pytest
import trio
import trio.testing

pytest.importorskip(
    "libp2p", reason="the libp2p extra is not installed: pip install 'trio_connmgr[libp2p]'"
)

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.config import RetryConfig
from libp2p.network.exceptions import SwarmDialAllFailedError, SwarmException
from libp2p.peer.id import ID
from test_libp2p import DialRecorder, make_host, running, until

import trio_connmgr as cm
from trio_connmgr import libp2p as libp2p_adapter
from trio_connmgr.libp2p import attach


async def test_a_call_that_dials_again_after_the_dial_it_waited_for_failed_is_reported() -> None:
    """py-libp2p's ``dial_peer`` waits for a dial in flight to the same peer; when
    that one fails, it dials every address again itself. Both dials fail, and
    both are reported (the second without a latency)."""
    recorder = DialRecorder()
    managed, _ = make_host()
    swarm: Any = managed.get_network()
    swarm.retry_config = RetryConfig(max_retries=0)
    attempts: list[Any] = []
    first_attempt = trio.Event()
    release = trio.Event()
    dial_with_retry = swarm._dial_with_retry

    async def held_dial_with_retry(address: Any, peer: Any, source: Any = None) -> Any:
        attempts.append(address)
        if len(attempts) == 1:
            first_attempt.set()
            await release.wait()
        return await dial_with_retry(address, peer, source)

    swarm._dial_with_retry = held_dial_with_retry
    failures: list[BaseException] = []

    async def dial(peer: ID) -> None:
        try:
            await swarm.dial_peer(peer)
        except SwarmException as exc:
            failures.append(exc)

    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), triggers=[recorder]) as mgr,
        running(managed),
        attach(managed, mgr),
    ):
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        nobody = ID.from_pubkey(create_new_key_pair().public_key)
        address = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
        managed.get_peerstore().add_addrs(nobody, [address], 60)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dial, nobody)
                await first_attempt.wait()
                nursery.start_soon(dial, nobody)
                waiting = swarm._ongoing_dials[nobody]
                await until(lambda: waiting.statistics().tasks_waiting == 1)
                release.set()
        assert len(attempts) == 2  # each call dialled the address
        assert [type(exc) for exc in failures] == [SwarmDialAllFailedError] * 2
        assert [ok for _, ok, _ in recorder.dials] == [False, False]
        assert recorder.dials[0][2] is not None
        assert recorder.dials[1][2] is None


class _FakeSwarm:
    """What the attachment reads of a swarm when it wraps ``dial_peer``."""

    def __init__(self) -> None:
        self._ongoing_dials: dict[str, trio.Event] = {}
        self._negative_peer_cache = None

    def get_connections(self, peer_id: Any) -> list[Any]:
        return []


class _FakeHost:
    def __init__(self, swarm: _FakeSwarm) -> None:
        self._swarm = swarm

    def get_network(self) -> _FakeSwarm:
        return self._swarm


@pytest.mark.parametrize("redial_ok", [True, False])
async def test_a_waiting_call_that_dials_again_is_reported_either_way(
    autojump_clock: trio.testing.MockClock, redial_ok: bool
) -> None:
    """As py-libp2p's ``dial_peer`` does: a call that finds a dial in flight waits
    for it and, as that dial failed, dials again itself. Each dial is reported
    once, whichever way the second one goes."""
    recorder = DialRecorder()
    swarm = _FakeSwarm()

    async def original(peer_id: str) -> list[str]:
        ongoing = swarm._ongoing_dials.get(peer_id)
        if ongoing is not None:
            await ongoing.wait()
            await trio.sleep(1.0)  # dials again
            if not redial_ok:
                raise SwarmDialAllFailedError("all failed")
            return ["connection"]
        ongoing = swarm._ongoing_dials[peer_id] = trio.Event()
        try:
            await trio.sleep(0.5)
            raise SwarmDialAllFailedError("all failed")
        finally:
            del swarm._ongoing_dials[peer_id]
            ongoing.set()

    outcomes: list[str] = []

    async def dial(attachment: Any) -> None:
        try:
            await attachment._dial_peer("peer")
        except SwarmDialAllFailedError:
            outcomes.append("failed")
        else:
            outcomes.append("connected")

    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4), triggers=[recorder]) as mgr,
        trio.open_nursery() as nursery,
    ):
        attachment = libp2p_adapter.Attachment(_FakeHost(swarm), mgr, nursery)  # type: ignore[arg-type]
        attachment._original_dial = original
        async with trio.open_nursery() as dials:
            dials.start_soon(dial, attachment)
            await trio.testing.wait_all_tasks_blocked()
            dials.start_soon(dial, attachment)
        assert sorted(outcomes) == sorted(["failed", "connected" if redial_ok else "failed"])
        assert [ok for _, ok, _ in recorder.dials] == [False, redial_ok]
        assert recorder.dials[0][2] == 0.5  # the first dial's latency; the second has none
        assert recorder.dials[1][2] is None
        nursery.cancel_scope.cancel()
