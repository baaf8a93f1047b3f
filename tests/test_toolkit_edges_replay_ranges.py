"""Replaying a trace refuses a value out of the range the writer writes."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pytest

import trio_connmgr as cm
from trio_connmgr._events import TraceWriter

HEADER: dict[str, Any] = {
    "kind": "trace_started",
    "time": 0,
    "version": 1,
    "low": 2,
    "high": 4,
    "hard": 6,
}

ROUND = cm.RoundCompleted(2.0, 1, "trim", False, 5, 2, 3, (("idle", 3),), 0.001, 1)
GRANT = cm.GrantChanged(3.0, "kad", 1, 2, 4)
LIMITS = cm.LimitsChanged(4.0, 1, 3, 6, "memory pressure")
OPENED = cm.ConnectionOpened(1.0, 1, "p", "inbound", None, 1)


def record(event: cm.Event, **changes: object) -> str:
    """The line the trace writer writes for ``event``, with ``changes``."""
    file = io.StringIO()
    TraceWriter(file)(event)
    obj = json.loads(file.getvalue())
    obj.update(changes)
    return json.dumps(obj) + "\n"  # (json.dumps writes NaN and Infinity as such)


def header(**changes: object) -> str:
    return json.dumps({**HEADER, **changes}) + "\n"


def test_the_lines_the_writer_writes_replay() -> None:
    lines = [header(), *(record(e) for e in (OPENED, ROUND, GRANT, LIMITS))]
    replayed = cm.replay_trace(lines)
    assert replayed["rounds"]["locks_revoked"] == 1
    assert replayed["rounds"]["victims_by_phase"] == {"idle": 3}
    assert replayed["protocols"]["kad"]["grant_min"] == 1
    assert (replayed["low"], replayed["high"], replayed["hard"]) == (1, 3, 6)
    # At the edges of each range, as the writer may write them.
    edges = [
        header(low=4, high=4, hard=4),
        record(ROUND, revoked_locks=0, by_phase=[["idle", 0]]),
        record(GRANT, min=0, max=0),
        record(LIMITS, low=1, high=1, hard=None, time=10**400),
    ]
    replayed = cm.replay_trace(edges)
    assert (replayed["low"], replayed["high"], replayed["hard"]) == (1, 1, None)
    assert replayed["time"] == 10**400


OUT_OF_RANGE: list[tuple[str, str, str]] = [
    # (the line, the problem the error names)
    (record(OPENED, time=math.nan), "time must be a finite number, got nan", "connection_opened"),
    (
        record(OPENED, time=-math.inf),
        "time must be a finite number, got -inf",
        "connection_opened",
    ),
    (
        '{"kind":"from_the_future","time":Infinity}\n',
        "time must be a finite number, got inf",
        "from_the_future",
    ),
    (
        record(ROUND, revoked_locks=-1),
        "revoked_locks must be a non-negative integer, got -1",
        "round_completed",
    ),
    (
        record(ROUND, by_phase=[["idle", 3], ["tally", -3]]),
        "by_phase must be an array of [phase, n >= 0] pairs, got [['idle', 3], ['tally', -3]]",
        "round_completed",
    ),
    (record(GRANT, min=-1), "min must be a non-negative integer, got -1", "grant_changed"),
    (record(GRANT, min=0, max=-2), "max must be a non-negative integer, got -2", "grant_changed"),
    (record(GRANT, min=3, max=2), "min must be <= max, got min=3, max=2", "grant_changed"),
    (record(LIMITS, low=0), "low must be a positive integer, got 0", "limits_changed"),
    (record(LIMITS, low=4, high=3), "low must be <= high, got low=4, high=3", "limits_changed"),
    (record(LIMITS, hard=2), "high must be <= hard, got high=3, hard=2", "limits_changed"),
    (record(LIMITS, hard=0), "hard must be a positive integer or null, got 0", "limits_changed"),
]


@pytest.mark.parametrize(
    ("line", "problem", "kind"), OUT_OF_RANGE, ids=[p for _, p, _ in OUT_OF_RANGE]
)
def test_replay_names_a_field_out_of_the_range_the_writer_writes(
    line: str, problem: str, kind: str
) -> None:
    with pytest.raises(ValueError, match=r"^trace line 2 ") as caught:
        cm.replay_trace([header(), line])
    assert str(caught.value) == (
        f"trace line 2 ({kind}) has a field of a value the writer never writes ({problem})"
    )


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"high": -4}, "high must be a positive integer, got -4"),
        ({"low": 5}, "low must be <= high, got low=5, high=4"),
        ({"hard": 3}, "high must be <= hard, got high=4, hard=3"),
        ({"time": math.nan}, "time must be a finite number, got nan"),
    ],
)
def test_replay_names_a_header_field_out_of_range(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=r"^trace line 1 ") as caught:
        cm.replay_trace([header(**changes)])
    assert str(caught.value) == (
        f"trace line 1 (trace_started) has a field of a value the writer never writes ({problem})"
    )


def test_replay_of_parsed_objects_refuses_a_time_that_is_not_finite() -> None:
    event = OPENED.to_json()
    event["time"] = math.inf
    with pytest.raises(ValueError, match=r"time must be a finite number, got inf"):
        cm.replay_trace([json.loads(header()), event])
