"""A FakeSensor made to fail raises its error afresh at every sample."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing


async def test_a_failing_fake_sensor_logs_each_failure_with_its_own_traceback(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeSensor()
    fake.error = OSError("unplugged")
    caplog.set_level(logging.DEBUG, logger="trio_connmgr.sensing")
    sensing = Sensing([fake], interval=1.0)
    async with cm.open_connection_manager(limits=cm.Limits(5, 10), sensing=sensing) as mgr:
        await trio.sleep(10.5)
        assert mgr.statistics().sensors["fake"] == {"errors": 11.0}
    failures = [record for record in caplog.records if record.exc_info]
    assert len(failures) == 11
    for record in failures:
        assert record.exc_info is not None
        frames = [frame.name for frame in traceback.extract_tb(record.exc_info[2])]
        # The sample that raised, not every failed sample before it as well.
        assert frames.count("sample") == 1, frames
