"""open_connection_manager() refuses a bad ``triggers`` with a ConfigError naming it."""

from __future__ import annotations

import pytest

import trio_connmgr as cm
from trio_connmgr.triggers import HighWater, Interval, Spike


@pytest.mark.parametrize(
    "triggers",
    [5, 0, False, Interval(5.0), "interval"],
    ids=["int", "zero", "false", "one-trigger", "str"],
)
async def test_triggers_that_are_not_a_sequence_of_triggers_are_a_config_error(
    triggers: object,
) -> None:
    with pytest.raises(cm.ConfigError, match="triggers") as info:
        async with cm.open_connection_manager(
            limits=cm.Limits(2, 3),
            triggers=triggers,  # type: ignore[arg-type]
        ):
            pytest.fail("opened")  # pragma: no cover
    assert repr(triggers) in str(info.value)


async def test_triggers_may_be_any_iterable_of_triggers() -> None:
    interval = Interval(5.0)
    async with cm.open_connection_manager(
        limits=cm.Limits(2, 3), triggers=(t for t in [interval])
    ) as mgr:
        assert interval in mgr._regulator.triggers


async def test_the_same_trigger_listed_twice_is_a_config_error() -> None:
    # Its hooks would be called twice for each event: this Spike would fire at
    # three connections opened, not five.
    spike = Spike(4, 10.0)
    with pytest.raises(cm.ConfigError, match="triggers lists the same trigger twice") as info:
        async with cm.open_connection_manager(limits=cm.Limits(1, 50), triggers=[spike, spike]):
            pytest.fail("opened")  # pragma: no cover
    assert repr(spike) in str(info.value)


async def test_two_equal_triggers_are_two_triggers() -> None:
    first, second = Interval(5.0), Interval(5.0)
    async with cm.open_connection_manager(limits=cm.Limits(2, 3), triggers=[first, second]) as mgr:
        assert first in mgr._regulator.triggers
        assert second in mgr._regulator.triggers


@pytest.mark.parametrize("name", [None, 5, ""])
async def test_a_trigger_whose_name_is_no_string_is_a_config_error(name: object) -> None:
    class Named(HighWater):
        pass

    trigger = Named()
    trigger.name = name  # type: ignore[assignment]
    with pytest.raises(cm.ConfigError, match="trigger names must be non-empty strings"):
        async with cm.open_connection_manager(limits=cm.Limits(1, 2), triggers=[trigger]):
            pass  # pragma: no cover
