"""Admission's rate limit under a flood of attempts from many subnets."""

from __future__ import annotations

import ipaddress

import pytest

from trio_connmgr._core._admission import SWEEP_EVERY, RateLimiter

ATTEMPTS = 16 * SWEEP_EVERY


def count_sweeping(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch RateLimiter.sweep to record how many buckets each sweep looks at."""
    looked: list[int] = []
    sweep = RateLimiter.sweep

    def counting(self: RateLimiter, now: float) -> int:
        looked.append(len(self.buckets))
        return sweep(self, now)

    monkeypatch.setattr(RateLimiter, "sweep", counting)
    return looked


def test_many_live_buckets_do_not_make_every_attempt_slower(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each attempt comes from another /24 and no bucket refills within the test
    # (one token every 100 s): every bucket stays, and a sweep looks at each one.
    # Sweeping every SWEEP_EVERY attempts would look at a number of buckets that
    # grows with the square of the attempts.
    looked = count_sweeping(monkeypatch)
    limiter = RateLimiter(0.01, 1, ipv4_prefix=24, ipv6_prefix=56)
    for i in range(ATTEMPTS):
        assert limiter.take(ipaddress.IPv4Address(i << 8), i * 1e-3)[0]
    assert len(limiter.buckets) == ATTEMPTS
    assert looked  # it does sweep
    assert sum(looked) <= 2 * ATTEMPTS


def test_buckets_refilling_while_new_subnets_come_are_still_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bucket refills one second after its attempt: about 1,000 are live at any
    # time. Memory stays within a few times that, and sweeping stays cheap.
    looked = count_sweeping(monkeypatch)
    limiter = RateLimiter(1.0, 1, ipv4_prefix=24, ipv6_prefix=56)
    for i in range(ATTEMPTS):
        assert limiter.take(ipaddress.IPv4Address(i << 8), i * 1e-3)[0]
        assert len(limiter.buckets) <= 3 * SWEEP_EVERY
    assert sum(looked) <= 2 * ATTEMPTS
