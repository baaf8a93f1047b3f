"""Environment sensing: sensors and the controller of the global share (SPEC §9)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import trio

if TYPE_CHECKING:
    from ._config import Limits
    from ._manager import ConnectionManager


@final
class Sensing:
    """Samples sensors and moves the effective global share."""

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> None:
        """Feed a dial outcome to the sensors that use it."""

    async def _attach(self, manager: ConnectionManager, nursery: trio.Nursery) -> None:
        await trio.lowlevel.checkpoint()


def auto_limits(**kwargs: Any) -> Limits:
    """Infer limits from file descriptors and memory."""
    raise NotImplementedError
