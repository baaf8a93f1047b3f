"""mgr.subscribe(): every event type, emitted by the action that causes it, with its fields."""

from __future__ import annotations

import json

import attrs
import pytest
import trio
import trio.testing
from helpers import drain

import trio_connmgr as cm
from trio_connmgr._core._events import EVENT_TYPES, EVENTS_BY_KIND


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def of_type(events: list[cm.Event], kind: type[cm.Event]) -> list[cm.Event]:
    return [e for e in events if isinstance(e, kind)]


def open_manager(**kwargs: object) -> object:
    kwargs.setdefault("limits", cm.Limits(low=2, high=10))
    kwargs.setdefault("grace_period", 0)
    return cm.open_connection_manager(**kwargs)  # type: ignore[arg-type]


async def test_connection_opened_and_closed_carry_their_fields(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_manager() as mgr, mgr.subscribe() as events:
        now = trio.current_time()
        conn = mgr.track("peer-a", direction="inbound", address="10.1.2.3", close=noop_close)
        async with mgr.connection("peer-b", direction="outbound") as other:
            pass
        conn.release()
        got = drain(events)
    assert got == [
        cm.ConnectionOpened(now, conn.id, "peer-a", "inbound", "10.1.2.3", 1),
        cm.ConnectionOpened(now, other.id, "peer-b", "outbound", None, 2),
        cm.ConnectionClosed(now, other.id, "peer-b", "closed", 1, "outbound"),
        cm.ConnectionClosed(now, conn.id, "peer-a", "released", 0, "inbound"),
    ]


async def record(
    mgr: cm.ConnectionManager,
    out: list[cm.Event],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe and record every event until the manager closes the channel."""
    async with mgr.subscribe() as events:
        task_status.started()
        async for event in events:
            out.append(event)


async def test_manager_exit_closes_connections_with_events_then_ends_the_channel() -> None:
    got: list[cm.Event] = []
    async with trio.open_nursery() as nursery, open_manager() as mgr:
        await nursery.start(record, mgr, got)
        conn = mgr.track("p", direction="outbound", close=noop_close)
    # Leaving the nursery waited for the recorder: its `async for` ended by itself
    # once the manager had closed.
    assert [type(e) for e in got] == [cm.ConnectionOpened, cm.ConnectionClosed]
    assert got[1].reason == "manager closed"  # type: ignore[attr-defined]
    assert got[1].connection_id == conn.id  # type: ignore[attr-defined]


async def test_a_round_emits_pruned_closed_and_round_completed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager(limits=cm.Limits(low=1, high=10)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
        mgr.subscribe() as events,
    ):
        busy = mgr.track("busy", direction="outbound", close=noop_close)
        used = mgr.track("used", direction="inbound", close=noop_close)
        idle = mgr.track("idle", direction="inbound", close=noop_close)
        kad.track_stream(busy).touch()
        await trio.sleep(100)  # `used`'s stream goes stale
        kad.track_stream(used).last_active -= 100
        kad.track_stream(busy).touch()
        drain(events)
        pruned = await mgr.trim()
        got = drain(events)
    assert pruned == [idle, used]
    kinds = [type(e) for e in got]
    assert kinds == [
        cm.ConnectionPruned,
        cm.ConnectionClosed,
        cm.ConnectionPruned,
        cm.ConnectionClosed,
        cm.RoundCompleted,
    ]
    first, _, second, closed, done = got
    assert isinstance(first, cm.ConnectionPruned)
    assert first.connection_id == idle.id
    assert first.peer == "idle"
    assert first.protocols == ()
    assert first.reason == idle.prune_reason
    assert first.reason.phase is cm.Phase.IDLE
    assert first.reason.rank == 1
    assert first.reason.trigger == "trim"
    assert isinstance(second, cm.ConnectionPruned)
    assert second.protocols == ("kad",)
    assert second.reason.phase is cm.Phase.TALLY
    assert second.reason.rank == 2
    assert isinstance(closed, cm.ConnectionClosed)
    assert (closed.reason, closed.count, closed.direction) == ("pruned", 1, "inbound")
    assert isinstance(done, cm.RoundCompleted)
    assert done.number == 1
    assert done.trigger == "trim"
    assert not done.forced
    assert (done.count_before, done.count_after, done.victims) == (3, 1, 2)
    assert done.by_phase == (("idle", 1), ("tally", 1))
    assert done.revoked_locks == 0
    assert done.duration >= 0


async def test_automatic_rounds_are_reported_with_their_trigger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_manager(limits=cm.Limits(low=1, high=2)) as mgr, mgr.subscribe() as events:
        for i in range(3):
            mgr.track(f"p{i}", direction="inbound", close=noop_close)
        with trio.fail_after(5):
            while True:
                event = await events.receive()
                if isinstance(event, cm.RoundCompleted):
                    break
    assert event.trigger == "high-water"
    assert (event.count_before, event.count_after, event.victims) == (3, 1, 2)


async def test_grants_are_announced_when_enrollments_come_and_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_manager() as mgr, mgr.subscribe() as events:
        now = trio.current_time()
        async with mgr.enroll("kad", quota=cm.Quota.share(0.5, 1.0)):
            assert drain(events) == [cm.GrantChanged(now, "kad", 5, 10, 10)]
            async with mgr.enroll("big", quota=cm.Quota(10, 10)):
                got = drain(events)
                # Mins 5 + 10 exceed G=10: both are scaled down and both are told.
                assert {(e.protocol, e.share) for e in got} == {("kad", 10), ("big", 10)}  # type: ignore[attr-defined]
                mins = {e.protocol: e.min for e in got}  # type: ignore[attr-defined]
                assert sum(mins.values()) <= 10
            assert drain(events) == [cm.GrantChanged(now, "kad", 5, 10, 10)]


async def test_limits_changed_is_emitted_by_set_share_with_the_grants_that_moved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager(limits=cm.Limits(low=4, high=10, hard=20)) as mgr,
        mgr.enroll("kad", quota=cm.Quota.share(0.2, 0.6)),
        mgr.subscribe() as events,
    ):
        now = trio.current_time()
        mgr._state.set_share(5, "fds low")
        got = drain(events)
        assert got == [
            cm.LimitsChanged(now, 2, 5, 20, "fds low"),
            cm.GrantChanged(now, "kad", 1, 3, 5),
        ]
        mgr._state.set_share(5, "again")  # no change, no event
        assert drain(events) == []


async def test_lock_granted_released_and_dropped(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager(lock_budget=4) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
        mgr.subscribe() as events,
    ):
        conn = mgr.track("p", direction="outbound", close=noop_close)
        stream = kad.track_stream(conn)
        drain(events)
        now = trio.current_time()
        async with kad.lock(stream, ttl=5) as lock:
            assert drain(events) == [cm.LockGranted(now, "kad", lock.id, conn.id, now + 5)]
            await trio.sleep(2)
            assert lock.extend(10) == now + 12
            assert drain(events) == [cm.LockExtended(now + 2, "kad", lock.id, conn.id, now + 12)]
        assert drain(events) == [cm.LockReleased(now + 2, "kad", lock.id, conn.id, "released")]
        now = trio.current_time()
        stream = kad.track_stream(conn)
        async with kad.lock(stream, ttl=5) as lock:
            drain(events)
            conn.release()
            got = drain(events)
        assert got[0] == cm.LockReleased(now, "kad", lock.id, conn.id, "dropped")
        assert isinstance(got[1], cm.ConnectionClosed)


async def test_lock_denied_for_each_reason() -> None:
    async with (
        open_manager(lock_budget=1) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
        mgr.enroll("sub", quota=cm.Quota(0, 5)) as sub,
        mgr.subscribe() as events,
    ):
        a = mgr.track("a", direction="outbound", close=noop_close)
        b = mgr.track("b", direction="outbound", close=noop_close)
        drain(events)
        async with kad.lock(kad.track_stream(a), ttl=5):
            with pytest.raises(cm.LockDenied):
                async with kad.lock(kad.track_stream(b), ttl=5):
                    pass  # pragma: no cover
            with pytest.raises(cm.LockDenied):
                async with sub.lock(sub.track_stream(b), ttl=5):
                    pass  # pragma: no cover
        closed = sub.track_stream(b)
        closed.close()
        with pytest.raises(cm.LockDenied):
            async with sub.lock(closed, ttl=5):
                pass  # pragma: no cover
        denied = of_type(drain(events), cm.LockDeniedEvent)
    assert [(e.protocol, e.connection_id, e.reason) for e in denied] == [  # type: ignore[attr-defined]
        ("kad", b.id, "grant"),
        ("sub", b.id, "budget"),
        ("sub", b.id, "closed"),
    ]


async def test_lock_expired_when_its_ttl_runs_out(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager(lock_budget=4) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
        mgr.subscribe() as events,
    ):
        conn = mgr.track("p", direction="outbound", close=noop_close)
        start = trio.current_time()
        async with kad.lock(kad.track_stream(conn), ttl=5) as lock:
            await lock.wait_revoked()
            assert trio.current_time() == start + 5
            expired = of_type(drain(events), cm.LockExpired)
        assert expired == [cm.LockExpired(start + 5, "kad", lock.id, conn.id)]
        assert of_type(drain(events), cm.LockReleased) == []  # an expired lock is not released


async def test_lock_revoked_by_a_forced_round(autojump_clock: trio.testing.MockClock) -> None:
    revoked: list[cm.Lock] = []
    async with (
        open_manager(limits=cm.Limits(low=1, high=10), lock_budget=4) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
        mgr.subscribe() as events,
    ):
        conns = [mgr.track(f"p{i}", direction="outbound", close=noop_close) for i in range(3)]
        async with (
            kad.lock(kad.track_stream(conns[0]), ttl=50, on_revoke=revoked.append) as l0,
            kad.lock(kad.track_stream(conns[1]), ttl=50, on_revoke=revoked.append) as l1,
            kad.lock(kad.track_stream(conns[2]), ttl=50, on_revoke=revoked.append) as l2,
        ):
            drain(events)
            pruned = await mgr.trim(force=True)
            got = drain(events)
    assert len(pruned) == 2
    events_revoked = of_type(got, cm.LockRevoked)
    assert len(events_revoked) == 2
    by_id = {lock.id: lock for lock in (l0, l1, l2)}
    for event in events_revoked:
        assert isinstance(event, cm.LockRevoked)
        lock = by_id[event.lock_id]
        assert (event.protocol, event.connection_id) == ("kad", lock.stream.connection.id)
        assert lock.status == "revoked"
    assert {lock.id for lock in revoked} == {e.lock_id for e in events_revoked}  # type: ignore[attr-defined]
    done = of_type(got, cm.RoundCompleted)
    assert [e.revoked_locks for e in done] == [2]  # type: ignore[attr-defined]
    # Revocation comes first, then the prunes it made possible.
    assert got.index(events_revoked[-1]) < got.index(of_type(got, cm.ConnectionPruned)[0])


async def test_burst_opened_and_closed(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager() as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
        mgr.subscribe() as events,
    ):
        a = mgr.track("a", direction="outbound", close=noop_close)
        b = mgr.track("b", direction="outbound", close=noop_close)
        drain(events)
        opened_at = trio.current_time()
        async with kad.burst("lookup") as burst:
            kad.track_stream(a, burst=burst)
            burst.enlist(kad.track_stream(b))
            kad.track_stream(b, burst=burst)
            await trio.sleep(3)
        got = drain(events)
    assert got == [
        cm.BurstOpened(opened_at, "kad", burst.id, "lookup"),
        cm.BurstClosed(opened_at + 3, "kad", burst.id, "lookup", 2, 3),
    ]


async def test_admission_refused_at_hard() -> None:
    async with (
        open_manager(limits=cm.Limits(low=1, high=2, hard=2)) as mgr,
        mgr.subscribe() as events,
    ):
        mgr.track("a", direction="inbound", close=noop_close)
        mgr.track("b", direction="inbound", close=noop_close)
        drain(events)
        with pytest.raises(cm.ConnectionRefused) as refused:
            mgr.track("c", direction="inbound", address="10.9.9.9", close=noop_close)
        mgr.track("d", direction="outbound", close=noop_close)  # outbound: never refused by count
        got = drain(events)
        assert mgr.statistics().refusals == {"hard": 1}
    assert isinstance(got[0], cm.AdmissionRefused)
    assert (got[0].peer, got[0].direction, got[0].address, got[0].reason) == (
        "c",
        "inbound",
        "10.9.9.9",
        "hard",
    )
    assert "hard=2" in got[0].detail
    assert refused.value.reason == "hard"
    assert isinstance(got[1], cm.ConnectionOpened)


async def test_every_event_type_is_produced_by_its_action(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: set[type[cm.Event]] = set()
    async with (
        open_manager(limits=cm.Limits(low=1, high=10, hard=10), lock_budget=1) as mgr,
        mgr.subscribe(buffer=10_000) as events,
    ):
        async with mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad:
            conns = [mgr.track(f"p{i}", direction="inbound", close=noop_close) for i in range(10)]
            with pytest.raises(cm.ConnectionRefused):
                mgr.track("late", direction="inbound", close=noop_close)
            async with kad.lock(kad.track_stream(conns[0]), ttl=1) as expiring:
                await expiring.wait_revoked()
            async with kad.lock(kad.track_stream(conns[1]), ttl=9) as extended:
                extended.extend(5)
            for i, conn in enumerate(conns):
                if i != 2:
                    mgr.protect(conn.peer, "keep")
            async with kad.lock(kad.track_stream(conns[2]), ttl=9) as held:
                with pytest.raises(cm.LockDenied):  # lock budget of 1 spent
                    async with kad.lock(kad.track_stream(conns[3]), ttl=9):
                        pass  # pragma: no cover
                async with kad.burst() as burst:
                    kad.track_stream(conns[6], burst=burst)
                mgr._state.set_share(8, "test")
                # Everything else is protected: the forced round revokes the lock.
                assert await mgr.trim(force=True) == [conns[2]]
                assert held.status == "revoked"
        for event in drain(events):
            seen.add(type(event))
            json.dumps(event.to_json())
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                event.time = 0  # type: ignore[misc]
    assert seen == set(EVENT_TYPES)
    assert set(EVENTS_BY_KIND) == {t.kind for t in EVENT_TYPES}


async def test_several_subscribers_each_get_every_event() -> None:
    async with open_manager() as mgr:
        async with mgr.subscribe() as first, mgr.subscribe() as second:
            conn = mgr.track("p", direction="outbound", close=noop_close)
            async with mgr.subscribe() as late:
                conn.release()
                assert [type(e) for e in drain(late)] == [cm.ConnectionClosed]
            a, b = drain(first), drain(second)
            assert a == b
            assert [type(e) for e in a] == [cm.ConnectionOpened, cm.ConnectionClosed]
            assert mgr.statistics().subscribers == 2
        assert mgr.statistics().subscribers == 0


async def test_receive_waits_for_the_next_event() -> None:
    async with open_manager() as mgr, mgr.subscribe() as events:
        received: list[cm.Event] = []

        async def consume() -> None:
            received.append(await events.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            assert received == []
            conn = mgr.track("p", direction="outbound", close=noop_close)
        assert [e.connection_id for e in received] == [conn.id]  # type: ignore[attr-defined]


async def test_a_stuck_subscriber_never_blocks_the_manager_and_its_drops_are_counted() -> None:
    async with (
        open_manager(limits=cm.Limits(low=1, high=6000)) as mgr,
        mgr.subscribe(buffer=4) as stuck,
        mgr.subscribe(buffer=20_000) as reader,
        trio.open_nursery() as nursery,
    ):

        async def stuck_consumer() -> None:
            await stuck.receive()
            await trio.sleep_forever()  # never receives again

        nursery.start_soon(stuck_consumer)
        conns = [mgr.track(i, direction="inbound", close=noop_close) for i in range(5000)]
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(30):
            pruned = await mgr.trim()  # 4,999 pruned + 4,999 closed + 1 round
        # The manager's work is done although `stuck` took one event and stopped.
        assert len(pruned) == 4999
        assert [conn for conn in conns if not conn.closed] == [conns[-1]]
        produced = 5000 + 2 * 4999 + 1
        stats = mgr.statistics()
        assert stats.events_emitted == produced
        assert stuck.dropped == produced - 1 - 4
        assert stuck.pending == 4
        assert reader.dropped == 0
        assert stats.events_dropped == stuck.dropped
        # The stuck one kept the newest events; the reader got them all.
        assert [type(e) for e in drain(stuck)] == [
            cm.ConnectionClosed,
            cm.ConnectionPruned,
            cm.ConnectionClosed,
            cm.RoundCompleted,
        ]
        assert len(drain(reader)) == produced
        nursery.cancel_scope.cancel()


async def test_nobody_listening_means_no_sink() -> None:
    async with open_manager() as mgr:
        assert mgr._state.sink is None
        mgr.track("a", direction="outbound", close=noop_close)
        async with mgr.subscribe():
            assert mgr._state.sink is not None
            mgr.track("b", direction="outbound", close=noop_close)
        assert mgr._state.sink is None
        mgr.track("c", direction="outbound", close=noop_close)
        assert mgr.statistics().events_emitted == 1


async def test_subscribing_after_close_yields_an_ended_channel() -> None:
    async with open_manager() as mgr:
        pass
    receiver = mgr._hub.subscribe(8)
    with pytest.raises(trio.EndOfChannel):
        await receiver.receive()


async def test_closing_a_subscription_stops_receiving() -> None:
    async with open_manager() as mgr:
        async with mgr.subscribe() as events:
            mgr.track("a", direction="outbound", close=noop_close)
        with pytest.raises(trio.ClosedResourceError):
            events.receive_nowait()
        with pytest.raises(trio.ClosedResourceError):
            await events.receive()


@pytest.mark.parametrize("buffer", [0, -1, True, 1.5, "8"])
async def test_bad_buffer_is_a_config_error(buffer: object) -> None:
    async with open_manager() as mgr:
        with pytest.raises(cm.ConfigError, match=f"subscribe buffer must be .*, got {buffer!r}"):
            async with mgr.subscribe(buffer=buffer):  # type: ignore[arg-type]
                pass  # pragma: no cover
        assert mgr.statistics().subscribers == 0


async def test_a_receivers_buffer_is_read_only() -> None:
    # Its capacity is fixed when subscribing: the manager relies on it to be a
    # positive integer every time it delivers an event.
    async with open_manager() as mgr, mgr.subscribe(buffer=2) as events:
        assert events.buffer == 2
        with pytest.raises(AttributeError):
            events.buffer = 0  # type: ignore[misc]
        mgr.track("a", direction="inbound", close=noop_close).release()
        assert events.pending == 2


async def test_event_json_is_flat_and_plain() -> None:
    reason = cm.PruneReason(cm.Phase.OFFENDER, "kad", 0.25, 3, "trim")
    event = cm.ConnectionPruned(1.5, 7, "peer", reason, ("kad", "sub"))
    assert event.to_json() == {
        "kind": "connection_pruned",
        "time": 1.5,
        "connection_id": 7,
        "peer": "peer",
        "reason": {
            "phase": "offender",
            "protocol": "kad",
            "tally": 0.25,
            "rank": 3,
            "trigger": "trim",
            "forced": False,
        },
        "protocols": ["kad", "sub"],
    }
    done = cm.RoundCompleted(2.0, 1, "trim", False, 3, 1, 2, (("idle", 2),), 0.001, 0)
    assert done.to_json()["by_phase"] == [["idle", 2]]
