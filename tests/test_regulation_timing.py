"""When the regulator runs its rounds and what they report (SPEC §8): the silence
period and emergencies, rounds left short, refills, and the triggers' timing."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
import trio.lowlevel
import trio.testing
from helpers import open_sensed_manager
from test_regulator import ChunkedRound

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing
from trio_connmgr.testing import record_rounds, wait_idle


def track(mgr: cm.ConnectionManager, peer: object) -> cm.Connection:
    return mgr.track(peer, direction="outbound", close=trio.lowlevel.checkpoint)


async def test_sensing_pressure_runs_a_round_within_the_silence_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A round at t=0 starts a silence period of 60 s. Pressure, sampled at t=5,
    # makes the next round an emergency: it runs then, not at t=60.
    fake = FakeSensor()
    async with (
        open_sensed_manager(fake, decrease=0.9) as mgr,
        record_rounds(mgr) as rounds,
    ):
        for i in range(25):
            track(mgr, i)
        await wait_idle(mgr)
        for i in range(25, 30):
            track(mgr, i)  # 15: under high, even as pressure lowers it to 18
        fake.pressure = True
        await trio.sleep(7)  # (past the sample at t=5, before the next)
        done = [(r.completed.time, r.completed.trigger) for r in rounds.rounds]
        assert done == [(0.0, "high-water"), (5.0, "pressure")]
        assert mgr.statistics().connections == mgr.limits.low


async def test_a_round_reports_no_arrivals_when_none_came(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The newest connection survives the round (its peer is protected); nothing
    # opened while the round ran.
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=0) as mgr,
        record_rounds(mgr) as rounds,
    ):
        mgr.protect("kept", "test")
        track(mgr, "a")
        track(mgr, "b")
        kept = track(mgr, "kept")
        await wait_idle(mgr)
        assert not kept.closed
    completed = rounds.rounds[0].completed
    assert (completed.count_before, completed.count_after) == (3, 1)
    assert (completed.victims, completed.arrived) == (2, 0)


@pytest.mark.parametrize(("silence_period", "gap"), [(0.25, 1.0), (0, 1.0), (3.0, 3.0)])
async def test_a_round_left_short_retries_after_the_silence_period_or_a_second(
    autojump_clock: trio.testing.MockClock, silence_period: float, gap: float
) -> None:
    # Every connection is of a protected peer: each round prunes nothing and is
    # left short. The next waits the silence period, and at least a second (no
    # spinning); lifting the protection runs a round at once (a round that
    # pruned nothing started no silence period).
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=0, silence_period=silence_period
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        mgr.protect("kept", "test")
        for _ in range(3):
            track(mgr, "kept")
        await trio.sleep(9.5)
        times = [r.completed.time for r in rounds.rounds]
        assert times == [pytest.approx(i * gap) for i in range(int(9.5 // gap) + 1)]
        assert all(r.completed.victims == 0 for r in rounds.rounds)
        assert mgr.unprotect("kept", "test") is False
        await wait_idle(mgr)
        assert rounds.rounds[-1].completed.time == 9.5
        assert rounds.rounds[-1].completed.victims == 2
        assert mgr.statistics().connections == 1


async def test_a_round_plans_again_twice_for_victims_it_had_to_skip() -> None:
    # While the round plans, a task protects its first victim; while the round
    # plans again for it, the task protects the one that round chose in its
    # place. A round plans the rest twice: the third choice is pruned, and the
    # round reaches its target. Ranks go on from plan to plan.
    setup = ChunkedRound(3)
    n = setup.n
    calls = 0
    second_plan = trio.Event()

    def scorer(stream: cm.Stream) -> float:
        nonlocal calls
        calls += 1
        setup.scored.set()
        if calls > n:  # (each plan scores every stream once)
            second_plan.set()
        return float(stream.metadata["score"])

    async with (
        setup.manager() as mgr,
        mgr.enroll("p", quota=cm.Quota(0, n), scorer=scorer) as p,
    ):
        conns = setup.connections(mgr)
        for i, conn in enumerate(conns):
            score = 0.1 if i < 90 else 0.2 if i == 90 else 0.3 if i == 91 else 0.9
            p.track_stream(conn).metadata["score"] = score
        first, second, third = conns[0], conns[90], conns[91]

        async def protect_as_the_round_plans() -> None:
            await setup.scored.wait()
            mgr.protect(first.peer, "keep")
            await second_plan.wait()
            mgr.protect(second.peer, "keep")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(protect_as_the_round_plans)
            pruned = await mgr.trim()
        assert second_plan.is_set()
        assert not first.closed
        assert not second.closed
        assert third in pruned
        assert len(pruned) == 90
        assert mgr.statistics().connections == mgr.limits.low
        assert third.prune_reason is not None
        assert third.prune_reason.rank == 92  # 90 in the first plan, 1 in the second


async def test_a_round_that_only_revoked_locks_starts_the_silence_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # At hard, a round revokes the locks of p's two connections, then cannot
    # prune them (their holders protect them as they learn of it); the other two
    # are of a protected peer. It changed something all the same: the next
    # round, once the count is under hard and that protection lifted, waits the
    # silence period.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2, hard=4), grace_period=0, silence_period=10, lock_budget=2
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 2)) as p,
        record_rounds(mgr) as rounds,
        trio.open_nursery() as nursery,
    ):
        mgr.protect("kept", "test")
        locks: list[cm.Lock] = []

        def keep(lock: cm.Lock) -> None:
            mgr.protect(lock.stream.connection.peer, "revoked")

        async def hold(conn: cm.Connection, task_status: trio.TaskStatus[None]) -> None:
            async with p.lock(p.track_stream(conn), ttl=1000, on_revoke=keep) as lock:
                locks.append(lock)
                task_status.started()
                await lock.wait_revoked()

        for peer in ("a", "b"):
            await nursery.start(hold, track(mgr, peer))
        kept = [track(mgr, "kept") for _ in range(2)]  # at hard: an emergency
        await wait_idle(mgr)
        assert [lock.revoked for lock in locks] == [True, True]
        first = rounds.rounds[0].completed
        assert (first.time, first.revoked_locks, first.victims) == (0.0, 2, 0)
        await trio.sleep(1)
        kept[1].release()  # under hard
        assert mgr.unprotect("kept", "test") is False
        await trio.sleep(20)
        done = [(r.completed.time, r.completed.victims) for r in rounds.rounds]
        assert done == [(0.0, 0), (10.0, 1)]
        assert kept[0].closed


async def test_a_round_left_short_by_grace_keeps_the_silence_period_if_it_pruned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # At t=6 a round prunes the two old connections and is left two short by
    # three in their grace period until t=11. It pruned: the next round waits out
    # the silence period (t=16), not just the grace period.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=5, silence_period=10
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        old = [track(mgr, "old-a"), track(mgr, "old-b")]
        await trio.sleep(6)
        new = [track(mgr, f"new-{i}") for i in range(3)]
        await trio.sleep(20)
        done = [(r.completed.time, r.completed.victims) for r in rounds.rounds]
        assert done == [(6.0, 2), (16.0, 2)]
        assert all(conn.closed for conn in old)
        assert sum(conn.closed for conn in new) == 2


async def test_a_trigger_that_always_fires_does_not_spin_at_exactly_low(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Always(cm.triggers.Trigger):
        name = "always"

        def check(self, view: cm.triggers.TriggerView, now: float) -> bool:
            return True

    async with cm.open_connection_manager(
        limits=cm.Limits(2, 4), grace_period=0, silence_period=0, triggers=[Always()]
    ) as mgr:
        await wait_idle(mgr)
        before = mgr.statistics().rounds.count
        for i in range(5):
            track(mgr, i)
        with trio.move_on_after(60):
            await trio.sleep_forever()
        # A round pruned down to low; the next found nothing to do: the
        # regulator waits for a change instead of running round after round.
        assert mgr.statistics().rounds.count - before <= 2
        assert mgr.statistics().connections == 2


async def test_a_spike_during_a_round_that_ends_at_low_starts_the_next_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # While the high-water round plans, four connections open and close again:
    # a spike, fired after the round's snapshot. The round prunes down to low;
    # the spike still starts a round of its own, a silence period later.
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 8),
        grace_period=0,
        silence_period=1.0,
        triggers=[cm.triggers.Spike(3, 1.0)],
    ) as mgr:
        spiked = False

        def scorer(stream: cm.Stream) -> float:
            nonlocal spiked
            if not spiked:
                spiked = True
                for i in range(4):
                    track(mgr, f"late-{i}").release()
            return 0.5

        async with (
            mgr.enroll("/p", quota=cm.Quota(0, 100), scorer=scorer) as p,
            record_rounds(mgr) as rounds,
        ):
            for i in range(9):  # spread out: no spike; the ninth is over high
                p.track_stream(track(mgr, i))
                await trio.sleep(0.5)
            await wait_idle(mgr)
            assert spiked
            assert mgr.statistics().connections == 2
            await trio.sleep(5)
            done = [(r.completed.time, r.completed.trigger) for r in rounds.rounds]
            assert done == [(4.0, "high-water"), (5.0, "spike")]


async def test_a_spike_during_a_round_that_prunes_nothing_at_low_starts_the_next_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The interval's round plans one victim, which closes on its own before the
    # round applies the plan: it prunes nothing and ends at low. Meanwhile four
    # connections open and close again: a spike, after the round's snapshot. The
    # spike's round runs at once, not at the next interval.
    conns: list[cm.Connection] = []
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 4),
        grace_period=0,
        silence_period=0,
        triggers=[cm.triggers.Spike(3, 1.0), cm.triggers.Interval(10)],
    ) as mgr:
        spiked = False
        scored = 0

        def scorer(stream: cm.Stream) -> float:
            nonlocal spiked, scored
            scored += 1
            if scored == len(conns):  # every connection classified
                spiked = True
                conns[-1].release()  # the newest: the victim (equal tallies)
                for i in range(4):
                    track(mgr, f"late-{i}").release()
            return 0.5

        async with (
            mgr.enroll("/p", quota=cm.Quota(0, 100), scorer=scorer) as p,
            record_rounds(mgr) as rounds,
        ):
            for i in range(3):
                conns.append(track(mgr, i))
                p.track_stream(conns[-1])
            await trio.sleep(15)
            assert spiked
            done = [(r.completed.time, r.completed.trigger) for r in rounds.rounds]
            assert done[:2] == [(10.0, "interval"), (10.0, "spike")]
            first = rounds.rounds[0].completed
            assert (first.victims, first.count_after) == (0, 2)


async def test_locks_a_round_revokes_as_it_plans_again_are_counted() -> None:
    # A forced trim: four of five connections are locked. Its plan revokes two
    # locks; as it plans again, the one unlocked connection is protected (while
    # its scorer runs), so it is skipped as the round applies. Planning the rest
    # revokes a third lock: the round, the statistics and its event count three.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 10), grace_period=0, silence_period=60, lock_budget=4
        ) as mgr,
        AsyncExitStack() as stack,
    ):
        free = track(mgr, "free")
        scored = 0

        def scorer(stream: cm.Stream) -> float:
            nonlocal scored
            if stream.connection is free:
                scored += 1
                if scored == 2:  # the plan made after the first revocations
                    mgr.protect("free", "test")
            return float(stream.metadata["score"])

        p = await stack.enter_async_context(mgr.enroll("p", quota=cm.Quota(0, 10), scorer=scorer))
        p.track_stream(free).metadata["score"] = 0.1
        locked = []
        for i in range(4):
            conn = track(mgr, f"locked-{i}")
            stream = p.track_stream(conn)
            stream.metadata["score"] = 0.3 + i / 10
            await stack.enter_async_context(p.lock(stream, ttl=1000))
            locked.append(conn)
        rounds = await stack.enter_async_context(record_rounds(mgr))
        pruned = await mgr.trim(force=True)
        assert not free.closed
        assert pruned == locked[:3]  # lowest tally first
        completed = rounds.rounds[0].completed
        assert (completed.victims, completed.revoked_locks) == (3, 3)
        assert mgr.statistics().rounds.locks_revoked == 3


def test_spike_window_includes_openings_exactly_window_seconds_apart() -> None:
    spike = cm.triggers.Spike(3, window=1.0)
    assert [spike.connection_opened(t) for t in (10.0, 10.25, 10.5, 11.0)] == [
        False,
        False,
        False,
        True,
    ]
    late = cm.triggers.Spike(3, window=1.0)
    assert not any(late.connection_opened(t) for t in (10.0, 10.25, 10.5, 11.0 + 1e-9))


def test_failed_dials_window_includes_dials_exactly_window_seconds_old() -> None:
    trigger = cm.triggers.FailedDials(0.5, window=10.0, min_dials=2)
    assert trigger.dial_reported(False, None, 0.0) is False  # below min_dials
    assert trigger.failure_ratio(10.0) == 1.0  # 10 s old: still within the window
    assert trigger.dial_reported(True, 0.1, 10.0) is True  # 1 failed of 2
    assert trigger.failure_ratio(10.0 + 1e-9) == 0.0


def test_failed_dials_fires_once_until_a_round_completes() -> None:
    trigger = cm.triggers.FailedDials(0.5, window=10.0, min_dials=2)
    assert [trigger.dial_reported(False, None, t) for t in (0.0, 1.0, 2.0)] == [
        False,
        True,
        False,  # already fired: no second wake-up
    ]
    assert trigger.check(cm.triggers.TriggerView(5, 2, 10, None), 2.0)
    trigger.round_completed(3.0)
    # Re-armed, and the dial history is kept: the next failure fires again.
    assert trigger.failure_ratio(3.0) == 1.0
    assert trigger.dial_reported(False, None, 4.0) is True


def test_failed_dials_outside_the_window_do_not_fire() -> None:
    trigger = cm.triggers.FailedDials(0.5, window=10.0, min_dials=3)
    for t in (0.0, 1.0, 2.0):
        trigger.dial_reported(True, 0.1, t)
    # The three old successes left the window: the third dial at t=20 makes
    # 2 failed of 3, which reaches 0.5 (with them kept it would be 2 of 6).
    assert trigger.dial_reported(False, None, 20.0) is False  # 1 dial: below min_dials
    assert trigger.dial_reported(False, None, 20.5) is False
    assert trigger.dial_reported(True, 0.1, 21.0) is True  # 2 failed of 3


@pytest.mark.parametrize("grace_period", [0, 5])
async def test_a_connection_arriving_after_a_round_left_short_is_pruned_once_out_of_grace(
    autojump_clock: trio.testing.MockClock, grace_period: float
) -> None:
    # At hard, the round finds only connections of a protected peer: it prunes
    # nothing and is left short. A connection that opens afterwards is above
    # hard: an emergency. It goes as soon as its grace period ends, not a
    # silence period after the round that knew nothing of it.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2, hard=4), grace_period=grace_period, silence_period=30
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        mgr.protect("kept", "test")
        for _ in range(4):
            track(mgr, "kept")
        await trio.sleep(grace_period + 1)
        newcomer = track(mgr, "newcomer")
        arrived = trio.current_time()
        await trio.sleep(grace_period)
        await wait_idle(mgr)
        assert newcomer.closed
        assert newcomer.close_reason == "pruned"
        done = [(r.completed.time, r.completed.victims) for r in rounds.rounds]
        assert done == [(0.0, 0), (arrived + grace_period, 1)]
        assert mgr.statistics().connections == 4


async def test_an_emergency_after_a_forced_trim_left_short_waits_for_a_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A forced trim finds only connections of a protected peer. Two more of that
    # peer take the count to hard: an emergency, but it could do no more than the
    # forced round did (which may revoke locks too). It waits as a round left
    # short does (the silence period here), not running at once for nothing.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 5, hard=6), grace_period=0, silence_period=10
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        mgr.protect("kept", "test")
        for _ in range(4):
            track(mgr, "kept")
        await trio.sleep(1)
        assert await mgr.trim(force=True) == []
        await trio.sleep(1)
        for _ in range(2):
            track(mgr, "kept")
        await trio.sleep(15)
        done = [(r.completed.time, r.completed.trigger) for r in rounds.rounds]
        assert done == [(1.0, "force"), (11.0, "high-water")]


async def test_a_round_that_reaches_its_target_ends_the_wait_of_a_round_left_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # At t=0 every connection is locked: the regulator's round is left short and
    # would retry a second later. A forced trim at t=0.2 reaches the target. When
    # sensing lowers high at t=0.5 (two locks released meanwhile), the round for
    # it runs then: the earlier round's wait ended with the trim's success.
    fake = FakeSensor()
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(4, 6),
            grace_period=0,
            silence_period=0,
            lock_budget=7,
            sensing=Sensing([fake], interval=0.5),
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10), scorer=lambda s: s.metadata["v"]) as p,
        mgr.enroll("q", quota=cm.Quota(0, 10), scorer=lambda s: s.metadata["v"]) as q,
        record_rounds(mgr) as rounds,
        AsyncExitStack() as stack,
    ):
        holds = []
        for i in range(7):
            member = p if i % 2 else q  # (grant.max caps the locks of each)
            stream = member.track_stream(track(mgr, i))
            stream.metadata["v"] = i / 10
            hold = await stack.enter_async_context(AsyncExitStack())
            await hold.enter_async_context(member.lock(stream, ttl=1000))
            holds.append(hold)
        await trio.sleep(0.2)
        assert [c.peer for c in await mgr.trim(force=True)] == [0, 1, 2]
        await trio.sleep(0.05)
        for hold in holds[3:5]:
            await hold.aclose()  # at low: nothing to wake the regulator for
        fake.ceiling = 3
        await trio.sleep(2)
        assert mgr.limits.high == 3
        done = [
            (r.completed.time, r.completed.trigger, r.completed.victims) for r in rounds.rounds
        ]
        assert done == [(0.0, "high-water", 0), (0.2, "force", 3), (0.5, "high-water", 2)]
