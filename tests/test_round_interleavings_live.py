"""Rounds whose world changes at every point where they yield (SPEC §8, §12).

A round plans in chunks and prunes in chunks, with a checkpoint between two
chunks: other tasks close and open connections, open and close streams and
bursts, take and release locks, protect peers, enrol or leave, ask for a round
of their own (and cancel it), and scorers close connections and streams; a
protocol whose lock is revoked may lock again at once. Here the chunks are a
few connections long (or as long as in production, over more than a chunk of
connections), and at each checkpoint of a round one scripted action runs, so
that every interleaving Hypothesis draws is replayed exactly. After each round,
SPEC §12 holds (:func:`check_invariants`), and the round's own record matches
what it did: its counts, never below low, every plan's target, and no protocol
taken below its grant.min while a connection it knew of could go instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from helpers import hooked_trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_connmgr as cm
import trio_connmgr._core._planner as planner_module
import trio_connmgr._regulator as regulator_module
from trio_connmgr._core._planner import exclusion, plan_round
from trio_connmgr._core._state import PRUNED
from trio_connmgr._regulator import below_min, opened_since
from trio_connmgr.testing import RoundRecorder, check_invariants, record_rounds

ACTIONS = (
    "close",
    "open",
    "open_stream",
    "close_stream",
    "lock",
    "unlock",
    "protect",
    "unprotect",
    "burst",
    "end_burst",
    "leave",
    "enroll",
    "trim",
    "trim_forced",
    "trim_cancelled",
    "cancel",
    "scorer_release",
    "scorer_close",
    "nothing",
)
NAMES = ("p", "q", "r")
# Actions that may make a connection prunable, or no longer below a grant.min.
FREEING = {"unlock", "unprotect", "close_stream", "end_burst", "leave", "enroll"}


@contextmanager
def small_chunks(chunk: int, apply_chunk: int, sort_run: int) -> Iterator[None]:
    """Rounds that yield every ``chunk`` connections as they plan (and sort runs
    of ``sort_run``) and every ``apply_chunk`` victims as they prune."""
    defaults = plan_round.__kwdefaults__
    assert defaults is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(defaults, "chunk", chunk)
        patch.setattr(planner_module, "SORT_RUN", sort_run)
        patch.setattr(regulator_module, "APPLY_CHUNK", apply_chunk)
        yield


@attrs.define
class World:
    """What the scripted tasks act on, and what the checks compare against."""

    mgr: cm.ConnectionManager
    nursery: trio.Nursery
    actions: list[tuple[str, int, int]]
    members: dict[str, cm.Enrollment] = attrs.Factory(dict)
    # name: leave (an enrollment lives in a task of its own until it leaves)
    leaving: dict[str, Callable[[], Awaitable[None]]] = attrs.Factory(dict)
    conns: list[cm.Connection] = attrs.Factory(list)
    streams: list[cm.Stream] = attrs.Factory(list)
    locks: list[tuple[cm.Lock, AsyncExitStack]] = attrs.Factory(list)
    bursts: list[tuple[cm.Burst, AsyncExitStack]] = attrs.Factory(list)
    relock: list[cm.Stream] = attrs.Factory(list)
    problems: list[str] = attrs.Factory(list)
    rounds: int = 0
    peers: int = 0
    relocking: bool = False
    cancels: list[trio.CancelScope] = attrs.Factory(list)
    done: list[str] = attrs.Factory(list)  # the kinds of the actions run so far
    # What the next scorer call does besides scoring: (kind, index).
    scoring: tuple[str, int] | None = None

    def score(self, stream: cm.Stream) -> float:
        if self.scoring is not None:
            (kind, k), self.scoring = self.scoring, None
            if kind == "scorer_release":
                conn = stream.connection if k % 2 else self.pick(self.open_conns(), k)
                if conn is not None:
                    conn.release()
            else:
                mine = k % 2 and stream
                victim = mine or self.pick([s for s in self.streams if not s.closed], k)
                if victim is not None:
                    victim.close()
        return value_of(stream)

    def pick(self, items: list[Any], k: int) -> Any:
        return items[k % len(items)] if items else None

    async def enroll(self, name: str, quota: cm.Quota) -> None:
        leave = trio.Event()
        left = trio.Event()

        async def member(*, task_status: trio.TaskStatus[cm.Enrollment]) -> None:
            try:
                async with self.mgr.enroll(name, quota=quota, scorer=self.score) as enrollment:
                    task_status.started(enrollment)
                    await leave.wait()
            finally:
                left.set()

        async def leave_now() -> None:
            leave.set()
            await left.wait()

        self.members[name] = await self.nursery.start(member)
        self.leaving[name] = leave_now

    def open_conns(self) -> list[cm.Connection]:
        return [c for c in self.conns if not c.closed]

    def track(self, peer: str) -> cm.Connection | None:
        try:
            conn = self.mgr.track(peer, direction="inbound", close=trio.lowlevel.checkpoint)
        except cm.ConnectionRefused:
            return None
        self.conns.append(conn)
        return conn

    def stream(self, name: str, conn: cm.Connection, value: float) -> cm.Stream | None:
        member = self.members.get(name)
        if member is None or member.closed or conn.closed:
            return None
        stream = member.track_stream(conn)
        stream.metadata["v"] = value
        self.streams.append(stream)
        return stream

    async def lock(self, stream: cm.Stream, *, relock: bool) -> None:
        member = self.members.get(stream.protocol)
        if member is None or member.closed or stream.closed:
            return
        stack = AsyncExitStack()
        on_revoke = (lambda lock: self.relock.append(lock.stream)) if relock else None
        try:
            lock = await stack.enter_async_context(
                member.lock(stream, ttl=1000, on_revoke=on_revoke)
            )
        except cm.LockDenied:
            return
        self.locks.append((lock, stack))

    async def step(self) -> None:
        """One checkpoint of a round: protocols whose lock was revoked lock
        again, then the next scripted action runs."""
        relock, self.relock = self.relock, []
        for stream in relock:
            await self.lock(stream, relock=True)
        if self.actions:
            kind, a, b = self.actions.pop(0)
            self.done.append(kind)
            await self.act(kind, a, b)

    async def act(self, kind: str, a: int, b: int) -> None:
        mgr = self.mgr
        conn = self.pick(self.open_conns(), a)
        streams = [s for s in self.streams if not s.closed]
        if kind == "close" and conn is not None:
            conn.release()
        elif kind == "open":
            self.peers += 1
            new = self.track(f"new-{self.peers}")
            if new is not None and b % 2:
                self.stream(NAMES[b % 3], new, (b % 10) / 10)
        elif kind == "open_stream" and conn is not None:
            self.stream(NAMES[b % 3], conn, (b % 10) / 10)
        elif kind == "close_stream" and streams:
            self.pick(streams, a).close()
        elif kind == "lock" and streams:
            await self.lock(self.pick(streams, a), relock=self.relocking and bool(b % 2))
        elif kind == "unlock" and self.locks:
            _, stack = self.locks.pop(a % len(self.locks))
            await stack.aclose()
        elif kind == "protect" and conn is not None:
            mgr.protect(conn.peer, "keep")
        elif kind == "unprotect" and conn is not None:
            mgr.unprotect(conn.peer, "keep")
        elif kind == "burst":
            member = self.members.get(NAMES[b % 3])
            if member is None or member.closed:
                return
            stack = AsyncExitStack()
            burst = await stack.enter_async_context(member.burst())
            self.bursts.append((burst, stack))
            for conn in self.open_conns()[a % 7 :: 7]:
                self.stream(member.name, conn, 0.5)
                if self.streams[-1].connection is conn:
                    burst.enlist(self.streams[-1])
        elif kind == "end_burst" and self.bursts:
            _, stack = self.bursts.pop(a % len(self.bursts))
            await stack.aclose()
        elif kind == "leave":
            name = NAMES[b % 3]
            if name in self.leaving:
                await self.leaving.pop(name)()
        elif kind == "enroll":
            name = f"late-{a % 3}"
            if name not in self.members:
                await self.enroll(name, cm.Quota(b % 3, 50))
        elif kind in ("scorer_release", "scorer_close"):
            self.scoring = (kind, a)
        elif kind == "trim_cancelled":
            scope = trio.CancelScope()
            self.cancels.append(scope)

            async def trim_until_cancelled() -> None:
                with scope:
                    await mgr.trim(force=bool(b % 2))

            self.nursery.start_soon(trim_until_cancelled, name="cancelled trim")
        elif kind == "cancel":
            for scope in self.cancels:
                scope.cancel()
        elif kind in ("trim", "trim_forced"):
            self.nursery.start_soon(
                lambda: mgr.trim(force=kind == "trim_forced"), name="queued trim"
            )


def value_of(stream: cm.Stream) -> float:
    return float(stream.metadata.get("v", 0.5))


@asynccontextmanager
async def checked_rounds(world: World) -> AsyncIterator[RoundRecorder]:
    """Check every round as it completes: SPEC §12 and the round's own record."""
    mgr = world.mgr
    state = mgr._state
    real_round = regulator_module.Regulator._round
    pruned_now: list[int] = []

    def on_event(event: cm.Event) -> None:
        if isinstance(event, cm.ConnectionPruned):
            conn = recorder._known.get(event.connection_id)
            if conn is not None and conn.close_reason == PRUNED:
                pruned_now.append(conn.id)
                if state.count < state.low:
                    world.problems.append(
                        f"pruning #{conn.id} took the count to {state.count} < low={state.low}"
                    )
                below = [
                    name
                    for name in event.protocols
                    if name in state.members
                    and state.members[name].usage < state.members[name].grant.min
                ]
                # (Unless something became prunable since the round last planned:
                # it could not know.)
                if below and not FREEING.intersection(world.done[planned[-1] :]):
                    now = trio.current_time()
                    others = [
                        c
                        for c in state.connections.values()
                        if c.id <= marks[-1]
                        and exclusion(state, c, now) is None
                        and not below_min(c)
                    ]
                    if others:
                        world.problems.append(
                            f"#{conn.id} was taken below a grant.min while {others} were not"
                        )
        elif isinstance(event, cm.RoundCompleted):
            if event.count_after != state.count:
                world.problems.append(
                    f"round {event.number} reports count_after={event.count_after} "
                    f"but {state.count} connections are counted"
                )
            if event.victims != len(pruned_now):
                world.problems.append(
                    f"round {event.number} reports {event.victims} victims, pruned {pruned_now}"
                )
            if sum(n for _, n in event.by_phase) != event.victims:
                world.problems.append(f"round {event.number}: by_phase {event.by_phase}")
            if event.replan_ranks != tuple(starts[1:]):
                world.problems.append(
                    f"round {event.number} reports replan_ranks={event.replan_ranks} but "
                    f"its plans began at ranks {starts}"
                )
            pruned_now.clear()
            starts.clear()

    real_apply = regulator_module.Regulator._apply
    real_plan = regulator_module.Regulator._plan
    marks = [0]
    planned = [0]  # how many actions had run as each plan began

    async def plan_marked(self: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
        planned.append(len(world.done))
        plan, mark = await real_plan(self, *args, **kwargs)
        marks.append(mark)
        # Its target is the count above low of the connections it knew of that
        # are still open, whatever closed while it planned (a victim that
        # closed once chosen stays in the plan, and in its target).
        known = state.count - opened_since(state, mark)
        gone = sum(1 for c in plan.connections if c.closed)
        if not max(0, known - state.low) <= plan.target <= max(0, known + gone - state.low):
            world.problems.append(
                f"a plan's target is {plan.target} but {known} of the connections it "
                f"knew of are open, low={state.low}"
            )
        closed = [c for c in plan.min_blocked if c.closed]
        if closed:
            world.problems.append(f"a plan keeps closed connections {closed} for a grant.min")
        return plan, mark

    # The first rank of each plan applied since the last round completed (one
    # round at a time): where its ranks begin, after those given before it.
    starts: list[int] = []

    async def apply_counted(
        self: Any, plan: Any, now: float, phases: Any, collect: Any, ranked: int
    ) -> Any:
        starts.append(ranked + 1)
        return await real_apply(self, plan, now, phases, collect, ranked)

    async def round_checked(self: Any, *args: Any, **kwargs: Any) -> int:
        pruned = await real_round(self, *args, **kwargs)
        world.rounds += 1
        check_invariants(mgr, last_round=recorder.last)
        assert not world.problems, world.problems
        return pruned

    async with record_rounds(mgr) as recorder:
        mgr._hub.add_writer(on_event)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(regulator_module.Regulator, "_round", round_checked)
            patch.setattr(regulator_module.Regulator, "_apply", apply_counted)
            patch.setattr(regulator_module.Regulator, "_plan", plan_marked)
            patch.setattr(regulator_module, "trio", hooked_trio(world.step))
            yield recorder


@attrs.frozen
class Setup:
    conns: int
    low: int
    high_above_low: int
    hard: bool
    grace: float
    lock_budget: int
    mins: tuple[int, int, int]
    usage: tuple[tuple[int, int], ...]  # (protocol bits, score*10) per connection
    locked: frozenset[int]
    protected: frozenset[int]
    forced: bool
    relock: bool


@st.composite
def setups(draw: st.DrawFn, min_conns: int = 8, max_conns: int = 40) -> Setup:
    n = draw(st.integers(min_conns, max_conns))
    low = draw(st.integers(1, n - 2))
    high_above_low = draw(st.integers(0, n - low - 1))
    return Setup(
        conns=n,
        low=low,
        high_above_low=high_above_low,
        hard=draw(st.booleans()),
        grace=draw(st.sampled_from([0.0, 10.0])),
        lock_budget=draw(st.integers(0, 8)),
        mins=draw(st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 2))),
        usage=draw(usages(n)),
        locked=frozenset(draw(st.sets(st.integers(0, n - 1), max_size=6))),
        protected=frozenset(draw(st.sets(st.integers(0, n - 1), max_size=3))),
        forced=draw(st.booleans()),
        relock=draw(st.booleans()),
    )


def usages(n: int) -> st.SearchStrategy[tuple[tuple[int, int], ...]]:
    """(protocol bits, score * 10) for each of ``n`` connections: drawn one by
    one for a few, from a drawn seed for many."""
    if n <= 64:
        return st.lists(
            st.tuples(st.integers(0, 7), st.integers(0, 10)), min_size=n, max_size=n
        ).map(tuple)
    return st.randoms(use_true_random=False).map(
        lambda r: tuple((r.randrange(8), r.randrange(11)) for _ in range(n))
    )


async def run_script(setup: Setup, actions: list[tuple[str, int, int]]) -> World:
    n = setup.conns
    high = setup.low + setup.high_above_low
    limits = cm.Limits(setup.low, high, n if setup.hard else None)
    async with (
        cm.open_connection_manager(
            limits=limits,
            grace_period=setup.grace,
            silence_period=1e6,
            lock_budget=setup.lock_budget,
        ) as mgr,
        trio.open_nursery() as nursery,
    ):
        # Rounds run when the script says, not when the regulator would.
        mgr._regulator.triggers = ()
        world = World(mgr, nursery, list(actions), relocking=setup.relock)
        for name, low_min in zip(NAMES, setup.mins, strict=True):
            await world.enroll(name, cm.Quota(low_min, n))
        for i, (bits, score) in enumerate(setup.usage):
            conn = world.track(f"peer-{i}")
            assert conn is not None
            for k, name in enumerate(NAMES):
                if bits >> k & 1:
                    world.stream(name, conn, score / 10)
        for i in sorted(setup.locked):
            streams = list(world.conns[i].streams)
            if streams:
                await world.lock(
                    min(streams, key=lambda s: s.id), relock=setup.relock and bool(i % 2)
                )
        for i in setup.protected:
            mgr.protect(world.conns[i].peer, "keep")
        await trio.sleep(setup.grace + 1)
        async with checked_rounds(world):
            await mgr.trim(force=setup.forced)
            await trio.testing.wait_all_tasks_blocked()
        for stack in [*(s for _, s in world.locks), *(s for _, s in world.bursts)]:
            await stack.aclose()
        for leave in world.leaving.values():
            await leave()
        nursery.cancel_scope.cancel()
    return world


def run(
    setup: Setup, actions: list[tuple[str, int, int]], chunks: tuple[int, int, int] | None
) -> World:
    """Run the script on ``setup``, with rounds that yield every few connections
    (``chunks``), or as they do in production (``None``)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    if chunks is None:
        return trio.run(run_script, setup, actions, clock=clock)
    with small_chunks(*chunks):
        return trio.run(run_script, setup, actions, clock=clock)


scripts = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.integers(0, 1000), st.integers(0, 1000)),
    max_size=30,
)
chunk_sizes = st.tuples(st.integers(1, 12), st.integers(1, 4), st.integers(2, 16))


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(setups(), scripts, chunk_sizes)
def test_every_round_keeps_the_invariants_whatever_happens_while_it_yields(
    setup: Setup, actions: list[tuple[str, int, int]], chunks: tuple[int, int, int]
) -> None:
    world = run(setup, actions, chunks)
    assert world.rounds >= 1
    assert not world.problems


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(setups(min_conns=planner_module.CHUNK + 1, max_conns=planner_module.CHUNK + 200), scripts)
def test_every_round_over_more_than_a_chunk_keeps_the_invariants(
    setup: Setup, actions: list[tuple[str, int, int]]
) -> None:
    # Rounds as big as they come in production: more connections than the
    # planner classifies between two yields.
    world = run(setup, actions, None)
    assert world.rounds >= 1
    assert not world.problems
