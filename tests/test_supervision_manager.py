"""Supervision in the manager's shell: its exit when a callback raises what it must
not catch, and when it fails as the scope around it is cancelled."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from helpers import Interrupt

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module


async def test_a_callback_interrupting_the_exit_leaves_no_connection_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two protocols enrolled by a task outside the manager's block are still
    # enrolled as it exits: the first leaving regrants the second, whose
    # on_grant raises. The manager must still close its tracked connection
    # (awaiting its close()) and end its subscriptions.
    closes: list[str] = []
    exiting = False

    async def close() -> None:
        closes.append("closed")

    def on_grant(grant: cm.Grant) -> None:
        if exiting:
            raise Interrupt

    async def protocols(
        mgr: cm.ConnectionManager, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with (
            mgr.enroll("a", quota=cm.Quota.share(0.6, 1.0)),
            mgr.enroll("b", quota=cm.Quota.share(0.6, 1.0), on_grant=on_grant),
        ):
            task_status.started()
            await trio.sleep_forever()

    with trio.fail_after(60), pytest.RaisesGroup(Interrupt, flatten_subgroups=True):
        async with (
            trio.open_nursery() as nursery,
            cm.open_connection_manager(limits=cm.Limits(10, 20)) as mgr,
        ):
            await nursery.start(protocols, mgr)
            conn = mgr.track("peer", direction="outbound", close=close)
            subscription = mgr.subscribe()
            events = await subscription.__aenter__()
            exiting = True
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
