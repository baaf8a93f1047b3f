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
