"""The regulator (SPEC §8): rounds that prune by cancelling scopes, grace, silence,
supervision, trim, protection."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module
from trio_connmgr._core._planner import CHUNK, plan_round
from trio_connmgr.testing import check_invariants, record_rounds, wait_idle


def value_of(stream: cm.Stream) -> float:
    return stream.metadata["v"]  # type: ignore[no-any-return]


def squared(stream: cm.Stream) -> float:
    return stream.metadata["v"] ** 2  # type: ignore[no-any-return]


@asynccontextmanager
async def over_high(**options: Any) -> AsyncIterator[cm.ConnectionManager]:
    """A manager with ``Limits(1, 2)``, no grace period and three tracked
    connections: a round is due at once."""
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 2), grace_period=0, **options
    ) as mgr:
        for i in range(3):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        yield mgr


async def test_one_round_prunes_exactly_the_twenty_lowest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled: list[int] = []
    exited: list[int] = []
    tallies: dict[int, float] = {}
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 15), grace_period=5.0) as mgr,
        mgr.enroll("chat", quota=cm.Quota(0, 15), scorer=value_of) as chat,
        mgr.enroll("sync", quota=cm.Quota(0, 15), scorer=squared, weight=2.0) as sync,
        trio.open_nursery() as nursery,
    ):

        async def peer(i: int, task_status: trio.TaskStatus[None]) -> None:
            v = ((i * 7) % 30) / 30
            protocol = chat if i % 2 == 0 else sync
            tallies[i] = v if protocol is chat else 2 * v * v
            async with (
                mgr.connection(i, direction="inbound") as conn,
                protocol.stream(conn) as stream,
            ):
                stream.metadata["v"] = v
                task_status.started()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    cancelled.append(i)
                    raise
            exited.append(i)
            assert conn.close_reason == "pruned"

        for i in range(30):
            await nursery.start(peer, i)
        assert len(set(tallies.values())) == 30  # no ties: the expected set is exact
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 30  # all still in their grace period
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        expected = sorted(tallies, key=tallies.__getitem__)[:20]
        assert sorted(cancelled) == sorted(expected)
        assert sorted(exited) == sorted(expected)
        stats = mgr.statistics()
        assert stats.connections == 10
        assert stats.connections_pruned == 20
        assert stats.rounds.last_victims == 20
        assert stats.rounds.victims_by_phase == {"tally": 20}
        assert stats.rounds.last_trigger == "high-water"
        assert stats.rounds.last_at == pytest.approx(5.0)
        assert stats.rounds.last_duration >= 0
        assert stats.rounds.failures == 0
        survivors = {conn.peer for conn in mgr.connections}
        assert survivors == set(range(30)) - set(expected)
        assert chat.usage + sync.usage == 10
        nursery.cancel_scope.cancel()


async def test_grace_period_honoured_then_expiring(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=10.0) as mgr:
        for i in range(4):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(9.99)
        assert mgr.statistics().connections == 4
        assert mgr.statistics().rounds.count >= 1  # it tried, found nothing prunable
        await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1
        assert mgr.statistics().rounds.last_at == pytest.approx(10.0)
        # The newest (last opened) survives: ties go to the oldest idle first.
        assert [c.peer for c in mgr.connections] == [3]


async def test_silence_period_between_rounds(autojump_clock: trio.testing.MockClock) -> None:
    async with over_high(silence_period=10.0) as mgr:
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1
        await trio.sleep(1)
        for i in range(3, 5):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(8.99)
        assert mgr.statistics().connections == 3
        assert mgr.statistics().rounds.count == 1
        await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1
        assert mgr.statistics().rounds.count == 2
        assert mgr.statistics().rounds.last_at == pytest.approx(10.0)


async def test_reaching_hard_skips_the_silence_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 2, hard=4), grace_period=0, silence_period=100.0
    ) as mgr:
        for i in range(3):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1  # a round at t=0: silence until 100
        await trio.sleep(1)
        for i in range(3, 5):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 3  # above high, in the silence period
        mgr.track(5, direction="outbound", close=trio.lowlevel.checkpoint)  # at hard
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1
        assert mgr.statistics().rounds.last_at == pytest.approx(1.0)


async def test_an_emergency_left_short_by_grace_retries_when_grace_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # At hard, a round prunes what it can and is left short by connections in
    # their grace period. The next round runs as that grace period ends, not a
    # silence period after the round: at hard, inbound newcomers are refused.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 4, hard=8), grace_period=5, silence_period=30
        ) as mgr,
        record_rounds(mgr) as rounds,
    ):
        for i in range(3):
            mgr.track(f"old-{i}", direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(10)
        for i in range(8):  # outbound: never refused; the count reaches hard
            mgr.track(f"new-{i}", direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 8  # the old 3 pruned; the new in grace
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 2
    completed = [r.completed for r in rounds.rounds]
    assert [(e.time, e.count_before, e.count_after) for e in completed] == [
        (10.0, 11, 8),
        (15.0, 8, 2),
    ]


async def test_at_hard_equal_to_high_regulation_waits_for_above_high(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # With hard == high the count at hard is not above high: no round, whatever
    # wakes the regulator (here a timed trigger), and newcomers are refused or
    # evict (SPEC §10). One more outbound connection is above high: a round.
    async with cm.open_connection_manager(
        limits=cm.Limits(1, 3, hard=3),
        grace_period=0,
        silence_period=0,
        triggers=[cm.triggers.Interval(1.0)],
    ) as mgr:
        for i in range(3):
            mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(0.5)
        assert mgr.statistics().connections == 3
        assert mgr.statistics().rounds.count == 0
        await trio.sleep(1)  # the interval's round: it prunes down to low
        assert mgr.statistics().rounds.last_trigger == "interval"
        for i in range(3, 5):
            mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 3  # at hard == high: nothing due
        mgr.track(5, direction="outbound", close=trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1
        assert mgr.statistics().rounds.last_trigger == "high-water"


async def test_a_trigger_that_always_fires_does_not_spin_at_low(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Always(cm.triggers.Trigger):
        name = "always"
        checks = 0

        def check(self, view: cm.triggers.TriggerView, now: float) -> bool:
            self.checks += 1
            return True

    always = Always()
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 4), grace_period=0, silence_period=0, triggers=[always]
    ) as mgr:
        mgr.track("p", direction="inbound", close=trio.lowlevel.checkpoint)
        with trio.move_on_after(60):
            await trio.sleep_forever()
        # At or below low a round can do nothing: the regulator waits for a
        # change instead of running round after round at one instant.
        assert mgr.statistics().rounds.count <= 2
        assert always.checks <= 3
        assert mgr.statistics().connections == 1


async def test_raising_scorer_does_not_stop_regulation(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(stream: cm.Stream) -> float:
        raise RuntimeError("scorer bug")

    with caplog.at_level(logging.ERROR, logger="trio_connmgr"):
        async with (
            cm.open_connection_manager(limits=cm.Limits(2, 4), grace_period=0) as mgr,
            mgr.enroll("p", quota=cm.Quota(0, 4), scorer=broken) as p,
        ):
            for round_number in (1, 2):
                for i in range(6):
                    p.track_stream(
                        mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
                    )
                await trio.sleep(20)
                stats = mgr.statistics()
                assert stats.connections == 2
                assert stats.rounds.failures == 0
                assert stats.rounds.count == round_number
            assert stats.protocols["p"].scorer_errors >= 8
    scorer_logs = [r for r in caplog.records if "scorer" in r.getMessage()]
    assert len(scorer_logs) == 1


async def test_regulator_bug_restarts_with_back_off(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise RuntimeError("injected regulator bug")
        return plan_round(*args, **kwargs)

    monkeypatch.setattr(regulator_module, "plan_round", flaky)
    async with over_high() as mgr:
        await trio.sleep(5)
        stats = mgr.statistics()
        assert stats.rounds.failures == 1
        assert stats.connections == 1
        assert calls[:2] == [0.0, pytest.approx(regulator_module.BACKOFF_BASE)]
    assert any("regulation round failed" in r.getMessage() for r in caplog.records)


async def test_repeated_regulator_bugs_stop_the_manager(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []
    body: list[str] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(trio.current_time())
        raise RuntimeError("injected regulator bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    with pytest.raises(cm.ConnMgrError) as info:
        async with over_high(max_round_failures=3) as mgr:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                body.append("cancelled")
                raise
    assert type(info.value) is cm.ConnMgrError
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "regulator failed 4 times" in str(info.value)
    assert body == ["cancelled"]
    # Back-off doubles: 0.5, 1, 2 seconds between attempts.
    assert calls == [0.0, 0.5, 1.5, 3.5]
    assert mgr.statistics().rounds.failures == 4
    assert mgr._state.closed
    assert mgr._state.connections == {}


async def test_a_body_error_during_the_stop_is_not_lost(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected regulator bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    with pytest.raises(BaseExceptionGroup) as info:
        async with over_high(max_round_failures=0) as mgr:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise KeyError("raised by the body's cleanup") from None
    fatal, body = info.value.exceptions
    assert type(fatal) is cm.ConnMgrError
    assert isinstance(fatal.__cause__, RuntimeError)
    assert isinstance(body, KeyError)
    assert mgr._state.closed


async def test_a_body_error_from_a_nursery_during_the_stop_is_not_lost(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The body's error then comes out in a group with the cancellation: the
    # manager's failure must not be lost on the way.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected regulator bug")

    async def child() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise KeyError("raised by a task's cleanup") from None

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    with pytest.RaisesGroup(
        pytest.RaisesExc(cm.ConnMgrError),
        pytest.RaisesGroup(KeyError, flatten_subgroups=True),
    ):
        async with over_high(max_round_failures=0), trio.open_nursery() as nursery:
            nursery.start_soon(child)
            await trio.sleep_forever()


async def noop_close() -> None:
    pass


class ChunkedRound:
    """A manager whose next round plans over several chunks: ``n`` tracked
    connections, ``n - 90`` of them to keep; ``scored`` is set as the round
    calls its first scorer (it reads ``metadata["score"]``)."""

    def __init__(self, chunks: int) -> None:
        self.n = chunks * CHUNK + 66
        self.scored = trio.Event()

    def scorer(self, stream: cm.Stream) -> float:
        self.scored.set()
        return float(stream.metadata["score"])

    def manager(self) -> AbstractAsyncContextManager[cm.ConnectionManager]:
        return cm.open_connection_manager(
            limits=cm.Limits(self.n - 90, self.n + 10), grace_period=0, silence_period=1e6
        )

    def connections(self, mgr: cm.ConnectionManager) -> list[cm.Connection]:
        return [
            mgr.track(f"peer-{i}", direction="outbound", close=noop_close) for i in range(self.n)
        ]


async def test_a_stream_opened_while_a_round_yields_keeps_its_protocol_at_min() -> None:
    # The round plans over more than one chunk of connections, yielding between
    # them. Meanwhile a task opens a stream of p on a connection the round has
    # already classified without p (and will prune first): pruning it takes p
    # down to its grant.min, so no other connection of p may go.
    # Three chunks: the task gets to run before the last one, whichever order
    # Trio runs the two in (it shuffles each batch of runnable tasks).
    setup = ChunkedRound(2)
    n = setup.n
    async with (
        setup.manager() as mgr,
        mgr.enroll("p", quota=cm.Quota(2, n), scorer=setup.scorer) as p,
        mgr.enroll("q", quota=cm.Quota(0, n), scorer=setup.scorer) as q,
    ):
        conns = setup.connections(mgr)
        first = conns[0]
        q.track_stream(first).metadata["score"] = 0.1  # the round's first victim
        for conn in conns[1:-2]:
            q.track_stream(conn).metadata["score"] = 0.9
        for conn in conns[-2:]:
            p.track_stream(conn).metadata["score"] = 0.5
        assert (p.usage, p.grant.min) == (2, 2)

        async def use_first_for_p() -> None:
            await setup.scored.wait()
            p.track_stream(first).metadata["score"] = 0.9

        async with trio.open_nursery() as nursery:
            nursery.start_soon(use_first_for_p)
            pruned = await mgr.trim()
        assert first in pruned
        assert first.streams == set()
        assert not set(conns[-2:]) & set(pruned)
        assert p.usage == p.grant.min == 2
        assert len(pruned) == 90
        # The plan saw the new stream once it had classified every connection
        # (it reads their protocols again when streams came or went meanwhile):
        # it planned none of p's other connections, and no victim was skipped.
        ranks = [c.prune_reason.rank for c in pruned if c.prune_reason]
        assert sorted(ranks) == list(range(1, 91))


async def test_a_victim_locked_or_protected_while_a_round_yields_is_spared() -> None:
    # As above, but the task locks one planned victim and protects another
    # while the round plans: the round checks each victim again as it applies
    # (invariant 2) and takes others in their place.
    # Entering the lock checkpoints: enough chunks for it to land while planning.
    setup = ChunkedRound(5)
    n = setup.n
    spared = trio.Event()
    async with (
        setup.manager() as mgr,
        mgr.enroll("p", quota=cm.Quota(0, n), scorer=setup.scorer) as p,
    ):
        conns = setup.connections(mgr)
        streams = [p.track_stream(conn) for conn in conns]
        for i, stream in enumerate(streams):
            stream.metadata["score"] = 0.1 if i < 2 else 0.9  # the first two go first
        locked, protected = conns[:2]

        async def lock_and_protect(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            await setup.scored.wait()
            mgr.protect(protected.peer, "keep")
            async with p.lock(streams[0], ttl=60):
                spared.set()
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await nursery.start(lock_and_protect)
            pruned = await mgr.trim()
            assert spared.is_set()  # (during the round, not after it)
            assert locked not in pruned
            assert not locked.closed
            assert protected not in pruned
            assert not protected.closed
            assert len(pruned) == 90  # others in their place
            assert mgr.statistics().connections == n - 90
            nursery.cancel_scope.cancel()


async def test_connections_that_arrive_after_a_round_plans_are_counted_apart() -> None:
    # A connection opened while the round plans (between two chunks) is not in
    # its plan: the round ends one above low and says so in `arrived`, which
    # check_invariants allows for (invariant 1 is about the connections the
    # round knew of). The next round, if the count goes above high, takes it in.
    setup = ChunkedRound(2)
    n = setup.n
    late: list[cm.Connection] = []

    async def arrive() -> None:
        await setup.scored.wait()
        late.append(mgr.track("late", direction="outbound", close=noop_close))

    async with (
        cm.open_connection_manager(
            limits=cm.Limits(n - 90, n - 1), grace_period=0, silence_period=1e6
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, n), scorer=setup.scorer) as p,
        record_rounds(mgr) as rounds,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(arrive)
        # Above high: the regulator's round starts at the next checkpoint.
        for conn in setup.connections(mgr):
            p.track_stream(conn).metadata["score"] = 0.5
        await wait_idle(mgr)
        assert late, "no connection arrived while the round planned"
        assert len(rounds.rounds) == 1
        completed = rounds.rounds[0].completed
        assert (completed.count_before, completed.victims) == (n, 90)
        assert completed.arrived == 1
        assert completed.count_after == mgr.limits.low + 1
        assert not late[0].closed
        check_invariants(mgr, last_round=rounds.rounds[0])


async def test_a_forced_round_does_not_plan_again_after_going_below_a_min() -> None:
    # Every connection carries p at its grant.min, so a forced round's victims
    # are all forced (below the min). While the round plans them, a task
    # protects the first victim and opens a new, idle connection: the round
    # skips the protected one as it applies, and must not then plan again and
    # prune the newcomer, a non-forced victim after forced ones (forced victims
    # come last, invariant 4).
    setup = ChunkedRound(2)
    n = setup.n
    calls = 0
    second_plan = trio.Event()

    def scorer(stream: cm.Stream) -> float:
        nonlocal calls
        calls += 1
        if calls > n:  # the round's second plan, the forced one
            second_plan.set()
        return float(stream.metadata["score"])

    async with (
        setup.manager() as mgr,
        mgr.enroll("p", quota=cm.Quota(n + 10, n + 10), scorer=scorer) as p,
    ):
        conns = setup.connections(mgr)
        for i, conn in enumerate(conns):
            p.track_stream(conn).metadata["score"] = 0.1 if i == 0 else 0.9
        assert p.usage < p.grant.min
        newcomer: list[cm.Connection] = []

        async def meddle() -> None:
            await second_plan.wait()
            mgr.protect(conns[0].peer, "keep")
            newcomer.append(mgr.track("newcomer", direction="outbound", close=noop_close))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(meddle)
            pruned = await mgr.trim(force=True)
        assert newcomer, "the task did not run while the round planned"
        assert conns[0] not in pruned
        assert len(pruned) == 89
        assert all(c.prune_reason is not None and c.prune_reason.forced for c in pruned)
        assert not newcomer[0].closed
        assert mgr.statistics().connections == mgr.limits.low + 2


async def test_failures_outside_the_window_are_forgiven(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(trio.current_time())
        raise RuntimeError("injected regulator bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    async with over_high(max_round_failures=1, failure_window=0.25) as mgr:
        await trio.sleep(3)
        # The back-off (0.5 s) is longer than the window: never two within it.
        assert mgr.statistics().rounds.failures == len(calls) >= 3
        monkeypatch.setattr(regulator_module, "plan_round", plan_round)
        await trio.sleep(5)
        assert mgr.statistics().connections == 1


async def test_trim_returns_what_it_pruned() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10), grace_period=0) as mgr,
        mgr.enroll("p", quota=cm.Quota(3, 10), scorer=value_of) as p,
    ):
        assert await mgr.trim() == []
        conns = [
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint) for i in range(5)
        ]
        for i, conn in enumerate(conns[:3]):
            p.track_stream(conn).metadata["v"] = i / 10
        pruned = await mgr.trim()
        # Only the idle ones: the rest keeps p at its grant.min of 3.
        assert pruned == [conns[3], conns[4]]
        assert all(c.prune_reason and c.prune_reason.trigger == "trim" for c in pruned)
        assert await mgr.trim() == []
        forced = await mgr.trim(force=True)
        assert forced == [conns[0]]
        assert forced[0].prune_reason is not None
        assert forced[0].prune_reason.forced
        assert forced[0].prune_reason.trigger == "force"
        assert p.usage == 2
        assert mgr.statistics().rounds.count == 4


async def test_protection(autojump_clock: trio.testing.MockClock) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=0) as mgr:
        mgr.protect("friend", "bootstrap")
        mgr.protect("friend", "relay")
        assert mgr.is_protected("friend")
        assert not mgr.is_protected("stranger")
        friends = [
            mgr.track("friend", direction="inbound", close=trio.lowlevel.checkpoint)
            for _ in range(3)
        ]
        stranger = mgr.track("stranger", direction="inbound", close=trio.lowlevel.checkpoint)
        await trio.sleep(1)
        assert stranger.closed
        assert not any(c.closed for c in friends)
        assert mgr.statistics().protected_peers == 1
        assert mgr.unprotect("friend", "bootstrap") is True
        assert mgr.unprotect("friend", "unknown-tag") is True
        assert mgr.is_protected("friend")
        assert mgr.unprotect("friend", "relay") is False
        assert not mgr.is_protected("friend")
        assert mgr.unprotect("friend", "relay") is False
        await trio.sleep(20)
        assert sum(not c.closed for c in friends) == 1


async def test_round_over_a_big_snapshot_yields(autojump_clock: trio.testing.MockClock) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 5000), grace_period=0) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5000), scorer=value_of) as p,
        trio.open_nursery() as nursery,
    ):
        for i in range(4000):
            conn = mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
            p.track_stream(conn).metadata["v"] = (i * 7919 % 4000) / 4000
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        before = ticks
        pruned = await mgr.trim()
        assert len(pruned) == 3990
        # The ticker ran between the planner's chunks of connections and between
        # chunks of victims: the loop was never blocked for the whole round.
        planning = 4000 // CHUNK
        applying = len(pruned) // regulator_module.APPLY_CHUNK
        assert ticks - before >= planning + applying
        nursery.cancel_scope.cancel()


async def cancel_while_trimming(
    monkeypatch: pytest.MonkeyPatch, connections: int, *, before_planning: bool
) -> tuple[cm.ConnectionManager, list[list[cm.Connection]]]:
    """Trim ``connections`` tracked connections down to low=10 while the trim()
    caller's scope is cancelled (as a deadline would be) as the round's first
    plan starts or just after it (the round yields after each chunk of 1,024
    planned and each chunk of 256 pruned). Returns the closed manager and what
    trim() returned, if it did."""
    scope = trio.CancelScope()
    plan = regulator_module.Regulator._plan
    returned: list[list[cm.Connection]] = []

    async def cancelling(self: Any, *args: Any, **kwargs: Any) -> Any:
        if before_planning:
            scope.cancel()
        planned = await plan(self, *args, **kwargs)
        scope.cancel()
        return planned

    monkeypatch.setattr(regulator_module.Regulator, "_plan", cancelling)
    async with cm.open_connection_manager(
        limits=cm.Limits(10, 5000), grace_period=0, silence_period=60
    ) as mgr:
        for i in range(connections):
            mgr.track(i, direction="inbound", close=trio.lowlevel.checkpoint)
        with scope:
            returned.append(await mgr.trim())
            await trio.lowlevel.checkpoint()
            pytest.fail("the cancellation did not reach the caller")  # pragma: no cover
        assert scope.cancelled_caught
    return mgr, returned


async def test_a_round_that_has_begun_to_prune_finishes_though_its_caller_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cancelled between its plan and its first prune: it prunes all 890 victims
    # (in 4 chunks, with checkpoints between them), is recorded, and trim()
    # returns them; the caller's next checkpoint raises the cancellation.
    mgr, returned = await cancel_while_trimming(monkeypatch, 900, before_planning=False)
    stats = mgr.statistics()
    assert [len(r) for r in returned] == [890]
    assert stats.connections_pruned == 890
    assert (stats.rounds.count, stats.rounds.last_victims) == (1, 890)
    assert mgr._regulator._last_round_end != -math.inf  # the silence period began


async def test_a_round_cancelled_while_it_plans_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mgr, returned = await cancel_while_trimming(monkeypatch, 3000, before_planning=True)
    stats = mgr.statistics()
    assert returned == []
    assert (stats.connections_pruned, stats.rounds.count) == (0, 0)
    assert stats.connections_closed == 3000  # by the manager's exit
