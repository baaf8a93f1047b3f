"""Numbers too large for a float, where an enrollment takes seconds or weights."""

from __future__ import annotations

import pytest

import trio_connmgr as cm

HUGE = 10**400  # an int no float can hold


async def test_a_weight_or_ttl_beyond_the_float_range_is_a_config_error() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
        with pytest.raises(cm.ConfigError, match="enroll weight must be a finite"):
            async with mgr.enroll("p", quota=cm.Quota(1, 4), weight=HUGE):
                pytest.fail("enrolled")  # pragma: no cover
        assert mgr.statistics().protocols == {}
        async with (
            mgr.enroll("p", quota=cm.Quota(1, 4)) as p,
            mgr.connection("peer", direction="outbound") as conn,
            p.stream(conn) as stream,
        ):
            with pytest.raises(cm.ConfigError, match="lock ttl must be a finite"):
                p.lock(stream, ttl=HUGE)
