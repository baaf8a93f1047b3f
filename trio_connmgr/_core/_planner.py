"""The round planner: who is pruned, in which order, and why (SPEC §8).

:func:`plan_round` is a pure function of the state and ``now``: it reads, it
never mutates, and it does no I/O. It is written as a generator that yields
between chunks of work, so the Trio layer can checkpoint and keep the event loop
responsive on large snapshots; :func:`plan_now` drives it synchronously.

Order of victims (target: ``count - low``):

1. connections used only by recently-closed bursts, oldest close first;
2. idle connections (no streams), least recently active first;
3. connections of offending protocols (non-burst usage > grant.max), most
   over-quota protocol first, lowest tally first within it;
4. everything else by ascending tally; ties: inbound before outbound, newest first.

Never victims: connections in their grace period, of protected peers, or with a
held lock. A candidate whose removal would take any protocol using it below its
``grant.min`` is skipped, unless nothing else is left and the round is forced.
"""

from __future__ import annotations

import enum
import itertools
import math
import operator
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, final

import attrs

from .._config import Direction
from ._scoring import checked, scorer_failed

if TYPE_CHECKING:
    from ._state import Connection, EnrollmentState, State

CHUNK = 1024
"""Connections classified (or victims selected) between two yields."""
SORT_RUN = 8192
"""Longest run sorted in one go; longer lists are sorted in runs and merged lazily."""


@final
class Phase(enum.Enum):
    """The phase of a round that chose a victim."""

    BURST = "burst"
    IDLE = "idle"
    OFFENDER = "offender"
    TALLY = "tally"


@final
@attrs.frozen
class PruneReason:
    """Why a round pruned a connection.

    Attributes:
        phase: The :class:`Phase` that chose it.
        protocol: The burst's protocol (phase ``burst``) or the offending protocol
            (phase ``offender``); ``None`` otherwise.
        tally: The connection's tally at planning time.
        rank: 1-based position among the round's victims.
        trigger: Name of the trigger that started the round.
        forced: True if chosen despite taking a protocol below its ``grant.min``
            (only in forced rounds, when nothing else was left).
    """

    phase: Phase
    protocol: str | None
    tally: float
    rank: int
    trigger: str
    forced: bool = False

    def __str__(self) -> str:
        phase = (
            self.phase.value if self.protocol is None else f"{self.phase.value}({self.protocol})"
        )
        forced = ", forced below grant.min" if self.forced else ""
        return f"{phase} #{self.rank}, tally {self.tally:.3f}, trigger {self.trigger}{forced}"


@final
@attrs.frozen
class Victim:
    """A connection chosen by a plan, with its reason."""

    connection: Connection
    reason: PruneReason


@final
@attrs.frozen
class Plan:
    """The outcome of planning a round.

    Attributes:
        victims: The victims, in order.
        target: How many victims the round wanted (``count - low``).
        candidates: How many connections were prunable at all.
        excluded: Connections never prunable now (grace, protected, locked), by reason.
        min_blocked: Candidates skipped to keep a protocol at its ``grant.min``.
        grace_ends: The earliest time a connection now in its grace period becomes
            prunable, or revocable if it is locked (``inf`` if none is in grace).
    """

    victims: tuple[Victim, ...] = ()
    target: int = 0
    candidates: int = 0
    excluded: dict[str, int] = attrs.Factory(dict)
    min_blocked: tuple[Connection, ...] = ()
    grace_ends: float = math.inf

    @property
    def shortfall(self) -> int:
        """How many victims short of the target the plan is."""
        return max(0, self.target - len(self.victims))


@attrs.define(eq=False)
class _Candidate:
    conn: Connection
    tally: float
    # Protocols with open streams on it (for grant.min), and those with non-burst
    # streams (for offender accounting).
    members: tuple[EnrollmentState, ...]
    plain: tuple[EnrollmentState, ...]
    burst_key: float | None
    burst_protocol: str | None
    taken: bool = False


def exclusion(state: State, conn: Connection, now: float) -> str | None:
    """Why ``conn`` can never be a victim now: ``"closed"``, ``"protected"``,
    ``"locked"``, ``"grace"``; ``None`` if it is prunable."""
    if conn.closed:
        return "closed"
    if conn.peer in state.protected:
        return "protected"
    if conn._locks:
        return "locked"
    if now - conn.opened_at < state.grace_period:
        return "grace"
    return None


def _burst_key(state: State, conn: Connection, now: float) -> tuple[float, str] | None:
    """(latest close time, protocol) if only recently-closed bursts used ``conn``."""
    bursts = conn._bursts
    if not bursts or conn._plain_use:
        return None
    latest = None
    protocol = ""
    for burst in bursts:
        closed_at = burst.closed_at
        if closed_at is None:
            return None
        if latest is None or closed_at > latest:
            latest = closed_at
            protocol = burst.protocol
    if latest is None or now - latest > state.burst_linger:
        return None
    return latest, protocol


def _sorted(
    items: list[_Candidate],
    key: Callable[[_Candidate], Any],
    ties: Callable[[_Candidate], Any] | None = None,
) -> Generator[None, None, Iterator[_Candidate]]:
    """Sort ``items`` by ``key``, yielding between runs; return an iterator in order.

    ``items`` are in connection id order and every sort is stable, so items with
    equal keys stay in id order. ``ties``, if given, is the full order for items
    whose ``key`` is equal. Sorting by a plain float ``key`` is much faster than by
    a tuple, and ties are rare: only they pay for the full key.
    """
    if len(items) > SORT_RUN:
        for start in range(0, len(items), SORT_RUN):
            items[start : start + SORT_RUN] = sorted(items[start : start + SORT_RUN], key=key)
            yield
    # On sorted runs this is one cheap merging pass (Timsort finds the runs).
    items.sort(key=key)
    if ties is not None:
        if len(items) > SORT_RUN:
            yield
        _break_ties(items, key, ties)
    return iter(items)


def _break_ties(
    items: list[_Candidate], key: Callable[[_Candidate], Any], ties: Callable[[_Candidate], Any]
) -> None:
    """Re-order by ``ties`` every run of equal ``key`` in ``items`` (sorted by ``key``)."""
    keys = list(map(key, items))
    # Indices i with keys[i] == keys[i + 1], found without a Python-level loop.
    same = list(itertools.compress(itertools.count(), map(operator.eq, keys, keys[1:])))
    i = 0
    while i < len(same):
        start = same[i]
        stop = start + 2
        i += 1
        while i < len(same) and same[i] == stop - 1:
            stop += 1
            i += 1
        items[start:stop] = sorted(items[start:stop], key=ties)


_tally = operator.attrgetter("tally")
_burst_close = operator.attrgetter("burst_key")


def _busy_key(c: _Candidate) -> tuple[float, int, float, int]:
    conn = c.conn
    return (c.tally, conn.direction is Direction.OUTBOUND, -conn.opened_at, -conn.id)


def plan_round(
    state: State,
    now: float,
    *,
    target: int | None = None,
    trigger: str = "manual",
    forced: bool = False,
    chunk: int = CHUNK,
) -> Generator[None, None, Plan]:
    """Plan a round over ``state`` at time ``now``; yields between chunks, returns a Plan.

    Args:
        state: The state to read (not modified).
        now: The time of the round.
        target: Victims wanted; default ``count - low``.
        trigger: Name recorded in every :class:`PruneReason`.
        forced: Allow taking protocols below ``grant.min`` when nothing else is left.
        chunk: Work done between two yields.
    """
    conns = list(state.connections.values())
    if target is None:
        target = len(conns) - state.low
    if target <= 0:
        return Plan(target=max(target, 0))

    burst_first: list[_Candidate] = []
    idle: list[_Candidate] = []
    busy: list[_Candidate] = []
    by_member: dict[EnrollmentState, list[_Candidate]] = {}
    plain_usage: dict[EnrollmentState, int] = {}
    excluded: dict[str, int] = {}
    protected = state.protected
    grace = state.grace_period
    grace_ends = math.inf
    shapes: dict[tuple[EnrollmentState, ...], tuple[EnrollmentState, ...]] = {}

    for i, conn in enumerate(conns):
        if i % chunk == chunk - 1:
            yield
        if conn.closed:
            continue
        streams = conn.streams
        why = None
        if conn.peer in protected:
            why = "protected"
        elif conn._locks:
            why = "locked"
            if now - conn.opened_at < grace:
                # Revocable under pressure once its grace period ends.
                grace_ends = min(grace_ends, conn.opened_at + grace)
        elif now - conn.opened_at < grace:
            why = "grace"
            grace_ends = min(grace_ends, conn.opened_at + grace)
        if why is not None:
            excluded[why] = excluded.get(why, 0) + 1
            seen: set[EnrollmentState] = set()
            for stream in streams:
                if stream.burst is None and stream._member not in seen:
                    seen.add(stream._member)
                    plain_usage[stream._member] = plain_usage.get(stream._member, 0) + 1
            continue
        burst = _burst_key(state, conn, now) if conn._bursts else None
        if not streams:
            cand = _Candidate(conn, 0.0, (), (), None, None)
            if burst is not None:
                cand.burst_key, cand.burst_protocol = burst
                burst_first.append(cand)
            else:
                idle.append(cand)
            continue
        best: dict[EnrollmentState, float] = {}
        bursty = False
        for stream in streams:
            member = stream._member
            # score(member, stream), inlined: this loop is the hot path of a round.
            try:
                value = member.scorer(stream)
            except Exception:
                value = scorer_failed(member)
            else:
                if type(value) is not float or not 0.0 <= value <= 1.0:
                    value = checked(member, value)
            if value > best.get(member, -1.0):
                best[member] = value
            if stream.burst is not None:
                bursty = True
        total = 0.0
        for member, value in best.items():
            total += member.weight * value
        # Connections share a few protocol sets: one tuple per set, not per
        # connection, so a round leaves far fewer objects for the GC to track.
        members = tuple(best)
        members = shapes.setdefault(members, members)
        plain = members
        if bursty:
            plain = tuple({s._member: None for s in streams if s.burst is None})
            plain = shapes.setdefault(plain, plain)
        cand = _Candidate(conn, total, members, plain, None, None)
        for member in plain:
            bucket = by_member.get(member)
            if bucket is None:
                by_member[member] = [cand]
            else:
                bucket.append(cand)
        if burst is not None and not plain:
            cand.burst_key, cand.burst_protocol = burst
            burst_first.append(cand)
        busy.append(cand)

    for member, bucket in by_member.items():
        plain_usage[member] = plain_usage.get(member, 0) + len(bucket)
    usage = {member: member.usage for member in state.members.values()}
    victims: list[Victim] = []
    blocked: list[tuple[_Candidate, Phase, str | None]] = []

    def take(cand: _Candidate, phase: Phase, protocol: str | None, force: bool = False) -> None:
        cand.taken = True
        for member in cand.members:
            usage[member] = usage.get(member, 0) - 1
        for member in cand.plain:
            plain_usage[member] -= 1
        reason = PruneReason(phase, protocol, cand.tally, len(victims) + 1, trigger, force)
        victims.append(Victim(cand.conn, reason))

    def try_take(cand: _Candidate, phase: Phase, protocol: str | None) -> None:
        for member in cand.members:
            if usage.get(member, 0) - 1 < member.grant.min:
                blocked.append((cand, phase, protocol))
                return
        take(cand, phase, protocol)

    def select(
        ordered: Iterator[_Candidate], phase: Phase, protocol: str | None = None
    ) -> Generator[None, None, None]:
        for i, cand in enumerate(ordered):
            if len(victims) >= target:
                return
            if i % chunk == chunk - 1:
                yield
            if cand.taken:
                continue
            try_take(cand, phase, cand.burst_protocol if protocol is None else protocol)

    # Phase 1: burst-only connections of recently-closed bursts, oldest close first.
    ordered = yield from _sorted(burst_first, _burst_close)
    yield from select(ordered, Phase.BURST)
    # Phase 2: idle connections, least recently active first.
    ordered = yield from _sorted(idle, lambda c: c.conn.last_active)
    yield from select(ordered, Phase.IDLE)
    # Phase 3: offending protocols, most over quota first, lowest tally first within.
    offenders = [m for m, n in plain_usage.items() if n > m.grant.max and m in by_member]
    offenders.sort(key=lambda m: (-plain_usage[m] / max(m.grant.max, 0.5), m.name))
    for member in offenders:
        ordered = yield from _sorted(by_member[member], _tally)
        for i, cand in enumerate(ordered):
            if len(victims) >= target or plain_usage[member] <= member.grant.max:
                break
            if i % chunk == chunk - 1:
                yield
            if not cand.taken:
                try_take(cand, Phase.OFFENDER, member.name)
    # Phase 4: everything else by ascending tally.
    if len(victims) < target:
        ordered = yield from _sorted(busy, _tally, _busy_key)
        yield from select(ordered, Phase.TALLY, None)
    # Forced rounds may go below grant.min when nothing else is left.
    if forced:
        for cand, phase, protocol in blocked:
            if len(victims) >= target:
                break
            if not cand.taken:
                take(cand, phase, protocol, force=True)

    min_blocked = {id(c.conn): c.conn for c, _, _ in blocked if not c.taken}
    candidates = (
        len(burst_first) + len(idle) + len(busy) - sum(1 for c in burst_first if c.conn.streams)
    )
    # Let go of the candidates a run at a time: freeing a big snapshot's all at
    # once would block the event loop for tens of milliseconds.
    blocked.clear()
    by_member.clear()
    for group in (burst_first, idle, busy):
        while len(group) > SORT_RUN:
            del group[-SORT_RUN:]
            yield
    return Plan(
        tuple(victims), target, candidates, excluded, tuple(min_blocked.values()), grace_ends
    )


def plan_now(state: State, now: float, **kwargs: Any) -> Plan:
    """Run :func:`plan_round` to completion synchronously (tests, small snapshots)."""
    gen = plan_round(state, now, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            plan: Plan = stop.value
            return plan
