"""Replaying a trace checks each field it reads against what the writer writes."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import trio_connmgr as cm
from trio_connmgr._events import _REPLAYED_FIELDS, TraceWriter

HEADER = '{"kind":"trace_started","time":0,"version":1,"low":1,"high":4,"hard":null}\n'

REASON = cm.PruneReason(cm.Phase.IDLE, None, 0.5, 1, "trim")

# One event of every kind, with the values the manager gives them.
EVENTS: list[cm.Event] = [
    cm.ConnectionOpened(1.0, 1, "p", "inbound", None, 1),
    cm.ConnectionOpened(1.0, 2, "q", "outbound", "10.0.0.1", 2),
    cm.ConnectionPruned(2.0, 1, "p", REASON, ("kad",)),
    cm.ConnectionClosed(2.0, 1, "p", "pruned", 1, "inbound"),
    cm.RoundCompleted(2.0, 1, "trim", False, 2, 1, 1, (("idle", 1),), 0.001, 0),
    cm.GrantChanged(3.0, "kad", 1, 2, 4),
    cm.LockGranted(3.0, "kad", 7, 2, 103.0),
    cm.LockExtended(3.5, "kad", 7, 2, 110.0),
    cm.LockDeniedEvent(3.5, "kad", 2, "grant"),
    cm.LockReleased(4.0, "kad", 7, 2, "dropped"),
    cm.LockRevoked(4.0, "kad", 8, 2),
    cm.LockExpired(4.0, "kad", 9, 2),
    cm.BurstOpened(5.0, "kad", 3, None),
    cm.BurstClosed(5.0, "kad", 3, "walk", 2, 5),
    cm.LimitsChanged(6.0, 1, 3, None, "memory pressure"),
    cm.AdmissionRefused(7.0, "r", "inbound", None, "hard", "3 inbound of 3"),
]


def written(*events: cm.Event) -> list[str]:
    """The lines the trace writer writes for ``events``."""
    file = io.StringIO()
    writer = TraceWriter(file)
    for event in events:
        writer(event)
    return file.getvalue().splitlines(keepends=True)


def line_of(event: cm.Event, **changes: object) -> str:
    [line] = written(event)
    obj = json.loads(line)
    obj.update(changes)
    return json.dumps(obj) + "\n"


def test_replay_reads_every_kind_as_the_writer_writes_it() -> None:
    lines = [HEADER, *written(*EVENTS)]
    replayed = cm.replay_trace(lines)
    assert replayed["connections"] == replayed["outbound"] == 1
    assert replayed["rounds"]["victims_by_phase"] == {"idle": 1}
    assert replayed["protocols"]["kad"]["pruned"] == 1
    assert (replayed["low"], replayed["high"], replayed["hard"]) == (1, 3, None)
    assert replayed["time"] == 7.0
    # The parsed objects replay alike, tuples and all.
    assert cm.replay_trace([json.loads(HEADER), *(e.to_json() for e in EVENTS)]) == replayed


def test_replay_reads_the_numbers_the_writer_writes_for_seconds() -> None:
    # Whole seconds may be written as integers; a tally that is not finite is
    # written as null (the replay does not read it).
    infinite = cm.ConnectionPruned(2, 1, "p", REASON._replace(tally=math.inf), ())
    lines = [HEADER, *written(cm.ConnectionOpened(1, 1, "p", "inbound", None, 1), infinite)]
    assert json.loads(lines[-1])["reason"]["tally"] is None
    replayed = cm.replay_trace(lines)
    assert (replayed["time"], replayed["connections_pruned"]) == (2, 1)


def test_a_line_without_a_time_leaves_the_time_of_the_line_before() -> None:
    replayed = cm.replay_trace([HEADER, line_of(EVENTS[0]), '{"kind":"from_the_future"}\n'])
    assert replayed["time"] == 1.0


def test_replay_reads_any_mapping() -> None:
    records = [MappingProxyType(json.loads(line)) for line in [HEADER, *written(*EVENTS)]]
    assert cm.replay_trace(records) == cm.replay_trace([HEADER, *written(*EVENTS)])


def test_replay_ignores_fields_and_kinds_it_does_not_know() -> None:
    lines = [
        HEADER,
        line_of(EVENTS[0], colour=["any", {"thing": True}], count="not read"),
        line_of(EVENTS[5], share=None),
        '{"kind":"from_the_future","time":8,"connection_id":"x","protocols":"y"}\n',
    ]
    replayed = cm.replay_trace(lines)
    assert replayed["connections"] == 1
    assert replayed["protocols"]["kad"]["grant_max"] == 2
    assert replayed["events"]["from_the_future"] == 1


WRONG: list[tuple[cm.Event, str, Any]] = [
    (EVENTS[0], "direction", "sideways"),
    (EVENTS[0], "direction", None),
    (EVENTS[0], "connection_id", True),
    (EVENTS[0], "connection_id", "1"),
    (EVENTS[0], "time", "1.0"),
    (EVENTS[0], "time", False),
    (EVENTS[3], "connection_id", 1.0),
    (EVENTS[4], "trigger", 7),
    (EVENTS[4], "revoked_locks", True),
    (EVENTS[4], "by_phase", [["idle", "1"]]),
    (EVENTS[4], "by_phase", [["idle"]]),
    (EVENTS[4], "by_phase", [["idle", 1, 2]]),
    (EVENTS[4], "by_phase", ["idle"]),
    (EVENTS[4], "by_phase", [[1, 1]]),
    (EVENTS[4], "by_phase", {"idle": 1}),
    (EVENTS[5], "min", "1"),
    (EVENTS[5], "max", [2]),
    (EVENTS[5], "protocol", None),
    (EVENTS[6], "lock_id", 7.0),
    (EVENTS[6], "connection_id", None),
    (EVENTS[8], "reason", None),
    (EVENTS[9], "lock_id", "7"),
    (EVENTS[10], "protocol", 3),
    (EVENTS[11], "lock_id", False),
    (EVENTS[13], "protocol", ["kad"]),
    (EVENTS[14], "low", 1.0),
    (EVENTS[14], "high", "3"),
    (EVENTS[14], "hard", True),
    (EVENTS[14], "cause", None),
    (EVENTS[15], "reason", 5),
]


@pytest.mark.parametrize(
    ("event", "field", "value"),
    WRONG,
    ids=[f"{event.kind}-{field}-{value!r}" for event, field, value in WRONG],
)
def test_replay_names_a_field_of_another_type_than_the_writer_writes(
    event: cm.Event, field: str, value: object
) -> None:
    line = line_of(event, **{field: value})
    with pytest.raises(ValueError, match=rf"trace line 2 \({event.kind}\) has a field") as caught:
        cm.replay_trace([HEADER, line])
    assert f"{field} must be " in str(caught.value)
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize(
    "by_phase",
    [[{0: "idle", 1: 2}], ["i2"], [("idle", 2.0)], (("idle", 2), None)],
    ids=["mapping", "string", "float", "null"],
)
def test_replay_names_a_parsed_round_whose_phases_are_no_pairs(by_phase: object) -> None:
    record = EVENTS[4].to_json()
    record["by_phase"] = by_phase
    with pytest.raises(ValueError, match=r"trace line 2 \(round_completed\) has a field"):
        cm.replay_trace([HEADER, record])


@pytest.mark.parametrize(
    ("field", "value"), [("low", "1"), ("high", None), ("hard", 2.5), ("time", None)]
)
def test_replay_names_a_header_field_of_another_type(field: str, value: object) -> None:
    header = json.loads(HEADER)
    header[field] = value
    with pytest.raises(ValueError, match=r"trace line 1 \(trace_started\) has a field") as caught:
        cm.replay_trace([json.dumps(header)])
    assert f"{field} must be " in str(caught.value)


def test_replay_names_a_time_that_is_no_number_in_a_kind_it_does_not_know() -> None:
    with pytest.raises(ValueError, match=r"trace line 2 \(from_the_future\) has a field"):
        cm.replay_trace([HEADER, '{"kind":"from_the_future","time":"noon"}\n'])


@pytest.mark.parametrize("event", [e for e in EVENTS if e.kind != "lock_extended"])
def test_replay_says_which_field_a_line_of_any_kind_lacks(event: cm.Event) -> None:
    # The field every kind's figures come from.
    field = {
        "connection_opened": "direction",
        "connection_pruned": "protocols",
        "connection_closed": "connection_id",
        "round_completed": "by_phase",
        "limits_changed": "cause",
        "admission_refused": "reason",
        "lock_denied": "reason",
    }.get(event.kind, "protocol")
    obj = json.loads(line_of(event))
    del obj[field]
    with pytest.raises(ValueError, match=rf"trace line 2 \({event.kind}\) lacks the field"):
        cm.replay_trace([HEADER, json.dumps(obj)])


def test_replay_refuses_a_pruned_line_without_its_protocols() -> None:
    # The writer always writes them (an empty array for a connection without
    # streams): a line without them would leave the protocols' pruned short.
    obj = json.loads(line_of(EVENTS[2]))
    del obj["protocols"]
    with pytest.raises(
        ValueError, match=r"trace line 2 \(connection_pruned\) lacks the field 'protocols'"
    ):
        cm.replay_trace([HEADER, json.dumps(obj)])


def test_the_documented_fields_are_the_ones_the_replay_checks() -> None:
    text = (Path(__file__).parent.parent / "docs" / "trace.md").read_text(encoding="utf-8")
    table = text[text.index("| Kind | Fields |") :].split("\n\n")[0].splitlines()[2:]
    documented: dict[str, set[str]] = {}
    for row in table:
        kinds, fields = row.strip("|").split("|")
        names = set(re.findall(r"`(\w+)`", fields.split("(")[0]))
        for kind in re.findall(r"`(\w+)`", kinds) or ["every line"]:
            documented[kind] = names
    every = documented.pop("every line")
    assert every == {"time"}
    checked = {
        kind: {name for name, *_ in fields} - every for kind, fields in _REPLAYED_FIELDS.items()
    }
    assert documented == checked
    assert all("time" in {name for name, *_ in f} for f in _REPLAYED_FIELDS.values())
