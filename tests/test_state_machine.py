"""A Hypothesis state machine over the synchronous core ``State`` (SPEC §3-§8, §12).

It keeps its own model of what should be open and checks the core against it
after every step: grants (invariant 5), usage, streams never outliving their
connection or enrollment, counts by direction, locks and the lock budget. Rounds
are planned with ``plan_now``, checked by the planner oracle (invariants 1-4,
6) and applied with ``close_connection``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from test_planner import check_plan, metadata_scorer

import trio_connmgr as cm
from trio_connmgr._core._planner import plan_now
from trio_connmgr._core._quota import allocate
from trio_connmgr._core._state import (
    CLOSED,
    PRUNED,
    BurstState,
    Connection,
    EnrollmentState,
    LockState,
    State,
    Stream,
)
from trio_connmgr._regulator import lock_revocations

NAMES = ["kad", "bitswap", "pubsub", "identify"]
PEERS = ["a", "b", "c", "d", "e", "f"]
SCORES = st.one_of(st.floats(0, 1), st.sampled_from([-1.0, 2.0, math.nan, "raise", "junk"]))
QUOTAS = st.one_of(
    st.tuples(st.integers(0, 6), st.integers(0, 12)).map(lambda t: cm.Quota(min(t), max(t))),
    st.tuples(st.floats(0, 1), st.floats(0, 1)).map(lambda t: cm.Quota.share(min(t), max(t))),
)


@attrs.define(eq=False, repr=False)
class RecordingLock(LockState):
    """A lock that records how the core told it its protection ended."""

    endings: list[str] = attrs.Factory(list)

    def _ended(self, how: str) -> None:
        self.endings.append(how)


class CoreMachine(RuleBasedStateMachine):
    members = Bundle("members")
    conns = Bundle("conns")
    streams = Bundle("streams")
    locks = Bundle("locks")
    bursts = Bundle("bursts")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.open_conns: set[Connection] = set()
        self.open_streams: dict[Stream, BurstState | None] = {}
        self.active: dict[str, EnrollmentState] = {}
        self.plain_used: set[Connection] = set()
        self.conn_bursts: dict[Connection, set[BurstState]] = {}
        self.closed_at: dict[BurstState, float] = {}
        self.held: set[RecordingLock] = set()
        self.budget_holds = True
        self.rounds = 0

    # ------------------------------------------------------------ set-up

    @initialize(
        target=members,
        low=st.integers(1, 8),
        spread=st.integers(0, 6),
        grace=st.sampled_from([0.0, 5.0]),
        linger=st.sampled_from([0.0, 10.0, 30.0]),
        max_ttl=st.sampled_from([5.0, 50.0]),
        budget=st.none() | st.integers(0, 6),
        quotas=st.lists(QUOTAS, min_size=1, max_size=3),
    )
    def setup(
        self,
        low: int,
        spread: int,
        grace: float,
        linger: float,
        max_ttl: float,
        budget: int | None,
        quotas: list[cm.Quota],
    ) -> Any:
        self.state = State(
            cm.Limits(low, low + spread),
            clock=lambda: self.now,
            grace_period=grace,
            burst_linger=linger,
            max_lock_ttl=max_ttl,
            lock_budget=None if budget is None else min(budget, low),
        )
        members = []
        for name, quota in zip(NAMES, quotas, strict=False):
            member = EnrollmentState(name, quota, metadata_scorer, 1.0, False, self.state)
            self.state.enrol(member)
            self.active[name] = member
            members.append(member)
        return multiple(*members)

    # ------------------------------------------------------- enrollment

    @rule(
        target=members,
        name=st.sampled_from(NAMES),
        quota=QUOTAS,
        weight=st.sampled_from([0.5, 1.0, 3.0]),
        strict=st.booleans(),
    )
    def enrol(self, name: str, quota: cm.Quota, weight: float, strict: bool) -> Any:
        state = self.state
        member = EnrollmentState(name, quota, metadata_scorer, weight, strict, state)
        grants = {m: m.grant for m in self.active.values()}
        if name in self.active:
            with pytest.raises(cm.ConfigError, match=name):
                state.enrol(member)
        else:
            share = state.share
            requested = quota.resolve(share)[0]
            others = list(self.active.values())
            quotas = [*(m.quota for m in others), quota]
            flags = [*(m.strict for m in others), strict]
            # Strict mins are reserved first: a strict newcomer is denied unless
            # its whole min fits in what the strict ones already hold leaves.
            firm = sum(m.quota.resolve(share)[0] for m in others if m.strict)
            if strict and quota._wanted_min(share) > max(0, share - firm):
                with pytest.raises(cm.QuotaDenied) as info:
                    state.enrol(member)
                # The offer: what it would get without strict.
                assert info.value.offer == allocate(share, quotas, flags[:-1])[-1]
                assert info.value.offer.min < quota._wanted_min(share)
            else:
                state.enrol(member)
                self.active[name] = member
                assert member.grant == allocate(share, quotas, flags)[-1]
                assert member.grant.min <= requested
                if strict:
                    assert member.grant.min == quota._wanted_min(share)
                if firm + (requested if strict else 0) <= share:
                    # No strict enrollment lost any of its min.
                    for m in others:
                        if m.strict:
                            assert m.grant.min == grants[m].min == m.quota.resolve(share)[0]
                return member
        # Refused: nothing changed.
        assert {m: m.grant for m in self.active.values()} == grants
        return multiple()

    @rule(member=members)
    def leave(self, member: EnrollmentState) -> None:
        open_bursts = set(member._open_bursts)
        self.state.leave(member)
        if self.active.get(member.name) is member:
            del self.active[member.name]
        for stream in [s for s in self.open_streams if s._member is member]:
            self._stream_closed(stream)
        for lock in [lock for lock in self.held if lock._member is member]:
            assert lock.status == "released"
            self.held.discard(lock)
        # Its open bursts close with it.
        for burst in open_bursts:
            assert burst.closed_at == self.now
            self.closed_at.setdefault(burst, self.now)
        assert not member._open_bursts
        assert member.usage == 0
        assert not member.streams

    @rule(share=st.integers(0, 20))
    def set_share(self, share: int) -> None:
        state = self.state
        old_low = state.low
        changed = state.set_share(share, "test")
        assert state.high == max(1, min(share, state.limits.high))
        assert 1 <= state.low <= state.high
        assert all(m.grant == self.active[m.name].grant for m in changed)
        # The default budget (half of low) shrinks with low, but locks already held
        # stay, and an explicit budget does not move: only revocation restores it.
        if state.low < old_low and (self.held or state._lock_budget is not None):
            self.budget_holds = False

    # ------------------------------------------------------ connections

    @rule(
        target=conns,
        peers=st.lists(st.sampled_from(PEERS), min_size=1, max_size=4),
        direction=st.sampled_from([cm.Direction.INBOUND, cm.Direction.OUTBOUND]),
    )
    def open_connections(self, peers: list[Hashable], direction: cm.Direction) -> Any:
        opened = []
        for peer in peers:
            conn = self.state.open_connection(peer, direction, None, None)
            assert conn.opened_at == self.now
            assert not conn.streams
            self.open_conns.add(conn)
            opened.append(conn)
        return multiple(*opened)

    @rule(conn=conns)
    def close_connection(self, conn: Connection) -> None:
        was_open = conn in self.open_conns
        assert self.state.close_connection(conn, CLOSED) is was_open
        if was_open:
            self._connection_closed(conn)
            assert conn.close_reason == CLOSED

    def _connection_closed(self, conn: Connection) -> None:
        self.open_conns.discard(conn)
        for stream in [s for s in self.open_streams if s.connection is conn]:
            self._stream_closed(stream)
        for lock in [lock for lock in self.held if lock.stream.connection is conn]:
            assert lock.status == "dropped"
            assert lock.endings == ["dropped"]  # waiters are woken, once
            self.held.discard(lock)
        assert conn.closed
        assert not conn.streams
        assert not conn.locked

    def _stream_closed(self, stream: Stream) -> None:
        if self.open_streams.pop(stream) is None:
            self.plain_used.add(stream.connection)
        assert stream.closed

    # ---------------------------------------------------------- streams

    @rule(
        target=streams,
        member=members,
        conn=conns,
        burst=st.none() | bursts,
        score=SCORES,
    )
    def open_stream(
        self,
        member: EnrollmentState,
        conn: Connection,
        burst: BurstState | None,
        score: object,
    ) -> Any:
        expected: type[Exception] | None = None
        if self.active.get(member.name) is not member or conn not in self.open_conns:
            expected = cm.ResourceClosed
        elif burst is not None and burst._member is not member:
            expected = cm.ConfigError
        elif burst is not None and burst in self.closed_at:
            expected = cm.ResourceClosed
        if expected is not None:
            with pytest.raises(expected):
                self.state.open_stream(member, conn, cm.Direction.OUTBOUND, burst)
            return multiple()
        stream = self.state.open_stream(member, conn, cm.Direction.OUTBOUND, burst)
        stream.metadata["score"] = score
        self.open_streams[stream] = burst
        if burst is not None:
            self.conn_bursts.setdefault(conn, set()).add(burst)
        assert member.name in conn.protocols
        return stream

    @rule(
        target=streams,
        member=members,
        burst=st.none() | bursts,
        scores=st.lists(SCORES, min_size=1, max_size=4),
        data=st.data(),
    )
    def spread_streams(
        self,
        member: EnrollmentState,
        burst: BurstState | None,
        scores: list[object],
        data: st.DataObject,
    ) -> Any:
        """Open streams of one protocol on several open connections at once."""
        if self.active.get(member.name) is not member or not self.open_conns:
            return multiple()
        if burst is not None and (burst._member is not member or burst in self.closed_at):
            burst = None
        opened = []
        for score in scores:
            conn = data.draw(st.sampled_from(sorted(self.open_conns, key=lambda c: c.id)))
            stream = self.state.open_stream(member, conn, cm.Direction.OUTBOUND, burst)
            stream.metadata["score"] = score
            self.open_streams[stream] = burst
            if burst is not None:
                self.conn_bursts.setdefault(conn, set()).add(burst)
            opened.append(stream)
        return multiple(*opened)

    @rule(stream=streams)
    def close_stream(self, stream: Stream) -> None:
        was_open = stream in self.open_streams
        assert stream.closed is not was_open
        stream.close()
        if was_open:
            self._stream_closed(stream)

    @rule(stream=streams, nbytes=st.integers(0, 100))
    def touch(self, stream: Stream, nbytes: int) -> None:
        before = stream.nbytes
        stream.touch(nbytes)
        assert stream.last_active == stream.connection.last_active == self.now
        assert stream.nbytes == before + nbytes

    # ----------------------------------------------------------- bursts

    @rule(target=bursts, member=members)
    def open_burst(self, member: EnrollmentState) -> Any:
        burst = BurstState(self.state.new_burst_id(), member, None, self.now)
        if self.active.get(member.name) is not member:
            with pytest.raises(cm.ResourceClosed):
                self.state.new_burst(member, burst)
            return multiple()
        self.state.new_burst(member, burst)
        return burst

    @rule(burst=bursts, stream=streams)
    def enlist(self, burst: BurstState, stream: Stream) -> None:
        expected: type[Exception] | None = None
        current = self.open_streams.get(stream)
        if burst._member is not stream._member:
            expected = cm.ConfigError
        elif burst in self.closed_at or stream not in self.open_streams:
            expected = cm.ResourceClosed
        elif current is not None and current is not burst and current not in self.closed_at:
            expected = cm.ConfigError  # in another burst, still open
        if expected is not None:
            with pytest.raises(expected):
                burst.enlist(stream)
            return
        burst.enlist(stream)
        self.open_streams[stream] = burst
        self.conn_bursts.setdefault(stream.connection, set()).add(burst)
        assert stream.burst is burst
        assert stream in burst.streams
        if current is not None and current is not burst:
            # Moved from a burst that has closed: no longer one of its streams.
            assert stream not in current.streams

    @rule(
        target=conns,
        member=members,
        peers=st.lists(st.sampled_from(PEERS), min_size=1, max_size=5),
        score=SCORES,
        close_streams=st.booleans(),
    )
    def burst_episode(
        self, member: EnrollmentState, peers: list[Hashable], score: object, close_streams: bool
    ) -> Any:
        """A DHT-style lookup: a burst dials new connections, streams on them, exits."""
        if self.active.get(member.name) is not member:
            return multiple()
        burst = BurstState(self.state.new_burst_id(), member, "lookup", self.now)
        self.state.new_burst(member, burst)
        opened = []
        for peer in peers:
            conn = self.state.open_connection(peer, cm.Direction.OUTBOUND, None, None)
            self.open_conns.add(conn)
            opened.append(conn)
            stream = self.state.open_stream(member, conn, cm.Direction.OUTBOUND, burst)
            stream.metadata["score"] = score
            self.open_streams[stream] = burst
            self.conn_bursts.setdefault(conn, set()).add(burst)
            if close_streams:
                stream.close()
                self._stream_closed(stream)
        self.close_burst(burst)
        return multiple(*opened)

    @rule(burst=bursts)
    def close_burst(self, burst: BurstState) -> None:
        self.state.close_burst(burst)
        self.closed_at.setdefault(burst, self.now)
        assert burst.closed_at == self.closed_at[burst]
        # Streams still open stay open and enlisted.
        for stream, enlisted in self.open_streams.items():
            if enlisted is burst:
                assert not stream.closed
                assert stream.burst is burst

    # ------------------------------------------------------------ locks

    @precondition(lambda self: self.open_streams)
    @rule(target=locks, data=st.data(), ttl=st.sampled_from([1.0, 4.0, 20.0, 100.0]))
    def lock_open_stream(self, data: st.DataObject, ttl: float) -> Any:
        stream = data.draw(st.sampled_from(sorted(self.open_streams, key=lambda s: s.id)))
        return self.lock(stream, ttl)

    @rule(target=locks, stream=streams, ttl=st.sampled_from([1.0, 4.0, 20.0, 100.0]))
    def lock(self, stream: Stream, ttl: float) -> Any:
        state = self.state
        member = stream._member
        conn = stream.connection
        lock = RecordingLock(state.new_lock_id(), member, stream, ttl)
        mine = {held.stream.connection for held in self.held if held._member is member}
        locked = {held.stream.connection for held in self.held}
        reason = None
        if stream not in self.open_streams or self.active.get(member.name) is not member:
            reason = "closed"
        elif conn not in mine and len(mine) >= member.grant.max:
            reason = "grant"
        elif conn not in locked and len(locked) + 1 > state.lock_budget:
            reason = "budget"
        if reason is not None:
            with pytest.raises(cm.LockDenied) as info:
                state.acquire_lock(lock)
            assert info.value.reason == reason
            assert lock.status == "denied"
            return multiple()
        state.acquire_lock(lock)
        assert lock.held
        assert lock.expires_at == self.now + min(ttl, state.max_lock_ttl)
        assert conn.locked
        self.held.add(lock)
        return lock

    @rule(lock=locks)
    def unlock(self, lock: RecordingLock) -> None:
        was_held = lock in self.held
        assert self.state.end_lock(lock, "released") is was_held
        if was_held:
            self.held.discard(lock)
            assert lock.status == "released"
            assert not lock.revoked
            assert lock.endings == ["released"]

    @rule(lock=locks, ttl=st.sampled_from([1.0, 10.0, 1000.0]))
    def extend(self, lock: RecordingLock, ttl: float) -> None:
        if lock not in self.held:
            with pytest.raises(cm.ResourceClosed):
                self.state.extend_lock(lock, ttl)
            return
        expires_at = self.state.extend_lock(lock, ttl)
        assert expires_at == lock.expires_at == self.now + min(ttl, self.state.max_lock_ttl)

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 10.0, 40.0]))
    def advance_and_expire(self, dt: float) -> None:
        self.now += dt
        due = {lock for lock in self.held if lock.expires_at <= self.now}
        assert self.state.expire_locks(self.now) == len(due)
        for lock in due:
            assert lock.status == "expired"
            assert lock.revoked
            assert lock.endings == ["expired"]
        self.held -= due
        assert all(lock.held and lock.expires_at > self.now for lock in self.held)
        assert self.state.next_lock_expiry() == min(
            (lock.expires_at for lock in self.held), default=math.inf
        )
        # Time passing is what lets the regulator act (grace ends, locks lapse).
        if self.state.count > self.state.low:
            self._round(forced=False)

    @precondition(lambda self: self.held)
    @rule(wanted=st.integers(1, 3))
    def revoke(self, wanted: int) -> None:
        state = self.state
        chosen = lock_revocations(state, self.now, wanted, forced=True)
        candidates = [
            c
            for c in self.open_conns
            if c.locked
            and c.peer not in state.protected
            and self.now - c.opened_at >= state.grace_period
        ]
        assert len(chosen) == min(wanted, len(candidates))
        assert set(chosen) <= set(candidates)
        for conn in chosen:
            for lock in list(conn._locks):
                assert state.end_lock(lock, "revoked")
                assert isinstance(lock, RecordingLock)
                assert lock.revoked
                assert lock.endings == ["revoked"]
                self.held.discard(lock)
            assert not conn.locked

    # ------------------------------------------------------- protection

    @rule(peer=st.sampled_from(PEERS), tag=st.sampled_from(["x", "y"]))
    def protect(self, peer: str, tag: str) -> None:
        self.state.protect(peer, tag)
        assert peer in self.state.protected

    @rule(peer=st.sampled_from(PEERS), tag=st.sampled_from(["x", "y"]))
    def unprotect(self, peer: str, tag: str) -> None:
        others = self.state.protected.get(peer, set()) - {tag}
        assert self.state.unprotect(peer, tag) is bool(others)
        assert (peer in self.state.protected) is bool(others)

    # ----------------------------------------------------------- rounds

    def burst_only(self) -> dict[Connection, float]:
        out: dict[Connection, float] = {}
        for conn in self.open_conns:
            used = self.conn_bursts.get(conn)
            if not used or conn in self.plain_used:
                continue
            if any(s.connection is conn and b is None for s, b in self.open_streams.items()):
                continue
            if not all(b in self.closed_at for b in used):
                continue
            latest = max(self.closed_at[b] for b in used)
            if self.now - latest <= self.state.burst_linger:
                out[conn] = latest
        return out

    @precondition(lambda self: self.state.count > self.state.low)
    @rule(forced=st.booleans())
    def regulation_round(self, forced: bool) -> None:
        self._round(forced)

    def _round(self, forced: bool) -> None:
        state = self.state
        self.rounds += 1
        plan = plan_now(state, self.now, trigger="test", forced=forced)
        check_plan(state, plan, self.now, forced=forced, burst_only=self.burst_only())
        locked = state.locked_connections
        if (
            forced
            and not state.protected
            and all(self.now - c.opened_at >= state.grace_period for c in self.open_conns)
        ):
            # Only locks can stand in the way, and the budget keeps them below low.
            assert state.count - len(plan.victims) == max(min(state.count, state.low), locked)
            if self.budget_holds:
                assert state.count - len(plan.victims) <= max(state.low, 0)
        for victim in plan.victims:
            conn = victim.connection
            assert state.close_connection(conn, PRUNED, victim.reason)
            assert conn.close_reason == PRUNED
            assert conn.prune_reason is victim.reason
            self._connection_closed(conn)

    # ------------------------------------------------------- invariants

    @invariant()
    def grants_fit(self) -> None:
        if not hasattr(self, "state"):
            return
        share = self.state.share
        grants = [m.grant for m in self.state.members.values()]
        assert sum(g.min for g in grants) <= share
        assert all(0 <= g.min <= g.max <= share for g in grants)

    @invariant()
    def streams_and_usage(self) -> None:
        if not hasattr(self, "state"):
            return
        state = self.state
        assert state.members == self.active
        for member in self.active.values():
            mine = {s for s in self.open_streams if s._member is member}
            assert member.streams == mine
            assert member.usage == len({s.connection for s in mine})
        for stream, enlisted in self.open_streams.items():
            assert not stream.closed
            assert stream.burst is enlisted
            assert enlisted is None or stream in enlisted.streams
            assert stream.connection in self.open_conns
            assert self.active.get(stream.protocol) is stream._member
        for conn in self.open_conns:
            on_it = {s for s in self.open_streams if s.connection is conn}
            assert conn.streams == on_it
            assert set(conn.protocols) == {s.protocol for s in on_it}

    @invariant()
    def connection_counts(self) -> None:
        if not hasattr(self, "state"):
            return
        state = self.state
        assert set(state.connections.values()) == self.open_conns
        assert all(state.connections[c.id] is c and not c.closed for c in self.open_conns)
        inbound = sum(c.direction is cm.Direction.INBOUND for c in self.open_conns)
        assert (state.count, state.inbound, state.outbound) == (
            len(self.open_conns),
            inbound,
            len(self.open_conns) - inbound,
        )

    @invariant()
    def locks_consistent(self) -> None:
        if not hasattr(self, "state"):
            return
        state = self.state
        assert all(lock.held for lock in self.held)
        locked = {lock.stream.connection for lock in self.held}
        assert locked <= self.open_conns
        assert state.locked_connections == len(locked)
        for conn in self.open_conns:
            assert set(conn._locks) == {
                lock for lock in self.held if lock.stream.connection is conn
            }
        for member in self.active.values():
            assert member.locks_held == len(
                {lock.stream.connection for lock in self.held if lock._member is member}
            )
        if self.budget_holds:
            assert state.locked_connections <= state.lock_budget <= state.low


@pytest.fixture(autouse=True)
def _quiet_scorer_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="trio_connmgr")


TestCore = CoreMachine.TestCase
TestCore.settings = settings(
    max_examples=75,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_machine_reaches_interesting_states() -> None:
    """The machine's rules can build what the invariants are about (a smoke run)."""
    machine = CoreMachine()
    members = machine.setup(
        low=2,
        spread=2,
        grace=0.0,
        linger=30.0,
        max_ttl=50.0,
        budget=None,
        quotas=[cm.Quota(0, 4), cm.Quota(0, 4)],
    )
    kad, dht = members.values
    conns = list(machine.open_connections(PEERS[:5], cm.Direction.INBOUND).values)
    burst = machine.open_burst(dht)
    burst_streams = [machine.open_stream(dht, c, burst, 0.9) for c in conns[:2]]
    kept = machine.open_stream(kad, conns[2], None, 0.1)
    lock = machine.lock(kept, 10.0)
    machine.close_burst(burst)
    machine.regulation_round(False)
    # Target 3: the two burst-only connections, then the idle ones; never the locked one.
    assert {c for c in conns if c.closed} >= {s.connection for s in burst_streams}
    assert not kept.connection.closed
    assert lock.held
    machine.advance_and_expire(40.0)
    assert lock.endings == ["expired"]
    machine.grants_fit()
    machine.streams_and_usage()
    machine.connection_counts()
    machine.locks_consistent()
