"""Admission's rate limit at the edges: attempts made exactly at the configured rate."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr._core._admission import TokenBucket


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


async def test_attempts_exactly_at_the_rate_are_all_admitted(autojump_clock: Any) -> None:
    # One attempt every 1/rate seconds spends the bucket's one token exactly as
    # fast as it refills: none may be refused.
    rate = 3.0
    admission = cm.Admission(rate=rate, burst=1)
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr:
        for i in range(60):
            conn = mgr.track(
                f"peer-{i}", direction="inbound", address="198.51.100.7", close=noop_close
            )
            conn.release()
            await trio.sleep(1 / rate)
        assert dict(mgr.statistics().refusals) == {}


async def test_an_attempt_after_the_announced_wait_is_admitted(autojump_clock: Any) -> None:
    admission = cm.Admission(rate=7.0, burst=1)
    async with cm.open_connection_manager(limits=cm.Limits(10, 20), admission=admission) as mgr:
        await trio.sleep(0.7)
        mgr.track("first", direction="inbound", address="198.51.100.7", close=noop_close)
        with pytest.raises(cm.ConnectionRefused, match=r"next admission in 0\.143s"):
            mgr.track("second", direction="inbound", address="198.51.100.8", close=noop_close)
        await trio.sleep(1 / 7.0)
        mgr.track("third", direction="inbound", address="198.51.100.9", close=noop_close)
        assert dict(mgr.statistics().refusals) == {"rate": 1}


def test_a_token_is_available_at_the_instant_it_is_announced() -> None:
    for rate, start in [(3.0, 0.7), (7.0, 1.3), (10.0, 100.1), (7.0, 12345.6)]:
        bucket = TokenBucket(rate=rate, burst=1, tokens=1.0, stamp=start)
        assert bucket.take(start)
        assert not bucket.take(start)
        due = bucket.next_token_at()
        assert due > start
        assert bucket.take(due), (rate, start)
        assert not bucket.take(due)


def test_no_token_is_earned_within_one_instant_however_high_the_rate() -> None:
    # 1 / rate is below the clock's resolution at this time: the next token is
    # announced for the same instant, yet no time has passed to earn it.
    bucket = TokenBucket(rate=1e20, burst=1, tokens=1.0, stamp=1e5)
    assert bucket.take(1e5)
    assert not bucket.take(1e5)
    assert bucket.take(1e5 + 1.0)
