"""Group 3 (and the pruner rows of group 2): round planning at scale.

The population: N connections (two thirds inbound) with 3 streams each over 4
enrolled protocols, each protocol with its own Python scorer; stream activity
and bytes are spread at random (fixed seed); ``Limits(low=N/2, high=N)`` and
quotas ``Quota.share(0.05, 0.6)``, so every protocol is an offender (usage
≈ 0.75 N > 0.6 N) and a round prunes N/2 connections through the offender and
tally phases. ``grace_period=0`` so that every connection is prunable.

Rows:

- ``plan_now`` at each N, against calling the same scorers on the same 3N
  streams in a bare loop (the part of the work that is the protocols' own);
- the chunked generator (``plan_round`` driven with a checkpoint between
  chunks, as the regulator does) against ``plan_now``;
- py-libp2p's ``ConnectionPruner`` deciding over the same N (group 2);
- the longest single task step (a Trio instrument) while the regulator of a live
  manager runs a whole round (one connection over ``high``), against the
  round's duration;
- growth of ``plan_now`` from 10,000 to 100,000 connections against linear (10x);
- a whole round at 10,000 connections pruning 5,000, to completion, against
  Trio's own floor, and against Trio alone doing the same cancels and closes,
  also with the garbage collector paused on both sides (see
  :func:`_whole_round` and :func:`_trio_floor`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._core._planner import plan_now, plan_round
from trio_connmgr._regulator import APPLY_CHUNK, drive

from ._harness import Row, Scale, StepTimer, clean, collector, row
from .versus_libp2p import pruner_for

RECENCY = cm.RecencyScorer(half_life=30.0)


def by_bytes(stream: cm.Stream) -> float:
    """Busy streams rate higher."""
    return min(1.0, stream.nbytes / 65_536)


def by_rtt(stream: cm.Stream) -> float:
    """Streams to close peers rate higher (``metadata["rtt"]`` in seconds)."""
    rtt: float = stream.metadata.get("rtt", 1.0)
    return 1.0 / (1.0 + 10.0 * rtt)


def by_direction(stream: cm.Stream) -> float:
    """Streams the remote opened rate higher (deliberately coarse: many ties)."""
    return 0.8 if stream.direction is cm.Direction.INBOUND else 0.4


PROTOCOLS: list[tuple[str, Callable[[cm.Stream], float], float]] = [
    ("/bench/recency/1.0.0", RECENCY, 1.0),
    ("/bench/bytes/1.0.0", by_bytes, 1.5),
    ("/bench/rtt/1.0.0", by_rtt, 0.5),
    ("/bench/direction/1.0.0", by_direction, 2.0),
]
QUOTA = cm.Quota.share(0.05, 0.6)


async def _noop() -> None:
    pass


def _score(stream: cm.Stream) -> float:
    return min(1.0, max(0.0, stream._member.scorer(stream)))


@contextlib.asynccontextmanager
async def _population_manager(n: int, low: int | None = None):  # type: ignore[no-untyped-def]
    """A live manager with the 4 enrolled protocols; yields ``(mgr, enrollments)``."""
    limits = cm.Limits(low=max(1, n // 2 if low is None else low), high=n)
    async with (
        cm.open_connection_manager(limits=limits, grace_period=0.0) as mgr,
        contextlib.AsyncExitStack() as stack,
    ):
        members = [
            await stack.enter_async_context(
                mgr.enroll(name, quota=QUOTA, scorer=scorer, weight=weight)
            )
            for name, scorer, weight in PROTOCOLS
        ]
        yield mgr, members


def _add_streams(conn: cm.Connection, members: list[cm.Enrollment], rng: random.Random) -> None:
    now = trio.current_time()
    for member in rng.sample(members, 3):
        direction = "inbound" if rng.random() < 0.5 else "outbound"
        stream = member.track_stream(conn, direction=direction)
        stream.touch(rng.randrange(100_000))
        stream.last_active = now - rng.random() * 120.0
        stream.metadata["rtt"] = rng.random() * 0.3


def _populate(
    mgr: cm.ConnectionManager,
    members: list[cm.Enrollment],
    n: int,
    seed: int,
    close: Callable[[], Awaitable[None]] = _noop,
) -> None:
    rng = random.Random(seed)
    for i in range(n):
        conn = mgr.track(
            f"peer-{i}", direction="outbound" if i % 3 == 0 else "inbound", close=close
        )
        _add_streams(conn, members, rng)


async def _plan_rows(scale: Scale, n: int, results: dict[str, list[float]]) -> list[Row]:
    rows: list[Row] = []
    async with _population_manager(n) as (mgr, members):
        _populate(mgr, members, n, seed=n)
        state = mgr._state
        pairs = [(s._member.scorer, s) for c in state.connections.values() for s in c.streams]
        decide = (
            pruner_for(state.connections.values(), state.low, _score)
            if (n in scale.libp2p_sizes)
            else None
        )

        def ours() -> float:
            started = time.perf_counter()
            plan = plan_now(state, trio.current_time())
            took = (time.perf_counter() - started) * 1e3
            assert len(plan.connections) == n - state.low, plan.target
            return took

        def scorers() -> float:
            # As in a round: the scorers read the round's time, not the clock.
            outer, state.round_now = state.round_now, trio.current_time()
            started = time.perf_counter()
            for scorer, stream in pairs:
                scorer(stream)
            took = (time.perf_counter() - started) * 1e3
            state.round_now = outer
            return took

        def theirs() -> float:
            assert decide is not None
            started = time.perf_counter()
            decide()
            return (time.perf_counter() - started) * 1e3

        async def chunked() -> float:
            started = time.perf_counter()
            await drive(plan_round(state, trio.current_time()))
            return (time.perf_counter() - started) * 1e3

        plans: list[float] = []
        bare: list[float] = []
        pruner: list[float] = []
        gens: list[float] = []
        ours()  # warm up
        for _ in range(scale.plan_repeats):
            clean()
            plans.append(ours())
            clean()
            bare.append(scorers())
            clean()
            gens.append(await chunked())
            if decide is not None:
                clean()
                pruner.append(theirs())
        results[f"plan_now/{n}"] = plans
        target, check = _plan_target(n)
        rows.append(
            row(
                "planning",
                f"`plan_now`, {n:,} connections",
                "ms",
                plans,
                "the scorers alone",
                bare,
                target=target,
                check=check,
            )
        )
        rows.append(
            row(
                "planning",
                f"chunked `plan_round` (checkpoints), {n:,}",
                "ms",
                gens,
                "`plan_now`",
                plans,
            )
        )
        if decide is not None:
            last = n == max(scale.libp2p_sizes)
            rows.append(
                row(
                    "libp2p",
                    f"round planning, {n:,} connections",
                    "ms",
                    plans,
                    "ConnectionPruner decision",
                    pruner,
                    target="≥ 4x faster (ratio ≤ 0.25)" if last else "",
                    check=(lambda v, r: r is not None and r <= 0.25) if last else None,
                    note=(
                        "py-libp2p's pruner never prunes a connection with open streams and "
                        "closes at most 20 per cycle, so over this population it decides to "
                        "prune nothing; ours scores 3N streams and picks N/2 victims"
                        if last
                        else ""
                    ),
                )
            )
    return rows


def _plan_target(n: int) -> tuple[str, Callable[[float, float | None], bool] | None]:
    if n == 10_000:
        return "≤ 30 ms", lambda v, r: v <= 30.0
    if n == 100_000:
        return "≤ 400 ms", lambda v, r: v <= 400.0
    return "", None


async def _blocking_sample(n: int, seed: int) -> tuple[float, float, float]:
    """(longest task step, round duration, longest ticker gap) in ms for one live trim."""
    closes = _Countdown()

    async def close() -> None:
        closes.closed()

    async with _population_manager(n) as (mgr, members):
        _populate(mgr, members, n, seed=seed, close=close)
        await trio.testing.wait_all_tasks_blocked()
        clean()
        gap = 0.0
        ticking = True

        async def ticker() -> None:
            nonlocal gap
            last = time.perf_counter()
            while ticking:
                await trio.lowlevel.checkpoint()
                now = time.perf_counter()
                gap = max(gap, now - last)
                last = now

        timer = StepTimer()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            trio.lowlevel.add_instrument(timer)
            started = time.perf_counter()
            # One more connection takes the count over high: the regulator's own
            # round (HighWater) runs, in its own task, until the count is at low.
            # Freeing the pruned connections is part of the round.
            mgr.track("one-too-many", direction="inbound", close=close)
            low = mgr.limits.low
            while mgr.statistics().connections > low:
                await trio.lowlevel.checkpoint()
            pruned = n + 1 - low
            took = time.perf_counter() - started
            # The closer tasks of the pruned tracked connections: until all have run.
            await closes.wait(0, pruned)
            trio.lowlevel.remove_instrument(timer)
            ticking = False
        assert mgr.statistics().connections_pruned == pruned, pruned
        return timer.longest * 1e3, took * 1e3, gap * 1e3


class _Timed(NamedTuple):
    """A timed whole round (or its Trio baseline)."""

    ms: float
    closes: int
    """``close()`` calls awaited."""
    full: int
    """Full garbage collections run while it was timed."""
    victims: tuple[int, ...] = ()
    """A round's victims, in the order it pruned them: the indices of their holders."""


class _Countdown:
    """Counts task exits and awaited ``close()`` calls; wakes a waiter at a target."""

    def __init__(self) -> None:
        self.exits = 0
        self.closes = 0
        self._want: tuple[int, int] | None = None
        self._event = trio.Event()

    def _check(self) -> None:
        want = self._want
        if want is not None and self.exits >= want[0] and self.closes >= want[1]:
            self._event.set()

    def exited(self) -> None:
        self.exits += 1
        self._check()

    def closed(self) -> None:
        self.closes += 1
        self._check()

    async def wait(self, exits: int, closes: int) -> None:
        self._want = (exits, closes)
        self._check()
        await self._event.wait()


async def _whole_round(
    n: int,
    prune: int,
    seed: int,
    *,
    holders: str = "mixed",
    streams: bool = True,
    collect: bool = True,
) -> _Timed:
    """One round to completion: its time in ms, how many ``close()`` it awaited,
    and how many full garbage collections ran meanwhile.

    ``n`` connections with the planning population's streams, held open by
    ``n`` parked tasks: half in ``async with mgr.connection(...)``, half as
    tracked connections whose ``close()`` cancels the task's scope (as a
    transport closing its socket would). Timed from the call of ``mgr.trim()``
    until every victim's task has exited and every ``close()`` has returned.

    ``holders="context"`` or ``"tracked"``: every task holds its connection that
    way; ``streams=False``: no streams, so the round calls no scorer;
    ``collect=False``: the garbage collector is paused while it is timed.
    """
    rng = random.Random(seed)
    countdown = _Countdown()
    ready = 0
    all_ready = trio.Event()

    async with _population_manager(n, low=n - prune) as (mgr, members):

        def is_ready() -> None:
            nonlocal ready
            ready += 1
            if ready == n:
                all_ready.set()

        async def in_context(i: int) -> None:
            try:
                async with mgr.connection(f"ctx-{i}", direction="inbound") as conn:
                    if streams:
                        _add_streams(conn, members, rng)
                    is_ready()
                    await trio.sleep_forever()
            finally:
                countdown.exited()

        async def tracked(i: int) -> None:
            with trio.CancelScope() as scope:

                async def close() -> None:
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
                    countdown.closed()

                conn = mgr.track(f"trk-{i}", direction="inbound", close=close)
                if streams:
                    _add_streams(conn, members, rng)
                is_ready()
                await trio.sleep_forever()
            conn.release()
            countdown.exited()

        async with trio.open_nursery() as nursery:
            for i in range(n):
                if holders == "mixed":
                    holder = in_context if i % 2 == 0 else tracked
                else:
                    holder = in_context if holders == "context" else tracked
                nursery.start_soon(holder, i)
            await all_ready.wait()
            await trio.testing.wait_all_tasks_blocked()
            clean()
            with collector(collect) as collections:
                started = time.perf_counter()
                pruned = await mgr.trim()
                peers = [c.peer for c in pruned]
                closers = sum(1 for peer in peers if peer.startswith("trk"))
                del pruned  # as the regulator's own loop does
                await countdown.wait(len(peers), closers)
                took = time.perf_counter() - started
            assert mgr._state.count == n - prune == mgr.limits.low, mgr._state.count
            assert len(peers) == prune
            nursery.cancel_scope.cancel()
    # Peers are "ctx-<i>" or "trk-<i>", i the holder's index.
    order = tuple(int(peer[4:]) for peer in peers)
    return _Timed(took * 1e3, closers, collections.full, order)


async def _trio_floor(
    n: int,
    prune: int,
    closes: int = 0,
    *,
    collect: bool = True,
    victims: Sequence[int] = (),
) -> _Timed:
    """Trio alone: ``n`` tasks parked in cancel scopes; cancel ``prune`` of
    the scopes and wait until those tasks have exited (Trio's own floor).

    The scopes of the first ``prune`` tasks started, whose frames lie next to
    each other in memory; or, with ``victims`` (a round's :attr:`_Timed.victims`),
    those of the tasks with these indices, in this order.

    With ``closes``, Trio alone doing what a round's victims need: ``prune -
    closes`` scopes are cancelled directly, and for the other ``closes`` a
    ``close()`` is awaited in a task of its own (one close cannot hold up
    another), all under one shielded deadline (a close must not hang for ever);
    each ``close()`` cancels its holder's scope and checkpoints, like the
    round's. Timed until every victim's task has exited and every ``close()``
    has returned. ``collect=False``: the garbage collector is paused meanwhile.
    """
    countdown = _Countdown()
    scopes: list[trio.CancelScope] = []
    by_index: dict[int, trio.CancelScope] = {}

    async def parked(i: int) -> None:
        with trio.CancelScope() as scope:
            by_index[i] = scope
            await trio.sleep_forever()
        countdown.exited()

    async def close(scope: trio.CancelScope) -> None:
        scope.cancel()
        await trio.lowlevel.checkpoint()
        countdown.closed()

    async def closing(targets: list[trio.CancelScope]) -> None:
        with trio.move_on_after(60.0, shield=True):
            async with trio.open_nursery() as closers:
                for scope in targets:
                    closers.start_soon(close, scope)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(parked, i)
        await trio.testing.wait_all_tasks_blocked()
        scopes = [by_index[i] for i in (victims or range(prune))]
        assert len(scopes) == prune
        clean()
        with collector(collect) as collections:
            started = time.perf_counter()
            for scope in scopes[: prune - closes]:
                scope.cancel()
            if closes:
                nursery.start_soon(closing, scopes[prune - closes : prune])
            await countdown.wait(prune, closes)
            took = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return _Timed(took * 1e3, closes, collections.full)


async def _measure(scale: Scale) -> list[Row]:
    rows: list[Row] = []
    results: dict[str, list[float]] = {}
    for n in scale.plan_sizes:
        rows.extend(await _plan_rows(scale, n, results))

    for n in scale.plan_sizes:
        steps, rounds, gaps = [], [], []
        for i in range(scale.block_repeats):
            longest, took, gap = await _blocking_sample(n, seed=n + i)
            steps.append(longest)
            rounds.append(took)
            gaps.append(gap)
        gaps.sort()
        worst = max(steps)
        rows.append(
            row(
                "planning",
                f"loop blocked during a live round, {n:,}",
                "ms",
                steps,
                "the whole round",
                rounds,
                target="≤ 20 ms, every round",
                # "Never blocked more than 20 ms": every round, not the median one.
                check=lambda v, r, worst=worst: worst <= 20.0,
                note=(
                    f"longest task step (Trio instrument), median of {len(steps)} rounds; "
                    f"the worst round's: {worst:.1f} ms. A ticker task saw gaps of at "
                    f"most {gaps[len(gaps) // 2]:.1f} ms (median over rounds), which include "
                    f"other tasks' steps (closer tasks) run in the same batch"
                ),
            )
        )

    sizes = scale.plan_sizes
    if len(sizes) >= 2:
        big, mid = sizes[-1], sizes[-2]
        growth = [
            a / b
            for a, b in zip(results[f"plan_now/{big}"], results[f"plan_now/{mid}"], strict=True)
        ]
        linear = big / mid
        rows.append(
            row(
                "planning",
                f"growth of `plan_now`, {big:,} / {mid:,}",
                "x",
                growth,
                "linear",
                [linear],
                target="≤ 12x" if (big, mid) == (100_000, 10_000) else "",
                check=(lambda v, r: v <= 12.0) if (big, mid) == (100_000, 10_000) else None,
            )
        )

    n, prune = scale.round_connections, scale.round_prune
    ours: list[float] = []
    context: list[float] = []
    tracked: list[float] = []
    floor: list[float] = []
    own: list[float] = []
    same: list[float] = []
    paused: list[float] = []
    same_paused: list[float] = []
    await _whole_round(n, prune, seed=0)  # warm up
    full = {"ours": 0, "same": 0, "floor": 0, "own": 0}
    for i in range(scale.round_repeats):
        clean()
        timed = await _whole_round(n, prune, seed=i)
        ours.append(timed.ms)
        full["ours"] += timed.full
        ours_victims = timed.victims
        clean()
        baseline = await _trio_floor(n, prune, timed.closes)
        same.append(baseline.ms)
        full["same"] += baseline.full
        clean()
        timed = await _whole_round(n, prune, seed=i, collect=False)
        paused.append(timed.ms)
        clean()
        same_paused.append((await _trio_floor(n, prune, timed.closes, collect=False)).ms)
        clean()
        context.append((await _whole_round(n, prune, i, holders="context", streams=False)).ms)
        clean()
        tracked.append((await _whole_round(n, prune, i, holders="tracked", streams=False)).ms)
        clean()
        baseline = await _trio_floor(n, prune)
        floor.append(baseline.ms)
        full["floor"] += baseline.full
        clean()
        baseline = await _trio_floor(n, prune, victims=ours_victims)
        own.append(baseline.ms)
        full["own"] += baseline.full
    repeats = scale.round_repeats
    trio_floor = "Trio: cancel as many parked scopes"
    trio_same = "Trio: cancel, and await close() in tasks"
    rows.append(
        row(
            "planning",
            f"whole round, {n:,} connections pruning {prune:,}",
            "ms",
            ours,
            trio_floor,
            floor,
            target="≤ 1.5x baseline",
            check=lambda v, r: r is not None and r <= 1.5,
            note=(
                "ours plans over 3 scored streams per connection, closes the victims' streams, "
                "cancels half the victims' scopes directly and awaits close() of the other "
                "half in tasks (each close() cancels its holder's scope). Full garbage "
                f"collections while timed: {full['ours']} in {repeats} rounds, "
                f"{full['floor']} in {repeats} baselines"
            ),
        )
    )
    rows.append(
        row(
            "planning",
            "the same round, against Trio cancelling its victims' scopes",
            "ms",
            ours,
            "Trio: cancel the same tasks' scopes",
            own,
            note=(
                "the floor above cancels the scopes of the first tasks started, whose frames "
                "lie next to each other in memory; this one cancels those of the tasks the "
                "same repeat's round pruned, in the order it pruned them (by score, spread "
                "over the heap). The same work as the floor: the difference between the "
                "two baselines is the cost of reaching tasks scattered in memory. Full "
                f"garbage collections while timed: {full['own']} in {repeats} baselines"
            ),
        )
    )
    rows.append(
        row(
            "planning",
            "the same round, against Trio doing the same cancels and closes",
            "ms",
            ours,
            trio_same,
            same,
            note=(
                "the baseline cancels as many scopes directly and awaits as many close() "
                "(the same count, from the same repeat) each in a task of its own under one "
                "shielded deadline: what the round's effects cost in Trio alone. Full "
                f"garbage collections while timed: {full['ours']} in {repeats} rounds, "
                f"{full['same']} in {repeats} baselines: where they fall weighs on this "
                "ratio (the row below pauses the collector on both sides)"
            ),
        )
    )
    rows.append(
        row(
            "planning",
            "the same, both with the garbage collector paused",
            "ms",
            paused,
            trio_same,
            same_paused,
            note=(
                "the collector paused while each is timed. With it on (the row above), a "
                "full collection of this heap, tens of ms, may fall on one side and not the "
                "other: the baseline starts every cancel and close at once, the round "
                f"applies {APPLY_CHUNK} victims at a time. Paused, the ratio is the "
                "manager's planning and bookkeeping without collector pauses"
            ),
        )
    )
    rows.append(
        row(
            "planning",
            "the same round, `mgr.connection()` holders only, no streams",
            "ms",
            context,
            trio_floor,
            floor,
            note=(
                "no scorer to call and no close() to await: the manager's own bookkeeping "
                "on top of Trio's cancellation"
            ),
        )
    )
    rows.append(
        row(
            "planning",
            "the same round, tracked holders only, no streams",
            "ms",
            tracked,
            trio_floor,
            floor,
            note=(
                "every victim's close() awaited in a task of its own, and that close() "
                "cancels the holder's scope: two tasks to run and finish per victim where "
                "the floor has one"
            ),
        )
    )
    return rows


def run(scale: Scale) -> list[Row]:
    """Measure the planning rows (group 3 and the pruner rows of group 2)."""
    return trio.run(_measure, scale)
