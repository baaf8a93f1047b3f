"""assert_pruned refuses flags that are not bools, naming the field and value."""

from __future__ import annotations

import pytest
import trio.testing

import trio_connmgr as cm
from trio_connmgr.testing import assert_pruned, force_round, open_fake_connections


@pytest.mark.parametrize(
    ("flags", "field", "value"),
    [
        ({"in_order": "no"}, "in_order", "'no'"),
        ({"in_order": None}, "in_order", "None"),
        ({"forced": 0}, "forced", "0"),
        ({"forced": "no"}, "forced", "'no'"),
    ],
)
async def test_assert_pruned_refuses_flags_that_are_not_bools(
    autojump_clock: trio.testing.MockClock, flags: dict[str, object], field: str, value: str
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 4), grace_period=0) as mgr,
        open_fake_connections() as fakes,
    ):
        conns = await fakes.open_many(mgr, 3)
        result = await force_round(mgr)
        assert len(result.pruned) == 2
        # Given in reverse order: in_order="no" must not check the order, nor
        # forced=0 pass for forced=False.
        victims = list(reversed(result.pruned))
        assert all(conn in conns for conn in victims)
        with pytest.raises(
            cm.ConfigError, match=rf"^assert_pruned {field} must be True or False, got {value}$"
        ):
            assert_pruned(victims, **flags)  # type: ignore[arg-type]
        assert_pruned(victims, forced=False, in_order=False)
