"""Admission control: the proactive half (SPEC §10)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from ._manager import ConnectionManager


@final
class Admission:
    """Inbound admission policy: the ``hard`` cap."""

    def admit(self, manager: ConnectionManager, peer: Hashable, address: str | None) -> None:
        """Raise :class:`ConnectionRefused` if ``peer`` may not connect inbound now."""
        state = manager._state
        if state.hard is not None and state.count >= state.hard:
            from ._config import Direction

            raise manager._refuse(
                "hard",
                f"inbound connection refused: count {state.count} is at hard={state.hard}",
                peer,
                Direction.INBOUND,
                address,
            )
