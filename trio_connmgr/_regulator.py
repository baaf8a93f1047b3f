"""The supervised regulator: sleeps until a trigger fires, then runs a round (SPEC §8).

Decisions come from the ground floor (:func:`plan_round`, the triggers); this
module owns only the task, its sleep, the checkpoints between chunks, and the
cancellation of victims' scopes.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Container, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeVar, cast

import trio

from ._core._planner import Phase, Plan, PruneReason, exclusion, plan_round
from ._core._scoring import tally
from ._core._state import Connection, EnrollmentState, State
from ._errors import ConnMgrError, ManagerClosed, call_each
from .triggers import HighWater, Pressure, Trigger, TriggerView

if TYPE_CHECKING:
    from ._manager import ConnectionManager

logger = logging.getLogger("trio_connmgr.regulator")

T = TypeVar("T")

APPLY_CHUNK = 256
"""Victims whose scopes are cancelled between two checkpoints."""
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
_BACKOFF_DOUBLINGS = math.ceil(math.log2(BACKOFF_MAX / BACKOFF_BASE))
"""Doublings of BACKOFF_BASE that reach BACKOFF_MAX (the exponent stops there: a
power of two past 2 ** 1023 no longer converts to a float)."""
REFILLS = 2
"""Times a round plans again for victims it had to skip as it applied."""
IDLE_RETRY = 1.0
"""After a round that could not reach its target, wait at least this long (or for a
poke) before trying again, so unprunable connections cannot make it spin."""


async def drive(gen: Generator[None, None, T]) -> T:
    """Run a planning generator, checkpointing between its chunks."""
    try:
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                result: T = stop.value
                return result
            await trio.lowlevel.checkpoint()
    finally:
        # Cancelled between chunks: end the plan now (its close hook goes with
        # it), not whenever the generator is collected.
        gen.close()


def newest(state: State) -> int:
    """The id of the newest connection counted now (0 if none).

    Ids grow with each admission and ``state.connections`` keeps them in that
    order: the connections opened after a given moment are the last ones.
    """
    return next(reversed(state.connections), 0)


def ids_since(state: State, mark: int) -> Iterator[int]:
    """The ids of the connections counted now that opened after the one with id
    ``mark``, newest first (see :func:`newest`)."""
    return itertools.takewhile(mark.__lt__, reversed(state.connections))


def opened_since(state: State, mark: int) -> int:
    """How many of the connections counted now opened after the one with id ``mark``."""
    return sum(1 for _ in ids_since(state, mark))


def below_min(conn: Connection) -> bool:
    """Whether pruning ``conn`` now would take a protocol on it below its ``grant.min``."""
    # A plain loop, not any(): no generator per victim on the apply path.
    for member in conn._protocols:  # noqa: SIM110
        if member.usage <= member.grant.min:
            return True
    return False


def lock_revocations(
    state: State,
    now: float,
    wanted: int,
    spared: Container[Connection] = (),
    *,
    forced: bool,
    plan: Plan | None = None,
) -> list[Connection]:
    """Locked connections whose locks to revoke, lowest tally first.

    Only connections that revocation would make prunable (not protected, not in
    grace) are considered. Those whose pruning would take a protocol below its
    ``grant.min`` are left out, unless ``forced``: a normal round would keep them
    all the same. A forced round takes them last, as going below a grant.min is
    its last resort. ``spared``: connections left out (locked again since the
    round revoked their locks).

    ``plan``: the plan made without them, whose victims go first. What they take
    from each protocol counts (a connection its protocol needs for its grant.min
    once they are gone is needed all the same), and a forced round goes below a
    grant.min with the candidates it kept for one (``plan.min_blocked``) before
    revoking a lock to do so.
    """
    locked = [
        conn
        for conn in state.connections.values()
        if conn._locks
        and conn.peer not in state.protected
        and now >= conn.opened_at + state.grace_period  # (as in exclusion())
        and conn not in spared
    ]
    if not locked:
        return []
    locked.sort(key=lambda conn: (tally(conn), conn.id))
    # How far above its grant.min each protocol would be, as revocations are chosen.
    # (Read after the scorers ran: one may have closed a stream, or a victim.)
    room: dict[EnrollmentState, int] = {}
    taken: dict[EnrollmentState, int] = {}
    if plan is not None:
        for victim in plan.connections:
            for member in victim._protocols:
                taken[member] = taken.get(member, 0) + 1
    chosen: list[Connection] = []
    needed: list[Connection] = []  # those a grant.min needs, in the same order
    for conn in locked:
        if len(chosen) >= wanted:
            return chosen
        members = tuple(conn._protocols)
        for member in members:
            if member not in room:
                room[member] = member.usage - member.grant.min - taken.get(member, 0)
        if all(room[member] > 0 for member in members):
            chosen.append(conn)
            for member in members:
                room[member] -= 1
        elif forced:
            needed.append(conn)
    if forced:
        last_resort = wanted - len(chosen) - (0 if plan is None else len(plan.min_blocked))
        chosen += needed[: max(0, last_resort)]
    return chosen


class Regulator:
    """Owns the regulation task and the rounds (one at a time).

    Args:
        manager: The manager it regulates.
        triggers: Triggers to evaluate; :class:`HighWater` and :class:`Pressure`
            are added if missing.
        silence_period: Minimum seconds between rounds (emergencies excepted).
        max_failures: More failed rounds than this within ``failure_window``
            seconds stop the manager with a :class:`ConnMgrError`.
        failure_window: See ``max_failures``.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        triggers: Sequence[Trigger],
        *,
        silence_period: float,
        max_failures: int,
        failure_window: float,
    ) -> None:
        self._manager = manager
        self._state = manager._state
        triggers = list(triggers)
        if not any(isinstance(t, Pressure) for t in triggers):
            triggers.insert(0, Pressure())
        if not any(isinstance(t, HighWater) for t in triggers):
            triggers.insert(0, HighWater())
        self.triggers: tuple[Trigger, ...] = tuple(triggers)
        # Only triggers that override a hook are called on the hot paths.
        self.open_hooks = tuple(
            t for t in self.triggers if type(t).connection_opened is not Trigger.connection_opened
        )
        self.dial_hooks = tuple(
            t for t in self.triggers if type(t).dial_reported is not Trigger.dial_reported
        )
        self.silence_period = silence_period
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.pressure = False
        self._round_lock = trio.Lock()
        # (number, rounds begun) of the last round that began to revoke and
        # prune: from there on a round runs to its end (or raises), and its
        # RoundCompleted comes while this is still its own; no two rounds have
        # the same, even after one that raised uncounted (record_rounds reads it).
        self.applying: tuple[int, int] = (0, 0)
        self._begun = 0
        self._sleep: trio.CancelScope | None = None
        self._poked = False
        # Pokes that said connections may have become prunable (see poke()): a
        # round left short that saw one arrive meanwhile must not wait as stuck.
        self._prunable_changes = 0
        self._last_round_end = -math.inf
        self._stuck_until = -math.inf
        # The newest connection the stuck round knew of: those opened after it may
        # let the next round succeed once out of their grace period.
        self._stuck_mark = 0
        # Whether the stuck round could revoke locks: an emergency after a stuck
        # normal round may do more, so it does not wait.
        self._stuck_emergency = False
        # The effective low the latest plan worked to (RoundCompleted.low_planned).
        self._planned_low = 0
        # Triggers whose hook fired while a round ran: the round may have planned
        # before what fired them, so they are not reset when it completes.
        self._fired_meanwhile: set[int] = set()  # ids: a trigger need not be hashable

    # ----------------------------------------------------------------- waking

    def fired(self, trigger: Trigger) -> None:
        """A trigger's hook (``connection_opened``, ``dial_reported``) returned True:
        wake the regulator, and keep what fired it past a round that is running."""
        if self._round_lock.locked():
            self._fired_meanwhile.add(id(trigger))
        self.poke()

    def poke(self, *, prunable_changed: bool = False) -> None:
        """Ask the regulator to re-evaluate its triggers now. Cheap, synchronous.

        ``prunable_changed``: connections may have become prunable (a lock ended,
        a burst closed, a protection was lifted), so a round that found nothing to
        prune may succeed now: do not wait out the retry delay.
        """
        if prunable_changed:
            self._stuck_until = -math.inf
            self._prunable_changes += 1
        if not self._poked:
            self._poked = True
            if self._sleep is not None:
                self._sleep.cancel()

    def _view(self) -> TriggerView:
        state = self._state
        return TriggerView(state.count, state.low, state.high, state.hard, self.pressure)

    def _at_hard(self) -> bool:
        hard = self._state.hard
        return hard is not None and self._state.count >= hard

    def emergency(self) -> bool:
        """Count at ``hard`` or sensing pressure: rounds skip the silence period."""
        return self.pressure or self._at_hard()

    def _decide(self, now: float) -> tuple[str | None, float]:
        """(trigger that fires now or None, when to wake up otherwise)."""
        view = self._view()
        for trigger in self.triggers:
            if trigger.check(view, now):
                return trigger.name, now
        # (No round for the count at hard alone: regulation starts above high.
        # Where hard == high, the count at hard is not above it; HighWater fires
        # once it is, and being at hard then makes the round an emergency.)
        wake = min((t.next_check(now) for t in self.triggers), default=math.inf)
        return None, wake

    def _arrivals_prunable_at(self) -> float:
        """When the first connection opened since the stuck round planned (of a peer
        not protected) leaves its grace period; ``inf`` if there is none."""
        state = self._state
        mark, self._stuck_mark = self._stuck_mark, newest(state)
        first = math.inf
        for conn_id in ids_since(state, mark):
            conn = state.connections[conn_id]
            if conn.peer not in state.protected:
                first = min(first, conn.opened_at)
        return first + state.grace_period

    async def _sleep_until(self, deadline: float) -> None:
        with trio.CancelScope(deadline=deadline) as scope:
            self._sleep = scope
            try:
                await trio.sleep_forever()
            finally:
                self._sleep = None

    # ------------------------------------------------------------------- task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The supervised regulator task: restarts after failures, with back-off."""
        task_status.started()
        failures: deque[float] = deque()
        while True:
            try:
                await self._loop()
            except Exception as exc:
                now = trio.current_time()
                failures.append(now)
                while failures and failures[0] + self.failure_window < now:
                    failures.popleft()
                self._state.rounds.failures += 1
                logger.exception(
                    "regulation round failed (%d within %ss)", len(failures), self.failure_window
                )
                if len(failures) > self.max_failures:
                    error = ConnMgrError(
                        f"the regulator failed {len(failures)} times within "
                        f"{self.failure_window}s; the connection manager stops"
                    )
                    error.__cause__ = exc
                    self._manager._fail(error)
                    return
                doublings = min(len(failures) - 1, _BACKOFF_DOUBLINGS)
                delay = min(BACKOFF_BASE * 2**doublings, BACKOFF_MAX)
            # (Backing off outside the except block lets go of the failed round's
            # traceback, and of the plan its frames hold.)
            await trio.sleep(delay)

    async def _loop(self) -> NoReturn:
        while True:
            self._poked = False
            now = trio.current_time()
            self._state.forget_bursts(now)
            name, wake = self._decide(now)
            if name is None:
                await self._sleep_until(wake)
                continue
            emergency = self.emergency()
            not_before = self._last_round_end + self.silence_period
            if self._stuck_until > now:
                # The stuck round did not know the connections opened since.
                self._stuck_until = min(self._stuck_until, self._arrivals_prunable_at())
            if self._stuck_until > now and (self._stuck_emergency or not emergency):
                # A round left short waits until something can have changed (a
                # grace period ending, or a while), emergency or not; only an
                # emergency skips the silence period on top of that.
                not_before = self._stuck_until if emergency else max(not_before, self._stuck_until)
            elif emergency:
                not_before = now
            if now < not_before:
                await self._sleep_until(not_before)
                continue
            if self._round_lock.locked():
                # A trim() round is running: once it ends, decide again (it may
                # have pruned what this round would, and started a silence period).
                async with self._round_lock:
                    pass
                continue
            pruned = await self._round(name, forced=False, emergency=emergency, collect=None)
            state = self._state
            if not pruned and state.count <= state.low and not self._poked:
                # At or below low a round can do nothing: a trigger that keeps
                # firing (a user's level trigger) must not make the loop spin at
                # one instant. Wait for a poke or a timed check instead.
                now = trio.current_time()
                await self._sleep_until(
                    min((t.next_check(now) for t in self.triggers), default=math.inf)
                )

    # ------------------------------------------------------------------ round

    async def run_round(
        self, trigger: str, *, forced: bool, emergency: bool = False
    ) -> list[Connection]:
        """Plan and apply one round; return the connections it pruned."""
        pruned: list[Connection] = []
        await self._round(trigger, forced=forced, emergency=emergency, collect=pruned)
        return pruned

    async def _round(
        self,
        trigger: str,
        *,
        forced: bool,
        emergency: bool,
        collect: list[Connection] | None,
    ) -> int:
        """Plan and apply one round; return how many it pruned (appended to ``collect``)."""
        async with self._round_lock:
            # This round plans after whatever fired so far: only what fires from
            # here on outlives it (a round that ended early, a trim() cancelled
            # while it planned, left what fired during it behind).
            self._fired_meanwhile.clear()
            state = self._state
            started = time.perf_counter()
            now = trio.current_time()
            changes = self._prunable_changes
            state.expire_locks(now)
            count_before = state.count
            high_before = state.high
            # The count at hard or sensing pressure as the round starts makes it an
            # emergency, whoever runs it (a trim() too: SPEC §6).
            emergency = emergency or self.emergency()
            # First without going below any grant.min, even in a forced round:
            # revoking locks comes before that last resort (SPEC §6, §8).
            plan, mark = await self._plan(now, trigger)
            if state.closed:
                # A trim() that waited for the round under way, or planned, as
                # the manager closed: nothing is left to regulate. (The
                # regulator's own task is cancelled before the manager closes.)
                raise ManagerClosed("the connection manager is closed")
            # The connections whose locks it revoked: a holder may lock again at
            # once (from on_revoke), and revoking again would only go round in
            # circles while a forced round's last resort waits.
            revoked_on: set[Connection] = set()
            # Planning changed nothing: a cancellation up to here leaves no trace.
            # From here on the round revokes and prunes, so it runs to its end and is
            # recorded (its checkpoints are only schedule points, and it awaits nothing
            # else); a cancellation reaches a trim() caller at its next checkpoint.
            with trio.CancelScope(shield=True):
                self._begun += 1
                self.applying = (state.rounds.count + 1, self._begun)
                plan, mark, revoked = await self._revoke_and_replan(
                    plan, mark, now, trigger, revoked_on, forced=forced, emergency=emergency
                )
                phases: dict[Phase, int] = {}
                pruned, skipped, last_resort = await self._apply(plan, now, phases, collect, 0)
                # A victim skipped as the round applied (locked, protected or needed
                # for a grant.min meanwhile) leaves the round short while others may
                # be prunable: plan the rest, a bounded number of times (not after
                # taking a protocol below a grant.min: those victims stay the last).
                refills = 0
                ranked = len(plan.connections)  # ranks given so far
                # The first rank of each plan made again: SPEC §8's order holds
                # within each plan, not across them (RoundCompleted.replan_ranks).
                replan_ranks: list[int] = []
                while (
                    skipped and not last_resort and refills < REFILLS and state.count > state.low
                ):
                    refills += 1
                    now = trio.current_time()
                    # As the round began: locks before going below a grant.min.
                    # (Each plan's target is the count above low as it starts.)
                    plan, mark = await self._plan(now, trigger)
                    plan, mark, more = await self._revoke_and_replan(
                        plan, mark, now, trigger, revoked_on, forced=forced, emergency=emergency
                    )
                    revoked += more
                    replan_ranks.append(ranked + 1)
                    more, skipped, last_resort = await self._apply(
                        plan, now, phases, collect, ranked
                    )
                    ranked += len(plan.connections)
                    pruned += more
                # (And the victims it skipped last: locked, protected or kept for a
                # grant.min since it planned, or forced victims left after one of
                # those, with no plan after that to count them.)
                shortfall = min(plan.shortfall + skipped, max(0, state.count - state.low))
                grace_ends = plan.grace_ends
                unprunable = sum(plan.excluded.values()) + len(plan.min_blocked) + skipped
                # Connections opened while the round ran, after its last plan: it did
                # not know them (a round that ran on would never end under an
                # arrival rate; the next round, if above high, takes them into account).
                arrived = opened_since(state, mark)
                del plan
                by_phase = {phase.value: n for phase, n in phases.items()}
                end = trio.current_time()
                duration = time.perf_counter() - started
                self._record(
                    trigger,
                    forced,
                    count_before,
                    pruned,
                    by_phase,
                    duration,
                    revoked,
                    end,
                    unprunable,
                    arrived,
                    tuple(replan_ranks),
                    high_before,
                    self._planned_low,
                )
                if pruned or revoked:
                    # The silence period lets the effects of a round settle; a round
                    # that changed nothing has no effects to wait for.
                    self._last_round_end = end
                if shortfall and self._prunable_changes == changes:
                    # Retrying cannot help until a connection leaves its grace period
                    # (or a poke says something else changed, or a while has passed).
                    # (A poke that came while the round yielded may have made prunable
                    # what it planned as safe: then the next round need not wait.)
                    retry = end + max(self.silence_period, IDLE_RETRY)
                    self._stuck_until = min(retry, max(grace_ends, end))
                    self._stuck_mark = mark
                    self._stuck_emergency = forced or emergency or self.pressure
                else:
                    self._stuck_until = -math.inf
                # Last, so that a hook that raises (a bug in its trigger) finds the
                # round recorded, its event sent and its timing set.
                self._round_completed(end)
            return pruned

    def _round_completed(self, now: float) -> None:
        """Tell the triggers that did not fire during the round that it completed;
        every one of them, even if one raises (the first error is raised after)."""
        fired, self._fired_meanwhile = self._fired_meanwhile, set()
        call_each(
            lambda t: t.round_completed(now), [t for t in self.triggers if id(t) not in fired]
        )

    async def _revoke_and_replan(
        self,
        plan: Plan,
        mark: int,
        now: float,
        trigger: str,
        revoked_on: set[Connection],
        *,
        forced: bool,
        emergency: bool,
    ) -> tuple[Plan, int, int]:
        """After a plan made without going below any grant.min, even in a forced
        round: revoke locks for its shortfall where the round may (forced, an
        emergency, sensing pressure), then plan again (forced, a forced round
        may now go below a grant.min as its last resort). Returns the plan, its
        mark and how many locks were revoked.

        ``revoked_on``: the connections whose locks the round revoked so far (not
        revoked again; those revoked now are added).
        """
        state = self._state
        revoked = 0
        wanted = plan.shortfall
        if not forced:
            # Connections in their grace period become prunable on their own
            # soon: revoke locks only for the shortfall grace cannot explain.
            wanted -= plan.excluded.get("grace", 0)
        if wanted > 0 and (forced or emergency or self.pressure):
            for conn in lock_revocations(state, now, wanted, revoked_on, forced=forced, plan=plan):
                revoked_on.add(conn)
                for lock in list(conn._locks):
                    revoked += state.end_lock(lock, "revoked")
        if revoked or (forced and plan.shortfall):
            plan, mark = await self._plan(now, trigger, forced=forced)
        return plan, mark, revoked

    async def _plan(self, now: float, trigger: str, *, forced: bool = False) -> tuple[Plan, int]:
        """Plan a round; return the plan and the id of the newest connection it knew
        of (planning reads the connections as it starts, before any checkpoint)."""
        mark = newest(self._state)
        self._planned_low = self._state.low
        plan = await drive(plan_round(self._state, now, trigger=trigger, forced=forced))
        return plan, mark

    async def _apply(
        self,
        plan: Plan,
        now: float,
        phases: dict[Phase, int],
        collect: list[Connection] | None,
        ranked: int,
    ) -> tuple[int, int, bool]:
        """Prune ``plan``'s victims that are still prunable, never below ``low``;
        return how many it pruned, how many it skipped though still open, and
        whether it took a protocol below its grant.min (a forced victim).

        Forced victims come last in a plan, as nothing else was left: once a
        victim before them has been skipped, that is no longer known (the
        protocols it carries keep what it would have taken), and they are all
        left for a plan made again, counted as skipped.

        ``ranked``: ranks this round already gave (the plan's ranks follow them).
        """
        state = self._state
        # Apply in chunks and let go of each chunk as it is done: a round that
        # prunes 50,000 connections must not free them all in one step either.
        # The plan's own lists, each chunk overwritten with None once applied.
        victims = cast("list[Connection | None]", plan.connections)
        reasons = cast("list[PruneReason | None]", plan.reasons)
        pruned = skipped = 0
        forced_reached = last_resort = False
        debug = logger.isEnabledFor(logging.DEBUG)
        prune = self._manager._prune
        connections = state.connections
        for start in range(0, len(victims), APPLY_CHUNK):
            if start:
                await trio.lowlevel.checkpoint()
            stop = min(start + APPLY_CHUNK, len(victims))
            for index, victim, reason in zip(
                range(start, stop), victims[start:stop], reasons[start:stop], strict=True
            ):
                assert victim is not None
                assert reason is not None
                if len(connections) <= state.low:
                    # Connections that were not victims closed on their own since
                    # planning: the plan's target (count - low then) is too many.
                    return pruned, skipped, last_resort
                if reason.forced and not forced_reached:
                    forced_reached = True
                    if skipped:
                        # (Forced victims are all at the end of the plan.)
                        left = sum(1 for v in victims[index:] if v is not None and not v.closed)
                        return pruned, skipped + left, False
                # Checkpoints let other tasks run: a victim may have closed,
                # been locked or protected since planning, or carry a stream
                # of a protocol it did not carry then. Usage now is the truth.
                why = exclusion(state, victim, now)
                if why is not None or (not reason.forced and below_min(victim)):
                    if why != "closed":
                        skipped += 1
                    continue
                if ranked:
                    reason = reason._replace(rank=reason.rank + ranked)
                prune(victim, reason)
                pruned += 1
                last_resort = last_resort or reason.forced
                if collect is not None:
                    collect.append(victim)
                phases[reason.phase] = phases.get(reason.phase, 0) + 1
                if debug:
                    logger.debug("pruned %r: %s", victim, reason)
            victims[start:stop] = [None] * (stop - start)
            reasons[start:stop] = [None] * (stop - start)
        return pruned, skipped, last_resort

    def _record(
        self,
        trigger: str,
        forced: bool,
        count_before: int,
        pruned: int,
        by_phase: dict[str, int],
        duration: float,
        revoked: int,
        now: float,
        unprunable: int,
        arrived: int,
        replan_ranks: tuple[int, ...],
        high_before: int,
        low_planned: int,
    ) -> None:
        state = self._state
        rounds = state.rounds
        rounds.count += 1
        rounds.last_trigger = trigger
        rounds.last_duration = duration
        rounds.total_duration += duration
        rounds.locks_revoked += revoked
        rounds.last_victims = pruned
        rounds.last_at = now
        for phase, n in by_phase.items():
            rounds.victims_by_phase[phase] = rounds.victims_by_phase.get(phase, 0) + n
        logger.info(
            "round %d (%s%s): %d -> %d connections, %d pruned %s, %d locks revoked, %.1f ms",
            rounds.count,
            trigger,
            ", forced" if forced else "",
            count_before,
            state.count,
            pruned,
            by_phase,
            revoked,
            duration * 1e3,
        )
        if state.sink is not None:
            from ._core._events import RoundCompleted

            state.sink(
                RoundCompleted(
                    now,
                    rounds.count,
                    trigger,
                    forced,
                    count_before,
                    state.count,
                    pruned,
                    tuple(sorted(by_phase.items())),
                    duration,
                    revoked,
                    unprunable,
                    arrived,
                    replan_ranks,
                    high_before,
                    low_planned,
                )
            )
