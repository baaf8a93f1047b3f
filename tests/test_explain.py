"""mgr.explain(conn): every reason a connection is safe, kept, spared or doomed."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

import trio_connmgr as cm
import trio_connmgr.triggers
from trio_connmgr.sensing import FakeSensor, Sensing


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def by_metadata(stream: cm.Stream) -> float:
    """Score = ``stream.metadata["score"]``: tallies the test chooses."""
    return float(stream.metadata.get("score", 0.5))


def open_manager(**kwargs: object) -> object:
    kwargs.setdefault("limits", cm.Limits(low=1, high=10))
    kwargs.setdefault("grace_period", 0)
    return cm.open_connection_manager(**kwargs)  # type: ignore[arg-type]


async def test_closed_connections(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as mgr:
        gone = mgr.track("gone", direction="inbound", close=noop_close)
        gone.release()
        pruned = mgr.track("pruned", direction="inbound", close=noop_close)
        mgr.track("stays", direction="outbound", close=noop_close)
        await trio.sleep(1)
        assert await mgr.trim() == [pruned]
        released = mgr.explain(gone)
        after_prune = mgr.explain(pruned)
    assert released.excluded_by == "closed"
    assert (released.prunable, released.would_prune) == (False, False)
    assert released.tally is None
    assert released.safe_because == ()
    assert "is closed (released)" in released.text
    assert after_prune.excluded_by == "closed"
    assert "is closed (pruned), pruned as idle #1" in after_prune.text
    assert "trigger trim" in after_prune.text


async def test_protected_by_which_tags() -> None:
    async with open_manager() as mgr:
        conn = mgr.track("relay", direction="inbound", close=noop_close)
        mgr.track("other", direction="inbound", close=noop_close)
        mgr.protect("relay", "relay")
        mgr.protect("relay", "bootstrap")
        why = mgr.explain(conn)
        assert why.excluded_by == "protected"
        assert why.safe_because == ("protected",)
        assert why.protected_tags == ("bootstrap", "relay")
        assert (why.prunable, why.would_prune) == (False, False)
        assert "is safe: its peer is protected by 'bootstrap', 'relay'" in str(why)
        mgr.unprotect("relay", "relay")
        assert mgr.explain(conn).protected_tags == ("bootstrap",)
        mgr.unprotect("relay", "bootstrap")
        after = mgr.explain(conn)
    assert after.excluded_by is None
    assert after.protected_tags == ()
    assert after.prunable
    assert after.would_prune  # count 2 > low 1, and it is idle


async def test_in_grace_until_when(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(grace_period=30) as mgr:
        conn = mgr.track("new", direction="inbound", close=noop_close)
        mgr.track("other", direction="inbound", close=noop_close)
        await trio.sleep(10)
        why = mgr.explain(conn)
        assert why.excluded_by == "grace"
        assert why.grace_until == 30.0
        assert not why.prunable
        assert "in its grace period until t=30.000 (20.000s from now)" in why.text
        await trio.sleep(20)
        after = mgr.explain(conn)
    assert after.excluded_by is None
    assert after.safe_because == ()
    assert after.would_prune


async def test_locked_by_whom_and_until_when(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager(lock_budget=5) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
        mgr.enroll("sub", quota=cm.Quota(0, 5)) as sub,
    ):
        conn = mgr.track("p", direction="outbound", close=noop_close)
        mgr.track("other", direction="inbound", close=noop_close)
        async with kad.lock(kad.track_stream(conn), ttl=20):
            why = mgr.explain(conn)
            assert why.excluded_by == "locked"
            assert why.locked_by == ("kad",)
            assert why.lock_expires_at == 20.0
            assert "is safe: it is locked by kad until t=20.000" in why.text
            async with sub.lock(sub.track_stream(conn), ttl=50):
                both = mgr.explain(conn)
        after = mgr.explain(conn)
    assert both.locked_by == ("kad", "sub")
    assert both.lock_expires_at == 50.0
    assert after.excluded_by is None
    assert after.locked_by == ()
    assert after.lock_expires_at is None


async def test_every_safe_reason_is_listed(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager(grace_period=30, lock_budget=5) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
    ):
        conn = mgr.track("p", direction="outbound", close=noop_close)
        mgr.protect("p", "mine")
        async with kad.lock(kad.track_stream(conn), ttl=20):
            why = mgr.explain(conn)
    assert why.safe_because == ("protected", "locked", "grace")
    assert why.excluded_by == "protected"
    text = why.text
    assert text.index("protected by 'mine'") < text.index("locked by kad") < text.index("grace")


async def test_kept_for_a_grant_min(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_manager() as mgr,
        mgr.enroll("kad", quota=cm.Quota(2, 5)) as kad,
    ):
        conns = [mgr.track(f"p{i}", direction="outbound", close=noop_close) for i in range(3)]
        for conn in conns:
            kad.track_stream(conn)
        why = [mgr.explain(conn) for conn in conns]
        # Ties: newest first. Taking one leaves kad at its min of 2; the others stay.
        assert [w.would_prune for w in why] == [False, False, True]
        for kept in why[:2]:
            assert kept.prunable
            assert kept.min_blocked
            assert kept.min_blocked_by == ("kad",)
            assert "is kept: pruning it would take kad below grant.min" in kept.text
        assert not why[2].min_blocked
        assert (why[2].phase, why[2].rank) == (cm.Phase.TALLY, 1)
        assert await mgr.trim() == [conns[2]]


async def test_kept_for_a_grant_min_names_only_the_protocols_at_their_min(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager() as mgr,
        mgr.enroll("kad", quota=cm.Quota(2, 5)) as kad,
        mgr.enroll("ping", quota=cm.Quota(0, 5)) as ping,
    ):
        conns = [mgr.track(f"p{i}", direction="outbound", close=noop_close) for i in range(3)]
        for conn in conns:
            kad.track_stream(conn)
        for conn in conns[:2]:
            ping.track_stream(conn)  # higher tallies: conns[2] goes first
        why = [mgr.explain(conn) for conn in conns]
        assert [w.would_prune for w in why] == [False, False, True]
        for kept in why[:2]:
            # Taking conns[2] leaves kad at its min; ping has room to spare.
            assert kept.min_blocked_by == ("kad",)
            assert "would take kad below grant.min" in kept.text


async def test_doomed_by_each_phase_matches_the_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager() as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 1), scorer=by_metadata) as kad,
        mgr.enroll("sub", quota=cm.Quota(0, 5), scorer=by_metadata) as sub,
    ):
        burst_only = mgr.track("burst", direction="outbound", close=noop_close)
        idle = mgr.track("idle", direction="outbound", close=noop_close)
        low_offender = mgr.track("o1", direction="outbound", close=noop_close)
        high_offender = mgr.track("o2", direction="outbound", close=noop_close)
        low_tally = mgr.track("t", direction="outbound", close=noop_close)
        async with kad.burst("lookup") as burst:
            kad.track_stream(burst_only, burst=burst).close()
        kad.track_stream(low_offender).metadata["score"] = 0.2
        kad.track_stream(high_offender).metadata["score"] = 0.9
        sub.track_stream(low_tally).metadata["score"] = 0.1
        await trio.sleep(1)
        why = {conn: mgr.explain(conn) for conn in mgr.connections}
        assert not any(conn.closed for conn in mgr.connections)  # explaining prunes nothing
        pruned = await mgr.trim()

    assert pruned == [burst_only, idle, low_offender, low_tally]
    expected = [
        (burst_only, cm.Phase.BURST, "kad", "burst (kad) phase"),
        (idle, cm.Phase.IDLE, None, "idle phase"),
        (low_offender, cm.Phase.OFFENDER, "kad", "offender (kad) phase"),
        (low_tally, cm.Phase.TALLY, None, "tally phase"),
    ]
    for rank, (conn, phase, protocol, words) in enumerate(expected, 1):
        explained = why[conn]
        assert explained.would_prune
        assert (explained.phase, explained.rank) == (phase, rank)
        assert explained.reason is not None
        assert explained.reason.protocol == protocol
        # The prediction is what the round then did.
        assert conn.prune_reason is not None
        assert (conn.prune_reason.phase, conn.prune_reason.rank) == (phase, rank)
        assert conn.prune_reason.protocol == protocol
        assert explained.tally == pytest.approx(conn.prune_reason.tally)
        assert f"would be pruned by a round run now: victim {rank} of 4 in the {words}" in (
            explained.text
        )
        assert "no round starts on its own until the count exceeds high=10" in explained.text
    spared = why[high_offender]
    assert spared.prunable
    assert not spared.would_prune
    assert spared.tally == pytest.approx(0.9)
    assert "ranks below the 4 victims a round would take now" in spared.text


async def test_prunable_but_the_count_is_at_low() -> None:
    async with open_manager(limits=cm.Limits(low=2, high=10)) as mgr:
        conn = mgr.track("p", direction="inbound", close=noop_close)
        why = mgr.explain(conn)
    assert why.prunable
    assert not why.would_prune
    assert why.excluded_by is None
    assert (why.phase, why.rank, why.reason) == (None, None, None)
    assert why.tally == 0.0
    assert "is prunable (tally 0.000) but the count 1 is at or below low=2" in why.text


async def test_prunable_but_ranks_below_the_one_victim(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_manager(limits=cm.Limits(low=1, high=10)) as mgr:
        # Idle connections go least recently active first: the newer one is spared.
        mgr.track("older", direction="inbound", close=noop_close)
        await trio.sleep(1)
        newer = mgr.track("newer", direction="inbound", close=noop_close)
        why = mgr.explain(newer)
    assert why.prunable
    assert not why.would_prune
    assert "is prunable (tally 0.000) but ranks below the victim a round would take now" in (
        why.text
    )


async def test_explanations_are_frozen_and_named() -> None:
    async with open_manager() as mgr:
        conn = mgr.track("peer-x", direction="inbound", close=noop_close)
        why = mgr.explain(conn)
    assert why.connection_id == conn.id
    assert str(why) == why.text
    assert why.text.startswith(f"connection #{conn.id} (inbound, peer 'peer-x')")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        why.prunable = False  # type: ignore[misc]


async def test_explain_rejects_foreign_connections() -> None:
    async with open_manager() as mgr, open_manager() as other:
        foreign = other.track("p", direction="inbound", close=noop_close)
        with pytest.raises(cm.ConfigError):
            mgr.explain(foreign)
        with pytest.raises(cm.ConfigError):
            mgr.explain("p")  # type: ignore[arg-type]


async def test_a_connection_its_scorer_closes_while_explained_is_reported_closed() -> None:
    def closing(stream: cm.Stream) -> float:
        stream.connection.release()  # a scorer that finds its connection dead
        return 0.1

    async with (
        open_manager() as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10), scorer=closing) as proto,
    ):
        conn = mgr.track("a", direction="inbound", close=noop_close)
        mgr.track("b", direction="inbound", close=noop_close)
        proto.track_stream(conn)
        why = mgr.explain(conn)
        assert conn.closed
        assert why.excluded_by == "closed"
        assert (why.prunable, why.would_prune) == (False, False)
        assert why.tally is None
        assert why.safe_because == ()
        assert "is closed (released)" in why.text


@pytest.mark.parametrize("cause", ["interval", "pressure"])
async def test_no_promise_of_quiet_below_high_when_a_round_may_start_there(
    cause: str, autojump_clock: trio.testing.MockClock
) -> None:
    # Below high, an Interval trigger or sensing pressure starts rounds all the same.
    kwargs: dict[str, object] = {}
    if cause == "interval":
        kwargs["triggers"] = [cm.triggers.Interval(5.0)]
    else:
        sensor = FakeSensor(pressure=True)
        kwargs["sensing"] = Sensing([sensor], interval=5.0, floor=10)
    async with open_manager(**kwargs) as mgr:
        await trio.sleep(1)
        older = mgr.track("older", direction="inbound", close=noop_close)
        await trio.sleep(1)
        mgr.track("newer", direction="inbound", close=noop_close)
        explained = mgr.explain(older)
        assert explained.would_prune
        assert "no round starts on its own" not in explained.text
        await trio.sleep(10)
        assert mgr.statistics().connections == 1


@pytest.mark.parametrize("hard", [3, 4])
async def test_a_lock_a_round_at_hard_would_revoke_is_said_so(
    hard: int, autojump_clock: trio.testing.MockClock
) -> None:
    # Three connections, two of them protected: at hard=3 a round revokes the
    # third one's lock and prunes it; below hard the lock holds.
    async with (
        open_manager(limits=cm.Limits(1, 2, hard), lock_budget=2) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 3)) as p,
    ):
        locked = mgr.track("a", direction="outbound", close=noop_close)
        for peer in "bc":
            mgr.protect(peer, "keep")
            mgr.track(peer, direction="outbound", close=noop_close)
        stream = p.track_stream(locked)
        async with p.lock(stream, ttl=100):
            explained = mgr.explain(locked)
            assert explained.excluded_by == "locked"
            ending = f"it is locked by p until t={trio.current_time() + 100:.3f}"
            if hard == 3:
                ending += "; but with the count at hard, a round run now would revoke its locks"
            assert explained.text.endswith(ending), explained.text
            # What the regulator's round (above high) then does.
            await trio.sleep(1)
            assert locked.close_reason == ("pruned" if hard == 3 else None)
        stream.close()
