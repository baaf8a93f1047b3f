"""Event delivery: the subscription hub and the JSON-lines trace writer (SPEC §11).

Events are produced synchronously by the state (``State.sink``). The hub hands
each one to every subscriber's bounded buffer; a full buffer drops its *oldest*
event and counts the drop, so a slow or stuck subscriber never blocks or slows
the manager. While nobody listens the sink is unset and no event is even built.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import IO, final

import trio

from ._core._events import Event
from ._errors import ConfigError


@final
class EventReceiver(trio.abc.ReceiveChannel[Event]):
    """A subscriber's receive channel (from :meth:`ConnectionManager.subscribe`).

    ``receive()`` blocks until an event arrives; it raises
    :class:`trio.EndOfChannel` once the manager has closed and the buffer is
    drained. Attributes ``dropped`` and ``buffer`` report the drops and capacity.
    """

    def __init__(self, hub: EventHub, buffer: int) -> None:
        self._hub = hub
        self.buffer = buffer
        self._queue: deque[Event] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._ended = False
        self.dropped = 0

    def _put(self, event: Event) -> None:
        queue = self._queue
        if len(queue) >= self.buffer:
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
        """Return the next buffered event, or raise :class:`trio.WouldBlock`."""
        if self._closed:
            raise trio.ClosedResourceError("subscription is closed")
        if self._queue:
            return self._queue.popleft()
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Event:
        """Wait for the next event (checkpoints every time)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            event = self.receive_nowait()
        except trio.WouldBlock:
            await self._lot.park()
            return self.receive_nowait()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    async def aclose(self) -> None:
        """Stop receiving; the hub forgets this subscriber."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        if not self._closed:
            self._closed = True
            self._hub._remove(self)
            self._lot.unpark_all()


@final
class EventHub:
    """Fans events out to subscribers; installs itself as the state's sink on demand."""

    def __init__(self, set_sink: Callable[[Callable[[Event], None] | None], None]) -> None:
        self._set_sink = set_sink
        self._subscribers: list[EventReceiver] = []
        self._writers: list[Callable[[Event], None]] = []
        self.dropped = 0
        self.emitted = 0

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber and writer. Never blocks."""
        self.emitted += 1
        for receiver in self._subscribers:
            receiver._put(event)
        for writer in self._writers:
            writer(event)

    def _update_sink(self) -> None:
        self._set_sink(self.emit if (self._subscribers or self._writers) else None)

    def subscribe(self, buffer: int) -> EventReceiver:
        """Register a new subscriber with a buffer of ``buffer`` events."""
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ConfigError(f"subscribe buffer must be a positive integer, got {buffer!r}")
        receiver = EventReceiver(self, buffer)
        self._subscribers.append(receiver)
        self._update_sink()
        return receiver

    def add_writer(self, writer: Callable[[Event], None]) -> None:
        """Register a synchronous writer called with every event."""
        self._writers.append(writer)
        self._update_sink()

    def _remove(self, receiver: EventReceiver) -> None:
        if receiver in self._subscribers:
            self._subscribers.remove(receiver)
            self._update_sink()

    def close(self) -> None:
        """End every subscription (their receivers drain, then see EndOfChannel)."""
        for receiver in self._subscribers:
            receiver._end()
        self._writers.clear()
        self._update_sink()


@final
class TraceWriter:
    """Writes every event as one JSON object per line (schema: ``docs/trace.md``)."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def __call__(self, event: Event) -> None:
        """Write ``event`` as one line (buffered; flushed when the manager closes)."""
        self._file.write(json.dumps(event.to_json(), separators=(",", ":")))
        self._file.write("\n")
