"""Traces that fail: malformed lines in a replay, trace files failing twice or interrupting."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from typing import Any

import pytest
import trio
import trio.testing
from helpers import Interrupt, InterruptingFile

import trio_connmgr as cm
from trio_connmgr._events import EventHub

HEADER = '{"kind":"trace_started","time":0,"version":1,"low":1,"high":4,"hard":null}\n'


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def open_manager(trace: object, **kwargs: object) -> object:
    kwargs.setdefault("limits", cm.Limits(low=2, high=10))
    kwargs.setdefault("grace_period", 0)
    return cm.open_connection_manager(trace=trace, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------- replay


def pruned_line(protocols: object) -> str:
    reason = {
        "phase": "idle",
        "protocol": None,
        "tally": 0.0,
        "rank": 1,
        "trigger": "trim",
        "forced": False,
    }
    line = {
        "kind": "connection_pruned",
        "time": 1.0,
        "connection_id": 1,
        "peer": "p",
        "reason": reason,
        "protocols": protocols,
    }
    return json.dumps(line) + "\n"


@pytest.mark.parametrize(
    "protocols",
    ["kad", {"kad": 1}, [1], ["kad", None], None, 3],
    ids=["string", "object", "number-in-array", "null-in-array", "null", "number"],
)
def test_replay_names_pruned_protocols_that_are_not_an_array_of_strings(
    protocols: object,
) -> None:
    with pytest.raises(
        ValueError, match=r"trace line 2 \(connection_pruned\) has a field"
    ) as caught:
        cm.replay_trace([HEADER, pruned_line(protocols)])
    assert "protocol" in str(caught.value)


def test_replay_counts_the_pruned_protocols_of_a_well_formed_line() -> None:
    replayed = cm.replay_trace([HEADER, pruned_line(["kad", "ping"]), pruned_line([])])
    assert replayed["connections_pruned"] == 2
    assert {name: p["pruned"] for name, p in replayed["protocols"].items()} == {
        "kad": 1,
        "ping": 1,
    }
    # Parsed objects may carry a tuple where JSON has an array.
    parsed: dict[str, Any] = json.loads(pruned_line(None))
    parsed["protocols"] = ("kad",)
    assert cm.replay_trace([HEADER, parsed])["protocols"]["kad"]["pruned"] == 1


@pytest.mark.parametrize(
    "line",
    [
        '{"kind":"grant_changed","time":1,"protocol":5,"min":1,"max":2}',
        '{"kind":"burst_opened","time":1,"protocol":null,"burst_id":1}',
        '{"kind":"lock_denied","time":1,"protocol":1.5,"connection_id":1,"reason":"grant"}',
    ],
)
def test_replay_names_a_protocol_that_is_not_a_string(line: str) -> None:
    with pytest.raises(ValueError, match=r"trace line 2 \(\w+\) has a field") as caught:
        cm.replay_trace([HEADER, line])
    assert "protocol" in str(caught.value)


# ------------------------------------------------------------ failing files


class NoRoomFile(io.StringIO):
    """Every write fails (a full disk), and so does the flush, with its own error."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise ValueError("flush of a file that lost its header")


async def test_a_failed_header_is_still_logged_when_the_flush_at_exit_fails_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No event met the header's error: the exit logs it, and the flush's own
    # error with it, once.
    async with open_manager(NoRoomFile()):
        pass
    errors = [r for r in caplog.records if r.name == "trio_connmgr.events"]
    assert len(errors) == 1
    assert "the trace is incomplete" in errors[0].getMessage()
    assert "No space left on device" in caplog.text
    assert "flush of a file that lost its header" in caplog.text


class InterruptedFlushFile(NoRoomFile):
    """Every write fails (a full disk); the flush at exit is interrupted."""

    def flush(self) -> None:
        raise Interrupt("flush")


async def test_a_failed_header_is_still_logged_when_the_flush_at_exit_is_interrupted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    file = InterruptedFlushFile()
    with pytest.raises(Interrupt, match="flush"):
        async with open_manager(file):
            pass
    errors = [r for r in caplog.records if r.name == "trio_connmgr.events"]
    assert len(errors) == 1
    assert "No space left on device" in caplog.text


async def test_a_trace_file_interrupting_the_exit_leaves_nothing_open() -> None:
    # The file raises on the first line of the manager's closing: every
    # connection is closed all the same (tracked ones' close() awaited), every
    # subscription ended; then the interrupt comes out. The trace stops there,
    # with no gap in it.
    file = InterruptingFile('"manager closed"')
    closed: list[int] = []

    def closer(n: int) -> Any:
        async def close() -> None:
            await trio.lowlevel.checkpoint()
            closed.append(n)

        return close

    async with contextlib.AsyncExitStack() as stack:
        with pytest.RaisesGroup(Interrupt, flatten_subgroups=True):
            async with open_manager(file) as mgr:
                events = await stack.enter_async_context(mgr.subscribe(buffer=100))
                conns = [mgr.track(n, direction="inbound", close=closer(n)) for n in range(3)]
        assert sorted(closed) == [0, 1, 2]
        assert all(conn.closed for conn in conns)
        assert mgr.statistics().connections == 0
        kinds = []
        with pytest.raises(trio.EndOfChannel):
            while True:
                kinds.append(events.receive_nowait().kind)
        assert kinds.count("connection_closed") == 3
    assert [json.loads(line)["kind"] for line in file.getvalue().splitlines()] == [
        "trace_started",
        *["connection_opened"] * 3,
    ]


async def test_a_trace_file_interrupting_the_exit_does_not_hide_the_body_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    file = InterruptingFile('"manager closed"')
    with pytest.RaisesGroup(Interrupt, KeyError, flatten_subgroups=True):
        async with open_manager(file) as mgr:
            mgr.track("a", direction="inbound", close=noop_close)
            raise KeyError("the body's own error")
    assert mgr.statistics().connections == 0
    # An interrupt is raised, not logged.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_trace_file_interrupting_a_protocol_leaving_at_exit_still_ends_its_locks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An enrollment still open as the manager closes (its task lives outside
    # the manager's block) leaves; the file raises on its lock's line. The lock
    # ends all the same (its waiter wakes) and the protocol leaves.
    file = InterruptingFile('"lock_released"')
    woken: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            with pytest.RaisesGroup(Interrupt, flatten_subgroups=True):
                async with open_manager(file) as mgr:

                    async def member(*, task_status: trio.TaskStatus[cm.Lock]) -> None:
                        async with mgr.enroll("kad", quota=cm.Quota(1, 4)) as kad:
                            conn = mgr.track("a", direction="inbound", close=noop_close)
                            async with kad.lock(kad.track_stream(conn), ttl=100) as lock:
                                task_status.started(lock)
                                await trio.sleep_forever()

                    async def wait_for_the_lock(lock: cm.Lock) -> None:
                        await lock.wait_revoked()
                        woken.append(lock.status)

                    lock = await outer.start(member)
                    outer.start_soon(wait_for_the_lock, lock)
                    await trio.testing.wait_all_tasks_blocked()
            assert mgr.statistics().protocols == {}
    assert woken == ["released"]


def test_the_first_interrupt_of_the_writers_comes_out_once_the_hub_closed() -> None:
    sinks: list[object] = []
    hub = EventHub(sinks.append)
    receiver = hub.subscribe(10)

    def interrupting(n: int) -> Any:
        def write(event: cm.Event) -> None:
            raise Interrupt(n)

        return write

    hub.add_writer(interrupting(1))
    hub.add_writer(interrupting(2))
    event = cm.ConnectionOpened(0.0, 1, "p", "inbound", None, 1)
    with pytest.raises(Interrupt) as caught, hub.closing():
        hub.emit(event)
        hub.emit(event)  # the writers that raised are gone
    assert caught.value.args == (1,)
    assert receiver.receive_nowait() is event
    assert receiver.receive_nowait() is event
    with pytest.raises(trio.EndOfChannel):
        receiver.receive_nowait()
    assert sinks[-1] is None


def test_a_writer_that_was_interrupted_writes_no_more_lines() -> None:
    # Its file may hold half a line: lines after it would make the middle of
    # the trace unreadable, where a cut last line is only skipped.
    hub = EventHub(lambda sink: None)
    receiver = hub.subscribe(10)
    written: list[cm.Event] = []

    def write(event: cm.Event) -> None:
        if not written:
            written.append(event)
            raise Interrupt(1)
        written.append(event)

    hub.add_writer(write)
    first = cm.ConnectionOpened(0.0, 1, "p", "inbound", None, 1)
    second = cm.ConnectionOpened(1.0, 2, "q", "inbound", None, 2)
    with pytest.raises(Interrupt):
        hub.emit(first)
    hub.emit(second)
    assert written == [first]
    assert [receiver.receive_nowait(), receiver.receive_nowait()] == [first, second]
