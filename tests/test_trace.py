"""The JSON-lines trace: one object per line, the documented schema, and a faithful replay."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._core._events import EVENTS_BY_KIND
from trio_connmgr._events import TRACE_VERSION


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


async def scenario(
    mgr: cm.ConnectionManager, trace: io.StringIO | None = None
) -> tuple[cm.Statistics, list[str]]:
    """A bit of everything. Returns the statistics at its end (everything still open)
    and the lines of ``trace`` written by then."""
    async with (
        mgr.enroll("kad", quota=cm.Quota.share(0.2, 0.6)) as kad,
        mgr.enroll("gossip", quota=cm.Quota(1, 3)) as gossip,
        mgr.enroll("ping", quota=cm.Quota(0, 1)),
    ):
        ins = [mgr.track(f"in{i}", direction="inbound", close=noop_close) for i in range(5)]
        outs = [mgr.track(f"out{i}", direction="outbound", close=noop_close) for i in range(3)]
        with pytest.raises(cm.ConnectionRefused):
            mgr.track("late", direction="inbound", address="10.0.0.9", close=noop_close)
        held = kad.track_stream(ins[0])
        kad.track_stream(ins[1])
        kad.track_stream(outs[0])
        gossip.track_stream(ins[2])
        gossip.track_stream(outs[1])
        async with kad.lock(held, ttl=100):
            async with gossip.lock(gossip.track_stream(ins[2]), ttl=5) as short:
                await short.wait_revoked()
            async with gossip.lock(gossip.track_stream(outs[1]), ttl=5) as extended:
                extended.extend(8)
            closed = gossip.track_stream(outs[1])
            closed.close()
            with pytest.raises(cm.LockDenied):
                async with gossip.lock(closed, ttl=5):
                    pass  # pragma: no cover
            async with kad.burst("lookup") as burst:
                kad.track_stream(ins[3], burst=burst).close()
            mgr._state.set_share(5, "test pressure")
            await trio.sleep(1)
            await mgr.trim()
            ins[0].release()  # drops kad's lock
            async with kad.burst("walk"):
                written = [] if trace is None else trace.getvalue().splitlines()
                return mgr.statistics(), written
    raise AssertionError("unreachable")  # pragma: no cover


def check_replay(replayed: dict[str, Any], stats: cm.Statistics) -> None:
    """Every figure a trace carries equals the live statistics."""
    for key in (
        "connections",
        "inbound",
        "outbound",
        "connections_opened",
        "connections_closed",
        "connections_pruned",
        "low",
        "high",
        "hard",
        "limits_source",
        "locked_connections",
    ):
        assert replayed[key] == getattr(stats, key), key
    assert replayed["refusals"] == stats.refusals
    rounds = replayed["rounds"]
    assert rounds["count"] == stats.rounds.count
    assert rounds["last_trigger"] == stats.rounds.last_trigger
    assert rounds["victims_by_phase"] == stats.rounds.victims_by_phase
    assert rounds["locks_revoked"] == stats.rounds.locks_revoked
    assert set(stats.protocols) <= set(replayed["protocols"])
    for name, figures in stats.protocols.items():
        mine = replayed["protocols"][name]
        for key in (
            "grant_min",
            "grant_max",
            "locks_held",
            "locks_granted",
            "locks_denied",
            "locks_revoked",
            "locks_expired",
            "bursts_open",
            "bursts_opened",
            "bursts_closed",
            "pruned",
        ):
            assert mine[key] == getattr(figures, key), (name, key)


def open_manager(trace: object, **kwargs: object) -> object:
    kwargs.setdefault("limits", cm.Limits(low=2, high=8, hard=8))
    kwargs.setdefault("grace_period", 0)
    kwargs.setdefault("lock_budget", 2)
    return cm.open_connection_manager(trace=trace, **kwargs)  # type: ignore[arg-type]


async def test_a_trace_replays_to_the_live_statistics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = io.StringIO()
    async with open_manager(buffer) as mgr:
        stats, written = await scenario(mgr, buffer)
    # Sanity: the scenario did what the comparison relies on.
    assert stats.connections_pruned > 0
    assert stats.refusals == {"hard": 1}
    assert stats.limits_source == "test pressure"
    assert stats.protocols["gossip"].locks_expired == 1
    assert stats.protocols["gossip"].locks_denied == {"closed": 1}
    assert stats.protocols["kad"].bursts_open == 1
    replayed = cm.replay_trace(written)
    check_replay(replayed, stats)
    assert replayed["version"] == TRACE_VERSION
    assert replayed["events"]["trace_started"] == 1
    assert replayed["events"]["lock_extended"] == 1

    # The whole trace, closing included: nothing left open.
    final = cm.replay_trace(buffer.getvalue().splitlines())
    assert final["connections"] == 0
    assert final["connections_closed"] == final["connections_opened"] == 8
    assert final["locked_connections"] == 0
    assert all(p["bursts_open"] == 0 for p in final["protocols"].values())


async def test_a_trace_file_has_one_json_object_per_line(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "trace.jsonl"
    async with open_manager(path, burst_linger=7.5) as mgr:
        await scenario(mgr)
        # Rounds flush the file: a tail -f sees them while the manager runs.
        assert '"kind":"round_completed"' in path.read_text(encoding="utf-8")
    lines = path.read_text(encoding="utf-8").splitlines()
    objects = [json.loads(line) for line in lines]
    assert all(isinstance(obj, dict) for obj in objects)
    header = objects[0]
    assert header == {
        "kind": "trace_started",
        "time": 0.0,
        "version": TRACE_VERSION,
        "low": 2,
        "high": 8,
        "hard": 8,
        "grace_period": 0.0,
        "burst_linger": 7.5,
        "max_lock_ttl": 300.0,
        "lock_budget": 2,
    }
    times = [obj["time"] for obj in objects]
    assert times == sorted(times)
    kinds = {obj["kind"] for obj in objects[1:]}
    assert kinds <= set(EVENTS_BY_KIND)
    # Every line has exactly the documented fields of its kind.
    for obj in objects[1:]:
        fields = {"kind"} | {f.name for f in attrs.fields(EVENTS_BY_KIND[obj["kind"]])}
        assert set(obj) == fields, obj["kind"]
    pruned = [obj for obj in objects if obj["kind"] == "connection_pruned"]
    assert pruned
    for obj in pruned:
        assert set(obj["reason"]) == {"phase", "protocol", "tally", "rank", "trigger", "forced"}
        assert obj["reason"]["phase"] in {"burst", "idle", "offender", "tally"}
    assert objects[-1]["kind"] == "connection_closed"
    assert objects[-1]["reason"] == "manager closed"


async def test_an_open_file_is_left_open_for_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    with path.open("w", encoding="utf-8") as file:
        async with open_manager(file) as mgr:
            mgr.track("a", direction="inbound", close=noop_close)
        assert not file.closed
        file.write("# the owner's own line\n")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["kind"] for line in lines[:-1]] == [
        "trace_started",
        "connection_opened",
        "connection_closed",
    ]


class FailingFile(io.StringIO):
    """Accepts ``good`` writes, then fails like a full disk."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def write(self, text: str) -> int:
        if self.good <= 0:
            raise OSError(28, "No space left on device")
        self.good -= 1
        return super().write(text)


async def test_a_failing_trace_never_breaks_the_manager(caplog: pytest.LogCaptureFixture) -> None:
    file = FailingFile(good=2)  # the header and one event
    async with open_manager(file) as mgr:
        a = mgr.track("a", direction="inbound", close=noop_close)
        b = mgr.track("b", direction="inbound", close=noop_close)  # this write fails
        b.release()
        a.release()
        assert mgr.statistics().connections == 0
        assert mgr._hub.writer_errors == 1
        assert mgr._state.sink is None  # nobody left to listen: no more events built
    assert [json.loads(line)["kind"] for line in file.getvalue().splitlines()] == [
        "trace_started",
        "connection_opened",
    ]
    errors = [r for r in caplog.records if r.name == "trio_connmgr.events"]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert "No space left on device" in caplog.text


class UnflushableFile(io.StringIO):
    """Takes writes, but its flush fails: a file on a full disk, or closed under us."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def flush(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [OSError(28, "No space left on device"), ValueError("I/O operation on closed file.")],
    ids=["full-disk", "closed"],
)
async def test_a_trace_that_cannot_be_flushed_at_exit_is_logged_not_raised(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    # The body's own error is what the caller gets, not the trace's.
    with pytest.raises(KeyError, match="the body's own"):
        async with open_manager(UnflushableFile(error)) as mgr:
            mgr.track("a", direction="inbound", close=noop_close).release()
            raise KeyError("the body's own error")
    # And with no error in the body, the manager's exit does not raise either.
    async with open_manager(UnflushableFile(error)):
        pass
    errors = [r for r in caplog.records if r.name == "trio_connmgr.events"]
    assert len(errors) == 2
    assert all("the trace is incomplete" in r.getMessage() for r in errors)
    assert all(r.exc_info is not None and r.exc_info[1] is error for r in errors)


FULL = Path("/dev/full")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
async def test_a_failed_trace_is_logged_once_and_its_file_closed_at_exit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Writes to /dev/full are buffered and succeed; the flush after a round fails
    # (logged, the trace stops), and so does the flush at exit (not logged again).
    # The file the manager opened is closed all the same.
    before = open_fds()
    async with open_manager(FULL, limits=cm.Limits(1, 2)) as mgr:
        assert open_fds() == before + 1
        for i in range(3):
            mgr.track(i, direction="inbound", close=noop_close)
        await mgr.trim()
        assert mgr._hub.writer_errors == 1
        assert mgr.statistics().connections == 1
    assert open_fds() == before
    errors = [r for r in caplog.records if r.name == "trio_connmgr.events"]
    assert len(errors) == 1
    assert "No space left on device" in caplog.text


def test_replay_reads_parsed_objects_and_skips_blank_lines() -> None:
    lines: list[Any] = [
        {"kind": "connection_opened", "time": 1.0, "connection_id": 1, "direction": "inbound"},
        "",
        '{"kind":"from_the_future","time":2.0}',
        {"kind": "admission_refused", "time": 3.0, "reason": "subnet"},
    ]
    replayed = cm.replay_trace(lines)
    assert (replayed["connections"], replayed["inbound"]) == (1, 1)
    assert replayed["refusals"] == {"subnet": 1}
    assert replayed["events"] == {
        "connection_opened": 1,
        "from_the_future": 1,
        "admission_refused": 1,
    }
    assert replayed["time"] == 3.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "trace line 2 is not JSON"),
        ("[1, 2]", "trace line 2 is not an event object"),
        ('{"time": 1}', "trace line 2 is not an event object"),
    ],
)
def test_replay_names_the_bad_line(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cm.replay_trace(
            ['{"kind":"trace_started","time":0,"version":1,"low":1,"high":2,"hard":null}', line]
        )


async def test_an_unwritable_trace_is_logged_and_the_manager_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    file = FailingFile(good=0)  # even the header fails
    async with open_manager(file) as mgr:
        conn = mgr.track("a", direction="inbound", close=noop_close)
        conn.release()
        assert mgr.statistics().connections_closed == 1
    assert file.getvalue() == ""
    assert [r.name for r in caplog.records] == ["trio_connmgr.events"]


async def test_an_unwritable_trace_without_events_is_logged_at_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The header failed and no event came to meet its error: the exit logs it.
    async with open_manager(FailingFile(good=0)):
        pass
    assert [r.name for r in caplog.records] == ["trio_connmgr.events"]
    assert "No space left on device" in caplog.text


async def test_a_trace_failing_on_a_prune_line_does_not_break_the_prune() -> None:
    # The header and the three connection_opened lines are written; the
    # connection_pruned line fails. The state still has a connection_closed to
    # emit for the same victim: the prune must go on all the same.
    file = FailingFile(good=4)
    async with open_manager(file) as mgr, trio.open_nursery() as nursery:

        async def body(peer: str, *, task_status: trio.TaskStatus[cm.Connection]) -> None:
            async with mgr.connection(peer, direction="inbound") as conn:
                task_status.started(conn)
                await trio.sleep_forever()

        conns = [await nursery.start(body, f"p{i}") for i in range(3)]
        pruned = await mgr.trim()  # count 3, low 2: one victim
        assert len(pruned) == 1
        victim = pruned[0]
        assert victim.close_reason == "pruned"
        # Its body was cancelled: the scope of a pruned connection always is.
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == 2
        stats = mgr.statistics()
        assert stats.connections == 2
        assert stats.rounds.count == 1
        assert stats.rounds.failures == 0
        assert mgr._hub.writer_errors == 1
        assert [c for c in conns if c.closed] == [victim]
        nursery.cancel_scope.cancel()
    assert [json.loads(line)["kind"] for line in file.getvalue().splitlines()] == [
        "trace_started",
        "connection_opened",
        "connection_opened",
        "connection_opened",
    ]


def strict_json(line: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"not strict JSON: {constant} in {line}")

    return json.loads(line, parse_constant=refuse)


async def test_an_infinite_tally_is_written_as_null(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two protocols weighing 1e308 each: the tally of a connection both use
    # overflows to inf. The trace carries on, in strict JSON.
    buffer = io.StringIO()
    async with (
        open_manager(buffer, limits=cm.Limits(low=1, high=8)) as mgr,
        mgr.enroll("a", quota=cm.Quota(0, 4), weight=1e308) as a,
        mgr.enroll("b", quota=cm.Quota(0, 4), weight=1e308) as b,
    ):
        for i in range(2):
            conn = mgr.track(f"p{i}", direction="inbound", close=noop_close)
            a.track_stream(conn)
            b.track_stream(conn)
        [victim] = await mgr.trim()
        assert victim.prune_reason is not None
        assert victim.prune_reason.tally == float("inf")
        assert mgr._hub.writer_errors == 0
    objects = [strict_json(line) for line in buffer.getvalue().splitlines()]
    [pruned] = [obj for obj in objects if obj["kind"] == "connection_pruned"]
    assert pruned["reason"]["tally"] is None
    assert pruned["connection_id"] == victim.id
    assert objects[-1]["kind"] == "connection_closed"  # the trace went on to the end


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"kind":"connection_opened","time":1,"connection_id":1}', "'direction'"),
        ('{"kind":"connection_closed","time":1}', "'connection_id'"),
        (
            '{"kind":"round_completed","time":1,"trigger":"t","revoked_locks":0,"by_phase":3}',
            "round_completed",
        ),
        (
            '{"kind":"lock_granted","time":1,"protocol":["x"],"lock_id":1,"connection_id":1}',
            "lock_granted",
        ),
        ('{"kind":"trace_started","time":0,"version":1}', "'low'"),
    ],
)
def test_replay_names_the_line_of_a_malformed_event(line: str, field: str) -> None:
    header = '{"kind":"trace_started","time":0,"version":1,"low":1,"high":2,"hard":null}'
    with pytest.raises(ValueError, match="trace line 2 ") as caught:
        cm.replay_trace([header, line, header])
    assert field in str(caught.value)


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_replay_refuses_a_trace_of_another_version(version: object) -> None:
    header = {"kind": "trace_started", "time": 0, "low": 1, "high": 2, "hard": None}
    if version is not None:
        header["version"] = version
    with pytest.raises(ValueError, match=rf"trace line 1 .*version {version!r}"):
        cm.replay_trace([json.dumps(header)])


def test_replay_skips_a_last_line_cut_short() -> None:
    lines = [
        '{"kind":"trace_started","time":0,"version":1,"low":1,"high":2,"hard":null}\n',
        '{"kind":"connection_opened","time":1,"connection_id":1,"direction":"inbound"}\n',
        '{"kind":"connection_closed","time":2,"connec',  # the writer was cut off here
    ]
    replayed = cm.replay_trace(lines)
    assert replayed["truncated"] is True
    assert (replayed["connections"], replayed["connections_closed"]) == (1, 0)
    assert replayed["time"] == 1
    assert cm.replay_trace(lines[:2])["truncated"] is False
    # Only the last line may be cut short: a broken line with more after it is an error.
    with pytest.raises(ValueError, match="trace line 3 is not JSON"):
        cm.replay_trace([*lines, '{"kind":"from_the_future","time":3}\n'])


class FillingFile(io.StringIO):
    """Takes ``room`` characters, then fails like a disk that just filled up:
    the write that does not fit is cut short."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, text: str) -> int:
        if len(text) > self.room:
            super().write(text[: self.room])
            self.room = 0
            raise OSError(28, "No space left on device")
        self.room -= len(text)
        return super().write(text)


async def test_a_trace_cut_short_by_a_full_disk_replays_to_its_last_whole_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    file = FillingFile(room=1000)
    async with open_manager(file, limits=cm.Limits(low=2, high=100, hard=100)) as mgr:
        for i in range(20):
            mgr.track(f"peer-{i}", direction="inbound", close=noop_close)
        assert mgr._hub.writer_errors == 1
        text = file.getvalue()
        assert len(text) == 1000
        assert not text.endswith("\n")  # the premise: the last line is cut short
        replayed = cm.replay_trace(io.StringIO(text))
        assert replayed["truncated"] is True
        complete = text.count("\n") - 1  # the header is not an event
        assert replayed["connections_opened"] == replayed["connections"] == complete
        assert replayed["version"] == TRACE_VERSION
    assert "No space left on device" in caplog.text


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: 42,
        lambda tmp: os.fsencode(tmp / "trace.jsonl"),
        lambda tmp: (tmp / "trace.jsonl").open("wb"),
        lambda tmp: (tmp / "trace.jsonl").open("w+b", buffering=0),
        lambda tmp: (tmp / "trace.jsonl").open("r", encoding="utf-8"),
    ],
    ids=["int", "bytes-path", "binary-file", "raw-file", "read-only-file"],
)
async def test_a_trace_that_is_not_a_writable_text_file_is_a_config_error(
    make: Any, tmp_path: Path
) -> None:
    (tmp_path / "trace.jsonl").write_text("", encoding="utf-8")
    trace = make(tmp_path)
    try:
        with pytest.raises(cm.ConfigError, match="trace must be") as caught:
            async with open_manager(trace):
                pass  # pragma: no cover
        assert repr(trace) in str(caught.value)
    finally:
        if hasattr(trace, "close"):
            trace.close()


async def test_a_closed_trace_file_is_a_config_error(tmp_path: Path) -> None:
    file = (tmp_path / "trace.jsonl").open("w", encoding="utf-8")
    file.close()
    with pytest.raises(cm.ConfigError, match=r"trace must be .* open"):
        async with open_manager(file):
            pass  # pragma: no cover
