"""An enrollment that the manager's exit closes while its block is still
exiting (a task of its nursery finishing a bounded, shielded goodbye): it has
left, and every part of it says so at once (SPEC §2, §3)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_connmgr as cm

GOODBYE = 5.0


async def protocol_with_a_slow_goodbye(
    mgr: cm.ConnectionManager,
    block_exits: list[float],
    *,
    task_status: trio.TaskStatus[cm.Enrollment] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with mgr.enroll("p", quota=cm.Quota(1, 4)) as p:

        async def maintain() -> None:
            try:
                await trio.sleep_forever()
            finally:
                # A polite goodbye to the peers, bounded and shielded.
                with trio.move_on_after(GOODBYE, shield=True):
                    await trio.sleep_forever()

        p.start_soon(maintain)
        task_status.started(p)
        await trio.sleep_forever()
    block_exits.append(trio.current_time())


async def test_an_enrollment_closed_by_the_manager_exit_takes_no_new_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ran: list[str] = []
    block_exits: list[float] = []

    async def service(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        ran.append("service")
        task_status.started("ready")

    async with trio.open_nursery() as nursery:
        async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
            p = await nursery.start(protocol_with_a_slow_goodbye, mgr, block_exits)
            conn = mgr.track("peer", direction="outbound", close=trio.lowlevel.checkpoint)
        # The manager has closed the enrollment; its block is still exiting.
        assert p.closed
        assert block_exits == []
        # It refuses streams as an enrollment that has left, and so tasks.
        with pytest.raises(cm.ResourceClosed, match="'p' has left"):
            p.track_stream(conn)
        with pytest.raises(cm.ResourceClosed, match="'p' has left"):
            p.start_soon(service)
        with pytest.raises(cm.ResourceClosed, match="'p' has left"):
            await p.start(service)
        assert ran == []
    assert block_exits == [GOODBYE]


async def test_a_grant_waiter_learns_at_once_that_the_manager_exit_closed_its_enrollment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A task outside the enrollment waits for its grant to change. The manager
    # exits at t=0 and closes the enrollment: the wait ends then with
    # ResourceClosed, not once the goodbye has run out at t=GOODBYE.
    outcomes: list[tuple[str, float]] = []
    block_exits: list[float] = []

    async def watch_grants(enrollment: cm.Enrollment) -> None:
        try:
            await enrollment.wait_grant_changed()
        except cm.ResourceClosed:
            outcomes.append(("left", trio.current_time()))

    async with trio.open_nursery() as nursery:
        async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
            p = await nursery.start(protocol_with_a_slow_goodbye, mgr, block_exits)
            nursery.start_soon(watch_grants, p)
            await trio.testing.wait_all_tasks_blocked()
        assert p.closed
    assert outcomes == [("left", 0.0)]
    assert block_exits == [GOODBYE]
