"""Sensor readings, which move the global share that grants follow (SPEC §3, §9)."""

from __future__ import annotations

import pytest

import trio_connmgr as cm
from trio_connmgr.sensing import FakeSensor, Reading


def test_a_figure_beyond_the_float_range_is_a_config_error() -> None:
    # Figures are kept as floats: an int no float can hold is bad input, named.
    with pytest.raises(cm.ConfigError, match=r"Reading.values\['open'\] must be a number"):
        Reading(values={"open": 10**400})
    with pytest.raises(cm.ConfigError, match=r"FakeSensor: Reading.values\['open'\]"):
        FakeSensor("fds", values={"open": 10**400})
    # The largest ints a float holds are fine.
    assert Reading(values={"open": 10**308}).values["open"] == 1e308
