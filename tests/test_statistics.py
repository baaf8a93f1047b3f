"""mgr.statistics(): every field, frozen, and cheap."""

from __future__ import annotations

import io
import json
import math
import types

import attrs
import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.triggers import Trigger, TriggerView


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def open_manager(**kwargs: object) -> object:
    kwargs.setdefault("limits", cm.Limits(low=4, high=10, hard=20))
    kwargs.setdefault("grace_period", 0)
    return cm.open_connection_manager(**kwargs)  # type: ignore[arg-type]


async def test_a_fresh_manager() -> None:
    async with open_manager(lock_budget=3) as mgr:
        stats = mgr.statistics()
    assert (stats.connections, stats.inbound, stats.outbound) == (0, 0, 0)
    assert (stats.low, stats.high, stats.hard) == (4, 10, 20)
    assert (stats.configured_low, stats.configured_high, stats.configured_hard) == (4, 10, 20)
    assert stats.limits_source == "configured"
    assert (stats.streams, stats.streams_opened) == (0, 0)
    assert (stats.locked_connections, stats.lock_budget, stats.protected_peers) == (0, 3, 0)
    assert (stats.connections_opened, stats.connections_closed, stats.connections_pruned) == (
        0,
        0,
        0,
    )
    assert stats.protocols == {}
    assert stats.refusals == {}
    assert stats.refusals_total == 0
    assert stats.sensors == {}
    assert (stats.close_errors, stats.close_timeouts) == (0, 0)
    assert (stats.events_emitted, stats.events_dropped, stats.subscribers) == (0, 0, 0)
    rounds = stats.rounds
    assert rounds.count == 0
    assert rounds.last_trigger is None
    assert rounds.last_at is None
    assert (rounds.last_duration, rounds.total_duration) == (0.0, 0.0)
    assert rounds.last_victims == 0
    assert rounds.victims_by_phase == {}
    assert rounds.victims == 0
    assert (rounds.failures, rounds.locks_revoked) == (0, 0)


async def test_counts_by_direction_and_totals() -> None:
    async with open_manager() as mgr:
        ins = [mgr.track(f"i{n}", direction="inbound", close=noop_close) for n in range(3)]
        mgr.track("o", direction=cm.Direction.OUTBOUND, close=noop_close)
        ins[0].release()
        mgr.protect("i1", "bootstrap")
        mgr.protect("i1", "relay")
        mgr.protect("o", "relay")
        stats = mgr.statistics()
    assert (stats.connections, stats.inbound, stats.outbound) == (3, 2, 1)
    assert (stats.connections_opened, stats.connections_closed) == (4, 1)
    assert stats.protected_peers == 2


async def test_effective_limits_and_their_source_follow_the_share() -> None:
    async with open_manager() as mgr:
        mgr._state.set_share(5, "memory pressure")
        stats = mgr.statistics()
    assert (stats.low, stats.high, stats.hard) == (2, 5, 20)
    assert (stats.configured_low, stats.configured_high) == (4, 10)
    assert stats.limits_source == "memory pressure"


async def test_limits_back_at_the_configured_ones_are_configured_again() -> None:
    buffer = io.StringIO()
    async with open_manager(trace=buffer) as mgr:
        state = mgr._state
        state.set_share(5, "memory pressure")
        state.set_share(8, "sensing recovery")
        assert mgr.statistics().limits_source == "sensing recovery"  # not there yet
        state.set_share(10, "sensing recovery")
        stats = mgr.statistics()
    assert (stats.low, stats.high) == (stats.configured_low, stats.configured_high)
    assert stats.limits_source == "configured"
    # The event says what moved them; the replayed trace agrees with the statistics.
    lines = buffer.getvalue().splitlines()
    assert json.loads(lines[-1])["cause"] == "sensing recovery"
    assert cm.replay_trace(lines)["limits_source"] == "configured"
    assert cm.replay_trace(lines[:-1])["limits_source"] == "sensing recovery"


async def test_per_protocol_figures(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager(lock_budget=2, burst_linger=30) as mgr,
        mgr.enroll("kad", quota=cm.Quota.share(0.2, 0.5), weight=2.0) as kad,
        mgr.enroll("sub", quota=cm.Quota(1, 3)) as sub,
    ):
        a = mgr.track("a", direction="outbound", close=noop_close)
        b = mgr.track("b", direction="outbound", close=noop_close)
        c = mgr.track("c", direction="outbound", close=noop_close)
        s1 = kad.track_stream(a)
        kad.track_stream(a)
        kad.track_stream(b)
        closed = kad.track_stream(c)
        closed.close()
        sub.track_stream(c)
        async with kad.lock(s1, ttl=100):
            async with sub.lock(sub.track_stream(b), ttl=1) as short:
                await short.wait_revoked()  # expires
            async with sub.lock(sub.track_stream(b), ttl=100):
                with pytest.raises(cm.LockDenied):  # budget of 2 spent
                    async with sub.lock(sub.track_stream(c), ttl=100):
                        pass  # pragma: no cover
                with pytest.raises(cm.LockDenied):  # closed stream
                    async with kad.lock(closed, ttl=100):
                        pass  # pragma: no cover
                async with kad.burst("walk") as open_burst:
                    async with kad.burst() as done:
                        kad.track_stream(c, burst=done)
                    stats = mgr.statistics()
                    assert open_burst.closed_at is None
    k = stats.protocols["kad"]
    assert k == cm.ProtocolStatistics(
        name="kad",
        grant_min=2,
        grant_max=5,
        usage=3,  # a, b, c (the burst's stream on c)
        streams=4,
        streams_opened=5,
        weight=2.0,
        locks_held=1,
        locks_granted=1,
        locks_denied={"closed": 1},
        locks_revoked=0,
        locks_expired=0,
        bursts_open=1,
        bursts_lingering=1,
        bursts_opened=2,
        pruned=0,
        scorer_errors=0,
        scorer_clamped=0,
        bursts_closed=1,
    )
    assert k.locks_denied_total == 1
    s = stats.protocols["sub"]
    assert (s.grant_min, s.grant_max, s.weight) == (1, 3, 1.0)
    assert (s.usage, s.streams, s.streams_opened) == (2, 4, 4)  # on b and c
    assert (s.locks_held, s.locks_granted, s.locks_expired) == (1, 2, 1)
    assert s.locks_denied == {"budget": 1}
    assert (s.bursts_open, s.bursts_lingering, s.bursts_opened) == (0, 0, 0)
    assert stats.streams == 8
    assert stats.streams_opened == 9
    assert stats.locked_connections == 2
    assert stats.lock_budget == 2


async def test_lingering_bursts_stop_counting_after_burst_linger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager(burst_linger=30) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
    ):
        async with kad.burst():
            pass
        assert mgr.statistics().protocols["kad"].bursts_lingering == 1
        await trio.sleep(29)
        assert mgr.statistics().protocols["kad"].bursts_lingering == 1
        await trio.sleep(2)
        assert mgr.statistics().protocols["kad"].bursts_lingering == 0


async def test_pruned_and_rounds(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager(limits=cm.Limits(low=1, high=10), lock_budget=5) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
    ):
        idle = mgr.track("idle", direction="inbound", close=noop_close)
        used = mgr.track("used", direction="inbound", close=noop_close)
        kept = mgr.track("kept", direction="inbound", close=noop_close)
        kad.track_stream(used)
        mgr.protect("kept", "mine")
        await trio.sleep(5)
        assert await mgr.trim() == [idle, used]
        after_first = mgr.statistics()
        locked = mgr.track("locked", direction="outbound", close=noop_close)
        async with kad.lock(kad.track_stream(locked), ttl=100):
            await trio.sleep(5)
            assert await mgr.trim(force=True) == [locked]
        assert not kept.closed  # protected, even by a forced round
        stats = mgr.statistics()
    r1 = after_first.rounds
    assert (r1.count, r1.last_trigger, r1.last_victims) == (1, "trim", 2)
    assert r1.last_at == 5.0
    assert r1.victims_by_phase == {"idle": 1, "tally": 1}
    assert after_first.connections_pruned == 2
    assert after_first.protocols["kad"].pruned == 1
    r2 = stats.rounds
    assert (r2.count, r2.last_trigger, r2.last_victims) == (2, "force", 1)
    assert r2.last_at == 10.0
    assert r2.victims_by_phase == {"idle": 1, "tally": 2}
    assert r2.victims == 3
    assert r2.locks_revoked == 1
    assert stats.protocols["kad"].locks_revoked == 1
    assert stats.protocols["kad"].pruned == 2
    assert stats.connections_pruned == 3
    assert 0 <= r2.last_duration <= r2.total_duration
    assert math.isclose(r2.total_duration, r1.total_duration + r2.last_duration)


async def test_round_durations_are_wall_clock_spans_of_each_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The regulator reads the wall clock as a round starts and as it ends; a
    # fake clock advanced by a known amount at each reading gives exact spans.
    from trio_connmgr import _regulator

    readings = iter([100.0, 100.25, 200.0, 200.5])
    monkeypatch.setattr(_regulator, "time", types.SimpleNamespace(perf_counter=readings.__next__))
    async with open_manager() as mgr:
        await mgr.trim()
        first = mgr.statistics().rounds
        await mgr.trim()
        second = mgr.statistics().rounds
    assert (first.last_duration, first.total_duration) == (0.25, 0.25)
    assert (second.last_duration, second.total_duration) == (0.5, 0.75)


class BrokenTrigger(Trigger):
    """Fires once, then its round_completed hook raises: the round fails."""

    name = "broken"

    def __init__(self) -> None:
        self.fired = False

    def check(self, view: TriggerView, now: float) -> bool:
        return not self.fired

    def round_completed(self, now: float) -> None:
        if not self.fired:
            self.fired = True
            raise RuntimeError("trigger bug")


async def test_failed_rounds_are_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_manager(triggers=[BrokenTrigger()]) as mgr:
        await trio.sleep(5)
        stats = mgr.statistics()
    assert stats.rounds.failures == 1
    assert "regulation round failed" in caplog.text


async def test_scorer_errors_and_clamps_are_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    values = iter([2.0, -1.0, "x", float("nan")])

    def garbage(stream: cm.Stream) -> float:
        return next(values)  # type: ignore[return-value]

    def broken(stream: cm.Stream) -> float:
        raise ValueError("bug")

    async with (
        open_manager(limits=cm.Limits(low=1, high=10)) as mgr,
        mgr.enroll("garbage", quota=cm.Quota(0, 5), scorer=garbage) as g,
        mgr.enroll("broken", quota=cm.Quota(0, 5), scorer=broken) as b,
    ):
        for i in range(4):
            g.track_stream(mgr.track(f"g{i}", direction="outbound", close=noop_close))
        b.track_stream(mgr.track("b", direction="outbound", close=noop_close))
        await mgr.trim()
        stats = mgr.statistics()
    g_stats, b_stats = stats.protocols["garbage"], stats.protocols["broken"]
    assert (g_stats.scorer_errors, g_stats.scorer_clamped) == (2, 2)  # "x", NaN; 2.0, -1.0
    assert (b_stats.scorer_errors, b_stats.scorer_clamped) == (1, 0)
    assert stats.rounds.count == 1


async def test_close_errors_and_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    async def failing_close() -> None:
        await trio.lowlevel.checkpoint()
        raise OSError("already gone")

    async def hanging_close() -> None:
        await trio.sleep_forever()

    async with open_manager(limits=cm.Limits(low=1, high=10), close_timeout=2) as mgr:
        mgr.track("a", direction="inbound", close=failing_close)
        mgr.track("b", direction="inbound", close=hanging_close)
        mgr.track("c", direction="inbound", close=noop_close)
        await trio.sleep(1)
        await mgr.trim()  # prunes a and b (idle, oldest first)
        await trio.sleep(3)
        stats = mgr.statistics()
    assert (stats.close_errors, stats.close_timeouts) == (1, 1)


async def test_refusals_by_reason() -> None:
    async with open_manager(limits=cm.Limits(low=1, high=2, hard=2)) as mgr:
        mgr.track("a", direction="inbound", close=noop_close)
        mgr.track("b", direction="inbound", close=noop_close)
        for peer in ("c", "d"):
            with pytest.raises(cm.ConnectionRefused):
                mgr.track(peer, direction="inbound", close=noop_close)
        mgr.track("e", direction="outbound", close=noop_close)
        stats = mgr.statistics()
    assert stats.refusals == {"hard": 2}
    assert stats.refusals_total == 2
    assert stats.connections == 3


async def test_sensor_readings_are_copied() -> None:
    async with open_manager() as mgr:
        mgr._sensor_readings["fds"] = {"open": 10.0, "limit": 1024.0}
        stats = mgr.statistics()
        mgr._sensor_readings["fds"]["open"] = 11.0
        mgr._sensor_readings["memory"] = {"available": 1.0}
    assert stats.sensors == {"fds": {"open": 10.0, "limit": 1024.0}}


async def test_event_figures() -> None:
    async with open_manager() as mgr, mgr.subscribe(buffer=1) as events:
        for peer in ("a", "b", "c"):
            mgr.track(peer, direction="outbound", close=noop_close)
        stats = mgr.statistics()
        assert events.dropped == 2
    assert (stats.events_emitted, stats.events_dropped, stats.subscribers) == (3, 2, 1)


async def test_a_snapshot_is_frozen_and_does_not_move() -> None:
    async with (
        open_manager() as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
    ):
        conn = mgr.track("a", direction="inbound", close=noop_close)
        kad.track_stream(conn)
        stats = mgr.statistics()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.connections = 5  # type: ignore[misc]
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.rounds.count = 5  # type: ignore[misc]
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.protocols["kad"].usage = 5  # type: ignore[misc]
        for mapping in (stats.protocols, stats.refusals, stats.rounds.victims_by_phase):
            with pytest.raises(TypeError):
                mapping["x"] = 1  # type: ignore[index]
        with pytest.raises(TypeError):
            stats.protocols["kad"].locks_denied["grant"] = 1  # type: ignore[index]
        conn.release()
        mgr._state.refusals["hard"] = 1
        assert (stats.connections, stats.protocols["kad"].usage, stats.refusals) == (1, 1, {})
        assert mgr.statistics() != stats


async def test_statistics_is_cheap_it_never_scores() -> None:
    calls = 0

    def counting(stream: cm.Stream) -> float:
        nonlocal calls
        calls += 1
        return 0.5

    async with (
        open_manager(limits=cm.Limits(low=500, high=1000)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1000), scorer=counting) as kad,
    ):
        for i in range(200):
            kad.track_stream(mgr.track(i, direction="outbound", close=noop_close))
        for _ in range(100):
            stats = mgr.statistics()
    assert calls == 0
    assert stats.protocols["kad"].usage == 200
