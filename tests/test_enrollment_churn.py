"""Enrollments coming, going and coming back under the same name, against the
grants they are told and the statistics they show (SPEC §3, §4, §7, §11)."""

from __future__ import annotations

import attrs
from helpers import drain
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import trio_connmgr as cm
from trio_connmgr._core._state import BurstState, EnrollmentState, LockState, State
from trio_connmgr._core._stats import snapshot

NAMES = ["kad", "bitswap", "pubsub"]
LINGER = 10.0
QUOTAS = st.one_of(
    st.tuples(st.integers(0, 6), st.integers(0, 12)).map(lambda t: cm.Quota(min(t), max(t))),
    st.tuples(st.floats(0, 1), st.floats(0, 1)).map(lambda t: cm.Quota.share(min(t), max(t))),
)


@attrs.define(eq=False, repr=False)
class RecordingMember(EnrollmentState):
    """An enrollment that records every grant it is told."""

    told: list[cm.Grant] = attrs.Factory(list)

    def _grant_changed(self, old: cm.Grant, new: cm.Grant) -> None:
        self.told.append(new)


class EnrollmentMachine(RuleBasedStateMachine):
    """Enrol, leave and re-enrol under a few names while the share moves and
    bursts open, close and linger; statistics must describe the enrollments
    enrolled now, and each must have been told the grant it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.state = State(cm.Limits(4, 10), clock=lambda: self.now, burst_linger=LINGER)
        self.conns = [self.state.open_connection(peer, cm.Direction.OUTBOUND) for peer in "abc"]
        self.open_bursts: set[BurstState] = set()
        self.closed_at: dict[BurstState, float] = {}

    def _members(self) -> list[EnrollmentState]:
        return list(self.state.members.values())

    @rule(name=st.sampled_from(NAMES), quota=QUOTAS, strict=st.booleans())
    def enrol(self, name: str, quota: cm.Quota, strict: bool) -> None:
        member = RecordingMember(name, quota, lambda s: 0.5, 1.0, strict, self.state)
        try:
            self.state.enrol(member)
        except (cm.ConfigError, cm.QuotaDenied):
            assert member.told == []
            assert self.state.members.get(name) is not member

    @precondition(lambda self: self.state.members)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        member = data.draw(st.sampled_from(self._members()))
        for burst in [b for b in self.open_bursts if b._member is member]:
            self.open_bursts.discard(burst)
            self.closed_at[burst] = self.now
        self.state.leave(member)
        assert (member.usage, member.streams, member.locks_held) == (0, set(), 0)

    @rule(share=st.integers(0, 12))
    def set_share(self, share: int) -> None:
        self.state.set_share(share, "test")

    @precondition(lambda self: self.state.members)
    @rule(data=st.data(), streams=st.integers(0, 3))
    def open_burst(self, data: st.DataObject, streams: int) -> None:
        member = data.draw(st.sampled_from(self._members()))
        burst = BurstState(self.state.new_burst_id(), member, None, self.now)
        self.state.new_burst(member, burst)
        self.open_bursts.add(burst)
        for conn in self.conns[:streams]:
            self.state.open_stream(member, conn, cm.Direction.OUTBOUND, burst)

    @precondition(lambda self: self.open_bursts)
    @rule(data=st.data())
    def close_burst(self, data: st.DataObject) -> None:
        burst = data.draw(st.sampled_from(sorted(self.open_bursts, key=lambda b: b.id)))
        self.state.close_burst(burst)
        self.open_bursts.discard(burst)
        self.closed_at[burst] = self.now

    @precondition(lambda self: self.state.members)
    @rule(data=st.data())
    def open_stream(self, data: st.DataObject) -> None:
        member = data.draw(st.sampled_from(self._members()))
        conn = data.draw(st.sampled_from(self.conns))
        self.state.open_stream(member, conn, cm.Direction.OUTBOUND)

    @rule(data=st.data())
    def close_stream(self, data: st.DataObject) -> None:
        streams = sorted({s for c in self.conns for s in c.streams}, key=lambda s: s.id)
        if streams:
            data.draw(st.sampled_from(streams)).close()

    @rule(dt=st.sampled_from([1.0, 4.0, 11.0]), forget=st.booleans())
    def advance(self, dt: float, forget: bool) -> None:
        self.now += dt
        if forget:
            self.state.forget_bursts(self.now)

    @invariant()
    def every_enrollment_was_told_its_grant(self) -> None:
        for member in self.state.members.values():
            assert isinstance(member, RecordingMember)
            assert member.told, f"{member.name!r} holds {member.grant} but was never told"
            assert member.told[-1] == member.grant

    @invariant()
    def statistics_describe_the_enrollments_of_now(self) -> None:
        stats = snapshot(self.state)
        members = self.state.members
        assert set(stats.protocols) == set(members)
        assert stats.streams == sum(len(m.streams) for m in members.values())
        for name, member in members.items():
            figures = stats.protocols[name]
            lingering = sum(
                1
                for burst, at in self.closed_at.items()
                if burst._member is member and self.now - at <= LINGER
            )
            opened = sum(1 for b in self.open_bursts if b._member is member)
            assert figures.bursts_lingering == lingering
            assert figures.bursts_open == opened
            assert (figures.grant_min, figures.grant_max) == (member.grant.min, member.grant.max)
            assert figures.usage == len({s.connection for s in member.streams})
        assert sum(p.grant_min for p in stats.protocols.values()) <= stats.high


TestEnrollmentMachine = EnrollmentMachine.TestCase
TestEnrollmentMachine.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)


def test_re_enrolment_does_not_inherit_the_old_lingering_bursts() -> None:
    """A shrunk example of the machine: the lingering burst is the old kad's."""
    machine = EnrollmentMachine()
    machine.enrol("kad", cm.Quota(0, 3), False)
    (old,) = machine._members()
    burst = BurstState(machine.state.new_burst_id(), old, None, 0.0)
    machine.state.new_burst(old, burst)
    machine.state.close_burst(burst)
    machine.closed_at[burst] = 0.0
    machine.state.leave(old)
    machine.enrol("kad", cm.Quota(0, 3), False)
    machine.statistics_describe_the_enrollments_of_now()


async def test_the_first_grant_is_told_even_when_it_is_zero() -> None:
    # 10% of a share of 5 is no connection: Grant(0, 0), the grant an enrollment
    # holds before it is admitted. enroll() promises on_grant its initial grant.
    told: list[cm.Grant] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 5)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("/p", quota=cm.Quota.share(0, 0.1), on_grant=told.append) as p,
    ):
        assert p.grant == cm.Grant(0, 0)
        assert told == [cm.Grant(0, 0)]
        grants = [e for e in drain(events) if isinstance(e, cm.GrantChanged)]
        assert [(e.protocol, e.min, e.max, e.share) for e in grants] == [("/p", 0, 0, 5)]
        # It is told once, not again when another comes without changing it.
        async with mgr.enroll("/q", quota=cm.Quota(1, 2)):
            pass
        assert told == [cm.Grant(0, 0)]


async def test_lingering_bursts_of_a_left_enrollment_are_not_the_newcomers() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(4, 10), burst_linger=30.0) as mgr:
        async with mgr.enroll("/kad", quota=cm.Quota(0, 3)) as kad:
            async with kad.burst("lookup"):
                pass
            assert mgr.statistics().protocols["/kad"].bursts_lingering == 1
        async with mgr.enroll("/kad", quota=cm.Quota(0, 3)) as again:
            figures = mgr.statistics().protocols["/kad"]
            assert (figures.bursts_opened, figures.bursts_lingering) == (0, 0)
            async with again.burst("lookup"):
                pass
            assert mgr.statistics().protocols["/kad"].bursts_lingering == 1


def test_extending_a_lock_keeps_the_expiry_heap_small() -> None:
    # A lock extended at every message must not leave an entry per call behind.
    now = 0.0
    state = State(cm.Limits(10, 20), clock=lambda: now)
    member = EnrollmentState("/kad", cm.Quota(0, 5), lambda s: 0.5, 1.0, False, state)
    state.enrol(member)
    conn = state.open_connection("peer", cm.Direction.OUTBOUND)
    lock = LockState(
        state.new_lock_id(), member, state.open_stream(member, conn, conn.direction), 100.0
    )
    state.acquire_lock(lock)
    for _ in range(1000):
        now += 0.01
        state.extend_lock(lock, 100.0)
    assert len(state._expiries) <= 2 * 1 + 64 + 1
    assert state.next_lock_expiry() == lock.expires_at
    # Only the last extension counts.
    assert state.expire_locks(lock.expires_at - 0.001) == 0
    assert state.expire_locks(lock.expires_at) == 1
    assert lock.status == "expired"
