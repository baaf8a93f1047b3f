"""check_invariants: SPEC §12 asserted on a live (or closed) manager."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._config import Direction, check_bool
from .._core._events import RoundCompleted
from .._core._planner import Phase
from .._core._quota import allocate
from .._errors import ConfigError
from ._time import RoundResult

if TYPE_CHECKING:
    from .._core._state import Connection, State
    from .._manager import ConnectionManager


class _Omitted(enum.Enum):
    """``last_round`` not given: check the manager only, no round."""

    OMITTED = enum.auto()

    def __repr__(self) -> str:
        return "<omitted>"


_OMITTED = _Omitted.OMITTED


def check_invariants(
    manager: ConnectionManager,
    *,
    last_round: RoundResult | RoundCompleted | _Omitted | None = _OMITTED,
    allow_round_failures: bool = False,
) -> None:
    """Assert SPEC §12 (and the bookkeeping it relies on) on a live or closed manager.

    Synchronous and read-only: call it between any two steps of a test. It
    checks everything that can be checked on the manager as it is now:

    - **connections**: every counted connection is open and registered under its
      id; the counts by direction add up (``inbound + outbound == count``);
    - **streams**: no open stream on a closed connection or of a protocol that
      has left; each connection's per-protocol stream counts match its streams;
    - **usage** (§4): each protocol's ``usage`` equals the number of distinct
      connections carrying at least one of its open streams;
    - **grants** (§12.5): the sum of ``grant.min`` is at most ``G`` and
      ``min <= max <= G`` for each grant, and every grant is the one the
      allocation gives for the current ``G`` and quotas (none is stale);
    - **locks** (§6): the locked-connection count matches the connections with
      held locks and is within the lock budget (for the configured ``low``:
      sensing may shrink the budget below locks granted earlier), and every held
      lock sits on its stream's open connection and is counted for its protocol;
    - **regulation** (§12.6): no round has failed, unless
      ``allow_round_failures``;
    - **the last round**, if given (§12.1, 2, 3, 4, 7): after a round that
      started above ``high``, ``count_after - arrived <= max(low, unprunable)``
      (the connections that arrived after it planned were not its to prune),
      where ``high`` is the effective high as the round started
      (``RoundCompleted.high_before``) and ``low`` the low its last plan
      worked to (``RoundCompleted.low_planned``), or the effective low as it
      completed if sensing raised it meanwhile (the round stops there); the
      limits as it completed (a :class:`RoundResult`'s ``limits``, the limits
      now for a bare event) stand in for an event that lacks those (a trace of
      an earlier release); with a :class:`RoundResult`, also: each pruned
      connection is closed as ``"pruned"`` with no open stream, was past its
      grace period, was not of a protected peer nor under a held lock when
      pruned, victims have distinct ranks with burst-phase victims first
      within each plan of the round (a round that skipped victims as it
      applied plans again, and ``RoundCompleted.replan_ranks`` says where each
      plan made again begins), and only a forced round took a protocol below
      its ``grant.min`` (each such take marked forced), after every other
      victim (a burst-only connection taken that way comes last, as the last
      resort);
    - **a closed manager** (§12.8): no connection, no enrollment left.

    Args:
        manager: The manager to check.
        last_round: The latest round: from :func:`force_round`, from
            :func:`record_rounds`, or a :class:`trio_connmgr.RoundCompleted`
            event. A bare event does not carry the limits as the round
            completed: pass it right after the round (before the effective
            limits change). Omit it to check the
            manager only. ``None`` (say, ``rounds.last`` when no round ran
            while recording) is a violation, "no round has completed": the
            test meant to check a round and there is none.
        allow_round_failures: Do not fail because a round raised (for tests that
            inject failures on purpose).

    Raises:
        AssertionError: listing every violation found, one per line, for example
            ``"usage of '/kad' is 3 but its open streams are on 2 connections"``.
        ConfigError: if ``last_round`` is of another type (say, the
            :class:`RoundRecorder` itself rather than its ``last``), or
            ``allow_round_failures`` is not a bool.
    """
    check_bool("check_invariants allow_round_failures", allow_round_failures)
    if not isinstance(last_round, RoundResult | RoundCompleted | _Omitted | None):
        raise ConfigError(
            "check_invariants last_round must be a RoundResult, a RoundCompleted event "
            f"or None, got {last_round!r}"
        )
    state = manager._state
    problems: list[str] = []
    if state.closed:
        _check_closed(state, problems)
    else:
        _check_connections(state, problems)
        _check_streams(state, problems)
        _check_grants(state, problems)
        _check_locks(state, problems)
    if state.rounds.failures and not allow_round_failures:
        problems.append(
            f"{state.rounds.failures} regulation round(s) raised (invariant 6: a round "
            "never breaks; see the 'trio_connmgr.regulator' log)"
        )
    if last_round is None:
        problems.append(
            "last_round is None: no round has completed (record_rounds saw none); "
            "omit last_round to check the manager alone"
        )
    elif not isinstance(last_round, _Omitted):
        _check_round(state, last_round, problems)
    if problems:
        raise AssertionError(
            f"trio_connmgr invariants violated ({len(problems)}):\n  - " + "\n  - ".join(problems)
        )


def _check_closed(state: State, problems: list[str]) -> None:
    if state.connections:
        problems.append(
            f"the manager is closed but still counts {len(state.connections)} connection(s): "
            f"{sorted(state.connections)}"
        )
    if state.inbound or state.outbound:
        problems.append(
            f"the manager is closed but counts inbound={state.inbound}, outbound={state.outbound}"
        )
    if state.members:
        problems.append(
            "the manager is closed but these protocols are still enrolled: "
            f"{sorted(state.members)}"
        )
    if state.locked_connections:
        problems.append(
            f"the manager is closed but {state.locked_connections} connection(s) count as locked"
        )


def _check_connections(state: State, problems: list[str]) -> None:
    inbound = outbound = 0
    for key, conn in state.connections.items():
        if conn.id != key:
            problems.append(f"connection #{conn.id} is registered under id {key}")
        if conn.closed:
            problems.append(
                f"connection #{conn.id} is closed ({conn.close_reason}) but still counted"
            )
        if conn.direction is Direction.INBOUND:
            inbound += 1
        else:
            outbound += 1
    if (state.inbound, state.outbound) != (inbound, outbound):
        problems.append(
            f"counts by direction are inbound={state.inbound}, outbound={state.outbound} "
            f"but the connections are {inbound} inbound and {outbound} outbound"
        )
    if state.inbound + state.outbound != state.count:
        problems.append(
            f"inbound ({state.inbound}) + outbound ({state.outbound}) != count ({state.count})"
        )


def _check_streams(state: State, problems: list[str]) -> None:
    members = set(state.members.values())
    for conn in state.connections.values():
        per_member: dict[object, int] = {}
        for stream in conn.streams:
            if stream.closed:
                problems.append(f"closed stream #{stream.id} is still on connection #{conn.id}")
            if stream.connection is not conn:
                problems.append(
                    f"stream #{stream.id} is on connection #{conn.id} but belongs to "
                    f"#{stream.connection.id}"
                )
            if stream._member not in members:
                problems.append(
                    f"stream #{stream.id} on connection #{conn.id} belongs to "
                    f"{stream.protocol!r}, which is not enrolled"
                )
            per_member[stream._member] = per_member.get(stream._member, 0) + 1
        counted = {m: n for m, n in conn._protocols.items() if n}
        if counted != per_member:
            problems.append(
                f"connection #{conn.id} counts streams per protocol "
                f"{_by_name(counted)} but carries {_by_name(per_member)}"
            )
    for member in state.members.values():
        if member.closed:
            problems.append(f"protocol {member.name!r} has left but is still enrolled")
        carriers: set[int] = set()
        for stream in member.streams:
            conn = stream.connection
            if stream.closed:
                problems.append(f"closed stream #{stream.id} is still counted for {member.name!r}")
            elif conn.closed:
                problems.append(
                    f"stream #{stream.id} of {member.name!r} is open on closed connection "
                    f"#{conn.id} ({conn.close_reason})"
                )
            elif stream not in conn.streams:
                problems.append(
                    f"stream #{stream.id} of {member.name!r} is missing from connection "
                    f"#{conn.id}'s streams"
                )
            carriers.add(conn.id)
        if member.usage != len(carriers):
            problems.append(
                f"usage of {member.name!r} is {member.usage} but its open streams are on "
                f"{len(carriers)} connection(s)"
            )


def _by_name(counts: Mapping[Any, int]) -> dict[str, int]:
    return {getattr(m, "name", repr(m)): n for m, n in counts.items()}


def _check_grants(state: State, problems: list[str]) -> None:
    share = state.share
    members = list(state.members.values())
    total = 0
    for member in members:
        grant = member.grant
        total += grant.min
        if not 0 <= grant.min <= grant.max <= share:
            problems.append(
                f"grant of {member.name!r} is min={grant.min}, max={grant.max}: "
                f"invariant 5 wants 0 <= min <= max <= G={share}"
            )
    if total > share:
        problems.append(f"the grant mins add up to {total} > G={share} (invariant 5)")
    expected = allocate(share, [m.quota for m in members], [m.strict for m in members])
    for member, grant in zip(members, expected, strict=True):
        if member.grant != grant:
            problems.append(
                f"grant of {member.name!r} is min={member.grant.min}, max={member.grant.max} "
                f"but allocation gives min={grant.min}, max={grant.max} for G={share} (stale)"
            )


def _check_locks(state: State, problems: list[str]) -> None:
    locked = [conn for conn in state.connections.values() if conn._locks]
    if state.locked_connections != len(locked):
        problems.append(
            f"locked_connections is {state.locked_connections} but {len(locked)} "
            "connection(s) hold locks"
        )
    configured = state._lock_budget
    if configured is None:
        # SPEC §6: the default budget is half of low. Sensing may lower low (and the
        # budget with it) below what held locks were granted under: those locks stay
        # until they end, so the bound is the budget for the configured low.
        configured = state.limits.low // 2
        if state.lock_budget != state.low // 2:
            problems.append(
                f"the lock budget is {state.lock_budget} but half of low={state.low} is "
                f"{state.low // 2} (SPEC §6 default)"
            )
    if len(locked) > configured:
        problems.append(
            f"{len(locked)} connections are locked, over the lock budget of {configured}"
        )
    per_member: dict[object, dict[int, int]] = {}
    for conn in locked:
        for lock in conn._locks:
            if not lock.held:
                problems.append(
                    f"lock #{lock.id} protects connection #{conn.id} but is {lock.status}"
                )
            if lock.stream.connection is not conn:
                problems.append(
                    f"lock #{lock.id} sits on connection #{conn.id} but its stream is on "
                    f"#{lock.stream.connection.id}"
                )
            counts = per_member.setdefault(lock._member, {})
            counts[conn.id] = counts.get(conn.id, 0) + 1
    for member in state.members.values():
        have = {conn.id: n for conn, n in member._locked.items()}
        if have != per_member.get(member, {}):
            problems.append(
                f"{member.name!r} counts locks {have} (connection id: locks) but holds "
                f"{per_member.get(member, {})}"
            )
        for conn in member._locked:
            if conn.closed:
                problems.append(f"{member.name!r} counts a lock on closed connection #{conn.id}")


def _check_round(
    state: State, last_round: RoundResult | RoundCompleted, problems: list[str]
) -> None:
    low, high = state.low, state.high
    pruned_at: tuple[float, ...] = ()
    if isinstance(last_round, RoundResult):
        completed = last_round.completed
        pruned: Iterable[Connection] = last_round.pruned
        pruned_at = last_round._pruned_at
        if last_round.limits is not None:
            # The limits the round worked to: sensing may have changed them since.
            low, high = last_round.limits.low, last_round.limits.high
        problems.extend(last_round._violations)
    else:
        completed = last_round
        pruned = ()
    # Sensing may move the limits while the round runs: what counts is the high as
    # it started and the low its last plan worked to (or the low as it completed,
    # if higher: it stops there). An event of an earlier release carries neither:
    # the limits as it completed stand in.
    if completed.high_before is not None:
        high = completed.high_before
    if completed.low_planned is not None:
        low = max(low, completed.low_planned)
    if completed.count_before > high:
        # Connections that arrived after the round last planned are not its to prune.
        bound = max(low, completed.unprunable)
        if completed.count_after - completed.arrived > bound:
            arrived = (
                f" ({completed.arrived} of them opened after it planned)"
                if completed.arrived
                else ""
            )
            problems.append(
                f"round {completed.number} ({completed.trigger}) started at count "
                f"{completed.count_before} > high={high} and left {completed.count_after} "
                f"connections{arrived}, above max(low={low}, "
                f"unprunable={completed.unprunable}) (invariant 1)"
            )
    pruned = list(pruned)
    ranks: list[int] = []
    # When each victim was pruned: a round may run on long after (the clock moves
    # while it yields), and a victim in its grace period then is past it by the
    # round's end. (A result made by hand has only the round's end.)
    times = pruned_at or (completed.time,) * len(pruned)
    for conn, at in zip(pruned, times, strict=True):
        reason = conn.prune_reason
        if not conn.closed or conn.close_reason != "pruned" or reason is None:
            problems.append(
                f"connection #{conn.id} was reported pruned by round {completed.number} but "
                f"is {conn.close_reason or 'open'} with prune_reason {reason}"
            )
            continue
        ranks.append(reason.rank)
        if conn.streams:
            problems.append(
                f"pruned connection #{conn.id} still has {len(conn.streams)} open stream(s) "
                "(invariant 7)"
            )
        # (As the regulator compares: far along the clock, ``at - opened_at`` may
        # come out short of the grace period at its very end.)
        if at < conn.opened_at + state.grace_period:
            problems.append(
                f"connection #{conn.id} was pruned at t={at:.3f}, "
                f"{at - conn.opened_at:.3f}s after opening, within its grace "
                f"period of {state.grace_period}s (invariant 2)"
            )
        if reason.forced and not completed.forced:
            problems.append(
                f"connection #{conn.id} was taken below a grant.min by round "
                f"{completed.number}, which was not forced (invariant 3)"
            )
    if len(set(ranks)) != len(ranks):
        problems.append(f"round {completed.number} gave duplicate ranks {sorted(ranks)}")
    # Victims taken below a grant.min (forced rounds only) are the last resort:
    # they come after every other victim, whatever their phase, so invariant 4
    # orders the others only, within each plan of the round: a plan made again
    # for victims skipped as it applied ranks its own burst-only victims first,
    # after the earlier plans' victims (``replan_ranks`` says where each begins).
    reasons = [c.prune_reason for c in pruned if c.prune_reason is not None]
    forced = [r.rank for r in reasons if r.forced]
    burst = [r.rank for r in reasons if not r.forced and r.phase is Phase.BURST]
    other = [r.rank for r in reasons if not r.forced and r.phase is not Phase.BURST]
    starts = completed.replan_ranks
    for plan in range(len(starts) + 1):
        first = starts[plan - 1] if plan else -math.inf
        end = starts[plan] if plan < len(starts) else math.inf
        plan_burst = [rank for rank in burst if first <= rank < end]
        plan_other = [rank for rank in other if first <= rank < end]
        if plan_burst and plan_other and max(plan_burst) > min(plan_other):
            made_again = f" in the plan it made again from rank {first}" if plan else ""
            problems.append(
                f"round {completed.number} pruned a burst-only connection (rank "
                f"{max(plan_burst)}) after another victim (rank {min(plan_other)}){made_again} "
                "(invariant 4)"
            )
    if forced and (burst or other) and min(forced) < max(burst + other):
        problems.append(
            f"round {completed.number} took a connection below a grant.min (rank "
            f"{min(forced)}) before a victim that was not (rank {max(burst + other)}) "
            "(invariant 3)"
        )
    if len(pruned) != completed.victims and isinstance(last_round, RoundResult):
        problems.append(
            f"round {completed.number} reports {completed.victims} victim(s) but "
            f"{len(pruned)} connection(s) were pruned"
        )
