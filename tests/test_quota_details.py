"""Enrollments in detail: grants, task names, and the stream, lock and burst entry points."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._core._state import EnrollmentState, State


class CallbackBug(Exception):
    """An error of the user's own (not a RuntimeError) raised from a callback."""


def track(mgr: cm.ConnectionManager, peer: object) -> cm.Connection:
    return mgr.track(peer, direction="outbound", close=trio.lowlevel.checkpoint)


# ------------------------------------------------------------------ grants


async def test_wait_grant_changed_on_a_left_enrollment_checkpoints() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr:
        async with mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad:
            pass
        with (
            trio.testing.assert_checkpoints(),
            pytest.raises(cm.ResourceClosed, match="'kad' has left"),
        ):
            await kad.wait_grant_changed()


async def test_any_exception_from_on_grant_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(grant: cm.Grant) -> None:
        raise CallbackBug("grant handler bug")

    with caplog.at_level(logging.ERROR, logger="trio_connmgr"):
        async with (
            cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
            mgr.enroll("a", quota=cm.Quota(6, 10), on_grant=broken) as a,
        ):
            # Told on admission and again when b's arrival cuts its grant.
            async with mgr.enroll("b", quota=cm.Quota(6, 10)):
                assert a.grant == cm.Grant(5, 10)
            assert a.grant == cm.Grant(6, 10)
    logged = [r for r in caplog.records if "on_grant" in r.getMessage()]
    assert len(logged) == 3
    assert all(r.exc_info is not None and r.exc_info[0] is CallbackBug for r in logged)


# ------------------------------------------------------------------- tasks


async def test_start_soon_and_start_name_their_tasks() -> None:
    names: list[str] = []

    async def record() -> None:
        names.append(trio.lowlevel.current_task().name)

    async def record_started(*, task_status: trio.TaskStatus[None]) -> None:
        names.append(trio.lowlevel.current_task().name)
        task_status.started()

    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
    ):
        kad.start_soon(record, name="refresh")
        await trio.testing.wait_all_tasks_blocked()
        await kad.start(record_started, name="bootstrap")
    assert names == ["refresh", "bootstrap"]


# ----------------------------------------------------------------- streams


async def test_a_tracked_stream_is_outbound_unless_told_otherwise() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 2)) as kad,
    ):
        conn = mgr.track("p", direction="inbound", close=trio.lowlevel.checkpoint)
        assert kad.track_stream(conn).direction is cm.Direction.OUTBOUND
        assert kad.track_stream(conn, direction="inbound").direction is cm.Direction.INBOUND


async def test_stream_opened_with_a_burst_is_enlisted_in_it() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 1)) as dht,
        mgr.connection("p", direction="outbound") as conn,
        dht.burst("lookup") as burst,
    ):
        async with dht.stream(conn, burst=burst) as stream:
            assert burst.streams == {stream}
            assert (burst.streams_enlisted, burst.connections_touched) == (1, 1)
        assert burst.streams == set()


async def test_entering_a_stream_checkpoints() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
        mgr.connection("p", direction="outbound") as conn,
    ):
        with trio.testing.assert_checkpoints():
            async with kad.stream(conn):
                pass


async def test_stream_block_ends_quietly_when_its_tracked_connection_is_released() -> None:
    # The connection's own scope is not around the block (a transport owns the
    # connection): only the stream's scope is cancelled, and it ends there.
    after: list[bool] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
    ):
        conn = track(mgr, "p")

        async def serve() -> None:
            async with kad.stream(conn) as stream:
                await trio.sleep_forever()
            after.append(stream.closed)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await trio.testing.wait_all_tasks_blocked()
            conn.release()
    assert after == [True]


# ------------------------------------------------------------------- locks


async def test_entering_a_lock_checkpoints() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
    ):
        stream = kad.track_stream(track(mgr, "p"))
        with trio.testing.assert_checkpoints():
            async with kad.lock(stream, ttl=5):
                pass


async def test_a_released_lock_stops_waiting_for_revocation_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
    ):
        stream = kad.track_stream(track(mgr, "p"))
        async with kad.lock(stream, ttl=60) as lock:
            pass
        assert lock.status == "released"
        with trio.move_on_after(1) as waited:
            await lock.wait_revoked()
        assert not waited.cancelled_caught


async def test_a_ttl_above_max_lock_ttl_is_capped_not_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4), max_lock_ttl=30) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
    ):
        stream = kad.track_stream(track(mgr, "p"))
        async with kad.lock(stream, ttl=10_000) as lock:
            assert lock.held
            assert lock.expires_at == trio.current_time() + 30
            await trio.sleep(31)
            assert lock.status == "expired"


async def test_a_denied_lock_does_not_call_on_revoke() -> None:
    revoked: list[cm.Lock] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad,
    ):
        stream = kad.track_stream(track(mgr, "p"))
        stream.close()
        lock = kad.lock(stream, ttl=5, on_revoke=revoked.append)
        with pytest.raises(cm.LockDenied):
            async with lock:
                pytest.fail("a lock on a closed stream was granted")  # pragma: no cover
        assert lock.status == "denied"
    assert revoked == []


# ------------------------------------------------------------------ bursts


async def test_entering_a_burst_checkpoints() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 1)) as dht,
    ):
        with trio.testing.assert_checkpoints():
            async with dht.burst():
                pass


async def test_a_closed_burst_cannot_be_entered_again() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 1)) as dht,
    ):
        burst = dht.burst("lookup")
        async with burst:
            pass
        closed_at = burst.closed_at
        assert closed_at is not None
        with pytest.raises(cm.ConfigError, match="already used"):
            async with burst:
                pytest.fail("a closed burst was opened again")  # pragma: no cover
        assert burst.closed_at == closed_at
        assert mgr.statistics().protocols["dht"].bursts_open == 0


def test_a_strict_zero_min_is_admitted_after_the_share_shrank_below_the_strict_mins() -> None:
    state = State(cm.Limits(5, 10), clock=lambda: 0.0)

    def member(name: str, quota: cm.Quota) -> EnrollmentState:
        return EnrollmentState(name, quota, lambda s: 0.5, 1.0, True, state)

    a = member("a", cm.Quota(8, 10))
    b = member("b", cm.Quota(2, 2))
    state.enrol(a)
    state.enrol(b)
    state.set_share(5, "test")
    assert (a.grant, b.grant) == (cm.Grant(4, 5), cm.Grant(1, 2))
    # A min of 0 is granted in full whatever the others hold.
    c = member("c", cm.Quota(0, 3))
    state.enrol(c)
    assert c.grant == cm.Grant(0, 3)
    assert (a.grant, b.grant) == (cm.Grant(4, 5), cm.Grant(1, 2))
