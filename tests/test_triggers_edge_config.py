"""Trigger arguments too large to use are refused with a ConfigError."""

from __future__ import annotations

import sys

import pytest

import trio_connmgr as cm
from trio_connmgr.triggers import Spike


@pytest.mark.parametrize("connections", [sys.maxsize, 2**64])
def test_a_spike_of_more_connections_than_can_be_kept_is_a_config_error(
    connections: int,
) -> None:
    with pytest.raises(cm.ConfigError, match=rf"Spike\.connections .*{connections}"):
        Spike(connections=connections, window=1.0)


def test_the_largest_spike_is_accepted() -> None:
    spike = Spike(connections=sys.maxsize - 1, window=1.0)
    assert not spike.connection_opened(0.0)
