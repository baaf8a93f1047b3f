"""Small helpers shared by the test modules (``from helpers import ...``)."""

from __future__ import annotations

import trio

import trio_connmgr as cm


def drain(receiver: cm.EventReceiver) -> list[cm.Event]:
    """Every event buffered in ``receiver`` now, without waiting."""
    out = []
    while True:
        try:
            out.append(receiver.receive_nowait())
        except trio.WouldBlock:
            return out
