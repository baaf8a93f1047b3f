"""Bursts (SPEC §7): stretch, recently-closed bursts go first, linger, wake-ups."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import drain

import trio_connmgr as cm


def value_of(stream: cm.Stream) -> float:
    return stream.metadata.get("v", 0.5)  # type: ignore[no-any-return]


def track(mgr: cm.ConnectionManager, peer: object, direction: str = "outbound") -> cm.Connection:
    return mgr.track(peer, direction=direction, close=trio.lowlevel.checkpoint)


def phases(conns: list[cm.Connection]) -> set[str]:
    return {c.prune_reason.phase.value for c in conns if c.prune_reason is not None}


async def dht_lookup(
    mgr: cm.ConnectionManager, dht: cm.Enrollment, n: int, *, hold: float = 1.0
) -> tuple[cm.Burst, list[cm.Connection], list[cm.Stream]]:
    """A lookup that dials ``n`` peers in a burst; half its streams outlive the burst."""
    async with dht.burst("lookup") as burst:
        conns = [track(mgr, f"dht-{i}") for i in range(n)]
        streams = []
        for conn in conns:
            stream = dht.track_stream(conn, burst=burst)
            stream.metadata["v"] = 0.9  # worth more than the steady streams
            streams.append(stream)
        await trio.sleep(hold)
        for stream in streams[::2]:
            stream.close()
    return burst, conns, streams[1::2]


async def test_dht_scenario_next_round_prunes_exactly_the_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(20, 60), grace_period=0) as mgr,
        mgr.enroll("steady", quota=cm.Quota(0, 30), scorer=value_of) as steady,
        mgr.enroll("dht", quota=cm.Quota(0, 5), scorer=value_of) as dht,
    ):
        kept = [track(mgr, f"steady-{i}") for i in range(20)]
        for conn in kept:
            steady.track_stream(conn).metadata["v"] = 0.2
        burst, burst_conns, still_open = await dht_lookup(mgr, dht, 40)
        assert mgr.statistics().connections == 60
        # Streams still open at exit stay open and enlisted, and count for dht.
        assert all(not s.closed and s.burst is burst for s in still_open)
        assert set(still_open) <= burst.streams
        assert dht.usage == 20
        stats = mgr.statistics().protocols["dht"]
        assert (stats.bursts_open, stats.bursts_lingering, stats.bursts_opened) == (0, 1, 1)
        pruned = await mgr.trim()
        assert set(pruned) == set(burst_conns)
        assert phases(pruned) == {"burst"}
        assert all(c.prune_reason and c.prune_reason.protocol == "dht" for c in pruned)
        assert set(mgr.connections) == set(kept)


async def test_dht_scenario_with_the_regulator(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(20, 50), grace_period=0, silence_period=30, burst_linger=60
        ) as mgr,
        mgr.enroll("steady", quota=cm.Quota(0, 30), scorer=value_of) as steady,
        mgr.enroll("dht", quota=cm.Quota(0, 5), scorer=value_of) as dht,
    ):
        kept = [track(mgr, f"steady-{i}") for i in range(20)]
        for conn in kept:
            steady.track_stream(conn).metadata["v"] = 0.2
        extra = track(mgr, "extra")
        assert await mgr.trim() == [extra]  # a round at t=0: silence until t=30
        await trio.sleep(1)
        _, burst_conns, _ = await dht_lookup(mgr, dht, 40, hold=4.0)
        # Above high since t=1, but within the silence period.
        await trio.sleep(24.9)
        assert mgr.statistics().connections == 60
        await trio.sleep(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert set(mgr.connections) == set(kept)
        assert all(c.close_reason == "pruned" for c in burst_conns)
        assert phases(burst_conns) == {"burst"}
        assert mgr.statistics().rounds.last_at == pytest.approx(30.0)
        assert mgr.statistics().rounds.victims_by_phase == {"idle": 1, "burst": 40}


async def test_stretch_burst_streams_do_not_make_an_offender() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(7, 20), grace_period=0) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 2), scorer=value_of) as dht,
        mgr.enroll("steady", quota=cm.Quota(0, 20), scorer=value_of) as steady,
    ):
        cheap = [track(mgr, f"steady-{i}") for i in range(2)]
        for conn in cheap:
            steady.track_stream(conn).metadata["v"] = 0.1
        async with dht.burst() as burst:
            dht_conns = [track(mgr, f"dht-{i}") for i in range(6)]
            for conn in dht_conns:
                dht.track_stream(conn, burst=burst).metadata["v"] = 0.9
            assert dht.usage == 6 > dht.grant.max
            pruned = await mgr.trim()
            # Usage 6 on a max of 2, but all of it in a burst: not an offender.
            assert len(pruned) == 1
            assert pruned[0] in cheap
            assert phases(pruned) == {"tally"}
            # The same usage outside the burst is an offence: plain usage 3 > 2.
            for conn in dht_conns[:3]:
                dht.track_stream(conn).metadata["v"] = 0.9
            steady.track_stream(track(mgr, "extra")).metadata["v"] = 0.05
            pruned = await mgr.trim()
            assert len(pruned) == 1
            assert pruned[0] in dht_conns[:3]
            assert phases(pruned) == {"offender"}


async def test_a_stream_that_outlived_its_burst_can_serve_the_next_one() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 20), grace_period=0) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 2), scorer=value_of) as dht,
        mgr.enroll("steady", quota=cm.Quota(0, 20), scorer=value_of) as steady,
    ):
        cheap = track(mgr, "cheap")
        steady.track_stream(cheap).metadata["v"] = 0.1
        conns = [track(mgr, f"dht-{i}") for i in range(5)]
        async with dht.burst("first") as first:
            streams = [dht.track_stream(conn, burst=first) for conn in conns]
        assert all(s.burst is first and not s.closed for s in streams)
        async with dht.burst("second") as second:
            async with dht.burst("third") as third:
                third.enlist(streams[0])  # moves from ``first``, which has closed
                with pytest.raises(cm.ConfigError, match="already enlisted in burst"):
                    second.enlist(streams[0])  # ``third`` is still open
            for stream in streams:
                second.enlist(stream)
            assert all(s.burst is second for s in streams)
            assert second.streams == set(streams)
            assert not first.streams
            # Usage 5 on a max of 2, all of it in the open burst: no offender.
            pruned = await mgr.trim()
            assert pruned == [cheap]
            assert phases(pruned) == {"tally"}
        stats = mgr.statistics().protocols["dht"]
        assert (stats.bursts_opened, stats.bursts_lingering) == (3, 3)


async def test_offender_after_stretch_ends() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 20), grace_period=0) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 2), scorer=value_of) as dht,
        mgr.enroll("steady", quota=cm.Quota(0, 20), scorer=value_of) as steady,
    ):
        cheap = track(mgr, "cheap")
        steady.track_stream(cheap).metadata["v"] = 0.1
        conns = [track(mgr, f"dht-{i}") for i in range(5)]
        for conn in conns:
            dht.track_stream(conn).metadata["v"] = 0.9
        pruned = await mgr.trim()
        # Plain usage 5 on a max of 2: dht's cheapest connection goes before "cheap".
        assert len(pruned) == 1
        assert pruned[0] in conns
        assert pruned[0].prune_reason is not None
        assert pruned[0].prune_reason.phase is cm.Phase.OFFENDER
        assert pruned[0].prune_reason.protocol == "dht"


async def test_linger_expiry(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(2, 20), grace_period=0, burst_linger=10
        ) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 20), scorer=value_of) as dht,
        mgr.enroll("steady", quota=cm.Quota(0, 20), scorer=value_of) as steady,
    ):
        cheap = [track(mgr, f"steady-{i}") for i in range(2)]
        for conn in cheap:
            steady.track_stream(conn).metadata["v"] = 0.1
        async with dht.burst() as burst:
            conns = [track(mgr, f"dht-{i}") for i in range(2)]
            for conn in conns:
                dht.track_stream(conn, burst=burst).metadata["v"] = 0.9
        await trio.sleep(9.5)
        assert mgr.statistics().protocols["dht"].bursts_lingering == 1
        await trio.sleep(1)
        assert mgr.statistics().protocols["dht"].bursts_lingering == 0
        pruned = await mgr.trim()
        # Past the linger: the burst's connections rank by tally like any other.
        assert set(pruned) == set(cheap)
        assert phases(pruned) == {"tally"}


async def test_oldest_close_first(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(3, 20), grace_period=0) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 20), scorer=value_of) as dht,
    ):
        groups = []
        for name in ("first", "second"):
            async with dht.burst(name) as burst:
                conns = [track(mgr, f"{name}-{i}") for i in range(3)]
                for conn in conns:
                    # The older burst's streams are worth more: order is by close time.
                    dht.track_stream(conn, burst=burst).metadata["v"] = (
                        0.9 if name == "first" else 0.1
                    )
                await trio.sleep(1)
            groups.append(conns)
        pruned = await mgr.trim()
        assert pruned == groups[0]
        assert [c.prune_reason.rank for c in pruned if c.prune_reason] == [1, 2, 3]


async def test_connections_used_outside_the_burst_are_treated_normally() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 20), grace_period=0) as mgr,
        mgr.enroll("dht", quota=cm.Quota(0, 20), scorer=value_of) as dht,
    ):
        async with dht.burst() as burst:
            only_burst = track(mgr, "only")
            dht.track_stream(only_burst, burst=burst).metadata["v"] = 0.9
            open_plain = track(mgr, "open-plain")
            dht.track_stream(open_plain, burst=burst).metadata["v"] = 0.9
            dht.track_stream(open_plain).metadata["v"] = 0.3
            closed_plain = track(mgr, "closed-plain")
            dht.track_stream(closed_plain, burst=burst).metadata["v"] = 0.9
            plain = dht.track_stream(closed_plain)
            plain.metadata["v"] = 0.2
            plain.close()
            enlisted = track(mgr, "enlisted")
            late = dht.track_stream(enlisted)
            late.metadata["v"] = 0.95
            burst.enlist(late)
            assert late.burst is burst
        for i in range(2):
            dht.track_stream(track(mgr, f"steady-{i}")).metadata["v"] = 0.99
        pruned = await mgr.trim()
        assert pruned[:2] == [only_burst, enlisted]
        assert phases(pruned[:2]) == {"burst"}
        # Then the rest by tally: closed-plain (0.9), open-plain (0.9 max), both normal.
        assert set(pruned[2:]) == {open_plain, closed_plain}
        assert phases(pruned[2:]) == {"tally"}


async def test_exit_wakes_the_regulator_above_high(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=0, silence_period=100
        ) as mgr,
        mgr.enroll("dht", quota=cm.Quota(1, 2)) as dht,
    ):
        mgr.protect("a", "t")
        mgr.protect("b", "t")
        track(mgr, "a")
        track(mgr, "b")
        async with dht.burst() as burst:
            conn = track(mgr, "c")
            stream = dht.track_stream(conn, burst=burst)
            await trio.sleep(5)
            # Above high, but the only candidate holds dht at its grant.min.
            assert mgr.statistics().connections == 3
            stream.close()
            await trio.sleep(5)
            assert not conn.closed  # closing a stream does not wake the regulator
        await trio.testing.wait_all_tasks_blocked()
        assert conn.close_reason == "pruned"
        assert trio.current_time() == pytest.approx(10.0)
        assert phases([conn]) == {"burst"}


async def test_burst_misuse_and_events() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 20)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("dht", quota=cm.Quota(0, 20)) as dht,
        mgr.enroll("other", quota=cm.Quota(0, 20)) as other,
    ):
        conn = track(mgr, "a")
        burst = dht.burst("lookup")
        assert burst.name == "lookup"
        assert burst.protocol == "dht"
        # Not entered yet: not open, so nothing can be enlisted in it.
        with pytest.raises(cm.ConfigError, match="not open yet"):
            dht.track_stream(conn, burst=burst)
        with pytest.raises(cm.ConfigError, match="not open yet"):
            burst.enlist(dht.track_stream(conn))
        async with burst:
            with pytest.raises(cm.ConfigError, match="already used"):
                async with burst:
                    pytest.fail("entered twice")  # pragma: no cover
            with pytest.raises(cm.ConfigError, match="belongs to 'dht'"):
                other.track_stream(conn, burst=burst)
            with pytest.raises(cm.ConfigError):
                burst.enlist(other.track_stream(conn))
            first = dht.track_stream(conn, burst=burst)
            async with dht.burst() as second:
                with pytest.raises(cm.ConfigError, match="already enlisted"):
                    second.enlist(first)
            assert mgr.statistics().protocols["dht"].bursts_open == 1
        assert burst.closed_at is not None
        with pytest.raises(cm.ResourceClosed):
            dht.track_stream(conn, burst=burst)
        with pytest.raises(cm.ResourceClosed):
            burst.enlist(dht.track_stream(conn))
        received = drain(events)
        closed = [e for e in received if isinstance(e, cm.BurstClosed)]
        opened = [e for e in received if isinstance(e, cm.BurstOpened)]
        assert [(e.protocol, e.name) for e in opened] == [("dht", "lookup"), ("dht", None)]
        assert [(e.name, e.connections, e.streams) for e in closed] == [
            (None, 0, 0),
            ("lookup", 1, 1),
        ]
        conn.release()


async def test_opened_at_is_when_the_burst_is_entered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 20)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("dht", quota=cm.Quota(0, 20)) as dht,
    ):
        burst = dht.burst("lookup")
        await trio.sleep(5)
        async with burst:
            entered = trio.current_time()
            assert burst.opened_at == entered
            await trio.sleep(1)
        received = drain(events)
        opened = [e for e in received if isinstance(e, cm.BurstOpened)]
        assert [e.time for e in opened] == [entered]
