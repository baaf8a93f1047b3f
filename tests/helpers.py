"""Small helpers shared by the test modules (``from helpers import ...``)."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing
from trio_connmgr.triggers import Trigger


def drain(receiver: cm.EventReceiver) -> list[cm.Event]:
    """Every event buffered in ``receiver`` now, without waiting."""
    out = []
    while True:
        try:
            out.append(receiver.receive_nowait())
        except trio.WouldBlock:
            return out


def open_sensed_manager(
    fake: FakeSensor, *, decrease: float
) -> AbstractAsyncContextManager[cm.ConnectionManager]:
    """A manager at Limits(10, 20), no grace period, a 60 s silence period, and
    ``fake`` sampled every 5 s (pressure multiplies the share by ``decrease``)."""
    return cm.open_connection_manager(
        limits=cm.Limits(10, 20),
        grace_period=0,
        silence_period=60,
        sensing=Sensing([fake], interval=5.0, decrease=decrease),
    )


class DialRecorder(Trigger):
    """A trigger that never fires and records every report_dial."""

    name = "dial-recorder"

    def __init__(self) -> None:
        self.dials: list[tuple[bool, float | None]] = []

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> bool:
        self.dials.append((ok, latency))
        return False


class Interrupt(BaseException):
    """Stands for a KeyboardInterrupt (which, escaping, would stop the test run)."""


class InterruptingFile(io.StringIO):
    """Raises Interrupt once, when first asked to write a line containing ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker: str | None = marker

    def write(self, text: str) -> int:
        if self.marker is not None and self.marker in text:
            self.marker = None
            raise Interrupt(text)
        return super().write(text)


class _HookedLowlevel:
    """``trio.lowlevel`` whose ``checkpoint()`` runs ``before`` first."""

    def __init__(self, before: Callable[[], Awaitable[object]]) -> None:
        self._before = before

    async def checkpoint(self) -> None:
        await self._before()
        await trio.lowlevel.checkpoint()

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)


class _HookedTrio:
    def __init__(self, lowlevel: _HookedLowlevel) -> None:
        self.lowlevel = lowlevel

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def hooked_trio(before: Callable[[], Awaitable[object]]) -> Any:
    """``trio`` as a module sees it once patched with this (``monkeypatch.setattr(
    module, "trio", hooked_trio(before))``): its ``trio.lowlevel.checkpoint()``
    calls run ``await before()`` first."""
    return _HookedTrio(_HookedLowlevel(before))
