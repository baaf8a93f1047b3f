"""Frozen snapshots of the manager's state for :meth:`ConnectionManager.statistics`.

A snapshot copies counters the state keeps up to date anyway: taking one costs
one pass over the enrollments (not over connections or streams), so it is cheap
enough to take on every Prometheus scrape or dashboard refresh. Mappings in a
snapshot are read-only views of private copies: later changes to the manager
never show through, and a snapshot cannot be modified.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

import attrs

if TYPE_CHECKING:
    from ._state import EnrollmentState, State


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``value``."""
    return MappingProxyType(dict(value))


def _frozen_nested(value: Mapping[str, Mapping[str, float]]) -> Mapping[str, Mapping[str, float]]:
    """A read-only copy of a mapping of mappings."""
    return MappingProxyType({key: MappingProxyType(dict(inner)) for key, inner in value.items()})


@final
@attrs.frozen
class ProtocolStatistics:
    """One enrollment's figures (an entry of :attr:`Statistics.protocols`).

    Attributes:
        name: The protocol's name.
        grant_min: Connections reserved for it (``grant.min``).
        grant_max: Its ceiling (``grant.max``); above it the protocol is an offender.
        usage: Distinct connections with at least one of its open streams.
        streams: Its open streams.
        streams_opened: Streams it opened, in total.
        weight: Its weight in tallies.
        locks_held: Connections it holds locks on now.
        locks_granted: Locks granted, in total.
        locks_denied: Locks denied, in total, by reason (``closed``, ``grant``, ``budget``).
        locks_revoked: Locks revoked under pressure, in total.
        locks_expired: Locks that reached their ttl, in total.
        bursts_open: Its bursts open now.
        bursts_lingering: Its closed bursts still within ``burst_linger`` (their
            burst-only connections are the first prune candidates).
        bursts_opened: Bursts opened, in total.
        pruned: Connections pruned while it had streams on them, in total.
        scorer_errors: Scores that raised, were NaN or were not numbers (the neutral
            0.5 was used instead).
        scorer_clamped: Scores outside [0, 1], clamped into it.
        bursts_closed: Bursts closed, in total.
    """

    name: str
    grant_min: int
    grant_max: int
    usage: int
    streams: int
    streams_opened: int
    weight: float
    locks_held: int
    locks_granted: int
    locks_denied: Mapping[str, int] = attrs.field(converter=_frozen)
    locks_revoked: int
    locks_expired: int
    bursts_open: int
    bursts_lingering: int
    bursts_opened: int
    pruned: int
    scorer_errors: int
    scorer_clamped: int
    bursts_closed: int = 0

    @property
    def locks_denied_total(self) -> int:
        """Locks denied, in total, all reasons together."""
        return sum(self.locks_denied.values())


@final
@attrs.frozen
class RoundStatistics:
    """Regulation rounds so far (:attr:`Statistics.rounds`).

    Attributes:
        count: Rounds completed (automatic ones and :meth:`~ConnectionManager.trim`).
        last_trigger: Trigger of the last round (``None`` before the first).
        last_duration: Wall-clock seconds the last round took to plan and apply.
        last_victims: Connections the last round pruned.
        last_at: Manager clock time the last round ended (``None`` before the first).
        victims_by_phase: Connections pruned, in total, by phase (``burst``,
            ``idle``, ``offender``, ``tally``); phases that never pruned are absent.
        failures: Times the regulator raised: in a round it ran, or in a
            trigger's ``check()`` or ``next_check()`` between rounds. It restarted
            after each, except the one that stopped the manager (more than
            ``max_round_failures`` within ``failure_window``). A
            :meth:`~ConnectionManager.trim` round that raises is not counted:
            its caller gets the error.
        total_duration: Wall-clock seconds spent in rounds, in total.
        locks_revoked: Locks revoked by rounds, in total.
    """

    count: int
    last_trigger: str | None
    last_duration: float
    last_victims: int
    last_at: float | None
    victims_by_phase: Mapping[str, int] = attrs.field(converter=_frozen)
    failures: int = 0
    total_duration: float = 0.0
    locks_revoked: int = 0

    @property
    def victims(self) -> int:
        """Connections pruned by rounds, in total (all phases)."""
        return sum(self.victims_by_phase.values())


@final
@attrs.frozen
class Statistics:
    """A frozen snapshot of the manager (from :meth:`ConnectionManager.statistics`).

    Attributes:
        connections: Connections counted now.
        inbound: Inbound connections counted now.
        outbound: Outbound connections counted now.
        low: Effective ``low`` (moves with sensing).
        high: Effective ``high`` = the global share ``G``.
        hard: Inbound admission cap (``None``: none).
        limits_source: ``"configured"`` while the effective limits are the
            configured ones, else the cause of the last change (sensing).
        streams: Open streams (all protocols).
        locked_connections: Connections protected by a held lock.
        lock_budget: Maximum locked connections.
        protected_peers: Peers with at least one protection tag.
        connections_opened: Connections admitted, in total.
        connections_closed: Connections that stopped being counted, in total.
        connections_pruned: Connections pruned (by rounds or admission evictions), in total.
        streams_opened: Streams opened, in total.
        protocols: Per-protocol figures (:class:`ProtocolStatistics`), by name,
            for the protocols enrolled now.
        rounds: Regulation rounds (:class:`RoundStatistics`).
        refusals: Admission refusals, in total, by reason (``hard``, ...).
        close_errors: Tracked ``close()`` callbacks that raised.
        close_timeouts: Tracked ``close()`` callbacks cut off at ``close_timeout``.
        sensors: Latest sensor readings, by sensor name then reading name (empty
            without sensing).
        events_emitted: Events produced while somebody listened (subscribers or a trace).
        events_dropped: Events dropped by full subscriber buffers, in total.
        configured_low: ``low`` as configured (the ceiling of the effective one).
        configured_high: ``high`` as configured (the ceiling of the global share).
        configured_hard: ``hard`` as configured.
        subscribers: Subscriptions open now.
    """

    connections: int
    inbound: int
    outbound: int
    low: int
    high: int
    hard: int | None
    limits_source: str
    streams: int
    locked_connections: int
    lock_budget: int
    protected_peers: int
    connections_opened: int
    connections_closed: int
    connections_pruned: int
    streams_opened: int
    protocols: Mapping[str, ProtocolStatistics] = attrs.field(converter=_frozen)
    rounds: RoundStatistics
    refusals: Mapping[str, int] = attrs.field(converter=_frozen)
    close_errors: int = 0
    close_timeouts: int = 0
    sensors: Mapping[str, Mapping[str, float]] = attrs.field(
        factory=dict, converter=_frozen_nested
    )
    events_emitted: int = 0
    events_dropped: int = 0
    configured_low: int = 0
    configured_high: int = 0
    configured_hard: int | None = None
    subscribers: int = 0

    @property
    def refusals_total(self) -> int:
        """Admission refusals, in total, all reasons together."""
        return sum(self.refusals.values())


def protocol_statistics(member: EnrollmentState, lingering: int) -> ProtocolStatistics:
    """Snapshot one enrollment."""
    return ProtocolStatistics(
        name=member.name,
        grant_min=member.grant.min,
        grant_max=member.grant.max,
        usage=member.usage,
        streams=len(member.streams),
        streams_opened=member.streams_opened,
        weight=member.weight,
        locks_held=member.locks_held,
        locks_granted=member.locks_granted,
        locks_denied=member.locks_denied,
        locks_revoked=member.locks_revoked,
        locks_expired=member.locks_expired,
        bursts_open=len(member._open_bursts),
        bursts_lingering=lingering,
        bursts_opened=member.bursts_opened,
        pruned=member.pruned,
        scorer_errors=member.scorer_errors,
        scorer_clamped=member.scorer_clamped,
        bursts_closed=member.bursts_closed,
    )


def snapshot(state: State, **extra: Any) -> Statistics:
    """Snapshot ``state``; ``extra`` fills the fields the Trio layer owns.

    Lingering bursts whose ``burst_linger`` has passed are not counted, even if
    the regulator has not forgotten them yet.
    """
    now = state.clock()
    linger = state.burst_linger
    # By enrollment, not by name: the bursts of an enrollment that has left
    # linger on, and are not those of a new enrollment under the same name.
    lingering: dict[EnrollmentState, int] = {}
    for burst in state.lingering:
        if burst.closed_at is not None and burst.closed_at + linger >= now:
            member = burst._member
            lingering[member] = lingering.get(member, 0) + 1
    rounds = state.rounds
    limits = state.limits
    return Statistics(
        connections=state.count,
        inbound=state.inbound,
        outbound=state.outbound,
        low=state.low,
        high=state.high,
        hard=state.hard,
        limits_source=state.limits_source,
        streams=sum(len(m.streams) for m in state.members.values()),
        locked_connections=state.locked_connections,
        lock_budget=state.lock_budget,
        protected_peers=len(state.protected),
        connections_opened=state.connections_opened,
        connections_closed=state.connections_closed,
        connections_pruned=state.connections_pruned,
        streams_opened=state.streams_opened,
        protocols={
            name: protocol_statistics(m, lingering.get(m, 0)) for name, m in state.members.items()
        },
        rounds=RoundStatistics(
            count=rounds.count,
            last_trigger=rounds.last_trigger,
            last_duration=rounds.last_duration,
            last_victims=rounds.last_victims,
            last_at=rounds.last_at,
            victims_by_phase=rounds.victims_by_phase,
            failures=rounds.failures,
            total_duration=rounds.total_duration,
            locks_revoked=rounds.locks_revoked,
        ),
        refusals=state.refusals,
        configured_low=limits.low,
        configured_high=limits.high,
        configured_hard=limits.hard,
        **extra,
    )
