"""Frozen snapshots of the manager's state for :meth:`ConnectionManager.statistics`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, final

import attrs

if TYPE_CHECKING:
    from ._state import EnrollmentState, State


@final
@attrs.frozen
class ProtocolStatistics:
    """One enrollment's figures.

    Attributes:
        name: The protocol's name.
        grant_min: Connections reserved for it (``grant.min``).
        grant_max: Its ceiling (``grant.max``).
        usage: Distinct connections with at least one of its open streams.
        streams: Its open streams.
        streams_opened: Streams it opened, in total.
        weight: Its weight in tallies.
        locks_held: Connections it holds locks on now.
        locks_granted: Locks granted, in total.
        locks_denied: Locks denied, in total, by reason (closed, grant, budget).
        locks_revoked: Locks revoked under pressure, in total.
        locks_expired: Locks that reached their ttl, in total.
        bursts_open: Its bursts open now.
        bursts_lingering: Its closed bursts still within ``burst_linger``.
        bursts_opened: Bursts opened, in total.
        pruned: Connections pruned while it had streams on them, in total.
        scorer_errors: Scores that raised, were NaN or were not numbers (neutral 0.5 used).
        scorer_clamped: Scores outside [0, 1] that were clamped.
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
    locks_denied: Mapping[str, int]
    locks_revoked: int
    locks_expired: int
    bursts_open: int
    bursts_lingering: int
    bursts_opened: int
    pruned: int
    scorer_errors: int
    scorer_clamped: int


@final
@attrs.frozen
class RoundStatistics:
    """Regulation rounds so far.

    Attributes:
        count: Rounds completed.
        last_trigger: Trigger of the last round (``None`` before the first).
        last_duration: Seconds (wall clock) the last round took to plan and apply.
        last_victims: Connections the last round pruned.
        last_at: Manager clock time the last round ended.
        victims_by_phase: Connections pruned, in total, by phase.
        failures: Rounds that raised (the regulator restarted after each).
    """

    count: int
    last_trigger: str | None
    last_duration: float
    last_victims: int
    last_at: float | None
    victims_by_phase: Mapping[str, int]
    failures: int


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
        limits_source: ``"configured"`` or the cause of the last change (sensing).
        streams: Open streams.
        locked_connections: Connections protected by a held lock.
        lock_budget: Maximum locked connections.
        protected_peers: Peers with at least one protection tag.
        connections_opened: Connections admitted, in total.
        connections_closed: Connections that stopped being counted, in total.
        connections_pruned: Connections pruned by rounds, in total.
        streams_opened: Streams opened, in total.
        protocols: Per-protocol figures, by name.
        rounds: Regulation rounds.
        refusals: Admission refusals, in total, by reason.
        close_errors: Tracked ``close()`` callbacks that raised.
        close_timeouts: Tracked ``close()`` callbacks cut off at ``close_timeout``.
        sensors: Latest sensor readings by sensor name (empty without sensing).
        events_emitted: Events produced while somebody listened.
        events_dropped: Events dropped by full subscriber buffers, in total.
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
    protocols: Mapping[str, ProtocolStatistics]
    rounds: RoundStatistics
    refusals: Mapping[str, int]
    close_errors: int = 0
    close_timeouts: int = 0
    sensors: Mapping[str, Mapping[str, float]] = attrs.Factory(dict)
    events_emitted: int = 0
    events_dropped: int = 0


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
        locks_denied=dict(member.locks_denied),
        locks_revoked=member.locks_revoked,
        locks_expired=member.locks_expired,
        bursts_open=len(member._open_bursts),
        bursts_lingering=lingering,
        bursts_opened=member.bursts_opened,
        pruned=member.pruned,
        scorer_errors=member.scorer_errors,
        scorer_clamped=member.scorer_clamped,
    )


def snapshot(state: State, **extra: object) -> Statistics:
    """Snapshot ``state``; ``extra`` fills the fields the Trio layer owns."""
    lingering: dict[str, int] = {}
    for burst in state.lingering:
        lingering[burst.protocol] = lingering.get(burst.protocol, 0) + 1
    rounds = state.rounds
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
            name: protocol_statistics(m, lingering.get(name, 0))
            for name, m in state.members.items()
        },
        rounds=RoundStatistics(
            count=rounds.count,
            last_trigger=rounds.last_trigger,
            last_duration=rounds.last_duration,
            last_victims=rounds.last_victims,
            last_at=rounds.last_at,
            victims_by_phase=dict(rounds.victims_by_phase),
            failures=rounds.failures,
        ),
        refusals=dict(state.refusals),
        **extra,  # type: ignore[arg-type]
    )
