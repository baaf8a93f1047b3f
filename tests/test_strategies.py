"""Hypothesis strategies of the toolkit, and random workloads checked against SPEC §12."""

from __future__ import annotations

import math
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_connmgr as cm
from trio_connmgr._core._quota import allocate
from trio_connmgr.testing import check_invariants
from trio_connmgr.testing import strategies as cst
from trio_connmgr.testing.workload import PROTOCOLS, Enrol, Op


@given(cst.limits())
def test_limits_are_valid(limits: cm.Limits) -> None:
    assert 1 <= limits.low <= limits.high <= 20
    assert limits.hard is None or limits.hard >= limits.high


@given(cst.limits(hard=True), cst.limits(hard=False))
def test_limits_hard_can_be_forced(with_hard: cm.Limits, without: cm.Limits) -> None:
    assert with_hard.hard is not None
    assert without.hard is None


@given(st.lists(cst.quotas(), max_size=6), st.integers(1, 50))
def test_quotas_are_valid_and_allocate_within_the_share(
    quotas: list[cm.Quota], share: int
) -> None:
    grants = allocate(share, quotas)
    assert sum(g.min for g in grants) <= share
    assert all(0 <= g.min <= g.max <= share for g in grants)


@given(cst.quotas(relative=True), cst.quotas(relative=False))
def test_quotas_can_be_one_kind(share: cm.Quota, absolute: cm.Quota) -> None:
    assert share.relative
    assert not absolute.relative


class _Stream:
    """Just enough of a Stream for scorers (they only read these)."""

    def __init__(self, id: int) -> None:
        self.id = id
        self.idle_time = 3.0
        self.metadata: dict[str, Any] = {}


@given(cst.scorers(), st.integers(1, 10_000))
def test_scorers_are_flagged_by_behaviour(scorer: Any, stream_id: int) -> None:
    stream = _Stream(stream_id)
    if getattr(scorer, "well_behaved", True):
        value = scorer(stream)
        assert isinstance(value, float)
        assert 0.0 <= value <= 1.0
    else:
        values = []
        for _ in range(3):  # a RaisingScorer may only raise every n-th call
            try:
                values.append(scorer(stream))
            except RuntimeError:
                return
        bad = values[0]
        assert not isinstance(bad, int | float) or math.isnan(bad) or not 0.0 <= bad <= 1.0


@given(cst.scorers(garbage=False))
def test_scorers_without_garbage_are_well_behaved(scorer: Any) -> None:
    assert getattr(scorer, "well_behaved", True)


@given(cst.manager_options())
def test_manager_options_open_a_manager(options: dict[str, Any]) -> None:
    async def main() -> None:
        async with cm.open_connection_manager(limits=cm.Limits(2, 4), **options):
            pass

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@given(cst.workloads(max_size=10))
def test_workloads_start_with_a_prelude(workload: list[Op]) -> None:
    assert isinstance(workload[0], Enrol)
    assert workload[0].protocol == 0
    assert len(workload) >= 1 + 1 + 5
    assert all(isinstance(op, Op) for op in workload)
    assert PROTOCOLS[0] == "/proto/a"


# The property the toolkit exists for: random workloads never break SPEC §12.
# run_workload calls check_invariants after every step (and with every round).
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cst.limits(), cst.manager_options(), cst.workloads())
def test_random_workloads_keep_the_invariants(
    limits: cm.Limits, options: dict[str, Any], workload: list[Op]
) -> None:
    async def main() -> None:
        async with cm.open_connection_manager(limits=limits, **options) as mgr:
            report = await cst.run_workload(mgr, workload)
            assert report.steps == len(workload)
            assert not mgr.connections  # the workload cleaned up after itself
            check_invariants(mgr)
        check_invariants(mgr)  # closed: nothing left (invariant 8)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
