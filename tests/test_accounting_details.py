"""Accounting details of connections, streams, locks and bursts (SPEC §2, §4, §6, §7)."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing
from helpers import drain

import trio_connmgr as cm


def value_of(stream: cm.Stream) -> float:
    return stream.metadata.get("v", 0.5)  # type: ignore[no-any-return]


def track(mgr: cm.ConnectionManager, peer: object) -> cm.Connection:
    return mgr.track(peer, direction="outbound", close=trio.lowlevel.checkpoint)


# ------------------------------------------------------------------ limits


async def test_low_scales_with_the_share_to_the_nearest_connection() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(40, 100)) as mgr,
        mgr.subscribe() as events,
    ):
        # 40 * 34 / 100 = 13.6: rounded, not cut down.
        mgr._state.set_share(34, "memory pressure")
        stats = mgr.statistics()
        assert (stats.low, stats.high) == (14, 34)
        changed = [e for e in drain(events) if isinstance(e, cm.LimitsChanged)]
        assert [(e.low, e.high) for e in changed] == [(14, 34)]


# ------------------------------------------------------------- connections


async def test_each_victim_is_cancelled_with_the_phase_that_chose_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reasons: dict[str, str | None] = {}
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 10), grace_period=0) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10), scorer=value_of) as p,
        trio.open_nursery() as nursery,
    ):

        async def body(peer: str, value: float | None) -> None:
            async with mgr.connection(peer, direction="outbound") as conn:
                if value is not None:
                    p.track_stream(conn).metadata["v"] = value
                try:
                    await trio.sleep_forever()
                except trio.Cancelled as exc:
                    reasons[peer] = exc.reason
                    raise

        nursery.start_soon(body, "idle", None)
        nursery.start_soon(body, "cheap", 0.1)
        nursery.start_soon(body, "dear", 0.9)
        await trio.testing.wait_all_tasks_blocked()
        pruned = await mgr.trim()
        assert sorted(c.peer for c in pruned) == ["cheap", "idle"]  # type: ignore[type-var]
        await trio.testing.wait_all_tasks_blocked()
        assert reasons == {
            "idle": "connection pruned (idle)",
            "cheap": "connection pruned (tally)",
        }
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------- streams


async def test_opening_a_stream_is_activity_on_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5)) as p,
    ):
        conn = track(mgr, "a")
        await trio.sleep(5)
        stream = p.track_stream(conn)
        assert conn.last_active == trio.current_time() == stream.opened_at
        conn.release()


async def test_streams_only_on_this_managers_connections_and_with_a_burst_or_none() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as other,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        foreign = track(other, "a")
        with pytest.raises(cm.ConfigError, match="expected a Connection of this manager"):
            p.track_stream(foreign)
        with pytest.raises(cm.ConfigError, match="expected a Connection of this manager, got 'a'"):
            p.track_stream("a")  # type: ignore[arg-type]
        assert (foreign.streams, foreign.protocols, p.usage) == (set(), (), 0)
        conn = track(mgr, "a")
        with pytest.raises(cm.ConfigError, match="burst must be a Burst or None, got 'lookup'"):
            p.track_stream(conn, burst="lookup")  # type: ignore[arg-type]
        assert (conn.streams, p.usage, mgr.statistics().streams_opened) == (set(), 0, 0)
        foreign.release()
        conn.release()


# ------------------------------------------------------------------- locks


async def test_leaving_keeps_another_protocols_lock_on_a_shared_connection() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr,
        mgr.enroll("q", quota=cm.Quota(0, 4)) as q,
    ):
        conn = track(mgr, "a")
        async with q.lock(q.track_stream(conn), ttl=100) as kept:
            async with mgr.enroll("p", quota=cm.Quota(0, 4)) as p:
                # Held when p leaves (entered by hand: nothing releases it before).
                mine = p.lock(p.track_stream(conn), ttl=100)
                await mine.__aenter__()
                assert mgr.statistics().locked_connections == 1
                assert p.locks_held == q.locks_held == 1
            # p left: its lock ended, q's still protects the connection.
            assert mine.status == "released"
            assert kept.held
            assert conn.locked
            assert q.locks_held == 1
            assert mgr.statistics().locked_connections == 1
            assert mgr.explain(conn).excluded_by == "locked"
        assert kept.status == "released"
        assert mgr.statistics().locked_connections == 0
        conn.release()


async def test_a_lock_budget_of_zero_denies_every_lock() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), lock_budget=0) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        assert mgr.statistics().lock_budget == 0
        with pytest.raises(cm.LockDenied, match="budget"):
            async with p.lock(p.track_stream(conn), ttl=5):
                pytest.fail("locked beyond a budget of 0")  # pragma: no cover
        assert mgr.statistics().protocols["p"].locks_denied == {"budget": 1}
        conn.release()


async def test_a_lock_not_entered_yet_protects_nothing() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        lock = p.lock(p.track_stream(conn), ttl=5)
        assert (lock.status, lock.held, lock.revoked) == ("new", False, False)
        assert not conn.locked
        with pytest.raises(cm.ResourceClosed, match=r"is not held \(new\)"):
            lock.extend(10)
        assert lock.status == "new"
        async with lock:
            assert lock.held
        conn.release()


async def test_lock_arguments_are_checked() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        stream = p.track_stream(conn)
        with pytest.raises(cm.ConfigError, match="lock stream must be a Stream, got <Connection"):
            p.lock(conn, ttl=5)  # type: ignore[arg-type]
        with pytest.raises(cm.ConfigError, match="lock on_revoke must be callable, got 'log'"):
            p.lock(stream, ttl=5, on_revoke="log")  # type: ignore[arg-type]
        conn.release()


async def test_extend_records_the_new_ttl(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        async with p.lock(p.track_stream(conn), ttl=100) as lock:
            await trio.sleep(1)
            assert lock.extend(7) == 8.0
            assert lock.ttl == 7
        conn.release()


# ------------------------------------------------------------------ bursts


async def test_a_closed_connection_leaves_its_bursts_open_streams() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 4)) as dht,
        dht.burst("lookup") as burst,
    ):
        gone, kept = track(mgr, "a"), track(mgr, "b")
        closing = dht.track_stream(gone, burst=burst)
        staying = dht.track_stream(kept, burst=burst)
        assert burst.streams == {closing, staying}
        gone.release()
        assert closing.closed
        assert burst.streams == {staying}
        kept.release()
        assert burst.streams == set()


async def test_a_stream_enlisted_again_counts_once() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("dht", quota=cm.Quota(0, 4)) as dht,
    ):
        conn = track(mgr, "a")
        async with dht.burst("lookup") as burst:
            opened_in_it = dht.track_stream(conn, burst=burst)
            burst.enlist(opened_in_it)
            enlisted = dht.track_stream(conn)
            burst.enlist(enlisted)
            burst.enlist(enlisted)
            assert burst.streams == {opened_in_it, enlisted}
            assert (burst.streams_enlisted, burst.connections_touched) == (2, 1)
        closed = [e for e in drain(events) if isinstance(e, cm.BurstClosed)]
        assert [(e.connections, e.streams) for e in closed] == [(1, 2)]
        conn.release()


async def test_only_open_streams_of_this_manager_can_be_enlisted() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 4)) as dht,
        dht.burst("lookup") as burst,
    ):
        conn = track(mgr, "a")
        stream = dht.track_stream(conn)
        stream.close()
        with pytest.raises(cm.ResourceClosed, match=f"stream #{stream.id} is closed"):
            burst.enlist(stream)
        assert stream.burst is None
        assert (burst.streams, burst.streams_enlisted, burst.connections_touched) == (set(), 0, 0)
        with pytest.raises(cm.ConfigError, match="expected a Stream of this manager, got 'x'"):
            burst.enlist("x")  # type: ignore[arg-type]
        conn.release()


async def test_a_burst_name_must_be_a_string() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 4)) as dht,
    ):
        with pytest.raises(cm.ConfigError, match="burst name must be a string or None, got 5"):
            dht.burst(5)  # type: ignore[arg-type]
        assert dht.burst(None).name is None


# ---------------------------------------------------------------- waiters


async def test_every_task_waiting_for_a_lock_to_end_is_woken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    woke: list[tuple[int, str]] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = track(mgr, "a")
        async with p.lock(p.track_stream(conn), ttl=5) as lock, trio.open_nursery() as nursery:

            async def waiter(n: int) -> None:
                await lock.wait_revoked()
                woke.append((n, lock.status))

            for n in range(3):
                nursery.start_soon(waiter, n)
                await trio.testing.wait_all_tasks_blocked()
        assert sorted(woke) == [(0, "expired"), (1, "expired"), (2, "expired")]
        conn.release()


async def test_every_task_waiting_for_a_grant_change_is_woken() -> None:
    got: list[tuple[int, cm.Grant]] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("a", quota=cm.Quota(8, 10)) as a,
    ):

        async def waiter(n: int) -> None:
            got.append((n, await a.wait_grant_changed()))

        for n in range(3):
            a.start_soon(waiter, n)
            await trio.testing.wait_all_tasks_blocked()
        async with mgr.enroll("b", quota=cm.Quota(4, 4)):
            await trio.testing.wait_all_tasks_blocked()
            # 8 and 4 into 10: 6.67 and 3.33 -> 7 and 3.
            assert sorted(got) == [(n, cm.Grant(7, 10)) for n in range(3)]


# --------------------------------------------------------------- lifetimes


async def test_bursts_past_their_linger_are_let_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refs: list[weakref.ref[cm.Burst]] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), burst_linger=1) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 10)) as dht,
    ):
        conn = track(mgr, "long-lived")  # used by every burst, open throughout
        for _ in range(100):
            async with dht.burst() as burst:
                dht.track_stream(conn, burst=burst).close()
            refs.append(weakref.ref(burst))
            del burst
            await trio.sleep(2)
        gc.collect()
        # Nothing runs a round here: closing a burst lets go of those done lingering.
        alive = sum(ref() is not None for ref in refs)
        assert alive <= 2, alive
        conn.release()


async def test_a_burst_kept_by_its_protocol_does_not_keep_closed_connections_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(10, 20), burst_linger=1) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 10)) as dht,
    ):
        conn = track(mgr, "a")
        async with dht.burst("kept") as kept:
            dht.track_stream(conn, burst=kept).close()
        await trio.sleep(2)
        async with dht.burst("next"):
            pass  # the first burst's linger is over: it is forgotten now
        conn.release()
        ref = weakref.ref(conn)
        del conn
        gc.collect()
        assert ref() is None
        assert kept.connections_touched == 1
