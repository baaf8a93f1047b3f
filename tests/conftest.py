"""Shared fixtures for the trio_connmgr test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio


class TaskCensus(trio.abc.Instrument):
    """Records the tasks spawned, and those still alive, while installed."""

    def __init__(self) -> None:
        self.alive: set[trio.lowlevel.Task] = set()
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1
        self.alive.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.alive.discard(task)


@pytest.fixture
async def task_census() -> AsyncIterator[TaskCensus]:
    """A :class:`TaskCensus` installed for the duration of a Trio test."""
    census = TaskCensus()
    trio.lowlevel.add_instrument(census)
    try:
        yield census
    finally:
        trio.lowlevel.remove_instrument(census)
