"""Traces cut short: a last line the writer did not finish, and a write interrupted."""

from __future__ import annotations

import io
import json
import logging

import pytest
import trio
from helpers import Interrupt

import trio_connmgr as cm

HEADER = '{"kind":"trace_started","time":0,"version":1,"low":1,"high":4,"hard":null}\n'
OPENED = (
    '{"kind":"connection_opened","time":1,"connection_id":1,"peer":"p",'
    '"direction":"inbound","address":null,"count":1}\n'
)
BROKEN = '{"kind":"connection_closed","time":2,"connec'


def test_a_last_line_cut_short_in_a_file_is_skipped() -> None:
    text = HEADER + OPENED + BROKEN
    replayed = cm.replay_trace(io.StringIO(text))
    assert replayed["truncated"] is True
    assert replayed["connections"] == 1
    # A blank line before it changes nothing: it ended with its newline too.
    assert cm.replay_trace([HEADER, OPENED, "\n", BROKEN])["truncated"] is True


def test_a_file_cut_short_in_its_header_is_skipped() -> None:
    # The disk filled up at the first flush: the file holds half a header.
    replayed = cm.replay_trace(io.StringIO(HEADER[:30]))
    assert replayed["truncated"] is True
    assert replayed["version"] is None
    assert replayed["events"] == {}


@pytest.mark.parametrize(
    "lines",
    [
        (HEADER + OPENED + BROKEN).splitlines(),
        [json.loads(HEADER), json.loads(OPENED), BROKEN],
        [HEADER, json.loads(OPENED), BROKEN],
        [BROKEN],
    ],
    ids=["split-lines", "parsed-objects", "after-a-parsed-object", "alone"],
)
def test_a_malformed_last_line_among_lines_without_endings_is_an_error(
    lines: list[object],
) -> None:
    # Lines without their endings cannot show where the writer stopped: a last
    # line that is not JSON is as malformed as any other.
    number = len(lines)
    with pytest.raises(ValueError, match=f"trace line {number} is not JSON"):
        cm.replay_trace(lines)  # type: ignore[arg-type]


class InterruptedThenFullFile(io.StringIO):
    """Interrupts its first event's write; then its disk is full, at flush."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def write(self, text: str) -> int:
        if not self.interrupted and '"connection_opened"' in text:
            self.interrupted = True
            raise Interrupt
        return super().write(text)

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


async def test_a_flush_error_at_exit_is_logged_after_an_interrupted_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The interrupt is raised, not logged; the flush failing at exit is an
    # error of its own, and logged.
    file = InterruptedThenFullFile()
    with pytest.raises(Interrupt):
        async with cm.open_connection_manager(limits=cm.Limits(1, 4), trace=file) as mgr:
            mgr.track("a", direction="inbound", close=noop_close)
    errors = [r for r in caplog.records if r.name == "trio_connmgr.events"]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert "the trace is incomplete" in errors[0].getMessage()
    assert "No space left on device" in caplog.text
