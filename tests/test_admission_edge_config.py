"""Settings at the edges of what a float holds."""

from __future__ import annotations

import pytest

import trio_connmgr as cm


def test_a_rate_too_large_for_a_float_is_a_config_error() -> None:
    with pytest.raises(cm.ConfigError, match=r"Admission\.rate must be a finite, positive number"):
        cm.Admission(rate=10**400)


async def test_a_period_too_large_for_a_float_is_a_config_error() -> None:
    with pytest.raises(cm.ConfigError, match=r"grace_period must be a finite, non-negative"):
        async with cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=10**400):
            pass  # pragma: no cover
    with pytest.raises(cm.ConfigError, match=r"grace_period must be a finite, non-negative"):
        async with cm.open_connection_manager(limits=cm.Limits(1, 2), grace_period=-(10**400)):
            pass  # pragma: no cover
