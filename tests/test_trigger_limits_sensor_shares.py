"""Sensor pressure thresholds at exactly their share: the used share of the file
descriptors or of the memory budget that reaches ``pressure_at`` is pressure,
whatever the binary rounding of ``pressure_at * limit``."""

from __future__ import annotations

import types
from typing import Any

import pytest

from trio_connmgr import sensing
from trio_connmgr.sensing import FileDescriptors, Memory

# (share, limit): pressure_at * limit lands just above the whole number it stands
# for (0.07 * 100 == 7.000000000000001), or exactly on it (0.9 * 1000 == 900.0).
AT_THE_SHARE = [(0.07, 100), (0.81, 10_000), (0.9, 1000), (0.5, 64)]


@pytest.mark.parametrize(("share", "limit"), AT_THE_SHARE)
def test_file_descriptors_open_at_exactly_the_share_are_pressure(
    monkeypatch: pytest.MonkeyPatch, share: float, limit: int
) -> None:
    count = round(share * limit)
    monkeypatch.setattr(sensing, "nofile_limit", lambda: limit)
    monkeypatch.setattr(sensing, "open_fds", lambda: count)
    reading = FileDescriptors(pressure_at=share).sample(0.0)
    assert reading.values["used"] == share
    assert reading.pressure
    assert reading.detail == f"{count} of {limit} file descriptors open"
    monkeypatch.setattr(sensing, "open_fds", lambda: count - 1)
    assert not FileDescriptors(pressure_at=share).sample(0.0).pressure


class FakePsutil:
    """Stands in for psutil: a process of ``rss`` bytes on a roomy machine."""

    def __init__(self, rss: int) -> None:
        self.rss = rss

    def Process(self) -> Any:  # psutil's name
        return types.SimpleNamespace(memory_info=lambda: types.SimpleNamespace(rss=self.rss))

    def virtual_memory(self) -> Any:
        return types.SimpleNamespace(total=10**12, available=10**12)


@pytest.mark.parametrize(("share", "budget"), AT_THE_SHARE)
def test_memory_used_at_exactly_the_share_of_the_budget_is_pressure(
    monkeypatch: pytest.MonkeyPatch, share: float, budget: int
) -> None:
    rss = round(share * budget)
    fake = FakePsutil(rss)
    monkeypatch.setattr(sensing, "_psutil", lambda: fake)
    memory = Memory(budget=budget, per_connection=1, pressure_at=share)
    reading = memory.sample(0.0)
    assert reading.values["used"] == share
    assert reading.pressure
    assert reading.detail.startswith(f"RSS {rss} bytes is ")
    fake.rss = rss - 1
    assert not memory.sample(0.0).pressure
