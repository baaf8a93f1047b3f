"""Small helpers shared by the test modules (``from helpers import ...``)."""

from __future__ import annotations

import trio

import trio_connmgr as cm
from trio_connmgr.triggers import Trigger


def drain(receiver: cm.EventReceiver) -> list[cm.Event]:
    """Every event buffered in ``receiver`` now, without waiting."""
    out = []
    while True:
        try:
            out.append(receiver.receive_nowait())
        except trio.WouldBlock:
            return out


class DialRecorder(Trigger):
    """A trigger that never fires and records every report_dial."""

    name = "dial-recorder"

    def __init__(self) -> None:
        self.dials: list[tuple[bool, float | None]] = []

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
        self.dials.append((ok, latency))
        return False
