"""Bad input: only documented errors come out, and a refused call changes nothing."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_connmgr as cm

from .conftest import Figures

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.just(object()),
    st.sampled_from(["inbound", "outbound", cm.Direction.INBOUND, "10.0.0.0/8", "::1"]),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def documented(exc: BaseException) -> bool:
    return isinstance(exc, cm.ConnMgrError)


@SETTINGS
@given(low=anything, high=anything, hard=anything)
def test_limits(low: Any, high: Any, hard: Any) -> None:
    try:
        limits = cm.Limits(low, high, hard)
    except cm.ConfigError as exc:
        message, is_value_error = str(exc), isinstance(exc, ValueError)
        assert "Limits." in message
        assert is_value_error
    else:
        assert 0 < limits.low <= limits.high
        assert limits.hard is None or limits.hard >= limits.high


@SETTINGS
@given(lo=anything, hi=anything, relative=st.booleans())
def test_quota(lo: Any, hi: Any, relative: bool) -> None:
    try:
        quota = cm.Quota.share(lo, hi) if relative else cm.Quota(lo, hi)
    except cm.ConfigError as exc:
        message = str(exc)
        assert "Quota." in message
    else:
        lo_r, hi_r = quota.resolve(100)
        assert 0 <= lo_r <= hi_r <= 100


def snapshot(mgr: cm.ConnectionManager) -> Any:
    state = mgr._state
    stats = attrs.evolve(mgr.statistics(), rounds=None)
    return (
        stats,
        {k: set(v) for k, v in state.protected.items()},
        {name: (m.grant, len(m.streams), m.usage) for name, m in state.members.items()},
    )


# For each call, one valid value per argument: each argument is that value or
# garbage, so both the refusing and the accepting paths are fuzzed.
# "<conn>" and "<stream>" stand for the live objects of the test.
CALLS: dict[str, tuple[Any, Any, Any]] = {
    "connection": ("peer-x", "inbound", "127.0.0.1:4001"),
    "track": ("peer-y", "outbound", None),
    "enroll": ("/q", cm.Quota(0, 2), 1.0),
    "stream": ("<conn>", "inbound", None),
    "track_stream": ("<conn>", "outbound", None),
    "lock": ("<stream>", 5.0, None),
    "burst": ("lookup", None, None),
    "protect": ("peer-x", "tag", None),
    "unprotect": ("peer-x", "tag", None),
    "is_protected": ("peer-x", None, None),
    "report_dial": ("peer-x", True, 0.05),
    "subscribe": (16, None, None),
    "explain": ("<conn>", None, None),
    "enlist": ("<stream>", None, None),
    "extend": (3.0, None, None),
}


def argument(valid: Any) -> st.SearchStrategy[Any]:
    # A coin flip (st.one_of would flatten `anything` and dilute the valid value).
    return st.booleans().flatmap(lambda ok: st.just(valid) if ok else anything)


@pytest.mark.parametrize("call", CALLS)
def test_public_calls_reject_garbage(call: str, figures: Figures) -> None:
    refused = 0
    accepted = 0

    valid_a, valid_b, valid_c = CALLS[call]

    @SETTINGS
    @given(a=argument(valid_a), b=argument(valid_b), c=argument(valid_c))
    def fuzz(a: Any, b: Any, c: Any) -> None:
        nonlocal refused, accepted

        async def main(a: Any, b: Any, c: Any) -> None:
            nonlocal refused, accepted
            async with (
                cm.open_connection_manager(limits=cm.Limits(4, 8, 10)) as mgr,
                mgr.enroll("/p", quota=cm.Quota(1, 4)) as p,
                mgr.connection("peer", direction="outbound") as conn,
                p.stream(conn) as stream,
                p.lock(stream, ttl=5) as lock,
                p.burst() as burst,
            ):
                a, b, c = (
                    {"<conn>": conn, "<stream>": stream}.get(x, x) if isinstance(x, str) else x
                    for x in (a, b, c)
                )
                before = snapshot(mgr)
                try:
                    await invoke(mgr, p, conn, stream, lock, burst, call, a, b, c)
                except BaseException as exc:
                    if not documented(exc):
                        raise
                    refused += 1
                    assert snapshot(mgr) == before, f"{call} changed state before refusing"
                else:
                    accepted += 1

        trio.run(main, a, b, c)

    fuzz()
    figures[f"{call}: refused/accepted"] = f"{refused}/{accepted}"


async def invoke(
    mgr: cm.ConnectionManager,
    p: cm.Enrollment,
    conn: cm.Connection,
    stream: cm.Stream,
    lock: cm.Lock,
    burst: cm.Burst,
    call: str,
    a: Any,
    b: Any,
    c: Any,
) -> None:
    if call == "connection":
        async with mgr.connection(a, direction=b, address=c):
            pass
    elif call == "track":
        mgr.track(a, direction=b, address=c, close=trio.lowlevel.checkpoint).release()
    elif call == "enroll":
        async with mgr.enroll(a, quota=b, weight=c):
            pass
    elif call == "stream":
        async with p.stream(a, direction=b, burst=c):
            pass
    elif call == "track_stream":
        p.track_stream(a, direction=b, burst=c).close()
    elif call == "lock":
        async with p.lock(a, ttl=b, on_revoke=c):
            pass
    elif call == "burst":
        async with p.burst(a):
            pass
    elif call == "protect":
        mgr.protect(a, b)
        mgr.unprotect(a, b)
    elif call == "unprotect":
        mgr.unprotect(a, b)
    elif call == "is_protected":
        mgr.is_protected(a)
    elif call == "report_dial":
        mgr.report_dial(a, ok=b, latency=c)
    elif call == "subscribe":
        async with mgr.subscribe(a):
            pass
    elif call == "explain":
        mgr.explain(a)
    elif call == "enlist":
        burst.enlist(a)
    elif call == "extend":
        lock.extend(a)
    else:  # pragma: no cover
        raise AssertionError(call)


def test_nan_and_inf_periods_are_refused() -> None:
    async def main() -> None:
        for field in ("grace_period", "silence_period", "burst_linger", "max_lock_ttl"):
            for value in (math.nan, math.inf, -1.0, "1"):
                with pytest.raises(cm.ConfigError, match=field):
                    async with cm.open_connection_manager(
                        limits=cm.Limits(1, 2), **{field: value}
                    ):
                        pass

    trio.run(main)
