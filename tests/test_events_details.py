"""Event delivery in detail: receivers that wait, share or close, and the trace's edges."""

from __future__ import annotations

import codecs
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._events import EventHub


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def open_manager(**kwargs: object) -> object:
    kwargs.setdefault("limits", cm.Limits(low=2, high=10))
    kwargs.setdefault("grace_period", 0)
    return cm.open_connection_manager(**kwargs)  # type: ignore[arg-type]


def read_lines(name: str) -> list[str]:
    return Path(name).read_text(encoding="utf-8").splitlines()


def header_of(text: str) -> dict[str, Any]:
    header = json.loads(text.splitlines()[0])
    assert isinstance(header, dict)
    return header


# ------------------------------------------------------------------ receivers


async def test_a_receiver_waiting_when_the_manager_closes_sees_the_end() -> None:
    outcome: list[object] = []

    async def wait(
        mgr: cm.ConnectionManager, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with mgr.subscribe() as events:
            task_status.started()
            async for event in events:
                outcome.append(type(event))  # pragma: no cover (nothing happens)
            outcome.append("end")

    async with trio.open_nursery() as nursery, open_manager() as mgr:
        await nursery.start(wait, mgr)
        await trio.testing.wait_all_tasks_blocked()
    # Leaving the nursery waited for the task: it was woken by the manager's close.
    assert outcome == ["end"]


async def test_a_receiver_waiting_when_its_subscription_closes_is_woken() -> None:
    async with open_manager() as mgr, trio.open_nursery() as nursery:
        outcome: list[str] = []
        async with mgr.subscribe() as events:

            async def wait() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await events.receive()
                outcome.append("closed")

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["closed"]


async def test_receive_checkpoints_even_when_an_event_is_buffered() -> None:
    async with open_manager() as mgr, mgr.subscribe() as events:
        mgr.track("a", direction="outbound", close=noop_close)
        with trio.testing.assert_checkpoints():
            event = await events.receive()
        assert isinstance(event, cm.ConnectionOpened)
        # Cancelled before it takes anything: the event stays buffered.
        mgr.track("b", direction="outbound", close=noop_close)
        with trio.CancelScope() as scope:
            scope.cancel()
            await events.receive()
        assert scope.cancelled_caught
        assert events.pending == 1


async def test_a_receiver_shared_by_two_tasks_hands_each_event_to_one() -> None:
    async with open_manager() as mgr, mgr.subscribe() as events:
        received: list[cm.Event] = []

        async def consume() -> None:
            received.append(await events.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            # The waiting task is woken, but this task takes the event first.
            mgr.track("a", direction="outbound", close=noop_close)
            taken = events.receive_nowait()
            await trio.testing.wait_all_tasks_blocked()
            assert received == []  # it went back to waiting
            b = mgr.track("b", direction="outbound", close=noop_close)
        assert taken.peer == "a"  # type: ignore[attr-defined]
        assert [(type(e), e.connection_id) for e in received] == [  # type: ignore[attr-defined]
            (cm.ConnectionOpened, b.id)
        ]


async def test_aclose_ends_the_subscription_discards_its_buffer_and_checkpoints() -> None:
    async with open_manager() as mgr, mgr.subscribe() as events:
        mgr.track("a", direction="outbound", close=noop_close)
        assert events.pending == 1
        with trio.testing.assert_checkpoints():
            await events.aclose()
        assert events.pending == 0
        assert mgr.statistics().subscribers == 0
        assert mgr._state.sink is None  # nobody listens any more
        with pytest.raises(trio.ClosedResourceError):
            events.receive_nowait()
        await events.aclose()  # idempotent


async def test_leaving_a_subscription_discards_what_it_buffered() -> None:
    async with open_manager() as mgr:
        async with mgr.subscribe(buffer=4) as events:
            mgr.track("a", direction="outbound", close=noop_close)
            mgr.track("b", direction="outbound", close=noop_close)
            assert events.pending == 2
        assert events.pending == 0
        assert events.dropped == 0


def test_a_writer_that_raises_does_not_cost_the_next_writer_its_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = EventHub(lambda sink: None)
    seen: list[cm.Event] = []

    def broken(event: cm.Event) -> None:
        raise RuntimeError("broken writer")

    hub.add_writer(broken)
    hub.add_writer(seen.append)
    first = cm.AdmissionRefused(1.0, "p", "inbound", None, "hard", "full")
    second = cm.AdmissionRefused(2.0, "q", "inbound", None, "hard", "full")
    hub.emit(first)
    hub.emit(second)
    assert seen == [first, second]
    assert hub.writer_errors == 1
    assert len(caplog.records) == 1


# ---------------------------------------------------------------- trace files


class FlakyFile(io.StringIO):
    """Fails its first write (the header), then writes normally."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            self.failed = True
            raise OSError(5, "Input/output error")
        return super().write(text)


async def test_a_trace_whose_header_failed_writes_no_events_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    file = FlakyFile()
    async with open_manager(trace=file) as mgr:
        mgr.track("a", direction="inbound", close=noop_close).release()
        mgr.track("b", direction="inbound", close=noop_close)
        assert mgr.statistics().connections == 1
    # No line without its header: the trace stopped at its first failure.
    assert file.getvalue() == ""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "Input/output error" in caplog.text


async def test_the_trace_header_records_the_configuration_and_the_opening_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await trio.sleep(5)
    file = io.StringIO()
    async with open_manager(
        trace=file,
        limits=cm.Limits(low=3, high=9, hard=12),
        grace_period=1.5,
        burst_linger=2.5,
        max_lock_ttl=60,
        lock_budget=4,
    ):
        pass
    assert header_of(file.getvalue()) == {
        "kind": "trace_started",
        "time": 5.0,
        "version": 1,
        "low": 3,
        "high": 9,
        "hard": 12,
        "grace_period": 1.5,
        "burst_linger": 2.5,
        "max_lock_ttl": 60.0,
        "lock_budget": 4,
    }


class WriteOnly:
    """Has write() but no flush(): not a file."""

    def write(self, text: str) -> int:
        return len(text)  # pragma: no cover


@pytest.mark.parametrize(
    "make",
    [
        lambda: io.BytesIO(),
        lambda: tempfile.NamedTemporaryFile(),  # noqa: SIM115 (closed below)
        lambda: WriteOnly(),
    ],
    ids=["bytes-buffer", "binary-temporary-file", "no-flush"],
)
async def test_more_objects_that_take_no_text_are_config_errors(make: Any) -> None:
    trace = make()
    try:
        with pytest.raises(cm.ConfigError, match="trace must be") as caught:
            async with open_manager(trace=trace):
                pass  # pragma: no cover
        assert repr(trace) in str(caught.value)
    finally:
        if hasattr(trace, "close"):
            trace.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda path: tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below)
            "w", dir=path, delete=False, encoding="utf-8"
        ),
        lambda path: codecs.open(str(path / "trace.jsonl"), "w", encoding="utf-8"),  # noqa: SIM115
    ],
    ids=["text-temporary-file", "codecs-writer"],
)
async def test_text_file_wrappers_take_a_trace(make: Any, tmp_path: Path) -> None:
    trace = make(tmp_path)
    try:
        async with open_manager(trace=trace) as mgr:
            mgr.track("a", direction="inbound", close=noop_close)
    finally:
        trace.close()
    assert cm.replay_trace(read_lines(trace.name))["connections_opened"] == 1


# --------------------------------------------------------------------- replay

HEADER = '{"kind":"trace_started","time":0,"version":1,"low":1,"high":4,"hard":null}\n'


def test_replay_adds_up_repeated_events() -> None:
    lines: list[Any] = [
        {"kind": "admission_refused", "time": 1.0, "reason": "hard"},
        {"kind": "admission_refused", "time": 1.5, "reason": "hard"},
        {"kind": "lock_denied", "time": 2.0, "protocol": "kad", "reason": "grant"},
        {"kind": "lock_denied", "time": 2.5, "protocol": "kad", "reason": "grant"},
        {
            "kind": "round_completed",
            "time": 3.0,
            "trigger": "high-water",
            "by_phase": [["idle", 2]],
            "revoked_locks": 1,
        },
        {
            "kind": "round_completed",
            "time": 4.0,
            "trigger": "trim",
            "by_phase": [["idle", 1], ["tally", 1]],
            "revoked_locks": 2,
        },
    ]
    replayed = cm.replay_trace(lines)
    assert replayed["refusals"] == {"hard": 2}
    assert replayed["protocols"]["kad"]["locks_denied"] == {"grant": 2}
    assert replayed["rounds"] == {
        "count": 2,
        "last_trigger": "trim",
        "locks_revoked": 3,
        "victims_by_phase": {"idle": 3, "tally": 1},
    }
    assert replayed["events"] == {"admission_refused": 2, "lock_denied": 2, "round_completed": 2}
    assert replayed["time"] == 4.0


def test_replay_refuses_a_whole_last_line_that_is_not_json() -> None:
    # Only a line without its newline can have been cut short by the writer.
    with pytest.raises(ValueError, match="trace line 2 is not JSON"):
        cm.replay_trace([HEADER, '{"kind":"connection_opened","time":\n'])


@pytest.mark.parametrize("kind", [5, None, ["connection_opened"]])
def test_replay_refuses_a_kind_that_is_not_a_string(kind: object) -> None:
    with pytest.raises(ValueError, match="trace line 2 is not an event object with a 'kind'"):
        cm.replay_trace([HEADER, json.dumps({"kind": kind, "time": 1})])


@pytest.mark.parametrize("version", [True, 1.0])
def test_replay_refuses_a_version_that_only_equals_1(version: object) -> None:
    header = {"kind": "trace_started", "time": 0, "version": version, "low": 1, "high": 2}
    with pytest.raises(ValueError, match=rf"trace line 1 .*version {version!r}"):
        cm.replay_trace([json.dumps(header)])


def test_replay_says_which_field_a_line_lacks() -> None:
    with pytest.raises(ValueError, match="trace line 2 \\(connection_opened\\) lacks the field"):
        cm.replay_trace([HEADER, '{"kind":"connection_opened","time":1,"direction":"inbound"}'])


async def test_a_replay_counts_held_locks_by_connection_like_the_statistics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    file = io.StringIO()
    async with (
        open_manager(trace=file, limits=cm.Limits(low=4, high=10), lock_budget=4) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 4)) as kad,
        mgr.enroll("gossip", quota=cm.Quota(0, 4)) as gossip,
    ):
        a = mgr.track("a", direction="inbound", close=noop_close)
        b = mgr.track("b", direction="outbound", close=noop_close)
        async with (
            # kad: two locks on a, one on b; gossip: one on b.
            kad.lock(kad.track_stream(a), ttl=100),
            kad.lock(kad.track_stream(a), ttl=100),
            kad.lock(kad.track_stream(b), ttl=100),
            gossip.lock(gossip.track_stream(b), ttl=100),
        ):
            stats = mgr.statistics()
            replayed = cm.replay_trace(file.getvalue().splitlines())
    assert (stats.locked_connections, replayed["locked_connections"]) == (2, 2)
    for name in ("kad", "gossip"):
        assert replayed["protocols"][name]["locks_held"] == stats.protocols[name].locks_held
    assert (stats.protocols["kad"].locks_held, stats.protocols["gossip"].locks_held) == (2, 1)
