"""A DHT-style lookup in a Burst, and a pubsub-style mesh that locks its streams.

Run it: ``.venv/bin/python examples/dht_and_pubsub.py``

The mesh keeps 8 long-lived connections and locks its streams on them (it
cannot afford to lose mesh peers). The DHT runs one lookup as a burst over 40
short-lived connections. When the burst closes, the next round prunes exactly
the burst's connections first, and never touches the locked mesh.
"""

from __future__ import annotations

import trio
import trio.testing

import trio_connmgr as cm


async def mesh_peer(
    mgr: cm.ConnectionManager,
    mesh: cm.Enrollment,
    i: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with (
        mgr.connection(f"mesh-{i}", direction="outbound") as conn,
        mesh.stream(conn) as stream,
        mesh.lock(stream, ttl=60) as lock,
    ):
        task_status.started()
        await lock.wait_revoked()  # a mesh link lives until revoked
    print(f"  mesh-{i} ended: {conn.close_reason}")


async def lookup(
    mgr: cm.ConnectionManager,
    dht: cm.Enrollment,
    conns: list[cm.Connection],
) -> None:
    async with dht.burst("lookup") as burst:
        for conn in conns:
            # One short query per peer, enlisted in the burst.
            async with dht.stream(conn, burst=burst) as stream:
                stream.touch(nbytes=64)
                await trio.sleep(0.01)
    print(f"lookup done: burst #{burst.id} touched {len(conns)} connections")


async def main() -> None:
    limits = cm.Limits(low=20, high=30)
    async with (
        cm.open_connection_manager(
            limits=limits, grace_period=0.5, silence_period=1.0, burst_linger=30.0
        ) as mgr,
        mgr.enroll("/meshsub/1.1.0", quota=cm.Quota(4, 10)) as mesh,
        mgr.enroll("/ipfs/kad/1.0.0", quota=cm.Quota.share(0.1, 0.5)) as dht,
        trio.open_nursery() as nursery,
    ):
        for i in range(8):
            await nursery.start(mesh_peer, mgr, mesh, i)
        # Steady connections with no streams yet: peers we know, idle for now.
        held: list[cm.Connection] = []

        async def hold(name: str, task_status: trio.TaskStatus[None]) -> None:
            async with mgr.connection(name, direction="inbound") as conn:
                held.append(conn)
                task_status.started()
                await trio.sleep_forever()

        for i in range(40):
            await nursery.start(hold, f"dht-{i}")
        print(f"{len(mgr.connections)} connections, high is {limits.high}")
        await lookup(mgr, dht, held)
        await trio.sleep(2)  # the next round runs once the burst has closed
        await trio.testing.wait_all_tasks_blocked()
        stats = mgr.statistics()
        print(f"after the round: {stats.connections} connections")
        print(f"pruned by phase: {dict(stats.rounds.victims_by_phase)}")
        print(f"mesh connections still up: {mesh.usage}, locks held: {mesh.locks_held}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
