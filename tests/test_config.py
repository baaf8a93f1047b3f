"""Every ConfigError case: limits, periods, quotas, enrollment, locks, triggers (SPEC §2, §3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr import triggers


def check_error(make: Callable[[], object], *fragments: str) -> cm.ConfigError:
    with pytest.raises(cm.ConfigError) as info:
        make()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return info.value


def test_config_error_is_a_value_error() -> None:
    assert issubclass(cm.ConfigError, ValueError)
    assert issubclass(cm.ConfigError, cm.ConnMgrError)
    with pytest.raises(ValueError, match=r"Limits\.low"):
        cm.Limits(0, 5)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"low": 0, "high": 5}, ("Limits.low", "0")),
        ({"low": -3, "high": 5}, ("Limits.low", "-3")),
        ({"low": 1.5, "high": 5}, ("Limits.low", "1.5")),
        ({"low": True, "high": 5}, ("Limits.low", "True")),
        ({"low": "1", "high": 5}, ("Limits.low", "'1'")),
        ({"low": 1, "high": 0}, ("Limits.high", "0")),
        ({"low": 1, "high": 2.0}, ("Limits.high", "2.0")),
        ({"low": 6, "high": 5}, ("Limits.low", "Limits.high", "low=6", "high=5")),
        ({"low": 2, "high": 5, "hard": 4}, ("Limits.hard", "hard=4", "high=5")),
        ({"low": 2, "high": 5, "hard": 0}, ("Limits.hard", "0")),
        ({"low": 2, "high": 5, "hard": -7}, ("Limits.hard", "-7")),
        ({"low": 2, "high": 5, "hard": 9.5}, ("Limits.hard", "9.5")),
        ({"low": 2, "high": 5, "hard": False}, ("Limits.hard", "False")),
    ],
)
def test_limits_rejected(kwargs: dict[str, Any], fragments: tuple[str, ...]) -> None:
    check_error(lambda: cm.Limits(**kwargs), *fragments)


def test_limits_accepted() -> None:
    assert cm.Limits(1, 1) == cm.Limits(low=1, high=1, hard=None)
    limits = cm.Limits(3, 3, 3)
    assert (limits.low, limits.high, limits.hard) == (3, 3, 3)
    assert cm.Limits(10, 15, 20).hard == 20


@pytest.mark.parametrize("field", ["grace_period", "silence_period", "burst_linger"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, -1, -0.5, "3", True, None])
async def test_periods_rejected(field: str, value: object) -> None:
    with pytest.raises(cm.ConfigError) as info:
        async with cm.open_connection_manager(limits=cm.Limits(1, 2), **{field: value}):
            pytest.fail("the manager opened")  # pragma: no cover
    assert field in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("field", ["grace_period", "silence_period", "burst_linger"])
async def test_zero_period_is_allowed(field: str) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2), **{field: 0}) as mgr:
        assert mgr.statistics().connections == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_lock_ttl": 0}, "max_lock_ttl"),
        ({"max_lock_ttl": math.inf}, "max_lock_ttl"),
        ({"close_timeout": -1}, "close_timeout"),
        ({"close_timeout": math.nan}, "close_timeout"),
        ({"failure_window": 0}, "failure_window"),
        ({"max_round_failures": -1}, "max_round_failures"),
        ({"max_round_failures": 2.5}, "max_round_failures"),
        ({"lock_budget": -1}, "lock_budget"),
        ({"lock_budget": 1.5}, "lock_budget"),
        ({"limits": (1, 2)}, "limits"),
        ({"triggers": [object()]}, "triggers"),
    ],
)
async def test_manager_arguments_rejected(kwargs: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"limits": cm.Limits(1, 2), **kwargs}
    with pytest.raises(cm.ConfigError, match=field):
        async with cm.open_connection_manager(**arguments):
            pytest.fail("the manager opened")  # pragma: no cover


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda: cm.Quota(3, 2), ("Quota.min", "Quota.max", "min=3", "max=2")),
        (lambda: cm.Quota(-1, 2), ("Quota.min", "-1")),
        (lambda: cm.Quota(0, -2), ("Quota.max", "-2")),
        (lambda: cm.Quota(1.5, 3), ("Quota.min", "1.5")),
        (lambda: cm.Quota(1, 2.5), ("Quota.max", "2.5")),
        (lambda: cm.Quota(0.1, 0.5), ("Quota.min", "0.1", "Quota.share(0.1, 0.5)")),
        (lambda: cm.Quota(0, 0.5), ("Quota.max", "0.5", "Quota.share(0, 0.5)")),
        (lambda: cm.Quota(True, 3), ("Quota.min", "True")),
        (lambda: cm.Quota.share(0.5, 0.2), ("Quota.min", "min=0.5", "max=0.2")),
        (lambda: cm.Quota.share(-0.1, 0.5), ("Quota.min", "-0.1")),
        (lambda: cm.Quota.share(0.1, 1.5), ("Quota.max", "1.5")),
        (lambda: cm.Quota.share(math.nan, 0.5), ("Quota.min", "nan")),
        (lambda: cm.Quota.share(0.1, math.nan), ("Quota.max", "nan")),
        (lambda: cm.Quota.share(0.0, math.inf), ("Quota.max", "inf")),
        (lambda: cm.Quota.share("0.1", 0.5), ("Quota.min", "'0.1'")),
        (lambda: cm.Quota(0, 1, relative="no"), ("Quota.relative", "True or False", "'no'")),
        (lambda: cm.Quota(0, 1, relative=1), ("Quota.relative", "True or False", "1")),
    ],
)
def test_quota_rejected(make: Callable[[], object], fragments: tuple[str, ...]) -> None:
    check_error(make, *fragments)


def test_quota_accepted() -> None:
    assert cm.Quota(0, 0) == cm.Quota(0, 0, relative=False)
    share = cm.Quota.share(0, 1)
    assert share.relative
    assert (share.min, share.max) == (0.0, 1.0)
    assert cm.Quota.share(0.25, 0.25).resolve(8) == (2, 2)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"name": ""}, ("enroll name", "''")),
        ({"name": None}, ("enroll name", "None")),
        ({"name": 7}, ("enroll name", "7")),
        ({"quota": (1, 2)}, ("enroll quota", "(1, 2)")),
        ({"weight": 0}, ("enroll weight", "0")),
        ({"weight": -1.0}, ("enroll weight", "-1.0")),
        ({"weight": math.nan}, ("enroll weight", "nan")),
        ({"weight": math.inf}, ("enroll weight", "inf")),
        ({"weight": "1"}, ("enroll weight", "'1'")),
        ({"scorer": 0.5}, ("enroll scorer", "0.5")),
        ({"on_grant": "print"}, ("enroll on_grant", "'print'")),
        ({"strict": "no"}, ("enroll strict", "True or False", "'no'")),
        ({"strict": 1}, ("enroll strict", "True or False", "1")),
    ],
)
async def test_enroll_arguments_rejected(
    kwargs: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    arguments: dict[str, Any] = {"name": "p", "quota": cm.Quota(1, 3), **kwargs}
    name = arguments.pop("name")
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr,
        mgr.enroll("other", quota=cm.Quota(2, 4)) as other,
    ):
        with pytest.raises(cm.ConfigError) as info:
            async with mgr.enroll(name, **arguments):
                pytest.fail("enrolled")  # pragma: no cover
        # Nothing lost: the manager and the other enrollment are untouched.
        assert other.grant == cm.Grant(2, 4)
        assert list(mgr.statistics().protocols) == ["other"]
        async with mgr.enroll("p", quota=cm.Quota(1, 3)) as p:
            assert p.grant == cm.Grant(1, 3)
    for fragment in fragments:
        assert fragment in str(info.value)


async def test_enroll_duplicate_name() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(2, 4)) as kad,
    ):
        with pytest.raises(cm.ConfigError, match="'kad'"):
            async with mgr.enroll("kad", quota=cm.Quota(1, 2)):
                pytest.fail("enrolled twice")  # pragma: no cover
        assert kad.grant == cm.Grant(2, 4)
        assert mgr._state.members == {"kad": kad}
        # Once it has left, a name is free again.
        async with mgr.enroll("dht", quota=cm.Quota(0, 1)):
            pass
        async with mgr.enroll("dht", quota=cm.Quota(0, 1)) as again:
            assert again.grant == cm.Grant(0, 1)


async def test_other_arguments_rejected() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        check_error(lambda: mgr.connection("peer", direction="sideways"), "direction", "sideways")
        check_error(lambda: mgr.track("peer", direction="in", close=trio.sleep), "direction")
        check_error(
            lambda: mgr.track("peer", direction="inbound", close=None),  # type: ignore[arg-type]
            "close",
        )
        check_error(lambda: mgr.report_dial("peer", ok=False, latency=-1.0), "latency", "-1.0")
        check_error(lambda: mgr.protect("peer", ""), "protect tag")
        check_error(lambda: mgr.protect([1], "t"), "protect peer")
        assert mgr.statistics().connections == 0
        async with mgr.connection("peer", direction=cm.Direction.OUTBOUND) as conn:
            stream = p.track_stream(conn)
            check_error(lambda: p.lock(stream, ttl=0), "lock ttl", "0")
            check_error(lambda: p.lock(stream, ttl=math.nan), "lock ttl", "nan")
            check_error(lambda: p.track_stream(conn, direction="up"), "direction", "'up'")
            async with p.lock(stream, ttl=5) as lock:
                check_error(lambda: lock.extend(-2), "lock ttl", "-2")
                assert lock.held


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda: triggers.Spike(0, 1.0), ("Spike.connections", "0")),
        (lambda: triggers.Spike(3, 0), ("Spike.window", "0")),
        (lambda: triggers.FailedDials(1.5, 10), ("FailedDials.ratio", "(0, 1]", "1.5")),
        (lambda: triggers.FailedDials(0, 10), ("FailedDials.ratio", "(0, 1]", "0")),
        (lambda: triggers.FailedDials(0.5, -1), ("FailedDials.window", "-1")),
        (lambda: triggers.FailedDials(0.5, 10, min_dials=0), ("FailedDials.min_dials", "0")),
        (lambda: triggers.Interval(0), ("Interval.period", "0")),
        (lambda: triggers.Interval(math.inf), ("Interval.period", "inf")),
        (lambda: cm.RecencyScorer(half_life=0), ("RecencyScorer.half_life", "0")),
    ],
)
def test_policy_objects_rejected(make: Callable[[], object], fragments: tuple[str, ...]) -> None:
    check_error(make, *fragments)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: cm.Quota(2, 0.5), "Quota.max"),
        (lambda: cm.Quota(0.5, 0.2), "Quota.min"),
        (lambda: cm.Quota(1.0, 5), "Quota.min"),
        (lambda: cm.Quota(0.5, math.nan), "Quota.min"),
    ],
)
def test_a_quota_is_not_pointed_to_a_share_that_would_fail_too(
    build: Callable[[], object], field: str
) -> None:
    with pytest.raises(cm.ConfigError, match=rf"^{field} must be an integer") as info:
        build()
    assert "Quota.share" not in str(info.value)
