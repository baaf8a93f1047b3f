"""Workloads as data, and :func:`run_workload`, which applies one to a live manager.

Write workloads by hand (``[Enrol(0, cm.Quota(1, 4)), Connect(count=5), Trim()]``)
or let :func:`trio_connmgr.testing.strategies.workloads` generate them. This
module does not need Hypothesis.

A workload is a sequence of operations (:class:`Op` subclasses): enrol or
leave a protocol, open or close connections and streams, lock, open and close
bursts, touch streams, protect peers, let time pass, trim. :class:`Enrol`
names its protocol by index into :data:`PROTOCOLS`; every other operation
names protocols, connections, streams and locks by index into the live ones
*at the time it runs* (modulo their number), so every sequence is valid
whatever happened before: an operation with nothing to act on is skipped.
That is what lets Hypothesis generate and shrink them freely
(:mod:`trio_connmgr.testing.strategies`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from .._config import Quota, check_bool, check_count, check_period
from .._errors import ConfigError, ConnectionRefused, LockDenied, QuotaDenied
from ._connections import FakeConnections, open_fake_connections
from ._invariants import check_invariants
from ._time import RoundRecorder, advance, force_round, record_rounds, settle, wait_idle

if TYPE_CHECKING:
    from .._core._state import Connection, Stream
    from .._enrollment import Burst, Enrollment, Lock
    from .._manager import ConnectionManager

PROTOCOLS = ("/proto/a", "/proto/b", "/proto/c", "/proto/d")
"""The protocol names a workload's ``protocol`` indices refer to."""


class Op:
    """Base class of workload operations (frozen attrs classes)."""


# Fields the runner reads itself (the manager checks the others as they are used):
# a bad value is a ConfigError as the operation is built, never a silent surprise
# (``bool("no")`` is true: a flag is never converted).
def _flag(instance: Op, attribute: attrs.Attribute[Any], value: object) -> None:
    check_bool(f"{type(instance).__name__}.{attribute.name}", value)


def _count(instance: Op, attribute: attrs.Attribute[Any], value: object) -> None:
    check_count(f"{type(instance).__name__}.{attribute.name}", value, allow_zero=True)


def _period(instance: Op, attribute: attrs.Attribute[Any], value: object) -> None:
    check_period(f"{type(instance).__name__}.{attribute.name}", value)


def _index(instance: Op, attribute: attrs.Attribute[Any], value: object) -> None:
    # Any integer: it is taken modulo the number of live things it names.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be an integer index, got {value!r}"
        )


@final
@attrs.frozen
class Enrol(Op):
    """Enrol ``PROTOCOLS[protocol]`` (skipped if already enrolled)."""

    protocol: int = attrs.field(validator=_index)
    quota: Quota
    scorer: Any = None
    weight: float = 1.0
    strict: bool = False


@final
@attrs.frozen
class Leave(Op):
    """An enrolled protocol leaves (its streams close, its locks end, its quota returns)."""

    protocol: int = attrs.field(validator=_index)


@final
@attrs.frozen
class Connect(Op):
    """Open ``count`` connections; ``tracked`` ones go through ``mgr.track`` (with ``close()``).

    ``count`` is an int >= 0 (0: skipped), ``tracked`` a bool and ``close_delay``
    (the ``close()`` of tracked ones) seconds >= 0; else :class:`ConfigError`.
    """

    count: int = attrs.field(default=1, validator=_count)
    direction: str = "inbound"
    tracked: bool = attrs.field(default=False, validator=_flag)
    close_delay: float = attrs.field(default=0.0, validator=_period)


@final
@attrs.frozen
class Disconnect(Op):
    """The remote side closes a live connection (``released`` if tracked)."""

    connection: int = attrs.field(validator=_index)


@final
@attrs.frozen
class OpenStream(Op):
    """An enrolled protocol opens a stream on a live connection (in its newest open burst
    if ``in_burst`` and it has one)."""

    protocol: int = attrs.field(validator=_index)
    connection: int = attrs.field(validator=_index)
    in_burst: bool = attrs.field(default=False, validator=_flag)
    direction: str = "outbound"


@final
@attrs.frozen
class CloseStream(Op):
    """Close one of the open streams opened by the workload."""

    stream: int = attrs.field(validator=_index)


@final
@attrs.frozen
class Touch(Op):
    """Record activity on an open stream (``stream.touch(nbytes)``)."""

    stream: int = attrs.field(validator=_index)
    nbytes: int = 0


@final
@attrs.frozen
class LockStream(Op):
    """Lock an open stream's connection for ``ttl`` seconds (``LockDenied`` is recorded)."""

    stream: int = attrs.field(validator=_index)
    ttl: float = 10.0


@final
@attrs.frozen
class Unlock(Op):
    """Release one of the locks the workload holds."""

    lock: int = attrs.field(validator=_index)


@final
@attrs.frozen
class OpenBurst(Op):
    """An enrolled protocol opens a burst."""

    protocol: int = attrs.field(validator=_index)


@final
@attrs.frozen
class CloseBurst(Op):
    """An enrolled protocol closes its oldest open burst."""

    protocol: int = attrs.field(validator=_index)


@final
@attrs.frozen
class Protect(Op):
    """Protect (or unprotect) a live connection's peer under the tag ``"workload"``."""

    connection: int = attrs.field(validator=_index)
    protect: bool = attrs.field(default=True, validator=_flag)


@final
@attrs.frozen
class Advance(Op):
    """Let ``seconds`` pass on the manager clock (rounds, expiries and lingers happen)."""

    seconds: float


@final
@attrs.frozen
class Trim(Op):
    """Run a round now (``mgr.trim(force=force)``)."""

    force: bool = False


Workload = Sequence[Op]
"""A workload: operations applied in order by :func:`run_workload`."""


@final
@attrs.define
class WorkloadReport:
    """What happened while :func:`run_workload` applied a workload.

    Attributes:
        steps: Operations applied (skipped ones included).
        skipped: Operations that had nothing to act on.
        refused: Connections refused by admission (``ConnectionRefused``), by reason.
        quota_denied: Strict enrollments refused (``QuotaDenied``).
        locks_denied: Locks refused (``LockDenied``), by reason.
        streams: Streams opened.
        locks: Locks granted.
        bursts: Bursts opened.
        rounds: Regulation rounds completed while it ran.
        pruned: Connections pruned while it ran.
        connections: Every connection it opened.
    """

    steps: int = 0
    skipped: int = 0
    refused: dict[str, int] = attrs.Factory(dict)
    quota_denied: int = 0
    locks_denied: dict[str, int] = attrs.Factory(dict)
    streams: int = 0
    locks: int = 0
    bursts: int = 0
    rounds: int = 0
    pruned: list[Connection] = attrs.Factory(list)
    connections: list[Connection] = attrs.Factory(list)


@final
class _Member:
    """One enrolled protocol held open by a task until it leaves."""

    def __init__(self, enrollment: Enrollment, leave: trio.Event, done: trio.Event) -> None:
        self.enrollment = enrollment
        self.leave = leave
        self.done = done
        self.bursts: list[Burst] = []


async def _hold_enrollment(
    manager: ConnectionManager,
    op: Enrol,
    *,
    task_status: trio.TaskStatus[_Member] = trio.TASK_STATUS_IGNORED,
) -> None:
    leave, done = trio.Event(), trio.Event()
    try:
        async with manager.enroll(
            PROTOCOLS[op.protocol % len(PROTOCOLS)],
            quota=op.quota,
            scorer=op.scorer,
            weight=op.weight,
            strict=op.strict,
        ) as enrollment:
            task_status.started(_Member(enrollment, leave, done))
            await leave.wait()
    finally:
        done.set()


@final
class _Runner:
    def __init__(
        self,
        manager: ConnectionManager,
        nursery: trio.Nursery,
        connections: FakeConnections,
        report: WorkloadReport,
    ) -> None:
        self.manager = manager
        self.nursery = nursery
        self.connections = connections
        self.report = report
        self.members: dict[int, _Member] = {}
        self.streams: list[Stream] = []
        self.locks: list[Lock] = []
        # Peers it protected under the tag "workload" (taken off at the end).
        self.protected: set[Hashable] = set()

    def _member(self, index: int) -> _Member | None:
        """The ``index``-th enrolled protocol (modulo their number, in name order)."""
        live = [m for _, m in sorted(self.members.items()) if not m.enrollment.closed]
        return live[index % len(live)] if live else None

    def _live(self) -> list[Connection]:
        return self.connections.open_connections

    def _open_streams(self) -> list[Stream]:
        self.streams = [s for s in self.streams if not s.closed]
        return self.streams

    def _held_locks(self) -> list[Lock]:
        self.locks = [lock for lock in self.locks if lock.held]
        return self.locks

    async def apply(self, op: Op) -> bool:
        """Apply ``op``; return False if it was skipped (nothing to act on)."""
        if isinstance(op, Enrol):
            index = op.protocol % len(PROTOCOLS)
            enrolled = self.members.get(index)
            if enrolled is not None and not enrolled.enrollment.closed:
                return False
            try:
                self.members[index] = await self.nursery.start(_hold_enrollment, self.manager, op)
            except QuotaDenied:
                self.report.quota_denied += 1
            return True
        if isinstance(op, Leave):
            member = self._member(op.protocol)
            if member is None:
                return False
            member.leave.set()
            await member.done.wait()
            return True
        if isinstance(op, Connect):
            return await self._connect(op)
        if isinstance(op, Disconnect):
            live = self._live()
            if not live:
                return False
            await self.connections.close(live[op.connection % len(live)])
            return True
        if isinstance(op, OpenStream):
            member = self._member(op.protocol)
            live = self._live()
            if member is None or not live:
                return False
            conn = live[op.connection % len(live)]
            burst = None
            if op.in_burst:
                open_bursts = [b for b in member.bursts if b.closed_at is None]
                burst = open_bursts[-1] if open_bursts else None
            self.streams.append(
                member.enrollment.track_stream(conn, direction=op.direction, burst=burst)
            )
            self.report.streams += 1
            await trio.lowlevel.checkpoint()
            return True
        if isinstance(op, CloseStream | Touch | LockStream):
            streams = self._open_streams()
            if not streams:
                return False
            stream = streams[op.stream % len(streams)]
            if isinstance(op, CloseStream):
                stream.close()
            elif isinstance(op, Touch):
                stream.touch(op.nbytes)
            else:
                member = self.members[PROTOCOLS.index(stream.protocol)]
                lock = member.enrollment.lock(stream, ttl=op.ttl)
                try:
                    await lock.__aenter__()
                except LockDenied as exc:
                    denied = self.report.locks_denied
                    denied[exc.reason] = denied.get(exc.reason, 0) + 1
                else:
                    self.locks.append(lock)
                    self.report.locks += 1
            await trio.lowlevel.checkpoint()
            return True
        if isinstance(op, Unlock):
            locks = self._held_locks()
            if not locks:
                return False
            lock = locks.pop(op.lock % len(locks))
            await lock.__aexit__(None, None, None)
            await trio.lowlevel.checkpoint()
            return True
        if isinstance(op, OpenBurst):
            member = self._member(op.protocol)
            if member is None:
                return False
            burst = member.enrollment.burst()
            await burst.__aenter__()
            member.bursts.append(burst)
            self.report.bursts += 1
            return True
        if isinstance(op, CloseBurst):
            member = self._member(op.protocol)
            if member is None:
                return False
            open_bursts = [b for b in member.bursts if b.closed_at is None]
            if not open_bursts:
                return False
            await open_bursts[0].__aexit__(None, None, None)
            await trio.lowlevel.checkpoint()
            return True
        if isinstance(op, Protect):
            live = self._live()
            if not live:
                return False
            peer = live[op.connection % len(live)].peer
            if op.protect:
                self.manager.protect(peer, "workload")
                self.protected.add(peer)
            else:
                self.manager.unprotect(peer, "workload")
                self.protected.discard(peer)
            await trio.lowlevel.checkpoint()
            return True
        if isinstance(op, Advance):
            await advance(op.seconds)
            return True
        if isinstance(op, Trim):
            await force_round(self.manager, force=op.force)
            return True
        raise TypeError(f"not a workload operation: {op!r}")

    async def _connect(self, op: Connect) -> bool:
        for _ in range(op.count):
            try:
                if op.tracked:
                    conn = self.connections.track(
                        self.manager, direction=op.direction, close_delay=op.close_delay
                    )
                    await trio.lowlevel.checkpoint()
                else:
                    conn = await self.connections.open(self.manager, direction=op.direction)
            except ConnectionRefused as exc:
                refused = self.report.refused
                refused[exc.reason] = refused.get(exc.reason, 0) + 1
            else:
                self.report.connections.append(conn)
        return op.count > 0

    def check_closes(self) -> list[str]:
        """Invariant 7 for tracked connections: pruned → close() awaited exactly once."""
        problems = []
        for conn in self.report.connections:
            held = self.connections._held.get(conn)
            if held is None or not held.tracked or not conn.closed:
                continue
            calls = held.close_calls
            if conn.close_reason == "released" and calls != 0:
                problems.append(f"released connection #{conn.id}: close() awaited {calls} times")
            elif conn.close_reason == "pruned" and calls != 1:
                problems.append(
                    f"pruned tracked connection #{conn.id}: close() awaited {calls} times, "
                    "expected exactly once (invariant 7)"
                )
        return problems


async def run_workload(
    manager: ConnectionManager,
    workload: Workload,
    *,
    check: bool = True,
    on_step: Callable[[Op, ConnectionManager], object] | None = None,
) -> WorkloadReport:
    """Apply ``workload`` to a live manager, one operation after the other.

    Protocols are held open by tasks (enrolled until a :class:`Leave` or the
    end), connections by :class:`FakeConnections`. Expected refusals
    (``ConnectionRefused``, ``QuotaDenied``, ``LockDenied``) are counted in the
    report, not raised. At the end every protocol leaves, every lock and burst
    is released, the peers it protected are unprotected, every remaining
    connection is closed from the remote side, and the runner waits until the
    manager is idle; the manager stays open.

    Args:
        manager: A live manager (for determinism, run under a ``MockClock``).
        workload: The operations (see :mod:`trio_connmgr.testing.strategies`).
        check: Call :func:`check_invariants` after every operation (with each
            round completed meanwhile as ``last_round``), and check that every
            pruned tracked connection's ``close()`` was awaited exactly once.
        on_step: Called as ``on_step(op, manager)`` after each operation (after
            the checks): put your own assertions there.

    Raises:
        AssertionError: an invariant does not hold (with the step and operation).
        ConfigError: ``check`` is not a bool.
    """
    check_bool("run_workload check", check)
    report = WorkloadReport()
    failure: Exception | None = None
    async with (
        record_rounds(manager) as rounds,
        open_fake_connections() as connections,
        trio.open_nursery() as nursery,
    ):
        runner = _Runner(manager, nursery, connections, report)
        try:
            await _run(runner, workload, rounds, check, on_step)
        except Exception as exc:
            # Raised after the tasks are gone, unwrapped (not in an exception group).
            failure = exc
        finally:
            for lock in runner.locks:
                await lock.__aexit__(None, None, None)
            for member in runner.members.values():
                for burst in member.bursts:
                    await burst.__aexit__(None, None, None)
                member.leave.set()
            for peer in runner.protected:
                manager.unprotect(peer, "workload")
            connections._shutdown()
    if failure is not None:
        raise failure
    await wait_idle(manager)
    report.rounds = len(rounds.rounds)
    report.pruned = rounds.pruned
    return report


async def _run(
    runner: _Runner,
    workload: Workload,
    rounds: RoundRecorder,
    check: bool,
    on_step: Callable[[Op, ConnectionManager], object] | None,
) -> None:
    manager = runner.manager
    report = runner.report
    seen = 0
    for step, op in enumerate(workload, 1):
        report.steps = step
        if not await runner.apply(op):
            report.skipped += 1
        if check:
            # Let woken tasks (the regulator, closers) react at this instant first.
            await settle()
            results = rounds.rounds[seen:]
            seen += len(results)
            try:
                check_invariants(manager)
                for result in results:
                    check_invariants(manager, last_round=result)
                problems = runner.check_closes()
                if problems:
                    raise AssertionError(
                        f"invariant 7 violated ({len(problems)}):\n  - " + "\n  - ".join(problems)
                    )
            except AssertionError as exc:
                raise AssertionError(f"after step {step}, {op!r}:\n{exc}") from None
        if on_step is not None:
            on_step(op, manager)
