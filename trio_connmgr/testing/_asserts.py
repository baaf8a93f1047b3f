"""Assertions on what was pruned and why, with messages that say what happened."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from .._config import check_bool
from .._core._planner import Phase, exclusion
from .._errors import ConfigError

if TYPE_CHECKING:
    from .._core._state import Connection

_ANY = object()


def describe(conn: Connection) -> str:
    """One line saying what became of ``conn``: pruned (and why), closed, or open.

    For an open connection it says whether a round could prune it now (grace,
    protected, locked, kept for a protocol's ``grant.min``) and which protocols
    use it; for a pruned one it gives its
    :class:`PruneReason` in words::

        #3 peer='peer-3' inbound: pruned by phase burst(/kad) #1, tally 0.000, trigger trim
        #5 peer='peer-5' inbound [/kad]: open (in its grace period)
    """
    protocols = f" [{', '.join(conn.protocols)}]" if conn.protocols else ""
    head = f"#{conn.id} peer={conn.peer!r} {conn.direction.value}{protocols}"
    if conn.closed:
        if conn.prune_reason is not None:
            return f"{head}: pruned by phase {conn.prune_reason}"
        return f"{head}: {conn.close_reason}, not pruned"
    try:
        now = trio.current_time()
    except RuntimeError:  # outside of a Trio run: no clock to tell a grace period by
        now = math.inf
    why = exclusion(conn._state, conn, now)
    if why is None:
        # What a round checks last: pruning it would take a protocol below its grant.min.
        kept = [m.name for m in conn._protocols if m.usage <= m.grant.min]
        if kept:
            return f"{head}: open (kept for the grant.min of {', '.join(map(repr, kept))})"
        return f"{head}: open (prunable)"
    detail = {
        "protected": "its peer is protected",
        "locked": "a lock protects it",
        "grace": "in its grace period",
    }.get(why, why)
    return f"{head}: open ({detail})"


def _phase(value: Phase | str) -> Phase:
    if isinstance(value, Phase):
        return value
    try:
        return Phase(value)
    except ValueError:
        choices = ", ".join(p.value for p in Phase)
        raise ConfigError(f"phase must be a Phase or one of {choices}, got {value!r}") from None


def _show(value: object) -> str:
    return repr(value.value if isinstance(value, Phase) else value)


def _expected(**fields: object) -> str:
    shown = [f"{k}={_show(v)}" for k, v in fields.items()]
    return f" ({', '.join(shown)})" if shown else ""


def assert_pruned(
    conns: Connection | Iterable[Connection],
    *,
    phase: Phase | str | None = None,
    protocol: object = _ANY,
    trigger: str | None = None,
    forced: bool | None = None,
    in_order: bool = False,
) -> None:
    """Assert that every connection was pruned by a round, for the given reason.

    A connection that admission evicted at ``hard`` to make room for a trusted
    newcomer was chosen the same way and counts as pruned too (its trigger is
    ``"admission"``): pass ``trigger=`` to tell them apart.

    Args:
        conns: A connection or several.
        phase: The :class:`Phase` (or its value, ``"burst"``, ``"idle"``,
            ``"offender"``, ``"tally"``) every one must have been pruned in.
        protocol: The ``PruneReason.protocol`` every one must carry (the burst's
            or the offending protocol; ``None`` for the idle and tally phases).
        trigger: The trigger name of their round (``"trim"``, ``"force"``,
            ``"high-water"``, ...).
        forced: Whether they must (or must not) have been taken below a
            ``grant.min`` by a forced round.
        in_order: Also require that they were pruned in the given order
            (strictly ascending ranks; ranks count within a round, so pass
            connections of one round).

    Raises:
        AssertionError: if ``conns`` is empty (an assertion about no
            connection checks nothing, most often by mistake), or naming every
            connection that does not match and what happened to it instead,
            for example::

                2 of 3 connections were not pruned as expected (phase=burst):
                  #4 peer='peer-4' inbound [/chat]: open (prunable)
                  #5 peer='peer-5' inbound: pruned by phase idle #1, tally 0.000, ...

        ConfigError: if ``phase`` is not a phase, ``forced`` is neither a bool
            nor ``None``, or ``in_order`` is not a bool.
    """
    if forced is not None:
        check_bool("assert_pruned forced", forced)
    check_bool("assert_pruned in_order", in_order)
    conns = _as_list(conns, "assert_pruned")
    want: dict[str, object] = {}
    if phase is not None:
        phase = _phase(phase)
        want["phase"] = phase
    if protocol is not _ANY:
        want["protocol"] = protocol
    if trigger is not None:
        want["trigger"] = trigger
    if forced is not None:
        want["forced"] = forced
    wrong = []
    for conn in conns:
        reason = conn.prune_reason
        if reason is None or not conn.closed:
            wrong.append(describe(conn))
            continue
        mismatches = [
            f"{name} is {_show(getattr(reason, name))}"
            for name, value in want.items()
            if getattr(reason, name) != value
        ]
        if mismatches:
            wrong.append(f"{describe(conn)} ({'; '.join(mismatches)})")
    if wrong:
        raise AssertionError(
            f"{len(wrong)} of {len(conns)} connection{'s' if len(conns) != 1 else ''} "
            f"{'were' if len(wrong) != 1 else 'was'} not pruned as expected"
            f"{_expected(**want)}:\n  " + "\n  ".join(wrong)
        )
    if in_order:
        ranks = [conn.prune_reason.rank if conn.prune_reason else math.inf for conn in conns]
        if any(a >= b for a, b in itertools.pairwise(ranks)):
            lines = "\n  ".join(describe(conn) for conn in conns)
            raise AssertionError(
                "connections were pruned, but not in the expected order "
                f"(ranks {ranks}, expected ascending):\n  {lines}"
            )


def assert_not_pruned(conns: Connection | Iterable[Connection]) -> None:
    """Assert that no round pruned any of these connections (they may have closed).

    Raises:
        AssertionError: if ``conns`` is empty (nothing would be checked), or
            naming each pruned connection and its :class:`PruneReason`.
    """
    conns = _as_list(conns, "assert_not_pruned")
    wrong = [describe(conn) for conn in conns if conn.prune_reason is not None]
    if wrong:
        raise AssertionError(
            f"{len(wrong)} of {len(conns)} connection{'s' if len(conns) != 1 else ''} "
            f"{'were' if len(wrong) != 1 else 'was'} pruned, expected none:\n  "
            + "\n  ".join(wrong)
        )


def assert_open(conns: Connection | Iterable[Connection]) -> None:
    """Assert that every connection is still counted by its manager.

    Raises:
        AssertionError: if ``conns`` is empty (nothing would be checked), or
            naming each closed connection and why it closed.
    """
    conns = _as_list(conns, "assert_open")
    wrong = [describe(conn) for conn in conns if conn.closed]
    if wrong:
        raise AssertionError(
            f"{len(wrong)} of {len(conns)} connection{'s' if len(conns) != 1 else ''} "
            f"{'are' if len(wrong) != 1 else 'is'} closed, expected open:\n  " + "\n  ".join(wrong)
        )


def _as_list(conns: Connection | Iterable[Connection], caller: str) -> list[Connection]:
    """``conns`` as a list; an assertion about no connection checks nothing, most
    often by mistake (a filter that matched nothing), so none is an error."""
    from .._core._state import Connection

    if isinstance(conns, Connection):
        return [conns]
    conns = list(conns)
    if not conns:
        raise AssertionError(f"{caller}() was given no connections: nothing was checked")
    return conns
