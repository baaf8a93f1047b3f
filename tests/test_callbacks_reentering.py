"""User callbacks that raise what they must not catch, or call back into the manager."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import Interrupt, drain

import trio_connmgr as cm
from trio_connmgr.testing import check_invariants


async def test_an_interrupted_on_grant_still_ends_the_waits_of_the_protocol_leaving() -> None:
    # "b"'s callback raises as "a" leaves (a's leaving regrants b): a task waiting
    # for a's grant to change, outside a's block, must still learn that it left.
    interrupting = False

    def on_grant(grant: cm.Grant) -> None:
        if interrupting:
            raise Interrupt

    outcomes: list[str] = []

    async def wait_for_grant(enrollment: cm.Enrollment) -> None:
        try:
            await enrollment.wait_grant_changed()
        except cm.ResourceClosed:
            outcomes.append("left")

    with trio.fail_after(60):
        async with (
            cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
            trio.open_nursery() as nursery,
            mgr.enroll("b", quota=cm.Quota(6, 10), on_grant=on_grant),
        ):
            with pytest.raises(Interrupt):
                async with mgr.enroll("a", quota=cm.Quota(6, 10)) as a:
                    nursery.start_soon(wait_for_grant, a)
                    await trio.testing.wait_all_tasks_blocked()
                    interrupting = True
            interrupting = False
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == ["left"]
            check_invariants(mgr)


async def test_an_interrupted_on_grant_leaves_no_other_protocol_untold() -> None:
    # "c" leaves: "a" and "b" both get a larger grant. a is told first and its
    # callback raises; b must still get its event, its waiter woken and its
    # callback, as if nothing had happened.
    interrupting = False
    told: list[cm.Grant] = []

    def interrupt(grant: cm.Grant) -> None:
        if interrupting:
            raise Interrupt

    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 12)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("a", quota=cm.Quota(4, 12), on_grant=interrupt) as a,
        mgr.enroll("b", quota=cm.Quota(4, 12), on_grant=told.append) as b,
        trio.open_nursery() as nursery,
    ):
        waited: list[cm.Grant] = []

        async def wait_for_grant() -> None:
            waited.append(await b.wait_grant_changed())

        with pytest.raises(Interrupt):
            async with mgr.enroll("c", quota=cm.Quota(8, 12)):
                assert (a.grant.min, b.grant.min) == (3, 3)
                nursery.start_soon(wait_for_grant)
                await trio.testing.wait_all_tasks_blocked()
                drain(events)
                told.clear()
                interrupting = True
        interrupting = False
        assert (a.grant, b.grant) == (cm.Grant(4, 12), cm.Grant(4, 12))
        grants = [(e.protocol, e.min) for e in drain(events) if isinstance(e, cm.GrantChanged)]
        assert grants == [("a", 4), ("b", 4)]
        assert told == [cm.Grant(4, 12)]
        await trio.testing.wait_all_tasks_blocked()
        assert waited == [cm.Grant(4, 12)]
        check_invariants(mgr)


async def test_the_manager_exit_calls_no_on_grant_and_ends_every_enrollment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Three protocols enrolled by tasks outside the manager's block: as the
    # manager exits, "a" leaving does not regrant "b", whose callback would
    # raise. "b" and "c" leave as well and their tasks stop.
    exiting = False

    def on_grant(grant: cm.Grant) -> None:
        if exiting:
            raise Interrupt

    ticks: list[str] = []

    async def protocol(
        mgr: cm.ConnectionManager,
        name: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        callback = on_grant if name == "b" else None
        async with mgr.enroll(name, quota=cm.Quota.share(0.6, 1.0), on_grant=callback) as member:

            async def work() -> None:
                while True:
                    await trio.sleep(1)
                    ticks.append(name)

            member.start_soon(work)
            task_status.started()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async with cm.open_connection_manager(limits=cm.Limits(10, 20)) as mgr:
            for name in ("a", "b", "c"):
                await nursery.start(protocol, mgr, name)
            exiting = True
        exiting = False
        check_invariants(mgr)
        assert mgr.statistics().protocols == {}
        await trio.sleep(5)
        assert ticks == []
        nursery.cancel_scope.cancel()


async def test_a_scorer_unprotecting_unprotected_peers_does_not_make_rounds_follow_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Above high, nothing prunable: four protected connections, two that "/p"
    # needs for its grant.min. The round falls short and waits (a second) before
    # retrying. A scorer that lifts a tag its peer does not carry changes nothing:
    # it must not wake the regulator into a new round at once, again and again.
    calls = 0
    managers: list[cm.ConnectionManager] = []

    def scorer(stream: cm.Stream) -> float:
        nonlocal calls
        calls += 1
        if calls < 200:  # (bounded: were each round to start the next, they would not stop)
            managers[0].unprotect(stream.connection.peer, "handshake")
        return 0.5

    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 4), grace_period=0, silence_period=0
        ) as mgr,
        mgr.enroll("/p", quota=cm.Quota(2, 4), scorer=scorer) as p,
    ):
        managers.append(mgr)
        for i in range(4):
            mgr.protect(f"kept{i}", "keep")
            mgr.track(f"kept{i}", direction="outbound", close=trio.lowlevel.checkpoint)
        for i in range(2):
            p.track_stream(mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint))
        await trio.sleep(0.5)
        assert mgr.statistics().rounds.count == 1
        await trio.sleep(1)
        assert mgr.statistics().rounds.count == 2
        assert mgr.statistics().connections == 6
        check_invariants(mgr)
