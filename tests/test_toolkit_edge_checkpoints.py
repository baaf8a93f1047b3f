"""The toolkit's async context managers and functions checkpoint on every path.

A caller already cancelled never gets into the block of an async context
manager whose entering checkpoints, and an async function with nothing to do
still checkpoints (a loop calling it stays cancellable).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.testing import open_fake_connections, open_manager_factory


@pytest.mark.parametrize("open_block", [open_fake_connections, open_manager_factory])
async def test_a_cancelled_caller_never_enters_the_block(
    open_block: Callable[[], AbstractAsyncContextManager[Any]],
) -> None:
    entered = False
    with trio.CancelScope() as scope:
        scope.cancel()
        async with open_block():
            entered = True
    assert scope.cancelled_caught
    assert not entered


async def test_opening_no_connection_checkpoints(autojump_clock: object) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr,
        open_fake_connections() as fakes,
    ):
        with trio.testing.assert_checkpoints():
            assert await fakes.open_many(mgr, 0) == []


async def test_closing_a_factory_with_no_manager_checkpoints() -> None:
    async with open_manager_factory() as factory:
        with trio.testing.assert_checkpoints():
            await factory.aclose()
