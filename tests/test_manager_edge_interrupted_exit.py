"""A connection block whose exit is interrupted (a trace file raising a
KeyboardInterrupt) still exits its cancel scope and uncounts the connection."""

from __future__ import annotations

import io

import pytest
import trio
from helpers import Interrupt

import trio_connmgr as cm


class InterruptingFile(io.StringIO):
    """A trace file whose write raises Interrupt once, when armed."""

    armed = False

    def write(self, text: str) -> int:
        if self.armed:
            self.armed = False
            raise Interrupt
        return super().write(text)


async def test_an_interrupt_as_a_connection_block_exits_leaves_trio_consistent() -> None:
    trace = InterruptingFile()
    with pytest.raises(Interrupt):
        async with (
            cm.open_connection_manager(limits=cm.Limits(2, 3), trace=trace) as mgr,
            mgr.connection("p", direction="inbound") as conn,
        ):
            trace.armed = True  # the ConnectionClosed event's line
    assert conn.closed
    assert mgr.connections == ()
    # The task's cancel scopes are intact: a new one enters and exits cleanly.
    with trio.CancelScope():
        await trio.lowlevel.checkpoint()


async def test_an_interrupt_as_a_connection_block_exits_with_the_body_cancelled() -> None:
    trace = InterruptingFile()
    with pytest.raises(Interrupt):
        async with cm.open_connection_manager(limits=cm.Limits(2, 3), trace=trace) as mgr:
            with trio.CancelScope() as outer:
                async with mgr.connection("p", direction="inbound"):
                    outer.cancel()
                    trace.armed = True
                    await trio.lowlevel.checkpoint()
    assert mgr.connections == ()
