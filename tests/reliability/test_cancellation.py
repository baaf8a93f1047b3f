"""Cancelling at every checkpoint of connection(), enroll(), stream(), lock(), burst().

An instrument cancels the worker's scope just before its k-th scheduling step,
for k = 1, 2, ... until the sequence completes uncancelled. After every run the
manager must hold nothing the worker created.
"""

from __future__ import annotations

import trio
import trio.testing

import trio_connmgr as cm

from .conftest import Figures


class CancelAtStep(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope, step: int) -> None:
        self.task = task
        self.scope = scope
        self.step = step
        self.seen = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.seen += 1
            if self.seen == self.step:
                self.scope.cancel()


async def sequence(mgr: cm.ConnectionManager, done: list[str]) -> None:
    async with (
        mgr.enroll("/p", quota=cm.Quota(1, 4)) as p,
        mgr.connection("peer", direction="outbound", address="127.0.0.1:1") as conn,
    ):
        async with p.stream(conn) as stream, p.lock(stream, ttl=5):
            async with p.burst("b") as burst:
                async with p.stream(conn, burst=burst):
                    await trio.lowlevel.checkpoint()
                p.track_stream(conn, burst=burst).close()
            await trio.lowlevel.checkpoint()
        # A tracked connection belongs to its transport, which releases it in a finally.
        tracked = mgr.track("tracked", direction="inbound", close=trio.lowlevel.checkpoint)
        try:
            async with p.stream(tracked):
                await trio.lowlevel.checkpoint()
        finally:
            tracked.release()
    done.append("completed")


def assert_empty(mgr: cm.ConnectionManager, step: int) -> None:
    state = mgr._state
    assert state.count == 0, f"step {step}: {state.connections}"
    assert state.inbound == state.outbound == 0
    assert state.members == {}, f"step {step}: {state.members}"
    assert state.locked_connections == 0, f"step {step}"
    for burst in state.lingering:
        assert burst.closed_at is not None


async def test_cancel_at_every_checkpoint(figures: Figures) -> None:
    limits = cm.Limits(low=4, high=8, hard=10)
    async with cm.open_connection_manager(limits=limits, lock_budget=2) as mgr:
        step = 0
        while True:
            step += 1
            done: list[str] = []

            async def worker(
                scope_out: list[trio.CancelScope],
                done: list[str],
                task_status: trio.TaskStatus[trio.lowlevel.Task] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with trio.CancelScope() as scope:
                    scope_out.append(scope)
                    task_status.started(trio.lowlevel.current_task())
                    await sequence(mgr, done)

            scopes: list[trio.CancelScope] = []
            async with trio.open_nursery() as nursery:
                task = await nursery.start(worker, scopes, done)
                instrument = CancelAtStep(task, scopes[0], step)
                trio.lowlevel.add_instrument(instrument)
                await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.remove_instrument(instrument)
            assert_empty(mgr, step)
            if done:
                break
            assert step < 200, "the sequence never completed"
        figures["cancel points exercised"] = step - 1
        assert step > 8  # the sequence really has many checkpoints (9 or 10, by scheduling order)
