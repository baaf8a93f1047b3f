"""mgr.explain(conn) in an emergency agrees with the round run right after it."""

from __future__ import annotations

import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing


async def close_nothing() -> None:
    await trio.lowlevel.checkpoint()


def by_metadata(stream: cm.Stream) -> float:
    """Score = ``stream.metadata["score"]``: tallies the test chooses."""
    return float(stream.metadata.get("score", 0.5))


async def test_at_hard_explain_says_whose_locks_a_round_revokes_to_prune_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # At hard=4 a round wants 3 victims: the idle connection, and two it is short
    # of. p (grant.min 2, usage 3) lets only one of the two locked ones go: the
    # round revokes the lock of the lower tally and prunes it; the other one
    # keeps its lock and stays.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 3, 4), grace_period=0, lock_budget=2
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(2, 4), scorer=by_metadata) as p,
    ):
        idle = mgr.track("idle", direction="outbound", close=close_nothing)
        low = mgr.track("low", direction="outbound", close=close_nothing)
        high = mgr.track("high", direction="outbound", close=close_nothing)
        low_stream = p.track_stream(low)
        low_stream.metadata["score"] = 0.1
        high_stream = p.track_stream(high)
        high_stream.metadata["score"] = 0.9
        async with p.lock(low_stream, ttl=100) as low_lock, p.lock(high_stream, ttl=100):
            mgr.protect("kept", "relay")
            p.track_stream(mgr.track("kept", direction="outbound", close=close_nothing))
            assert mgr.statistics().connections == 4  # at hard, no round run yet
            explained = {conn: mgr.explain(conn) for conn in (idle, low, high)}
            # The regulator's round (the count is above high), or trim()'s.
            await mgr.trim()
            assert low_lock.revoked
            assert high.locked
        pruned = [conn for conn in explained if conn.close_reason == "pruned"]
        assert pruned == [idle, low]
        for conn, explanation in explained.items():
            assert explanation.would_prune == (conn in pruned), explanation.text
        assert (explained[idle].phase, explained[idle].rank) == (cm.Phase.IDLE, 1)
        doomed = explained[low]
        assert doomed.excluded_by == "locked"
        assert not doomed.prunable
        assert low.prune_reason is not None
        assert doomed.reason == low.prune_reason._replace(trigger="explain")
        assert (doomed.phase, doomed.rank) == (cm.Phase.TALLY, 2)
        assert doomed.text.endswith(
            "; but with the count at hard, a round run now would revoke its locks"
        ), doomed.text
        kept = explained[high]
        assert kept.excluded_by == "locked"
        assert (kept.reason, kept.rank) == (None, None)
        assert kept.text.endswith("it is locked by p until t=100.000"), kept.text


async def test_under_sensing_pressure_explain_ranks_a_revoked_connection_among_the_victims(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Under pressure (no hard) a round above low revokes the lock it is short
    # of; the revoked connection then ranks before the unlocked one (lower tally).
    sensor = FakeSensor(pressure=True)
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 10),
            grace_period=0,
            lock_budget=1,
            sensing=Sensing([sensor], interval=1000.0, floor=10),
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4), scorer=by_metadata) as p,
    ):
        await trio.sleep(1)  # the first sample: pressure
        locked = mgr.track("locked", direction="outbound", close=close_nothing)
        locked_stream = p.track_stream(locked)
        locked_stream.metadata["score"] = 0.1
        async with p.lock(locked_stream, ttl=100):
            mgr.protect("kept", "relay")
            mgr.track("kept", direction="outbound", close=close_nothing)
            plain = mgr.track("plain", direction="outbound", close=close_nothing)
            p.track_stream(plain).metadata["score"] = 0.9
            explained = {conn: mgr.explain(conn) for conn in (locked, plain)}
            await mgr.trim()
        for conn, explanation in explained.items():
            assert conn.close_reason == "pruned"
            assert conn.prune_reason is not None
            assert explanation.would_prune, explanation.text
            assert explanation.reason == conn.prune_reason._replace(trigger="explain")
        assert explained[locked].excluded_by == "locked"
        assert explained[locked].text.endswith(
            "; but with sensing pressure, a round run now would revoke its locks"
        ), explained[locked].text
        assert "victim 2 of 2" in explained[plain].text, explained[plain].text


async def test_at_hard_equal_to_high_explain_says_no_round_comes_on_its_own_to_revoke(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The count at hard == high: a round run now (trim()) revokes the lock and
    # prunes, but the count is not above high, so no round starts on its own.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2, 2), grace_period=0, lock_budget=1
        ) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 2)) as p,
    ):
        locked = mgr.track("locked", direction="outbound", close=close_nothing)
        stream = p.track_stream(locked)
        async with p.lock(stream, ttl=1000):
            mgr.protect("kept", "relay")
            mgr.track("kept", direction="outbound", close=close_nothing)
            explained = mgr.explain(locked)
            assert explained.would_prune
            assert explained.text.endswith(
                "; but with the count at hard, a round run now would revoke its locks"
                "; no round starts on its own until the count exceeds high=2"
            ), explained.text
            await trio.sleep(100)
            assert not locked.closed
            assert await mgr.trim() == [locked]
