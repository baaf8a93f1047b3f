"""Managers that stay open until the end of a test (the ``connmgr_factory`` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, final

import trio

from .._config import Limits
from .._errors import ConfigError
from .._manager import ConnectionManager, open_connection_manager
from ._time import _manual_clock, _step_clock

DEFAULT_LIMITS = Limits(low=4, high=8)
"""The limits of managers opened without ``limits=``: small, so tests stay readable."""


@final
class _Opened:
    __slots__ = ("closed", "manager", "release")

    def __init__(
        self, manager: ConnectionManager, release: trio.Event, closed: trio.Event
    ) -> None:
        self.manager = manager
        self.release = release
        self.closed = closed


@final
class ManagerFactory:
    """Opens connection managers that stay open until the factory closes.

    An ``async with open_connection_manager(...)`` block must begin and end in
    the same task, so a fixture cannot hand the test a manager opened in the
    test's own task: the factory opens each manager in a task of its own
    nursery, and closes them all (newest first) when it closes. Get one from
    :func:`open_manager_factory` or the ``connmgr_factory`` fixture::

        mgr = await connmgr_factory(limits=cm.Limits(low=2, high=4), grace_period=0)
        ...
        await connmgr_factory.close(mgr)     # optional: close it early
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._opened: list[_Opened] = []

    @property
    def managers(self) -> list[ConnectionManager]:
        """The managers it opened that are still open, oldest first."""
        return [o.manager for o in self._opened if not o.closed.is_set()]

    async def _hold(
        self,
        options: dict[str, Any],
        *,
        task_status: trio.TaskStatus[_Opened] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        release, closed = trio.Event(), trio.Event()
        try:
            async with open_connection_manager(**options) as manager:
                opened = _Opened(manager, release, closed)
                self._opened.append(opened)
                task_status.started(opened)
                await release.wait()
        finally:
            closed.set()

    async def __call__(self, *, limits: Limits | None = None, **options: Any) -> ConnectionManager:
        """Open a manager; it stays open until :meth:`close` or the factory closes.

        Args:
            limits: Its :class:`Limits` (default :data:`DEFAULT_LIMITS`:
                ``Limits(low=4, high=8)``).
            **options: Any other argument of :func:`trio_connmgr.open_connection_manager`
                (``grace_period``, ``silence_period``, ``triggers``, ``sensing``, ...).

        Blocks until the manager has started. Raises what
        ``open_connection_manager`` raises (``ConfigError`` for bad arguments).
        """
        options["limits"] = DEFAULT_LIMITS if limits is None else limits
        opened: _Opened = await self._nursery.start(self._hold, options)
        return opened.manager

    async def close(self, manager: ConnectionManager) -> None:
        """Close ``manager`` now (as leaving its ``async with`` block does) and wait for it.

        Errors the manager raises on exit (a failed regulator) propagate out of the
        factory's nursery, failing the test.
        """
        for opened in self._opened:
            if opened.manager is manager:
                opened.release.set()
                await _wait_closed(opened)
                return
        raise ConfigError(f"{manager!r} was not opened by this factory")

    async def aclose(self) -> None:
        """Close every manager still open, newest first, and wait for each.

        Always checkpoints.
        """
        if not self._opened:
            await trio.lowlevel.checkpoint()
        for opened in reversed(self._opened):
            opened.release.set()
            await _wait_closed(opened)


async def _wait_closed(opened: _Opened) -> None:
    """Wait until a released manager has closed.

    Closing awaits the ``close()`` of pruned tracked connections, which may sleep
    on the clock (bounded by ``close_timeout``). Under a manual ``MockClock``
    nothing else moves that clock at the end of a test: step it from deadline to
    deadline, as :func:`advance` does, until the manager has closed.
    """
    clock = _manual_clock()
    if clock is not None:
        await _step_clock(clock, done=opened.closed.is_set)
    await opened.closed.wait()


@asynccontextmanager
async def open_manager_factory() -> AsyncIterator[ManagerFactory]:
    """A :class:`ManagerFactory` whose managers close when the ``async with`` block ends.

    Exiting closes every manager still open, newest first, and waits for them
    (closing a manager awaits its tracked connections' ``close()`` callbacks;
    under a manual ``MockClock`` it moves the clock for those that sleep, from
    deadline to deadline, as :func:`advance` does). Entering checkpoints.
    """
    # (Opening a nursery does not checkpoint.)
    await trio.lowlevel.checkpoint()
    async with trio.open_nursery() as nursery:
        factory = ManagerFactory(nursery)
        try:
            yield factory
        finally:
            # If the block is cancelled, this stops at once and the nursery's
            # cancellation closes the managers instead (their exits still clean up).
            await factory.aclose()
