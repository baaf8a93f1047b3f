"""A sensor's reading never stops the manager, however large its ceiling."""

from __future__ import annotations

from typing import Any

import trio

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing


async def test_a_ceiling_too_large_for_a_float_is_a_sensor_error(autojump_clock: Any) -> None:
    huge = FakeSensor("huge")
    steady = FakeSensor("steady", ceiling=8)
    sensing = Sensing([huge, steady], interval=1.0)
    async with cm.open_connection_manager(limits=cm.Limits(5, 10), sensing=sensing) as mgr:
        huge.ceiling = 10**400
        await trio.sleep(1.5)
        sensors = mgr.statistics().sensors
        assert sensors["huge"] == {"errors": 1.0}
        assert sensors["steady"]["ceiling"] == 8.0
        assert mgr.limits.high == 8
        huge.ceiling = 6
        await trio.sleep(1.0)
        assert mgr.statistics().sensors["huge"] == {"pressure": 0.0, "ceiling": 6.0, "errors": 1.0}
        assert mgr.limits.high == 6
