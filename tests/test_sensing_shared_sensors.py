"""A sensor serves one open manager at a time, whichever Sensing carries it;
one whose class says it keeps no state may serve several."""

from __future__ import annotations

import pytest
import trio.testing

import trio_connmgr as cm
from trio_connmgr.sensing import DialHealth, FileDescriptors, LoopLag, Reading, Sensing, Sensor

LIMITS = cm.Limits(10, 20)


@pytest.mark.parametrize("make", [DialHealth, LoopLag], ids=["DialHealth", "LoopLag"])
async def test_a_sensor_that_keeps_state_is_refused_to_a_second_open_manager(
    autojump_clock: trio.testing.MockClock, make: type[DialHealth] | type[LoopLag]
) -> None:
    sensor = make()
    async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([sensor])):
        with pytest.raises(cm.ConfigError, match="already serves another open connection"):
            async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([sensor])):
                pass  # pragma: no cover
    # Free again once its manager has closed (and after the refusal).
    async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([sensor])):
        pass


async def test_a_sensor_that_only_samples_serves_two_open_managers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sensor = FileDescriptors()
    async with (
        cm.open_connection_manager(limits=LIMITS, sensing=Sensing([sensor])),
        cm.open_connection_manager(limits=LIMITS, sensing=Sensing([sensor])),
    ):
        pass


async def test_a_refused_sensing_takes_none_of_its_sensors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared, other = DialHealth(), LoopLag()
    async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([shared])):
        with pytest.raises(cm.ConfigError):
            async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([other, shared])):
                pass  # pragma: no cover
        async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([other])):
            pass


async def test_a_sensor_keeping_state_in_sample_alone_is_refused_to_a_second_manager(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Smoothed(Sensor):
        name = "smoothed"

        def __init__(self) -> None:
            self.mean = 0.0

        def sample(self, now: float) -> Reading:
            self.mean = (self.mean + now) / 2
            return Reading({"mean": self.mean})

    sensor = Smoothed()
    async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([sensor])):
        with pytest.raises(cm.ConfigError, match="already serves another open connection"):
            async with cm.open_connection_manager(limits=LIMITS, sensing=Sensing([sensor])):
                pass  # pragma: no cover
