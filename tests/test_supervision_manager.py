"""Supervision in the manager's shell: its exit when something raises what must not
be caught, and when it fails as the scope around it is cancelled."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from helpers import Interrupt, InterruptingFile

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module


async def test_an_interrupt_as_protocols_leave_at_the_exit_leaves_no_connection_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A protocol enrolled by a task outside the manager's block is still
    # enrolled as it exits, holding a lock: as it leaves, the trace file raises
    # on the lock's release. The manager must still close its tracked
    # connection (awaiting its close()) and end its subscriptions.
    closes: list[str] = []

    async def close() -> None:
        closes.append("closed")

    async def protocols(
        mgr: cm.ConnectionManager, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with mgr.enroll("a", quota=cm.Quota(1, 4)) as a:
            other = mgr.track("other", direction="outbound", close=trio.lowlevel.checkpoint)
            async with a.lock(a.track_stream(other), ttl=100):
                task_status.started()
                await trio.sleep_forever()

    with trio.fail_after(60), pytest.RaisesGroup(Interrupt, flatten_subgroups=True):
        async with (
            trio.open_nursery() as nursery,
            cm.open_connection_manager(
                limits=cm.Limits(10, 20), trace=InterruptingFile('"lock_released"')
            ) as mgr,
        ):
            await nursery.start(protocols, mgr)
            conn = mgr.track("peer", direction="outbound", close=close)
            subscription = mgr.subscribe()
            events = await subscription.__aenter__()
    assert closes == ["closed"]
    assert conn.close_reason == "manager closed"
    assert mgr._state.connections == {}
    with pytest.raises(trio.EndOfChannel):
        while True:
            events.receive_nowait()
    await subscription.__aexit__(None, None, None)


async def test_a_failure_as_the_scope_around_is_cancelled_is_one_connmgr_error(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The regulator fails for good; as the manager stops its body, the scope
    # around the manager is cancelled too (a deadline, a shutdown). The body
    # raised nothing of its own: the failure must come out as the documented
    # ConnMgrError, not in a group saying that the body raised.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected regulator bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    with (
        trio.fail_after(60),
        pytest.raises(cm.ConnMgrError) as info,
        trio.CancelScope() as around,
    ):
        async with cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=0, max_round_failures=0
        ) as mgr:
            for i in range(3):
                mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
            try:
                await trio.sleep_forever()
            finally:
                around.cancel()
    assert type(info.value) is cm.ConnMgrError
    assert isinstance(info.value.__cause__, RuntimeError)
    assert mgr._state.connections == {}
