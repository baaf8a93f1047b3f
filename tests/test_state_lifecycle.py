"""Lifecycle ends of the state: a burst's exit, a move of the global share and
the manager's exit stay consistent whatever an event writer raises (a
KeyboardInterrupt from a trace file), and the manager's exit changes no grant."""

from __future__ import annotations

import io
import json

import pytest
import trio
import trio.testing
from helpers import Interrupt, InterruptingFile

import trio_connmgr as cm
from trio_connmgr.testing import check_invariants


def track(mgr: cm.ConnectionManager, peer: object) -> cm.Connection:
    return mgr.track(peer, direction="outbound", close=trio.lowlevel.checkpoint)


async def test_a_burst_closed_with_its_event_interrupted_still_wakes_the_regulator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Above high, a round finds nothing to prune (the only candidate holds dht
    # at its grant.min while its burst is open) and waits out silence_period.
    # The burst's exit makes its connection the first candidate and wakes the
    # regulator, even when the burst_closed event's writer raises an interrupt.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2),
            grace_period=0,
            silence_period=100,
            trace=InterruptingFile('"burst_closed"'),
        ) as mgr,
        mgr.enroll("dht", quota=cm.Quota(1, 2)) as dht,
    ):
        mgr.protect("a", "t")
        mgr.protect("b", "t")
        track(mgr, "a")
        track(mgr, "b")
        with pytest.raises(Interrupt):
            async with dht.burst() as burst:
                conn = track(mgr, "c")
                stream = dht.track_stream(conn, burst=burst)
                await trio.sleep(5)
                assert mgr.statistics().connections == 3
                stream.close()  # (which does not wake the regulator)
                await trio.sleep(5)
                assert not conn.closed
        assert burst.closed_at == 10
        await trio.testing.wait_all_tasks_blocked()
        assert conn.close_reason == "pruned"
        assert trio.current_time() == 10


async def test_a_share_moved_with_its_event_interrupted_still_regrants() -> None:
    # The limits_changed event's writer raises an interrupt: the grants still
    # follow the new share, and each enrollment whose grant moved is told.
    told: list[cm.Grant] = []
    woken: list[cm.Grant] = []
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=4, high=10, hard=20),
            trace=InterruptingFile('"limits_changed"'),
        ) as mgr,
        mgr.enroll("kad", quota=cm.Quota.share(0.2, 0.6), on_grant=told.append) as kad,
        trio.open_nursery() as nursery,
    ):

        async def wait() -> None:
            woken.append(await kad.wait_grant_changed())

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        told.clear()
        with pytest.raises(Interrupt):
            mgr._state.set_share(5, "fds low")
        assert mgr.limits == cm.Limits(2, 5, 20)
        assert kad.grant == cm.Grant(1, 3)
        assert told == [cm.Grant(1, 3)]
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [cm.Grant(1, 3)]
        check_invariants(mgr)


async def test_the_manager_exit_changes_no_grant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two protocols share G=10 (mins of 8 each, scaled to 5 and 5) and are
    # still enrolled when the manager exits: as each leaves, the other is not
    # regranted (no larger grant, no on_grant call, no grant_changed event).
    told: list[tuple[str, cm.Grant]] = []
    trace = io.StringIO()

    async def protocol(
        mgr: cm.ConnectionManager,
        name: str,
        *,
        task_status: trio.TaskStatus[cm.Enrollment] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        def on_grant(grant: cm.Grant) -> None:
            told.append((name, grant))

        async with mgr.enroll(name, quota=cm.Quota(8, 10), on_grant=on_grant) as enrollment:
            task_status.started(enrollment)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async with cm.open_connection_manager(limits=cm.Limits(5, 10), trace=trace) as mgr:
            p = await nursery.start(protocol, mgr, "p")
            q = await nursery.start(protocol, mgr, "q")
            assert (p.grant, q.grant) == (cm.Grant(5, 10), cm.Grant(5, 10))
            told.clear()
            lines = len(trace.getvalue().splitlines())
        assert p.closed
        assert q.closed
        nursery.cancel_scope.cancel()
    assert told == []
    assert (p.grant, q.grant) == (cm.Grant(5, 10), cm.Grant(5, 10))
    kinds = [json.loads(line)["kind"] for line in trace.getvalue().splitlines()[lines:]]
    assert "grant_changed" not in kinds


async def test_a_protocol_leaving_an_open_manager_still_regrants_the_others() -> None:
    told: list[cm.Grant] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("q", quota=cm.Quota(8, 10), on_grant=told.append) as q,
    ):
        async with mgr.enroll("p", quota=cm.Quota(8, 10)):
            assert q.grant == cm.Grant(5, 10)
        assert q.grant == cm.Grant(8, 10)
        assert told == [cm.Grant(8, 10), cm.Grant(5, 10), cm.Grant(8, 10)]
