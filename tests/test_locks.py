"""Locks (SPEC §6): protection, denial reasons, ttl, extend, revocation, release."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing
from helpers import drain

import trio_connmgr as cm


def value_of(stream: cm.Stream) -> float:
    return stream.metadata.get("v", 0.5)  # type: ignore[no-any-return]


def track(mgr: cm.ConnectionManager, peer: object, direction: str = "outbound") -> cm.Connection:
    return mgr.track(peer, direction=direction, close=trio.lowlevel.checkpoint)


async def test_locked_connection_survives_a_round(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=5, lock_budget=1) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 2), scorer=value_of) as p,
    ):
        conns = [track(mgr, i) for i in range(5)]
        streams = [p.track_stream(c) for c in conns]
        for i, stream in enumerate(streams):
            stream.metadata["v"] = i / 10  # the locked one is the cheapest
        async with p.lock(streams[0], ttl=100) as lock:
            assert lock.held
            assert conns[0].locked
            await trio.sleep(6)
            # Everything else prunable is gone; the locked one stays.
            assert mgr.connections == (conns[0],)
            assert all(c.close_reason == "pruned" for c in conns[1:])
            assert mgr.explain(conns[0]).excluded_by == "locked"
        assert lock.status == "released"


async def test_lock_denied_closed() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        stream = p.track_stream(conn)
        stream.close()
        with pytest.raises(cm.LockDenied) as info:
            async with p.lock(stream, ttl=5):
                pytest.fail("locked a closed stream")  # pragma: no cover
        assert info.value.reason == "closed"
        other = track(mgr, "b")
        on_closed = p.track_stream(other)
        other.release()
        lock = p.lock(on_closed, ttl=5)
        with pytest.raises(cm.LockDenied, match="closed"):
            await lock.__aenter__()
        assert lock.status == "denied"
        stats = mgr.statistics().protocols["p"]
        assert stats.locks_denied == {"closed": 2}
        assert stats.locks_granted == 0
        denied = [e for e in drain(events) if isinstance(e, cm.LockDeniedEvent)]
        assert [(e.protocol, e.reason) for e in denied] == [("p", "closed"), ("p", "closed")]
        conn.release()


async def test_a_denied_lock_wakes_its_waiters() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 8), lock_budget=1) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
        p.lock(p.track_stream(track(mgr, "a")), ttl=5),  # the whole budget
        trio.open_nursery() as nursery,
    ):
        lock = p.lock(p.track_stream(track(mgr, "b")), ttl=5)
        woke: list[str] = []

        async def waiter() -> None:
            await lock.wait_revoked()
            woke.append(lock.status)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(cm.LockDenied, match="budget"):
            await lock.__aenter__()
        await trio.testing.wait_all_tasks_blocked()
        assert woke == ["denied"]
        with trio.testing.assert_checkpoints():
            await lock.wait_revoked()  # and returns at once from now on


async def test_lock_denied_grant() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(8, 10), lock_budget=8) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 2)) as p,
        AsyncExitStack() as stack,
    ):
        conns = [track(mgr, i) for i in range(3)]
        streams = [p.track_stream(c) for c in conns]
        await stack.enter_async_context(p.lock(streams[0], ttl=5))
        await stack.enter_async_context(p.lock(streams[1], ttl=5))
        # A second lock on an already-locked connection costs nothing more.
        await stack.enter_async_context(p.lock(p.track_stream(conns[0]), ttl=5))
        with pytest.raises(cm.LockDenied) as info:
            await stack.enter_async_context(p.lock(streams[2], ttl=5))
        assert info.value.reason == "grant"
        assert "grant.max=2" in str(info.value)
        stats = mgr.statistics().protocols["p"]
        assert (stats.locks_held, stats.locks_granted) == (2, 3)
        assert stats.locks_denied == {"grant": 1}


@pytest.mark.parametrize(("low", "budget", "expected"), [(6, None, 3), (7, None, 3), (6, 1, 1)])
async def test_lock_denied_budget(low: int, budget: int | None, expected: int) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low, 20), lock_budget=budget) as mgr,
        mgr.enroll("a", quota=cm.Quota(0, 20)) as a,
        mgr.enroll("b", quota=cm.Quota(0, 20)) as b,
        AsyncExitStack() as stack,
    ):
        assert mgr.statistics().lock_budget == expected
        conns = [track(mgr, i) for i in range(expected + 1)]
        for i, conn in enumerate(conns[:expected]):
            member = a if i % 2 == 0 else b
            await stack.enter_async_context(member.lock(member.track_stream(conn), ttl=5))
        assert mgr.statistics().locked_connections == expected
        with pytest.raises(cm.LockDenied) as info:
            await stack.enter_async_context(b.lock(b.track_stream(conns[-1]), ttl=5))
        assert info.value.reason == "budget"
        # Another protocol may still lock an already-locked connection.
        await stack.enter_async_context(b.lock(b.track_stream(conns[0]), ttl=5))
        assert mgr.statistics().locked_connections == expected


async def test_ttl_expiry(autojump_clock: trio.testing.MockClock) -> None:
    revoked: list[tuple[cm.Lock, float]] = []
    woke: list[float] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        stream = p.track_stream(track(mgr, "a"))

        def on_revoke(lock: cm.Lock) -> None:
            revoked.append((lock, trio.current_time()))

        async with p.lock(stream, ttl=5, on_revoke=on_revoke) as lock:
            assert lock.expires_at == 5.0

            async def waiter() -> None:
                await lock.wait_revoked()
                woke.append(trio.current_time())

            p.start_soon(waiter)
            await trio.sleep(4.9)
            assert lock.held
            assert woke == []
            await trio.sleep(0.2)
            assert lock.status == "expired"
            assert lock.revoked
            assert not lock.held
            assert not stream.connection.locked
            assert revoked == [(lock, 5.0)]
            assert woke == [5.0]
            await lock.wait_revoked()  # returns at once now
        assert lock.status == "expired"  # leaving does not change it
        stats = mgr.statistics().protocols["p"]
        assert (stats.locks_expired, stats.locks_held) == (1, 0)
        kinds = [type(e).__name__ for e in drain(events) if "Lock" in type(e).__name__]
        assert kinds == ["LockGranted", "LockExpired"]


async def test_expiry_makes_the_connection_prunable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Three locked connections hold the count above high=2 (a budget of 3);
    # when the shortest lock lapses its connection is pruned right away.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=5, lock_budget=3, silence_period=100
        ) as mgr,
        mgr.enroll("a", quota=cm.Quota(0, 2)) as a,
        mgr.enroll("b", quota=cm.Quota(0, 2)) as b,
        AsyncExitStack() as stack,
    ):
        conns = [track(mgr, i) for i in range(3)]
        for i, conn in enumerate(conns):
            member = a if i < 2 else b
            ttl = 30 if i == 0 else 1000
            await stack.enter_async_context(member.lock(member.track_stream(conn), ttl=ttl))
        await trio.sleep(29.9)
        assert mgr.statistics().connections == 3
        await trio.sleep(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert conns[0].close_reason == "pruned"
        assert mgr.statistics().rounds.last_at == pytest.approx(30.0)
        assert mgr.statistics().connections == 2


async def test_a_round_expires_a_lapsed_lock_before_planning(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lock timer and a round may wake at the same instant, in either order:
    # a round must not spare a connection for a lock that has lapsed. The timer
    # is left idle here so that only the round can expire it.
    async def idle_timer(
        self: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    monkeypatch.setattr(cm.ConnectionManager, "_run_lock_timer", idle_timer)
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=0, lock_budget=2) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 2)) as p,
        p.lock(p.track_stream(track(mgr, "kept")), ttl=1000),
    ):
        conns = [*mgr.connections, track(mgr, "lapsed")]
        async with p.lock(p.track_stream(conns[1]), ttl=5) as lock:
            await trio.sleep(10)
            assert lock.held  # nothing expired it: the timer is idle
            pruned = await mgr.trim()
            assert lock.status == "expired"
            assert pruned == [conns[1]]
            assert mgr.statistics().protocols["p"].locks_expired == 1


async def test_max_lock_ttl_caps_ttl_and_extend(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10), max_lock_ttl=20) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        stream = p.track_stream(track(mgr, "a"))
        async with p.lock(stream, ttl=1000) as lock:
            assert lock.ttl == 1000
            assert lock.expires_at == 20.0
            await trio.sleep(3)
            assert lock.extend(10) == 13.0
            assert lock.expires_at == 13.0
            await trio.sleep(9)  # t=12: the first expiry has passed, the lock holds
            assert lock.held
            assert lock.extend(1000) == 32.0
            await trio.sleep(19.9)
            assert lock.held
            await trio.sleep(0.2)
            assert lock.status == "expired"
            with pytest.raises(cm.ResourceClosed):
                lock.extend(5)
        # A shorter extension brings the expiry forward.
        async with p.lock(stream, ttl=100) as lock2:
            lock2.extend(1)
            await trio.sleep(1.01)
            assert lock2.status == "expired"


async def test_force_trim_revokes_lowest_tally_first() -> None:
    revoked: list[int] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 10), grace_period=0, lock_budget=5) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10), scorer=value_of) as p,
        AsyncExitStack() as stack,
    ):
        scores = [0.9, 0.1, 0.5, 0.3, 0.7]
        conns = [track(mgr, i) for i in range(5)]
        locks = []
        for i, (conn, v) in enumerate(zip(conns, scores, strict=True)):
            stream = p.track_stream(conn)
            stream.metadata["v"] = v
            lock = await stack.enter_async_context(
                p.lock(stream, ttl=100, on_revoke=lambda lock, i=i: revoked.append(i))
            )
            locks.append(lock)
        free = track(mgr, "free")
        # A normal round never revokes.
        assert await mgr.trim() == [free]
        assert all(lock.held for lock in locks)
        pruned = await mgr.trim(force=True)
        # Target count - low = 4: the four lowest tallies lose their locks.
        assert revoked == [1, 3, 2, 4]
        assert set(pruned) == {conns[i] for i in (1, 3, 2, 4)}
        assert [lock.status for lock in locks] == [
            "held",
            "revoked",
            "revoked",
            "revoked",
            "revoked",
        ]
        assert all(locks[i].revoked for i in (1, 2, 3, 4))
        assert mgr.connections == (conns[0],)
        assert mgr.statistics().protocols["p"].locks_revoked == 4


async def test_revocation_only_as_many_as_needed() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10), grace_period=0, lock_budget=5) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10), scorer=value_of) as p,
        AsyncExitStack() as stack,
    ):
        conns = [track(mgr, i) for i in range(4)]
        locks = []
        for conn, v in zip(conns, [0.4, 0.2, 0.6, 0.8], strict=True):
            stream = p.track_stream(conn)
            stream.metadata["v"] = v
            locks.append(await stack.enter_async_context(p.lock(stream, ttl=100)))
        free = track(mgr, "free")
        pruned = await mgr.trim(force=True)
        # Target 3: the free one, then two revocations (tallies 0.2 and 0.4).
        assert set(pruned) == {free, conns[1], conns[0]}
        assert [lock.status for lock in locks] == ["revoked", "revoked", "held", "held"]


@pytest.mark.parametrize("hard", [4, None])
async def test_revocation_at_hard(
    autojump_clock: trio.testing.MockClock, hard: int | None
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2, hard=hard), grace_period=5, lock_budget=4
        ) as mgr,
        mgr.enroll("a", quota=cm.Quota(0, 2), scorer=value_of) as a,
        mgr.enroll("b", quota=cm.Quota(0, 2), scorer=value_of) as b,
        AsyncExitStack() as stack,
    ):
        locks = []
        for i in range(4):
            member = a if i < 2 else b
            stream = member.track_stream(track(mgr, i))
            stream.metadata["v"] = i / 10
            locks.append(await stack.enter_async_context(member.lock(stream, ttl=1000)))
        # Everything is in its grace period until t=5: then, at hard, an emergency
        # round revokes the three cheapest locks (locked connections are revocable
        # once their grace ends) and prunes down to low.
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        if hard is None:
            # Above high but not at hard: normal rounds leave locks alone.
            assert [lock.status for lock in locks] == ["held"] * 4
            assert mgr.statistics().connections == 4
        else:
            assert [lock.status for lock in locks] == ["revoked"] * 3 + ["held"]
            assert [c.peer for c in mgr.connections] == [3]
            assert mgr.statistics().rounds.locks_revoked == 3


@pytest.mark.parametrize("hard", [4, None])
async def test_reaching_hard_is_an_emergency_at_once(
    autojump_clock: trio.testing.MockClock, hard: int | None
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2, hard=hard), grace_period=5, lock_budget=4, silence_period=60
        ) as mgr,
        mgr.enroll("a", quota=cm.Quota(0, 2), scorer=value_of) as a,
        mgr.enroll("b", quota=cm.Quota(0, 2), scorer=value_of) as b,
        AsyncExitStack() as stack,
    ):
        locks = []
        for i in range(3):
            member = a if i < 2 else b
            stream = member.track_stream(track(mgr, i))
            stream.metadata["v"] = i / 10
            locks.append(await stack.enter_async_context(member.lock(stream, ttl=1000)))
        await trio.sleep(20)  # normal rounds: only locked connections, nothing to do
        assert mgr.statistics().connections == 3
        # An outbound dial takes the count to hard: no silence period, revoke now.
        newcomer = track(mgr, "new")
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == pytest.approx(20.0)
        if hard is None:
            assert mgr.statistics().connections == 4
            assert [lock.status for lock in locks] == ["held"] * 3
        else:
            # Target 3, no candidate: the newcomer is in its grace period and will
            # be prunable on its own soon, so only the two lowest-tally locks of the
            # shortfall it cannot explain are revoked.
            assert [lock.status for lock in locks] == ["revoked", "revoked", "held"]
            assert set(mgr.connections) == {locks[2].stream.connection, newcomer}


@pytest.mark.parametrize("hard", [4, None])
async def test_trim_at_hard_revokes_like_a_round_of_the_regulator(hard: int | None) -> None:
    # SPEC §6: the count at hard is pressure, whoever runs the round.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 4, hard=hard), grace_period=0, lock_budget=4
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4), scorer=value_of) as p,
        AsyncExitStack() as stack,
    ):
        locks = []
        for i in range(4):
            stream = p.track_stream(track(mgr, i))
            stream.metadata["v"] = i / 10
            locks.append(await stack.enter_async_context(p.lock(stream, ttl=1000)))
        # At high, not above it: the regulator leaves the count alone.
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 4
        pruned = await mgr.trim()
        if hard is None:
            assert pruned == []
            assert [lock.status for lock in locks] == ["held"] * 4
        else:
            assert [c.peer for c in pruned] == [0, 1, 2]
            assert [lock.status for lock in locks] == ["revoked"] * 3 + ["held"]


async def test_force_trim_revokes_a_lock_before_going_below_a_grant_min() -> None:
    # SPEC §8: below grant.min only when nothing else is left; a lock that a
    # forced round may revoke (§6) is something else.
    async with (
        cm.open_connection_manager(limits=cm.Limits(3, 3), grace_period=0, lock_budget=5) as mgr,
        mgr.enroll("p", quota=cm.Quota(1, 10), scorer=value_of) as p,
        mgr.enroll("q", quota=cm.Quota(0, 10), scorer=value_of) as q,
    ):
        for peer in ("k1", "k2"):
            track(mgr, peer)
            mgr.protect(peer, "keep")
        only_p = track(mgr, "only-p")
        p.track_stream(only_p).metadata["v"] = 0.1  # p's only connection: its grant.min
        locked_q = track(mgr, "locked-q")
        stream = q.track_stream(locked_q)
        stream.metadata["v"] = 0.9
        async with q.lock(stream, ttl=100) as lock:
            assert await mgr.trim(force=True) == [locked_q]
            assert lock.status == "revoked"
            assert p.usage == p.grant.min == 1
            # With nothing else left, a forced round does go below grant.min.
            track(mgr, "k3")
            mgr.protect("k3", "keep")
            assert await mgr.trim(force=True) == [only_p]
            assert only_p.prune_reason is not None
            assert only_p.prune_reason.forced
            assert p.usage == 0


async def test_sensing_pressure_revokes(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=0, lock_budget=2) as mgr,
        mgr.enroll("a", quota=cm.Quota(0, 2), scorer=value_of) as a,
        AsyncExitStack() as stack,
    ):
        streams = [a.track_stream(track(mgr, i)) for i in range(2)]
        locks = [await stack.enter_async_context(a.lock(s, ttl=1000)) for s in streams]
        await trio.sleep(1)
        assert mgr.statistics().connections == 2  # at high, not above: no round
        mgr._regulator.pressure = True
        mgr._regulator.poke()
        await trio.sleep(1)
        assert sum(lock.status == "revoked" for lock in locks) == 1
        assert mgr.statistics().connections == 1


async def test_release_is_synchronous_and_wakes_the_regulator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=5, lock_budget=3, silence_period=100
        ) as mgr,
        mgr.enroll("a", quota=cm.Quota(0, 2)) as a,
        mgr.enroll("b", quota=cm.Quota(0, 2)) as b,
        AsyncExitStack() as stack,
    ):
        conns = [track(mgr, i) for i in range(3)]
        first = a.lock(a.track_stream(conns[0]), ttl=1000)
        await first.__aenter__()
        await stack.enter_async_context(a.lock(a.track_stream(conns[1]), ttl=1000))
        await stack.enter_async_context(b.lock(b.track_stream(conns[2]), ttl=1000))
        await trio.sleep(20)  # grace over; rounds found only locked connections
        assert mgr.statistics().connections == 3
        await first.__aexit__(None, None, None)
        # No checkpoint yet: released already.
        assert first.status == "released"
        assert not conns[0].locked
        assert mgr.statistics().protocols["a"].locks_held == 1
        await trio.testing.wait_all_tasks_blocked()
        # Pruned at once: neither the silence period nor a retry delay applies.
        assert conns[0].close_reason == "pruned"
        assert trio.current_time() == pytest.approx(20.0)


class CallbackBug(Exception):
    """An error of a callback's own: not a RuntimeError."""


@pytest.mark.parametrize("error", [RuntimeError, CallbackBug])
async def test_raising_on_revoke_is_logged_and_harmless(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    error: type[Exception],
) -> None:
    def broken(lock: cm.Lock) -> None:
        raise error("callback bug")

    with caplog.at_level(logging.ERROR, logger="trio_connmgr"):
        async with (
            cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
            mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
        ):
            stream = p.track_stream(track(mgr, "a"))
            async with p.lock(stream, ttl=1, on_revoke=broken) as lock:
                await trio.sleep(2)
                assert lock.status == "expired"
            # The manager still works: the timer task is alive.
            async with p.lock(stream, ttl=1) as again:
                await trio.sleep(2)
                assert again.status == "expired"
    logged = [r for r in caplog.records if "on_revoke" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[0] is error


async def test_lock_dropped_when_its_connection_closes() -> None:
    called: list[cm.Lock] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        async with p.lock(p.track_stream(conn), ttl=100, on_revoke=called.append) as lock:
            conn.release()
            assert lock.status == "dropped"
            assert not lock.revoked
        assert called == []
        assert mgr.statistics().locked_connections == 0


async def test_lock_misuse() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
        mgr.enroll("q", quota=cm.Quota(0, 4)) as q,
    ):
        conn = track(mgr, "a")
        stream = p.track_stream(conn)
        with pytest.raises(cm.ConfigError, match="belongs to 'p'"):
            q.lock(stream, ttl=5)
        lock = p.lock(stream, ttl=5)
        async with lock:
            pass
        with pytest.raises(cm.ConfigError, match="already used"):
            async with lock:
                pytest.fail("a lock was reused")  # pragma: no cover
        conn.release()


async def test_an_async_on_revoke_is_refused() -> None:
    async def on_revoke(lock: cm.Lock) -> None:  # pragma: no cover - never called
        pass

    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        stream = p.track_stream(conn)
        # It would return a coroutine, never awaited: the holder would never know.
        with pytest.raises(cm.ConfigError, match="on_revoke must be a synchronous"):
            p.lock(stream, ttl=5, on_revoke=on_revoke)
        conn.release()
