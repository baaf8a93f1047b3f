"""Faults: misbehaving scorers, callbacks, closers, tasks and rounds."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import trio_connmgr as cm
import trio_connmgr._regulator as regulator_module

from .conftest import Figures, live_tasks


async def hold(
    mgr: cm.ConnectionManager,
    enrollment: cm.Enrollment | None,
    peer: object,
    *,
    task_status: trio.TaskStatus[cm.Connection] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with mgr.connection(peer, direction="inbound") as conn:
        if enrollment is None:
            task_status.started(conn)
            await trio.sleep_forever()
        async with enrollment.stream(conn):
            task_status.started(conn)
            await trio.sleep_forever()


def check_consistent(mgr: cm.ConnectionManager) -> None:
    """No half-closed state: every count agrees with the objects."""
    state = mgr._state
    assert state.count == state.inbound + state.outbound
    for conn in state.connections.values():
        assert not conn.closed
        for stream in conn.streams:
            assert not stream.closed
            assert stream.protocol in state.members
    for member in state.members.values():
        distinct = {s.connection for s in member.streams}
        assert member.usage == len(distinct)
        assert all(not s.connection.closed for s in member.streams)
    assert sum(m.grant.min for m in state.members.values()) <= state.share


@pytest.mark.parametrize(
    "bad",
    [
        lambda s: 1 / 0,
        lambda s: math.nan,
        lambda s: "high",
        lambda s: -7.0,
        lambda s: 1e9,
        lambda s: None,
    ],
    ids=["raises", "nan", "string", "negative", "huge", "none"],
)
async def test_bad_scorer_never_stops_regulation(
    bad: cm.Scorer, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    limits = cm.Limits(low=5, high=8)
    async with (
        cm.open_connection_manager(limits=limits, grace_period=1.0, silence_period=0) as mgr,
        mgr.enroll("/bad", quota=cm.Quota(0, 20), scorer=bad) as protocol,
        trio.open_nursery() as nursery,
    ):
        for i in range(12):
            await nursery.start(hold, mgr, protocol, i)
        await trio.sleep(2)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == limits.low
        stats = mgr.statistics().protocols["/bad"]
        assert stats.scorer_errors + stats.scorer_clamped > 0
        check_consistent(mgr)
        nursery.cancel_scope.cancel()


async def test_raising_callbacks_are_contained(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def on_grant(grant: cm.Grant) -> None:
        raise RuntimeError("on_grant bug")

    def on_revoke(lock: cm.Lock) -> None:
        raise RuntimeError("on_revoke bug")

    limits = cm.Limits(low=1, high=6)
    async with (
        cm.open_connection_manager(
            limits=limits, grace_period=0, silence_period=0, lock_budget=1
        ) as mgr,
        mgr.enroll("/a", quota=cm.Quota.share(0.5, 1.0), on_grant=on_grant) as a,
        trio.open_nursery() as nursery,
    ):
        # A second enrollment regrants the first: its on_grant raises, harmlessly.
        async with mgr.enroll("/b", quota=cm.Quota.share(0.5, 1.0), on_grant=on_grant):
            pass
        mgr.protect("safe", "test")
        await nursery.start(hold, mgr, None, "safe")
        conn = await nursery.start(hold, mgr, None, "locked")
        stream = a.track_stream(conn)
        async with a.lock(stream, ttl=60, on_revoke=on_revoke) as lock:
            pruned = await mgr.trim(force=True)
            assert lock.revoked
            assert conn in pruned
        check_consistent(mgr)
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any("on_grant callback" in m for m in messages)
    assert any("on_revoke callback" in m for m in messages)


async def test_hanging_and_raising_close(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    calls = {"hang": 0, "raise": 0}

    async def hang() -> None:
        calls["hang"] += 1
        await trio.sleep_forever()

    async def explode() -> None:
        calls["raise"] += 1
        raise OSError("close failed")

    limits = cm.Limits(low=1, high=2)
    async with cm.open_connection_manager(
        limits=limits, grace_period=0, silence_period=0, close_timeout=5.0
    ) as mgr:
        tasks = live_tasks()
        mgr.track("hangs", direction="outbound", close=hang)
        mgr.track("raises", direction="outbound", close=explode)
        mgr.track("third", direction="outbound", close=explode)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.statistics().connections == 1  # pruned to low despite the closers
        await trio.sleep(6)
        assert live_tasks() == tasks  # the hanging close was cut off
        stats = mgr.statistics()
        assert stats.close_timeouts == 1
        assert stats.close_errors == 1
        check_consistent(mgr)
    # Leaving closes the last one (which raises), bounded.
    assert calls == {"hang": 1, "raise": 2}
    figures["close() cut off at close_timeout; raising close() counted"] = "yes"


async def test_crashing_protocol_task_propagates_and_leaves_no_state() -> None:
    limits = cm.Limits(low=4, high=8)
    async with cm.open_connection_manager(limits=limits) as mgr:

        async def crash() -> None:
            await trio.lowlevel.checkpoint()
            raise KeyError("protocol bug")

        with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="protocol bug")):
            async with (
                mgr.enroll("/crashy", quota=cm.Quota(1, 4)) as crashy,
                mgr.connection("p", direction="outbound") as conn,
            ):
                crashy.track_stream(conn)
                crashy.start_soon(crash)
                await trio.sleep_forever()
        assert "/crashy" not in mgr.statistics().protocols
        assert mgr.statistics().streams == 0
        check_consistent(mgr)
        # The manager still works.
        async with mgr.enroll("/crashy", quota=cm.Quota(1, 4)) as again:
            assert again.grant == cm.Grant(1, 4)


async def test_regulator_failing_repeatedly_stops_the_manager(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    figures: Figures,
) -> None:
    failures = 0

    def broken(*args: object, **kwargs: object) -> object:
        nonlocal failures
        failures += 1
        raise RuntimeError("planner bug")

    monkeypatch.setattr(regulator_module, "plan_round", broken)
    limits = cm.Limits(low=1, high=2)
    with pytest.raises(cm.ConnMgrError, match="regulator failed") as info:
        async with cm.open_connection_manager(
            limits=limits, grace_period=0, silence_period=0, max_round_failures=3
        ) as mgr:
            for i in range(3):
                mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
            await trio.sleep_forever()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert failures == 4
    assert mgr._state.closed
    assert mgr.statistics().connections == 0
    figures["regulator failures before stopping"] = failures
    assert sum("regulation round failed" in r.getMessage() for r in caplog.records) == 4
