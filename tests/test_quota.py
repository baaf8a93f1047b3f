"""Quota allocation (SPEC §3): resolution, reserved mins, counter-proposals, regrants."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import pytest
import trio
import trio.testing
from helpers import drain
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_connmgr as cm
from trio_connmgr._core._quota import allocate, scale_down
from trio_connmgr._core._state import EnrollmentState, State

Q = cm.Quota
G = cm.Grant


@pytest.mark.parametrize(
    ("share", "quotas", "grants"),
    [
        # Absolute quotas that fit are granted as asked.
        (10, [Q(2, 5), Q(3, 8)], [G(2, 5), G(3, 8)]),
        # Absolute maxes (and mins) are capped at G.
        (10, [Q(0, 20)], [G(0, 10)]),
        (10, [Q(15, 20)], [G(10, 10)]),
        # Relative: min = ceil(fmin*G), max = max(min, floor(fmax*G)).
        (10, [Q.share(0.15, 0.55)], [G(2, 5)]),
        (10, [Q.share(0.3, 0.32)], [G(3, 3)]),
        (10, [Q.share(0.25, 0.29)], [G(3, 3)]),
        (10, [Q.share(0, 1)], [G(0, 10)]),
        (7, [Q.share(0.01, 0.99)], [G(1, 6)]),
        # Binary noise does not move a bound: 0.07*100 and 0.29*100 are 7 and 29.
        (100, [Q.share(0.07, 0.29)], [G(7, 29)]),
        (30, [Q.share(0.1, 0.7)], [G(3, 21)]),
        # Mins summing to exactly G are not scaled.
        (10, [Q(5, 5), Q.share(0.5, 1)], [G(5, 5), G(5, 10)]),
        # Counter-proposal: 5, 4, 3 into 10 -> 4.17, 3.33, 2.5 -> 4, 3, 3 (largest remainder).
        (10, [Q(5, 9), Q(4, 4), Q(3, 6)], [G(4, 9), G(3, 4), G(3, 6)]),
        # Equal remainders: the earlier request gets the spare unit.
        (7, [Q(3, 3), Q(3, 5), Q(3, 7)], [G(3, 3), G(2, 5), G(2, 7)]),
        # 4, 1, 1 into 5 -> 3.33, 0.83, 0.83 -> 3, 1, 1.
        (5, [Q(4, 5), Q(1, 1), Q(1, 2)], [G(3, 5), G(1, 1), G(1, 2)]),
        # Relative and absolute mixed: ceil(0.6*10)=6 and 6 into 10 -> 5, 5.
        (10, [Q.share(0.6, 0.9), Q(6, 8)], [G(5, 9), G(5, 8)]),
        (10, [], []),
    ],
)
def test_allocate_by_hand(share: int, quotas: list[cm.Quota], grants: list[cm.Grant]) -> None:
    assert allocate(share, quotas) == grants


def test_scale_down_sums_to_share() -> None:
    assert scale_down([6, 6, 3], 10) == [4, 4, 2]
    assert scale_down([7, 7], 10) == [5, 5]
    assert scale_down([1, 1, 1, 1], 2) == [1, 1, 0, 0]
    assert scale_down([100, 1], 10) == [10, 0]


quota_strategy = st.one_of(
    st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: Q(min(t), max(t))),
    st.tuples(st.floats(0, 1), st.floats(0, 1)).map(lambda t: Q.share(min(t), max(t))),
)


def _proportional(grants: list[cm.Grant], wanted: list[int], share: int) -> None:
    """Largest remainder: the whole share handed out, each min within one of its
    exact proportional part."""
    total = sum(wanted)
    assert sum(g.min for g in grants) == share
    for grant, lo in zip(grants, wanted, strict=True):
        exact = Fraction(lo * share, total)
        assert math.floor(exact) <= grant.min <= math.ceil(exact)


@settings(max_examples=500, deadline=None)
@given(
    share=st.integers(1, 200),
    requests=st.lists(st.tuples(quota_strategy, st.booleans()), max_size=8),
)
def test_allocate_properties(share: int, requests: list[tuple[cm.Quota, bool]]) -> None:
    quotas = [quota for quota, _ in requests]
    strict = [is_strict for _, is_strict in requests]
    grants = allocate(share, quotas, strict)
    assert len(grants) == len(quotas)
    # SPEC §12.5.
    assert sum(g.min for g in grants) <= share
    assert all(0 <= g.min <= g.max <= share for g in grants)
    requested = [q.resolve(share) for q in quotas]
    for grant, (lo, hi) in zip(grants, requested, strict=True):
        assert grant.min <= lo
        assert grant.max == max(grant.min, hi)
    mins = [lo for lo, _ in requested]
    firm = [i for i in range(len(quotas)) if strict[i]]
    rest = [i for i in range(len(quotas)) if not strict[i]]
    firm_total = sum(mins[i] for i in firm)
    if sum(mins) <= share:
        assert [g.min for g in grants] == mins
    elif firm_total <= share:
        # Strict mins in full; the others share what they leave.
        assert all(grants[i].min == mins[i] for i in firm)
        _proportional([grants[i] for i in rest], [mins[i] for i in rest], share - firm_total)
    else:
        # The strict mins share G; the others get none.
        assert all(grants[i].min == 0 for i in rest)
        _proportional([grants[i] for i in firm], [mins[i] for i in firm], share)
    if not any(strict):
        assert allocate(share, quotas) == grants


def test_resolve_uses_exact_percentages() -> None:
    # Every whole percentage against every share up to 300: binary noise in
    # f * G (0.07 * 100 = 7.000000000000001) must not move ceil or floor.
    for percent in range(101):
        for share in range(1, 301):
            lo, hi = Q.share(percent / 100, percent / 100).resolve(share)
            exact_lo = min(-((-percent * share) // 100), share)  # ceil, in integers
            assert lo == exact_lo, (percent, share)
            assert hi == max(lo, min((percent * share) // 100, share)), (percent, share)


# ----------------------------------------------------------------- the manager


async def test_strict_enrollment_denied_with_offer() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("a", quota=Q(6, 10)) as a,
    ):
        # Strict mins are reserved first: the non-strict enrollment is scaled.
        async with mgr.enroll("b", quota=Q(6, 10), strict=True) as b:
            assert (a.grant, b.grant) == (G(4, 10), G(6, 10))
            # Another strict one does not fit beside b: denied, and offered what
            # it would get without strict (a and c share what b leaves).
            with pytest.raises(cm.QuotaDenied) as info:
                async with mgr.enroll("c", quota=Q(6, 10), strict=True):
                    pytest.fail("a strict enrollment accepted a smaller grant")  # pragma: no cover
            assert info.value.offer == G(2, 10)
            assert info.value.name == "c"
            assert isinstance(info.value, cm.ConnMgrError)
            assert "min=2" in str(info.value)
            # Nothing changed.
            assert (a.grant, b.grant) == (G(4, 10), G(6, 10))
            assert set(mgr._state.members) == {"a", "b"}
            # Strict and fitting: accepted, at a's expense.
            async with mgr.enroll("c", quota=Q(4, 4), strict=True) as c:
                assert (a.grant, b.grant, c.grant) == (G(0, 10), G(6, 10), G(4, 4))
            # Not strict: the counter-proposal is accepted.
            async with mgr.enroll("d", quota=Q(6, 10)) as d:
                assert (a.grant, b.grant, d.grant) == (G(2, 10), G(6, 10), G(2, 10))
        assert a.grant == G(6, 10)


async def test_strict_min_above_the_share_is_denied() -> None:
    # Capped at G, the min would fit; strict asks for all of it.
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
        with pytest.raises(cm.QuotaDenied) as info:
            async with mgr.enroll("big", quota=Q(20, 30), strict=True):
                pytest.fail("accepted")  # pragma: no cover
        assert info.value.offer == G(10, 10)
        assert mgr._state.members == {}
        async with mgr.enroll("big", quota=Q(10, 30), strict=True) as big:
            assert big.grant == G(10, 10)


async def test_strict_min_is_kept_when_others_enrol() -> None:
    grants: list[cm.Grant] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("a", quota=Q(8, 10), strict=True, on_grant=grants.append) as a,
    ):
        async with (
            mgr.enroll("b", quota=Q(8, 10)) as b,
            mgr.enroll("c", quota=Q.share(0.5, 1)) as c,
        ):
            assert (a.grant, b.grant, c.grant) == (G(8, 10), G(1, 10), G(1, 10))
        assert a.grant == G(8, 10)
        assert grants == [G(8, 10)]  # told once, on admission; never changed
        # Nor does a strict newcomer take any of it, even one that rounding
        # would give its whole min (8 and 3 into 10: 7.27 and 2.73 -> 7 and 3).
        with pytest.raises(cm.QuotaDenied) as info:
            async with mgr.enroll("d", quota=Q(3, 3), strict=True):
                pytest.fail("accepted")  # pragma: no cover
        assert info.value.offer == G(2, 3)
        assert a.grant == G(8, 10)


def test_strict_mins_scale_among_themselves_when_the_share_shrinks() -> None:
    quotas = [Q(6, 10), Q(6, 10), Q(3, 10)]
    assert allocate(10, quotas, [True, False, True]) == [G(6, 10), G(1, 10), G(3, 10)]
    # G shrinks below the strict mins: they share it, the others get none.
    assert allocate(6, quotas, [True, False, True]) == [G(4, 6), G(0, 6), G(2, 6)]
    # Without flags (or all False): proportional, as before.
    assert (
        allocate(10, quotas)
        == allocate(10, quotas, [False] * 3)
        == [
            G(4, 10),
            G(4, 10),
            G(2, 10),
        ]
    )


async def test_strict_relative_quota_denied() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("a", quota=Q.share(0.8, 1), strict=True),
    ):
        with pytest.raises(cm.QuotaDenied) as info:
            async with mgr.enroll("b", quota=Q.share(0.5, 0.5), strict=True):
                pytest.fail("accepted")  # pragma: no cover
        # Without strict, b gets what a's 8 leave of 10.
        assert info.value.offer == G(2, 5)


async def test_regrant_on_enrol_and_leave() -> None:
    seen: dict[str, list[cm.Grant]] = {"a": [], "b": []}
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.subscribe() as events,
        mgr.enroll("a", quota=Q(6, 10), on_grant=seen["a"].append) as a,
    ):
        assert a.grant == G(6, 10)
        assert seen["a"] == [G(6, 10)]
        async with mgr.enroll("b", quota=Q.share(0.6, 0.8), on_grant=seen["b"].append) as b:
            assert (a.grant, b.grant) == (G(5, 10), G(5, 8))
            assert seen == {"a": [G(6, 10), G(5, 10)], "b": [G(5, 8)]}
        # b left: its quota returns to the pool.
        assert a.grant == G(6, 10)
        assert seen["a"] == [G(6, 10), G(5, 10), G(6, 10)]
        assert seen["b"] == [G(5, 8)]
        received = drain(events)
    grants = [
        (e.protocol, e.min, e.max, e.share) for e in received if isinstance(e, cm.GrantChanged)
    ]
    assert grants == [
        ("a", 6, 10, 10),
        ("a", 5, 10, 10),
        ("b", 5, 8, 10),
        ("a", 6, 10, 10),
    ]


async def test_a_callback_sees_every_grant_already_set() -> None:
    # b's arrival cuts a's grant; a's callback runs once b's grant is set too.
    seen: list[tuple[cm.Grant, cm.Grant | None]] = []
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
        members = mgr._state.members

        def on_grant(grant: cm.Grant) -> None:
            b = members.get("b")
            seen.append((grant, None if b is None else b.grant))

        async with (
            mgr.enroll("a", quota=Q(6, 10), on_grant=on_grant),
            mgr.enroll("b", quota=Q.share(0.6, 0.8)),
        ):
            pass
    assert seen[:2] == [(G(6, 10), None), (G(5, 10), G(5, 8))]

    # A callback that raises what it must not catch: enroll() fails and leaves
    # nothing behind (the name is free, the quota back in the pool).
    def interrupt(grant: cm.Grant) -> None:
        raise KeyboardInterrupt

    async with cm.open_connection_manager(limits=cm.Limits(10, 20)) as mgr:
        with pytest.raises(KeyboardInterrupt):
            async with mgr.enroll("kad", quota=Q(5, 10), on_grant=interrupt):
                pytest.fail("the body ran")  # pragma: no cover
        assert mgr.statistics().protocols == {}
        async with mgr.enroll("kad", quota=Q(20, 20)) as kad:
            assert kad.grant == G(20, 20)


async def test_unchanged_grants_are_not_announced() -> None:
    calls: list[cm.Grant] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("a", quota=Q(2, 4), on_grant=calls.append),
    ):
        async with mgr.enroll("b", quota=Q(3, 5)):
            pass
        assert calls == [G(2, 4)]


async def test_wait_grant_changed() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("a", quota=Q(8, 10)) as a,
    ):
        results: list[cm.Grant] = []

        async def waiter() -> None:
            results.append(await a.wait_grant_changed())
            results.append(await a.wait_grant_changed())

        a.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        async with mgr.enroll("b", quota=Q(4, 4)):
            # 8 and 4 into 10: 6.67 and 3.33 -> 7 and 3.
            await trio.testing.wait_all_tasks_blocked()
            assert results == [G(7, 10)]
        await trio.testing.wait_all_tasks_blocked()
        assert results == [G(7, 10), G(8, 10)]


async def test_wait_grant_changed_ends_when_the_enrollment_leaves() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
        outcomes: list[str] = []

        async def waiter(enrollment: cm.Enrollment) -> None:
            try:
                await enrollment.wait_grant_changed()
            except cm.ResourceClosed as exc:
                outcomes.append(str(exc))

        async with trio.open_nursery() as nursery, mgr.enroll("a", quota=Q(2, 4)) as a:
            nursery.start_soon(waiter, a)  # in a task that outlives the block
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == []
        assert outcomes == ["enrollment 'a' has left"]
        with pytest.raises(cm.ResourceClosed, match="has left"):
            await a.wait_grant_changed()


async def test_on_grant_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(grant: cm.Grant) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="trio_connmgr"):
        async with (
            cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
            mgr.enroll("a", quota=Q(2, 4), on_grant=broken) as a,
        ):
            assert a.grant == G(2, 4)
    assert any("on_grant" in r.getMessage() for r in caplog.records)


def test_set_share_regrants_and_scales_low() -> None:
    events: list[object] = []
    state = State(cm.Limits(40, 100), clock=lambda: 0.0)
    state.sink = events.append
    a = EnrollmentState("a", Q.share(0.1, 0.5), lambda s: 0.5, 1.0, False, state)
    b = EnrollmentState("b", Q(30, 60), lambda s: 0.5, 1.0, False, state)
    state.enrol(a)
    state.enrol(b)
    assert (a.grant, b.grant) == (G(10, 50), G(30, 60))
    changed = state.set_share(50, "test")
    assert changed == [a, b]
    assert (state.high, state.low, state.share) == (50, 20, 50)
    assert (a.grant, b.grant) == (G(5, 25), G(30, 50))
    limits = [e for e in events if isinstance(e, cm.LimitsChanged)]
    assert [(e.low, e.high, e.hard, e.cause) for e in limits] == [(20, 50, None, "test")]
    # Never above the configured high, never below 1; no change, no news.
    assert state.set_share(50, "same") == []
    state.set_share(1000, "up")
    assert (state.high, state.low) == (100, 40)
    state.set_share(0, "down")
    assert (state.high, state.low) == (1, 1)
    assert sum(m.grant.min for m in (a, b)) <= 1
    assert all(m.grant.min <= m.grant.max <= 1 for m in (a, b))
