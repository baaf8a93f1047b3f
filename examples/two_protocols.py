"""Two protocols with their own scorers, and the regulator at work.

Run it: ``.venv/bin/python examples/two_protocols.py``

A "chat" protocol values streams by recent bytes; a "sync" protocol rates
every stream low. Thirty in-memory connections push the count over ``high``;
the regulator prunes back to ``low``: first the connections that put a
protocol over its ``max`` (the offender phase, most over quota first, lowest
tally first within it), then the lowest tallies, leaving each protocol its
reserved minimum.
"""

from __future__ import annotations

import trio
import trio.testing

import trio_connmgr as cm


def chat_score(stream: cm.Stream) -> float:
    """Recent bytes are worth keeping."""
    return min(1.0, stream.nbytes / 1000) * 0.5 ** (stream.idle_time / 10)


def sync_score(stream: cm.Stream) -> float:
    """Bulk sync can always reconnect later."""
    return 0.1


async def hold(
    mgr: cm.ConnectionManager,
    protocol: cm.Enrollment,
    i: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with (
        mgr.connection(f"peer-{i}", direction="inbound") as conn,
        protocol.stream(conn) as stream,
    ):
        stream.touch(nbytes=100 * i)
        task_status.started()
        await trio.sleep_forever()
    print(f"  peer-{i:<2} {protocol.name:<5} {conn.close_reason}: {conn.prune_reason}")


async def main() -> None:
    limits = cm.Limits(low=10, high=15)
    async with (
        cm.open_connection_manager(limits=limits, grace_period=1.0) as mgr,
        mgr.enroll("chat", quota=cm.Quota(2, 10), scorer=chat_score) as chat,
        mgr.enroll("sync", quota=cm.Quota.share(0.2, 0.6), scorer=sync_score) as sync,
        trio.open_nursery() as nursery,
    ):
        print(f"grants: chat={chat.grant}, sync={sync.grant}")
        for i in range(30):
            await nursery.start(hold, mgr, chat if i % 3 else sync, i)
        print(f"{len(mgr.connections)} connections; the grace period ends in 1 s...")
        await trio.sleep(2)  # grace ends, HighWater fires, the round runs
        await trio.testing.wait_all_tasks_blocked()
        stats = mgr.statistics()
        print(f"after the round: {stats.connections} connections")
        print(f"pruned by phase: {dict(stats.rounds.victims_by_phase)}")
        for name, p in stats.protocols.items():
            print(f"  {name}: usage {p.usage} (grant {p.grant_min}..{p.grant_max})")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    # A virtual clock: the example runs instantly, and exactly the same each time.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
