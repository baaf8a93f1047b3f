"""The round planner: who is pruned, in which order, and why (SPEC §8).

:func:`plan_round` is a function of the state and ``now``: it reads, it does no
I/O, and it changes nothing but ``state.round_now``, set while it calls the
scorers so that they all see the round's time, and restored before it yields, and
``state.close_hooks``, where it lists the connections that close until it ends.
It is written as a generator that yields between chunks of work, so the Trio
layer can checkpoint and keep the event loop responsive on large snapshots;
:func:`plan_now` drives it synchronously.

Order of victims (target: ``count - low``):

1. connections used only by recently-closed bursts, oldest close first;
2. idle connections (no streams), least recently active first;
3. connections of offending protocols (usage outside open bursts > grant.max), most
   over-quota protocol first, lowest tally first within it;
4. everything else by ascending tally; ties: inbound before outbound, newest first.

Never victims: connections in their grace period, of protected peers, or with a
held lock. A candidate whose removal would take any protocol using it below its
``grant.min`` is skipped, unless nothing else is left and the round is forced;
one skipped for a protocol that left, or whose ``grant.min`` fell, while the round
was planned is taken after the others (no longer for an offender back within its
``grant.max``).

A connection that closes while a round is planned (a scorer released it, or a
task closed it while the round yielded) is no victim from then on, its streams
count for no protocol, and the target is the count above ``low`` without it. (A
victim already chosen stays in the plan: whoever applies it skips it.) Streams
opened or closed meanwhile on connections already classified are seen once every
connection is: their protocols are read again then. Later changes are for whoever
applies the plan to check.
"""

from __future__ import annotations

import bisect
import collections
import enum
import itertools
import math
import operator
import sys
from collections.abc import Callable, Container, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, final

import attrs

from .._config import Direction
from ._scoring import checked, scorer_failed

if TYPE_CHECKING:
    from ._state import Connection, EnrollmentState, State, Stream

CHUNK = 1024
"""Connections classified (or victims selected) between two yields."""
SORT_RUN = 8192
"""Longest run sorted in one go; longer lists are sorted in runs and merged lazily."""
BATCH_MIN = 8
"""Fewest victims taken in one batch; fewer are cheaper to take one by one."""
TIE = 1e-9
"""Tallies at most this far apart (relative to the larger of the two, or absolute
below 1) are equal in phase 4: the same scores summed in another order may differ
in their last bits, and the tie rule must not depend on that. Infinite tallies
(enormous weights) are equal to each other."""


@final
class Phase(enum.Enum):
    """The phase of a round that chose a victim."""

    BURST = "burst"
    IDLE = "idle"
    OFFENDER = "offender"
    TALLY = "tally"

    # Members are singletons compared by identity: hash them by identity too
    # (Enum's default hashes the name in Python; rounds count victims by phase).
    __hash__ = object.__hash__


@final
class PruneReason(NamedTuple):
    """Why a round pruned a connection (an immutable record).

    Attributes:
        phase: The :class:`Phase` that chose it.
        protocol: The burst's protocol (phase ``burst``: of the bursts that used the
            connection, one that closed last, the first by name if several did) or
            the offending protocol (phase ``offender``); ``None`` otherwise.
        tally: The connection's tally at planning time.
        rank: 1-based position among the round's victims.
        trigger: Name of the trigger that started the round.
        forced: True if chosen despite taking a protocol below its ``grant.min``
            (only in forced rounds, when nothing else was left).
    """

    # A named tuple rather than an attrs class: a round builds one per victim,
    # and this is the cheapest immutable record Python has.
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
class Victim(NamedTuple):
    """A connection chosen by a plan, with its reason."""

    connection: Connection
    reason: PruneReason


@final
@attrs.frozen
class Plan:
    """The outcome of planning a round.

    Frozen, but not deep: the plan hands its two lists of victims and reasons
    over to whoever applies it, and the regulator overwrites each chunk of them
    with ``None`` once applied (letting go of them) instead of copying them.

    Attributes:
        connections: The victims, in order.
        reasons: Their :class:`PruneReason`, in the same order.
        target: How many victims the round wanted (``count - low``, without the
            connections that closed while it was planned).
        candidates: How many connections were prunable at all.
        excluded: Connections never prunable now (grace, protected, locked), by reason.
        min_blocked: Candidates skipped to keep a protocol at its ``grant.min``.
        grace_ends: The earliest time a connection now in its grace period becomes
            prunable, or revocable if it is locked (``inf`` if none is in grace).
    """

    connections: list[Connection] = attrs.Factory(list)
    reasons: list[PruneReason] = attrs.Factory(list)
    target: int = 0
    candidates: int = 0
    excluded: dict[str, int] = attrs.Factory(dict)
    min_blocked: tuple[Connection, ...] = ()
    grace_ends: float = math.inf

    @property
    def victims(self) -> tuple[Victim, ...]:
        """The victims with their reasons, in order (built on each access)."""
        return tuple(map(Victim, self.connections, self.reasons))

    @property
    def shortfall(self) -> int:
        """How many victims short of the target the plan is."""
        return max(0, self.target - len(self.connections))


def exclusion(state: State, conn: Connection, now: float) -> str | None:
    """Why ``conn`` can never be a victim now: ``"closed"``, ``"protected"``,
    ``"locked"``, ``"grace"``; ``None`` if it is prunable."""
    if conn.closed:
        return "closed"
    if conn.peer in state.protected:
        return "protected"
    if conn._locks:
        return "locked"
    # (Not ``now - opened_at < grace``: it may still hold at ``opened_at + grace``,
    # the time a round left short by grace waits for, which would then wait for
    # nothing, again and again at one instant.)
    if now < conn.opened_at + state.grace_period:
        return "grace"
    return None


def _plain(stream: Stream) -> bool:
    """Whether ``stream`` counts for its protocol's offender accounting: it is not
    enlisted in a burst that is still open (SPEC §7: a closed burst's streams
    count like any other)."""
    burst = stream.burst
    return burst is None or burst.closed_at is not None


def _burst_key(state: State, conn: Connection, now: float) -> tuple[float, str] | None:
    """(latest close time, protocol) if only recently-closed bursts used ``conn``.

    Of bursts of several protocols that closed last at the same time, the protocol
    first by name (as offenders of equal standing are ordered).
    """
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
        elif closed_at == latest and burst.protocol < protocol:
            # (``bursts`` is a set: its order is no order.)
            protocol = burst.protocol
    if latest is None or latest + state.burst_linger < now:  # (the edge is in)
        return None
    return latest, protocol


class _ShapeIds(dict[tuple["EnrollmentState", ...], int]):
    """Numbers the protocol sets of a round as they are first seen.

    ``shapes[n]`` is set number ``n`` (one tuple shared by every connection
    with that set) and ``counts[n]`` how many candidates have it as their
    plain set. Looking a set up is a plain dict lookup; only a new set runs
    Python code (``__missing__``).
    """

    def __init__(self) -> None:
        # Number 0 is the empty set (connections without streams).
        super().__init__({(): 0})
        self.shapes: list[tuple[EnrollmentState, ...]] = [()]
        self.counts: list[int] = [0]

    def __missing__(self, shape: tuple[EnrollmentState, ...]) -> int:
        number = self[shape] = len(self.shapes)
        self.shapes.append(shape)
        self.counts.append(0)
        return number


def _sorted(
    items: list[int],
    key: Callable[[int], Any],
) -> Generator[None, None, None]:
    """Sort ``items`` in place by ``key``, yielding between runs of :data:`SORT_RUN`.

    ``items`` are connection indices in id order and every sort is stable, so
    items with equal keys stay in id order.
    """
    if len(items) > SORT_RUN:
        for start in range(0, len(items), SORT_RUN):
            items[start : start + SORT_RUN] = sorted(items[start : start + SORT_RUN], key=key)
            yield
    # On sorted runs this is one merging pass (Timsort finds the runs). It is
    # the longest step of a big round, so it gets a step of its own.
    items.sort(key=key)
    if len(items) > SORT_RUN:
        yield


def _tied(low: float, high: float) -> bool:
    """Whether tallies ``low <= high`` are equal in phase 4 (see :data:`TIE`)."""
    return high - low <= TIE * max(1.0, high)


def _break_ties(items: list[int], key: Callable[[int], float], ties: Callable[[int], Any]) -> None:
    """Re-order by ``ties`` every run of equal ``key`` in ``items`` (sorted by ``key``,
    finite, not negative), a key :func:`_tied` with the one before it counting as
    equal to it (so the ends of a run may be further apart).

    Sorting by a plain float ``key`` is much faster than by a tuple, and ties
    are rare: only they pay for the full order.
    """
    keys = list(map(key, items))
    # Indices i with keys[i] and keys[i + 1] tied (see _tied), without a
    # Python-level loop: keys[i + 1] - keys[i] <= TIE * max(1, keys[i + 1]).
    gaps = map(operator.sub, keys[1:], keys)
    allowed = map(TIE.__mul__, map(max, itertools.repeat(1.0), keys[1:]))
    same = list(itertools.compress(itertools.count(), map(operator.le, gaps, allowed)))
    i = 0
    while i < len(same):
        start = same[i]
        stop = start + 2
        i += 1
        while i < len(same) and same[i] == stop - 1:
            stop += 1
            i += 1
        items[start:stop] = sorted(items[start:stop], key=ties)


def plan_round(
    state: State,
    now: float,
    *,
    target: int | None = None,
    trigger: str = "manual",
    forced: bool = False,
    chunk: int = CHUNK,
    unlocked: Container[Connection] = (),
) -> Generator[None, None, Plan]:
    """Plan a round over ``state`` at time ``now``; yields between chunks, returns a Plan.

    Args:
        state: The state to read (only ``round_now`` is set while scorers run).
        now: The time of the round.
        target: Victims wanted; default ``count - low``.
        trigger: Name recorded in every :class:`PruneReason`.
        forced: Allow taking protocols below ``grant.min`` when nothing else is left.
        chunk: Work done between two yields.
        unlocked: Locked connections to plan as if their locks were revoked: the
            plan a round makes again once it has revoked them (``explain()``
            asks for it without revoking anything).
    """
    # The connections that close while the round is planned, as they close: the
    # round leaves out those of its snapshot without looking at every other one.
    # (A hook only while a round is planned: closes outside rounds pay nothing.)
    closing: list[Connection] = []
    hooks = state.close_hooks
    hooks.append(closing.append)
    try:
        return (
            yield from _plan_round(state, now, closing, target, trigger, forced, chunk, unlocked)
        )
    finally:
        hooks.remove(closing.append)


def _plan_round(
    state: State,
    now: float,
    closing: list[Connection],
    target: int | None,
    trigger: str,
    forced: bool,
    chunk: int,
    unlocked: Container[Connection],
) -> Generator[None, None, Plan]:
    """The body of :func:`plan_round`; ``closing`` lists the connections closed since
    it started (emptied as they are left out)."""
    conns = list(state.connections.values())
    n = len(conns)
    whole = target is None  # the target is the count above low (not the caller's)
    if target is None:
        target = n - state.low
    if target <= 0:
        return Plan(target=max(target, 0))

    # The snapshot is kept in columns indexed like ``conns`` (floats, small ints
    # and shared tuples, no object per connection): cheap to build, to sort by
    # index and to free, and next to nothing for the garbage collector to track.
    tallies = [0.0] * n
    # Protocols with open streams on each candidate (for grant.min), and those
    # with streams outside open bursts (for offender accounting): the number of that set
    # in ``shapes``, one tuple shared by every connection with the same set.
    member_shape = [0] * n
    plain_shape = [0] * n
    # Every protocol set seen, numbered; and how many candidates have each as
    # their plain set (offender accounting needs no per-protocol pass).
    shape_ids = _ShapeIds()
    shapes, shape_counts = shape_ids.shapes, shape_ids.counts
    bursts: dict[int, tuple[float, str]] = {}
    burst_first: list[int] = []
    idle: list[int] = []
    busy: list[int] = []
    plain_usage: dict[EnrollmentState, int] = {}
    excluded: dict[str, int] = {}
    protected = state.protected
    grace = state.grace_period
    grace_ends = math.inf
    # 0 once taken, or once seen closed (a scorer may release a connection, a
    # task may close one while the round yields; ``closing`` lists them).
    free = bytearray(b"\x01") * n
    opened, streams_closed = state.streams_opened, state.streams_closed
    held: dict[int, str] = {}  # the excluded connections, with why
    both = 0  # candidates both in ``burst_first`` and in ``busy``
    dropped = 0  # candidates seen closed after they were classified

    for start in range(0, n, chunk):
        if start:
            yield
        # Scorers see the round's time (Stream.idle_time), never the time between
        # chunks. (Restored, not cleared: a scorer may plan a round of its own,
        # e.g. through explain().)
        outer_now, state.round_now = state.round_now, now
        try:
            for i in range(start, min(start + chunk, n)):
                conn = conns[i]
                if conn.closed:
                    free[i] = 0
                    if whole:
                        target -= 1
                    continue
                streams = conn.streams
                why = None
                if protected and conn.peer in protected:
                    why = "protected"
                elif conn._locks and conn not in unlocked:
                    why = "locked"
                    if now < conn.opened_at + grace:  # (as in exclusion())
                        # Revocable under pressure once its grace period ends.
                        grace_ends = min(grace_ends, conn.opened_at + grace)
                elif now < conn.opened_at + grace:
                    why = "grace"
                    grace_ends = min(grace_ends, conn.opened_at + grace)
                if why is not None:
                    excluded[why] = excluded.get(why, 0) + 1
                    held[i] = why
                    # Its protocols' usage counts it (offenders, grant.min), and
                    # counts it no more if it closes while the round is planned.
                    member_shape[i] = shape_ids[tuple(conn._protocols)]
                    sid = shape_ids[tuple({s._member: None for s in streams if _plain(s)})]
                    plain_shape[i] = sid
                    shape_counts[sid] += 1
                    continue
                burst = _burst_key(state, conn, now) if conn._bursts else None
                if not streams:
                    if burst is not None:
                        bursts[i] = burst
                        burst_first.append(i)
                    else:
                        idle.append(i)
                    continue
                total = 0.0
                bursty = False
                protocols = conn._protocols
                # With one stream per protocol (the common case) each score is its
                # protocol's best: no need to keep the best per protocol.
                best: dict[EnrollmentState, float] | None = (
                    None if len(protocols) == len(streams) else {}
                )
                # A snapshot: a scorer may close a stream (its own, stale one).
                for stream in tuple(streams):
                    member = stream._member
                    # score(member, stream), inlined: this loop is the hot path of a round.
                    try:
                        value = member.scorer(stream)
                    except Exception:
                        value = scorer_failed(member)
                    else:
                        if type(value) is not float or not 0.0 <= value <= 1.0:
                            value = checked(member, value)
                    if best is None:
                        total += member.weight * value
                    elif value > best.get(member, -1.0):
                        best[member] = value
                    if stream.burst is not None:
                        bursty = True
                if conn.closed:  # by a scorer (mypy cannot tell that it may)
                    free[i] = 0  # type: ignore[unreachable]
                    if whole:
                        target -= 1
                    continue
                if best is None:
                    members = tuple(protocols)
                else:
                    for member, value in best.items():
                        total += member.weight * value
                    members = tuple(best)
                tallies[i] = total
                sid = member_shape[i] = shape_ids[members]
                if bursty:
                    # Offender accounting leaves out the streams of open bursts;
                    # the burst phase takes connections that only bursts used.
                    if burst is not None and all(s.burst is not None for s in streams):
                        bursts[i] = burst
                        burst_first.append(i)
                        both += 1
                    sid = shape_ids[tuple({s._member: None for s in streams if _plain(s)})]
                plain_shape[i] = sid
                shape_counts[sid] += 1
                busy.append(i)
        finally:
            state.round_now = outer_now

    # Usage by protocol, from the end of classification on (read from the
    # protocols then, as scorers may have closed streams).
    usage: dict[EnrollmentState, int] = {}
    by_shape = True  # until then, usage is counted by protocol set

    def leave_out_closed() -> None:
        """Leave out the connections not yet taken that closed since they were
        classified: never victims, in no protocol's usage, and no longer above low."""
        nonlocal dropped, target, grace_ends
        ends = grace_ends
        closed = closing[:]
        del closing[:]
        for conn in closed:
            # ``conns`` is in id order (ids grow as connections are tracked).
            i = bisect.bisect_left(conns, conn.id, key=_ID)
            if i == n or conns[i] is not conn or not free[i]:
                continue  # not in the snapshot, taken, or seen closed as classified
            free[i] = 0
            if whole:
                target -= 1
            why = held.pop(i, None)
            if why is None:
                dropped += 1
            elif excluded[why] == 1:
                del excluded[why]
            else:
                excluded[why] -= 1
            if why is not None and why != "protected" and conns[i].opened_at + grace == ends:
                grace_ends = math.inf  # (it may have set it: found again below)
            if by_shape:
                shape_counts[plain_shape[i]] -= 1
            else:
                for member in shapes[member_shape[i]]:
                    usage[member] -= 1
                for member in shapes[plain_shape[i]]:
                    plain_usage[member] -= 1
        if grace_ends != ends:
            # A connection whose grace period ended first closed: the earliest end
            # among those still held (the locked and in-grace ones, as classified).
            grace_ends = min(
                (
                    conns[j].opened_at + grace
                    for j, why in held.items()
                    if why != "protected" and now < conns[j].opened_at + grace
                ),
                default=math.inf,
            )

    if closing:
        leave_out_closed()
    if state.streams_opened != opened or state.streams_closed != streams_closed:
        # A stream opened or closed on a connection after it was classified (a
        # scorer closed a stale one, or a task while the round yielded): read the
        # protocols again, so that each take lowers the usage of exactly the
        # protocols the usage read below counts it for.
        for i in itertools.compress(range(n), free):
            conn = conns[i]
            live = tuple(conn._protocols)
            if live != shapes[member_shape[i]]:
                member_shape[i] = shape_ids[live]
            # Offender accounting too: the protocols with streams outside open
            # bursts (every protocol on it, if no burst used it).
            plain = (
                tuple({s._member: None for s in conn.streams if _plain(s)})
                if conn._bursts
                else live
            )
            if plain != shapes[plain_shape[i]]:
                shape_counts[plain_shape[i]] -= 1
                sid = plain_shape[i] = shape_ids[plain]
                shape_counts[sid] += 1
    if any(member.closed for shape in shapes for member in shape):
        # A protocol that left between two chunks no longer uses the connections
        # classified with it: it keeps none of them for its grant.min.
        shapes[:] = [tuple(m for m in shape if not m.closed) for shape in shapes]
    for plain, shared in zip(shapes, shape_counts, strict=True):
        for member in plain:
            plain_usage[member] = plain_usage.get(member, 0) + shared
    # Every protocol a candidate's grant.min check can read.
    in_play = {member for shape in shapes for member in shape}
    usage.update((member, member.usage) for member in in_play)
    by_shape = False
    victims: list[Connection] = []
    reasons: list[PruneReason] = []
    blocked: list[tuple[int, Phase, str | None]] = []

    def take(i: int, phase: Phase, protocol: str | None, forced: bool = False) -> None:
        free[i] = 0
        for member in shapes[member_shape[i]]:
            usage[member] -= 1
        for member in shapes[plain_shape[i]]:
            plain_usage[member] -= 1
        # Two lists, not a pair per victim: fewer objects for the garbage
        # collector to track while a big round is being planned.
        victims.append(conns[i])
        reasons.append(PruneReason(phase, protocol, tallies[i], len(victims), trigger, forced))

    def take_all(run: list[int], phase: Phase, protocols: Iterable[str | None]) -> None:
        """``take(i, phase, protocol)`` for each of ``run`` and of ``protocols``, in
        order: counted per protocol set rather than per victim, the reasons built
        in C. The caller knows that none of ``run`` is blocked by a grant.min and
        that the phase does not stop before the last of them."""
        for i in run:
            free[i] = 0
        for sid, k in collections.Counter(map(member_shape.__getitem__, run)).items():
            for member in shapes[sid]:
                usage[member] -= k
        for sid, k in collections.Counter(map(plain_shape.__getitem__, run)).items():
            for member in shapes[sid]:
                plain_usage[member] -= k
        rank = len(victims) + 1
        victims.extend(map(conns.__getitem__, run))
        fields = zip(
            itertools.repeat(phase),
            protocols,
            map(tallies.__getitem__, run),
            range(rank, rank + len(run)),
            itertools.repeat(trigger),
            itertools.repeat(False),
        )
        # PruneReason._make without a Python call per victim (nor its check of
        # the number of fields: these are all six).
        reasons.extend(map(tuple.__new__, itertools.repeat(PruneReason), fields))

    def names(items: list[int], phase: Phase, protocol: str | None) -> Iterable[str | None]:
        """The ``protocol`` of each reason for ``items``: the burst's in the burst
        phase (a burst-only connection taken in a later phase names none)."""
        if phase is Phase.BURST:
            return [bursts[i][1] for i in items]
        return itertools.repeat(protocol)

    def batch(
        fresh: list[int], phase: Phase, protocol: str | None, wanted: int
    ) -> list[int] | None:
        """Take from ``fresh`` in one go the victims that the one-by-one loop of
        :func:`select` would take first, and record the candidates it would find
        blocked before them. Returns the candidates left for that loop, or None if
        the phase is done (``wanted`` taken)."""
        # A protocol at or below its grant.min blocks every candidate it is on.
        # Every take lowers each other protocol's usage by at most one: if each is
        # at least ``slack`` above its grant.min, the next ``slack`` takes of
        # candidates without a blocking protocol cannot be blocked either.
        room = {member: usage[member] - member.grant.min for member in in_play}
        slack = min((r for r in room.values() if r > 0), default=wanted)
        takeable: Sequence[int]
        if min(room.values(), default=1) > 0:
            ok = None
            takeable = range(len(fresh))
        else:
            shape_ok = bytes(all(room[m] > 0 for m in shape) for shape in shapes)
            ok = list(map(shape_ok.__getitem__, map(member_shape.__getitem__, fresh)))
            takeable = list(itertools.compress(range(len(fresh)), ok))
        count = min(wanted, slack, len(takeable))
        if count < BATCH_MIN:
            return fresh
        stop = takeable[count - 1] + 1
        if ok is None:
            run = fresh[:stop]
        else:
            run = list(itertools.compress(fresh[:stop], ok))
            stuck = list(itertools.compress(fresh[:stop], map(operator.not_, ok)))
            blocked.extend(zip(stuck, itertools.repeat(phase), names(stuck, phase, protocol)))
        take_all(run, phase, names(run, phase, protocol))
        return None if count == wanted else fresh[stop:]

    # Phases 3 and 4 read ``busy`` by ascending tally, each run of tied tallies
    # (see TIE) in the full order (_tie_key), whatever the last bits of their sums
    # (a connection's scores are summed in the order of its set of streams). The
    # ties are broken window by window, only as far as the phases read; a window
    # ends between two different tallies, so that each run of ties is re-ordered
    # whole (a run as long as the list, from a constant scorer, makes one window).
    ordered_to = 0  # busy[:ordered_to] is in that order

    def order_ties(stop: int) -> None:
        """Put at least ``busy[:stop]`` in the order of phases 3 and 4."""
        nonlocal ordered_to
        while ordered_to < min(stop, len(busy)):
            end = min(ordered_to + chunk, len(busy))
            # (_tied inlined: with one constant score, this runs once per candidate.)
            last = ties_by[busy[end - 1]]
            while end < len(busy):
                key = ties_by[busy[end]]
                if key - last > TIE * (key if key > 1.0 else 1.0):
                    break
                last = key
                end += 1
            window = busy[ordered_to:end]
            _break_ties(window, ties_by.__getitem__, lambda i: _tie_key(conns[i]))
            busy[ordered_to:end] = window
            ordered_to = end

    def select(
        ordered: list[int], phase: Phase, offender: EnrollmentState | None = None
    ) -> Generator[None, None, None]:
        """Take candidates from ``ordered`` until the target is reached (or, for an
        offender, from those whose plain protocols include it until it is
        back within its ``grant.max``), skipping those a grant.min blocks.
        ``busy`` has its ties broken as it is read."""
        name = None
        has: set[int] | None = None
        if offender is not None:
            name = offender.name
            has = {sid for sid, plain in enumerate(shapes) if offender in plain}
        for start in range(0, len(ordered), chunk):
            if start:
                yield
            if closing:
                leave_out_closed()
            if ordered is busy:
                order_ties(start + chunk)
            part = ordered[start : start + chunk]
            # The candidates still free (and, for an offender, its own), filtered in C.
            fresh = list(itertools.compress(part, map(free.__getitem__, part)))
            if has is not None:
                fresh = list(
                    itertools.compress(
                        fresh, map(has.__contains__, map(plain_shape.__getitem__, fresh))
                    )
                )
            wanted = target - len(victims)
            if offender is not None:
                # Each take lowers the offender's plain usage by exactly one.
                wanted = min(wanted, plain_usage[offender] - offender.grant.max)
            if wanted <= 0:
                return
            if len(fresh) >= BATCH_MIN:
                left = batch(fresh, phase, name, wanted)
                if left is None:
                    return
                fresh = left
            for i in fresh:
                if len(victims) >= target:
                    return
                if offender is not None and plain_usage[offender] <= offender.grant.max:
                    return
                protocol = bursts[i][1] if phase is Phase.BURST else name
                for member in shapes[member_shape[i]]:
                    if usage[member] <= member.grant.min:
                        blocked.append((i, phase, protocol))
                        break
                else:
                    take(i, phase, protocol)

    # Phase 1: burst-only connections of recently-closed bursts, oldest close first.
    if burst_first:
        yield from _sorted(burst_first, lambda i: bursts[i][0])
        yield from select(burst_first, Phase.BURST)
    # Phase 2: idle connections, least recently active first.
    if idle and len(victims) < target:
        yield from _sorted(idle, lambda i: conns[i].last_active)
        yield from select(idle, Phase.IDLE)
    # Phases 3 and 4 take candidates by ascending tally (ties: see order_ties).
    ties_by = tallies  # the tallies that ties are found in
    if len(victims) < target:
        yield from _sorted(busy, tallies.__getitem__)
        if busy and tallies[busy[-1]] == math.inf:
            # Tallies overflowed (weights near the largest float). The infinite
            # ones are equal (but inf - inf is NaN: they are found tied as the
            # largest float, which ties no finite tally but the very largest).
            ties_by = [min(value, sys.float_info.max) for value in tallies]
    # Phase 3: offending protocols, most over quota first, lowest tally first within.
    offenders = [m for m, k in plain_usage.items() if k > m.grant.max and not m.closed]
    offenders.sort(key=lambda m: (-plain_usage[m] / max(m.grant.max, 0.5), m.name))
    for offender in offenders:
        if len(victims) >= target:
            break
        yield from select(busy, Phase.OFFENDER, offender)
    # Phase 4: everything else by ascending tally.
    if len(victims) < target:
        yield from select(busy, Phase.TALLY)
    # Then the candidates that no protocol blocks any more: the one that did left,
    # or its grant.min fell, while the round yielded. Taking them takes no
    # protocol below its grant.min: no forced victims. They come in the order
    # they were skipped. A burst-only one comes after the victims of later
    # phases: it is named a tally victim, since burst victims come first in a
    # plan. An offender back within its grant.max (or gone) is no longer why a
    # candidate it skipped is taken: it is named a tally victim too.
    offending = {m.name: m for m in offenders}

    def label(phase: Phase, protocol: str | None) -> tuple[Phase, str | None]:
        if phase is Phase.OFFENDER:
            offender = offending[protocol or ""]
            if offender.closed or plain_usage[offender] <= offender.grant.max:
                return Phase.TALLY, None
        return phase, protocol

    for i, phase, protocol in blocked:
        if len(victims) >= target:
            break
        if free[i] and all(
            member.closed or usage[member] > member.grant.min for member in shapes[member_shape[i]]
        ):
            if phase is Phase.BURST:
                phase, protocol = Phase.TALLY, None
            take(i, *label(phase, protocol))
    # Forced rounds may go below grant.min when nothing else is left.
    if forced:
        for i, phase, protocol in blocked:
            if len(victims) >= target:
                break
            if free[i]:
                take(i, *label(phase, protocol), forced=True)

    min_blocked = {i: conns[i] for i, _, _ in blocked if free[i]}
    candidates = len(burst_first) + len(idle) + len(busy) - both - dropped
    return Plan(
        victims,
        reasons,
        max(target, 0),  # (below low once enough closed while it was planned)
        candidates,
        excluded,
        tuple(min_blocked.values()),
        grace_ends,
    )


_ID = operator.attrgetter("id")


def _tie_key(conn: Connection) -> tuple[bool, float, int]:
    """Phase 4's order among equal tallies: inbound before outbound; newest first."""
    return (conn.direction is Direction.OUTBOUND, -conn.opened_at, -conn.id)


def plan_now(state: State, now: float, **kwargs: Any) -> Plan:
    """Run :func:`plan_round` to completion synchronously (tests, small snapshots)."""
    gen = plan_round(state, now, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            plan: Plan = stop.value
            return plan
