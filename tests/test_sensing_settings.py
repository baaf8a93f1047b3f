"""Sensing's settings set after it was built (while a manager runs, they take
effect at the next interval): checked as the constructor checks them."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Sensing


@pytest.mark.parametrize(
    ("name", "value"),
    [("interval", 0), ("interval", 1e-15), ("floor", -1), ("increase", 1.5), ("decrease", 1)],
)
def test_a_bad_setting_set_later_is_a_config_error(name: str, value: object) -> None:
    sensing = Sensing([FakeSensor()])
    before = getattr(sensing, name)
    with pytest.raises(cm.ConfigError, match=rf"Sensing\.{name}"):
        setattr(sensing, name, value)
    assert getattr(sensing, name) == before


def test_the_sensors_cannot_be_changed() -> None:
    sensing = Sensing([FakeSensor()])
    with pytest.raises(AttributeError, match="create another Sensing"):
        sensing.sensors = ()


async def test_an_interval_set_while_a_manager_runs_takes_effect_at_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=5.0)
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), sensing=sensing):
        await trio.sleep(1)
        sensing.interval = 2.0
        await trio.sleep(8.5)
    assert fake.samples == [0.0, 5.0, 7.0, 9.0]


@pytest.mark.parametrize(("high", "increase"), [(10, 1), (30, 2), (50, 3), (70, 4), (100, 5)])
async def test_the_default_increase_is_five_percent_of_high_rounded_half_up(
    autojump_clock: trio.testing.MockClock, high: int, increase: int
) -> None:
    # Pressure takes the share to its floor of 1, then each healthy interval
    # adds the default increase.
    fake = FakeSensor(pressure=True)
    sensing = Sensing([fake], interval=5.0, floor=1, decrease=0.01)
    async with cm.open_connection_manager(limits=cm.Limits(1, high), sensing=sensing) as mgr:
        assert mgr.limits.high == 1
        fake.pressure = False
        await trio.sleep(6)  # (past the sample at t=5, before the next)
        assert mgr.limits.high == 1 + increase
