"""Event delivery: the subscription hub, the JSON-lines trace writer and its replay (SPEC §11).

Events are produced synchronously by the state (``State.sink``). The hub hands
each one to every subscriber's bounded buffer; a full buffer drops its *oldest*
event and counts the drop, so a slow or stuck subscriber never blocks or slows
the manager. While nobody listens the sink is unset and no event is even built.
"""

from __future__ import annotations

import codecs
import inspect
import io
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, final

import trio

from ._config import check_count
from ._core._events import Event, RoundCompleted
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._core._state import State

logger = logging.getLogger("trio_connmgr.events")

TRACE_VERSION = 1
"""Version of the trace format (``docs/trace.md``), in the trace's first line."""


@final
class EventReceiver(trio.abc.ReceiveChannel[Event]):
    """A subscriber's receive channel (from :meth:`ConnectionManager.subscribe`).

    ``receive()`` blocks until an event arrives; it raises
    :class:`trio.EndOfChannel` once the manager has closed and the buffer is
    drained. ``async for event in receiver`` iterates until then.

    Attributes:
        dropped: Events this subscriber lost because its buffer was full.
    """

    def __init__(self, hub: EventHub, buffer: int) -> None:
        self._hub = hub
        self._buffer = buffer
        self._queue: deque[Event] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._ended = False
        self.dropped = 0

    @property
    def buffer(self) -> int:
        """Capacity: the most events held before the oldest is dropped (read-only)."""
        return self._buffer

    @property
    def pending(self) -> int:
        """Events buffered and not yet received."""
        return len(self._queue)

    def _put(self, event: Event) -> None:
        queue = self._queue
        if len(queue) >= self._buffer:
            queue.popleft()
            self.dropped += 1
            self._hub.dropped += 1
        queue.append(event)
        if self._lot:
            self._lot.unpark()

    def _end(self) -> None:
        self._ended = True
        self._lot.unpark_all()

    def receive_nowait(self) -> Event:
        """Return the next buffered event, or raise :class:`trio.WouldBlock`.

        Raises:
            trio.WouldBlock: Nothing is buffered yet.
            trio.EndOfChannel: The manager closed and the buffer is drained.
            trio.ClosedResourceError: This subscription was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("subscription is closed")
        if self._queue:
            return self._queue.popleft()
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Event:
        """Wait for the next event (always checkpoints).

        Raises:
            trio.EndOfChannel: The manager closed and the buffer is drained.
            trio.ClosedResourceError: This subscription was closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            event = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return event
        while True:
            await self._lot.park()
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                # Another task sharing this receiver took the event first.
                continue

    async def aclose(self) -> None:
        """Stop receiving; the hub forgets this subscriber. Checkpoints."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Synchronous :meth:`aclose`. Idempotent; buffered events are discarded."""
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._hub._remove(self)
            self._lot.unpark_all()

    def __repr__(self) -> str:
        return (
            f"<EventReceiver pending={len(self._queue)} buffer={self.buffer} "
            f"dropped={self.dropped}{' closed' if self._closed else ''}>"
        )


@final
class EventHub:
    """Fans events out to subscribers and writers; installs itself as the state's sink
    only while somebody listens.

    A writer that raises is logged once and removed: a broken trace file must not
    break the state operation that produced the event.
    """

    def __init__(self, set_sink: Callable[[Callable[[Event], None] | None], None]) -> None:
        self._set_sink = set_sink
        self._subscribers: list[EventReceiver] = []
        self._writers: list[Callable[[Event], None]] = []
        self._closed = False
        # What writers raised that must not be caught, held while the manager
        # closes (see closing()).
        self._held: list[BaseException] | None = None
        self.dropped = 0
        self.emitted = 0
        self.writer_errors = 0

    @property
    def subscribers(self) -> int:
        """Subscriptions open now."""
        return len(self._subscribers)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber and writer. Never blocks.

        Raises only what a writer raised that must not be caught (a
        ``KeyboardInterrupt``), and not while the manager closes (see :meth:`closing`).
        """
        if not (self._subscribers or self._writers):
            # The last writer failed at an earlier event (see below): nobody listens.
            self._update_sink()
            return
        self.emitted += 1
        for receiver in self._subscribers:
            receiver._put(event)
        if self._writers:
            for writer in tuple(self._writers):
                try:
                    writer(event)
                except Exception:
                    self.writer_errors += 1
                    logger.exception("event writer %r raised; it is removed", writer)
                    # The sink stays installed until the next event: the state may
                    # call it again in the operation that produced this one (a
                    # prune is followed by its close) having checked it only once.
                    self._writers.remove(writer)
                except BaseException as exc:
                    # Never swallowed; while the manager closes, held until the
                    # close is complete (see closing()). Removed all the same: its
                    # file may end in half a line, which only the last line may.
                    self._writers.remove(writer)
                    if self._held is None:
                        raise
                    self._held.append(exc)

    def _update_sink(self) -> None:
        self._set_sink(self.emit if (self._subscribers or self._writers) else None)

    def subscribe(self, buffer: int) -> EventReceiver:
        """Register a new subscriber with a buffer of ``buffer`` events.

        After :meth:`close`, the new receiver is already at its end.
        """
        receiver = EventReceiver(self, check_count("subscribe buffer", buffer))
        if self._closed:
            receiver._end()
            return receiver
        self._subscribers.append(receiver)
        self._update_sink()
        return receiver

    def add_writer(self, writer: Callable[[Event], None]) -> None:
        """Register a synchronous writer called with every event."""
        if not self._closed:
            self._writers.append(writer)
            self._update_sink()

    def _remove(self, receiver: EventReceiver) -> None:
        if receiver in self._subscribers:
            self._subscribers.remove(receiver)
            self._update_sink()

    @contextmanager
    def closing(self) -> Iterator[None]:
        """:meth:`close` after the block, in which the manager closes every connection.

        A writer raising there what must not be caught (a ``KeyboardInterrupt``
        from its file) is removed, and the exception held until every connection
        is closed and every subscription ended; then it is raised.
        """
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            self.close()
            if held:
                raise held[0]

    def close(self) -> None:
        """End every subscription (their receivers drain, then see EndOfChannel)."""
        self._closed = True
        for receiver in self._subscribers:
            receiver._end()
        self._subscribers.clear()
        self._writers.clear()
        self._update_sink()


# ------------------------------------------------------------------- traces


@final
class TraceWriter:
    """Writes every event as one JSON object per line (schema: ``docs/trace.md``).

    The first line is a ``trace_started`` header with the format version and the
    configuration of ``state`` (when given). Lines are buffered by ``file``; the
    writer flushes after every round and the manager flushes when it closes.
    A number that is not finite is written as ``null``.

    Raises:
        ConfigError: ``file`` is not a text file open for writing (the manager's
            ``trace`` argument).
    """

    def __init__(self, file: IO[str], state: State | None = None) -> None:
        _check_text_file(file)
        self._file = file
        self._encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
        self._error: Exception | None = None
        self._failed = False  # a write raised (and the hub logged it)
        if state is not None:
            try:
                self._line(trace_header(state))
            except Exception as exc:
                # Raised at the first event instead, where the hub logs it and
                # drops this writer: a bad trace file never stops the manager.
                self._error = exc

    def _line(self, obj: Mapping[str, Any]) -> None:
        try:
            text = self._encoder.encode(obj)
        except ValueError:
            # A number that is not finite (a tally overflowing with enormous
            # weights): strict JSON has no such number, so it is written as null.
            text = self._encoder.encode(_finite(obj))
        self._file.write(text + "\n")

    def __call__(self, event: Event) -> None:
        """Write ``event`` as one line."""
        try:
            if self._error is not None:
                raise self._error
            self._line(event.to_json())
            if isinstance(event, RoundCompleted):
                self._file.flush()
        except Exception:
            # (Not what must not be caught, a KeyboardInterrupt: the hub raises it
            # without logging it, so an error at exit must still be logged.)
            self._failed = True
            raise

    def finish(self, *, close: bool) -> None:
        """Flush the file, and close it with ``close``: the manager's last word.

        Raises no error: the trace is a by-product, and whatever the manager's body
        raised (or nothing) is what its caller must see. An error (a full disk, a
        file closed under it) is logged, unless a write already failed and was;
        what must not be caught (a ``KeyboardInterrupt`` from the file) passes.
        """
        # The header's error is logged when an event meets it; if none came, here.
        error: Exception | None = None if self._failed else self._error
        try:
            try:
                self._file.flush()
            finally:
                if close:
                    self._file.close()
        except Exception as exc:
            if not self._failed:
                # Should the header have failed as well, both are logged: the
                # first error is not lost to the second.
                error = (
                    exc
                    if error is None
                    else ExceptionGroup("the trace's header and its flush failed", [error, exc])
                )
        finally:
            # (Logged even as a KeyboardInterrupt from the flush passes through.)
            if error is not None:
                logger.error(
                    "the trace file %r failed; the trace is incomplete",
                    getattr(self._file, "name", self._file),
                    exc_info=error,
                )


def _check_text_file(file: object) -> None:
    """Raise ConfigError unless ``file`` takes text: a text file open for writing."""
    problem = None
    mode = getattr(file, "mode", "")
    write = getattr(file, "write", None)
    flush = getattr(file, "flush", None)
    if isinstance(file, io.RawIOBase | io.BufferedIOBase) or (
        # A wrapper of a binary file (tempfile's); codecs' writers take text
        # although their files are binary.
        isinstance(mode, str)
        and "b" in mode
        and not isinstance(file, io.TextIOBase | codecs.StreamWriter | codecs.StreamReaderWriter)
    ):
        problem = "a binary file"
    elif not (callable(write) and callable(flush)):
        problem = "not a file"
    elif inspect.iscoroutinefunction(write) or inspect.iscoroutinefunction(flush):
        # (trio.open_file's: each write would only make a coroutine, never awaited.)
        problem = "an async file"
    elif getattr(file, "closed", False):
        problem = "closed"
    else:
        writable = getattr(file, "writable", None)
        if callable(writable) and not writable():
            problem = "not open for writing"
    if problem is not None:
        raise ConfigError(
            f"trace must be a path or a text file open for writing, got {file!r} ({problem})"
        )


def _finite(value: Any) -> Any:
    """``value`` (JSON-ready) with every number that is not finite replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def trace_header(state: State) -> dict[str, Any]:
    """The ``trace_started`` line of a trace written for ``state``."""
    limits = state.limits
    return {
        "kind": "trace_started",
        "time": state.clock(),
        "version": TRACE_VERSION,
        "low": limits.low,
        "high": limits.high,
        "hard": limits.hard,
        "grace_period": state.grace_period,
        "burst_linger": state.burst_linger,
        "max_lock_ttl": state.max_lock_ttl,
        "lock_budget": state.lock_budget,
    }


@final
class _Absent:
    """The type of what :func:`_check_fields` reads for a field a line lacks."""


_ABSENT = _Absent()
_MAPPING = (dict, Mapping)  # (a dict first: parsed JSON is one, and the ABC's check is slow)
_ARRAY = (list, tuple)  # (parsed objects may carry tuples)
_INTEGER = (int,)  # exact types: a bool is no integer
_STRING = (str,)


def _strings(value: list[Any] | tuple[Any, ...]) -> bool:
    return all(type(item) is str for item in value)


def _phase_counts(value: list[Any] | tuple[Any, ...]) -> bool:
    return all(
        type(pair) in _ARRAY
        and len(pair) == 2
        and type(pair[0]) is str
        and type(pair[1]) is int
        and pair[1] >= 0
        for pair in value
    )


def _finite_number(value: object) -> bool:
    # (An integer is finite however large, and math.isfinite() would overflow on it.)
    return type(value) is not float or math.isfinite(value)


def _positive_or_null(value: int | None) -> bool:
    return value is None or value > 0


_NATURAL = (0).__le__
_POSITIVE = (0).__lt__

# A field: its name, the exact types its value may have, a further check of the
# value (or None), and what the value must be, for the error message.
_Field = tuple[str, tuple[type, ...], Callable[[Any], bool] | None, str]

# (Absent: the time stays that of the line before.)
_TIME: _Field = ("time", (int, float, _Absent), _finite_number, "a finite number")
_PROTOCOL: _Field = ("protocol", _STRING, None, "a string")
_LOCK: tuple[_Field, ...] = (_TIME, _PROTOCOL, ("lock_id", _INTEGER, None, "an integer"))
_LIMITS: tuple[_Field, ...] = (
    _TIME,
    ("low", _INTEGER, _POSITIVE, "a positive integer"),
    ("high", _INTEGER, _POSITIVE, "a positive integer"),
    ("hard", (int, type(None)), _positive_or_null, "a positive integer or null"),
)
_LIMITS_ORDER = (("low", "high"), ("high", "hard"))

_REPLAYED_FIELDS: dict[str, tuple[_Field, ...]] = {
    "trace_started": _LIMITS,
    "connection_opened": (
        _TIME,
        ("connection_id", _INTEGER, None, "an integer"),
        ("direction", _STRING, {"inbound", "outbound"}.__contains__, '"inbound" or "outbound"'),
    ),
    "connection_closed": (_TIME, ("connection_id", _INTEGER, None, "an integer")),
    "connection_pruned": (_TIME, ("protocols", _ARRAY, _strings, "an array of strings")),
    "round_completed": (
        _TIME,
        ("trigger", _STRING, None, "a string"),
        ("revoked_locks", _INTEGER, _NATURAL, "a non-negative integer"),
        ("by_phase", _ARRAY, _phase_counts, "an array of [phase, n >= 0] pairs"),
    ),
    "grant_changed": (
        _TIME,
        _PROTOCOL,
        ("min", _INTEGER, _NATURAL, "a non-negative integer"),
        ("max", _INTEGER, _NATURAL, "a non-negative integer"),
    ),
    "lock_granted": (*_LOCK, ("connection_id", _INTEGER, None, "an integer")),
    "lock_denied": (_TIME, _PROTOCOL, ("reason", _STRING, None, "a string")),
    "lock_released": _LOCK,
    "lock_revoked": _LOCK,
    "lock_expired": _LOCK,
    "burst_opened": (_TIME, _PROTOCOL),
    "burst_closed": (_TIME, _PROTOCOL),
    "limits_changed": (*_LIMITS, ("cause", _STRING, None, "a string")),
    "admission_refused": (_TIME, ("reason", _STRING, None, "a string")),
}
"""The fields :func:`replay_trace` reads, by kind, as the writer writes them.

Other fields, and other kinds (but for their ``time``), are not checked: a newer
release of the same format version may add them (``docs/trace.md``).
"""
_OTHER_KIND: tuple[_Field, ...] = (_TIME,)

_ORDERED_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "trace_started": _LIMITS_ORDER,
    "grant_changed": (("min", "max"),),
    "limits_changed": _LIMITS_ORDER,
}
"""Pairs of fields (of :data:`_REPLAYED_FIELDS`) the writer always writes in
order, by kind: the first is at most the second (unless that one is null)."""


def _check_fields(record: Mapping[str, Any], kind: str) -> None:
    """Raise KeyError, TypeError or ValueError unless ``record``, of ``kind``, has each
    field the replay reads as the writer writes it."""
    for name, types, check, what in _REPLAYED_FIELDS.get(kind, _OTHER_KIND):
        value = record.get(name, _ABSENT)
        if type(value) not in types:
            if value is _ABSENT:
                raise KeyError(name)
            raise TypeError(f"{name} must be {what}, got {value!r}")
        if check is not None and not check(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")
    for first, second in _ORDERED_FIELDS.get(kind, ()):
        low, high = record[first], record[second]
        if high is not None and low > high:
            raise ValueError(
                f"{first} must be <= {second}, got {first}={low!r}, {second}={high!r}"
            )


def _new_protocol() -> dict[str, Any]:
    return {
        "grant_min": 0,
        "grant_max": 0,
        "locks_held": 0,
        "locks_granted": 0,
        "locks_denied": {},
        "locks_revoked": 0,
        "locks_expired": 0,
        "bursts_open": 0,
        "bursts_opened": 0,
        "bursts_closed": 0,
        "pruned": 0,
    }


def replay_trace(lines: Iterable[str | Mapping[str, Any]]) -> dict[str, Any]:
    """Replay a trace and return the figures it implies.

    ``lines`` are the trace's lines (a file object works) or already-parsed
    objects; blank lines are skipped and unknown kinds ignored, so a trace from a
    newer release (of the same format version) still replays. A last line cut
    short (the writer stopped mid-line: a full disk) is skipped, and the result's
    ``truncated`` says so; what shows the cut is the line ending it lacks while
    the line before has one, so only lines that keep their endings (a file's)
    can show it. The result mirrors :meth:`ConnectionManager.statistics`
    where events carry the information (see ``docs/trace.md`` for the list):
    ``connections``, ``inbound``, ``outbound``, ``connections_opened``,
    ``connections_closed``, ``connections_pruned``, ``low``, ``high``, ``hard``,
    ``limits_source``, ``locked_connections``, ``refusals``, ``rounds`` (``count``,
    ``last_trigger``, ``victims_by_phase``, ``locks_revoked``), ``protocols`` (by
    name: ``grant_min``, ``grant_max``, ``locks_held``, ``locks_granted``,
    ``locks_denied``, ``locks_revoked``, ``locks_expired``, ``bursts_open``,
    ``bursts_opened``, ``bursts_closed``, ``pruned``), plus ``events`` (lines
    replayed, by kind), ``version``, ``time`` (of the last line) and ``truncated``.

    Protocols stay in ``protocols`` after they leave (a trace has no event for
    leaving), and one that enrols again under the same name carries on with its
    figures (:meth:`ConnectionManager.statistics` counts from zero for the new
    enrollment); streams are not traced, so usage and stream counts are not
    replayed.

    Raises:
        ValueError: A line is not a JSON object with a ``kind``, lacks a field the
            replay reads or has one of another type or value than the writer
            writes (a ``time`` that is not finite, a negative count, limits
            that are not positive or ``low > high``, ``high > hard``, a grant's
            ``min > max``), or is a ``trace_started`` header of another format
            version than this release reads (the message gives the line's
            1-based number, the field and its value).
    """
    conns: dict[int, str] = {}
    locks: dict[int, tuple[str, int]] = {}  # held lock id -> (protocol, connection id)
    protocols: dict[str, dict[str, Any]] = {}
    events: dict[str, int] = {}
    refusals: dict[str, int] = {}
    by_phase: dict[str, int] = {}
    out: dict[str, Any] = {
        "version": None,
        "connections_opened": 0,
        "connections_closed": 0,
        "connections_pruned": 0,
        "low": None,
        "high": None,
        "hard": None,
        "limits_source": "configured",
        "time": None,
    }
    rounds: dict[str, Any] = {"count": 0, "last_trigger": None, "locks_revoked": 0}
    configured_high = None  # from the header

    def protocol(name: str) -> dict[str, Any]:
        found = protocols.get(name)
        if found is None:
            found = protocols[name] = _new_protocol()
        return found

    cut: ValueError | None = None  # the last line cut short, unless another follows
    # Whether the line before (blank lines aside) ended with "\n": only then can a
    # line without one have been cut short (text.splitlines() leaves no endings).
    # A file's lines keep theirs: its first line may be cut short too.
    after_newline = isinstance(lines, io.IOBase)
    for number, line in enumerate(lines, 1):
        if isinstance(line, str) and not line.strip():
            continue
        if cut is not None:
            raise cut
        if isinstance(line, str):
            try:
                record = json.loads(line)
            except ValueError as exc:
                error = ValueError(f"trace line {number} is not JSON: {exc}")
                if after_newline and line.startswith("{") and not line.endswith("\n"):
                    # The writer may have been cut off mid-line (a full disk): fine
                    # for the last line only.
                    cut = error
                    continue
                raise error from None
            after_newline = line.endswith("\n")
        else:
            record = line
            after_newline = False
        if not isinstance(record, _MAPPING) or not isinstance(record.get("kind"), str):
            raise ValueError(f"trace line {number} is not an event object with a 'kind'")
        kind = record["kind"]
        if kind == "trace_started":
            version = record.get("version")
            if type(version) is not int or version != TRACE_VERSION:
                raise ValueError(
                    f"trace line {number} is a trace of version {version!r}; "
                    f"this reader knows version {TRACE_VERSION}"
                )
        events[kind] = events.get(kind, 0) + 1
        out["time"] = record.get("time", out["time"])
        try:
            _check_fields(record, kind)
            if kind == "trace_started":
                limits = record["low"], record["high"], record["hard"]
                out["version"] = version
                out["low"], out["high"], out["hard"] = limits
                configured_high = record["high"]
            elif kind == "connection_opened":
                conns[record["connection_id"]] = record["direction"]
                out["connections_opened"] += 1
            elif kind == "connection_closed":
                conns.pop(record["connection_id"], None)
                out["connections_closed"] += 1
            elif kind == "connection_pruned":
                out["connections_pruned"] += 1
                for name in record["protocols"]:
                    protocol(name)["pruned"] += 1
            elif kind == "round_completed":
                rounds["count"] += 1
                rounds["last_trigger"] = record["trigger"]
                rounds["locks_revoked"] += record["revoked_locks"]
                for phase, n in record["by_phase"]:
                    by_phase[phase] = by_phase.get(phase, 0) + n
            elif kind == "grant_changed":
                entry = protocol(record["protocol"])
                entry["grant_min"], entry["grant_max"] = record["min"], record["max"]
            elif kind == "lock_granted":
                entry = protocol(record["protocol"])
                entry["locks_granted"] += 1
                locks[record["lock_id"]] = (record["protocol"], record["connection_id"])
            elif kind == "lock_denied":
                denied = protocol(record["protocol"])["locks_denied"]
                denied[record["reason"]] = denied.get(record["reason"], 0) + 1
            elif kind in ("lock_released", "lock_revoked", "lock_expired"):
                entry = protocol(record["protocol"])
                locks.pop(record["lock_id"], None)
                if kind == "lock_revoked":
                    entry["locks_revoked"] += 1
                elif kind == "lock_expired":
                    entry["locks_expired"] += 1
            elif kind == "burst_opened":
                entry = protocol(record["protocol"])
                entry["bursts_open"] += 1
                entry["bursts_opened"] += 1
            elif kind == "burst_closed":
                entry = protocol(record["protocol"])
                entry["bursts_open"] -= 1
                entry["bursts_closed"] += 1
            elif kind == "limits_changed":
                limits = record["low"], record["high"], record["hard"]
                out["low"], out["high"], out["hard"] = limits
                configured = record["high"] == configured_high
                out["limits_source"] = "configured" if configured else record["cause"]
            elif kind == "admission_refused":
                refusals[record["reason"]] = refusals.get(record["reason"], 0) + 1
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, KeyError):
                problem = f"lacks the field {exc}"
            elif isinstance(exc, ValueError):
                problem = f"has a field of a value the writer never writes ({exc})"
            else:
                problem = f"has a field of the wrong type ({exc})"
            raise ValueError(f"trace line {number} ({kind}) {problem}") from None

    for name, entry in protocols.items():
        entry["locks_held"] = len({conn for owner, conn in locks.values() if owner == name})
    return {
        **out,
        "connections": len(conns),
        "inbound": sum(1 for d in conns.values() if d == "inbound"),
        "outbound": sum(1 for d in conns.values() if d == "outbound"),
        "locked_connections": len({conn for _, conn in locks.values()}),
        "refusals": refusals,
        "rounds": {**rounds, "victims_by_phase": by_phase},
        "truncated": cut is not None,
        "protocols": protocols,
        "events": events,
    }
