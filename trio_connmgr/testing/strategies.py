"""Hypothesis strategies for trio_connmgr: limits, quotas, scorers and whole workloads.

Requires `Hypothesis <https://hypothesis.readthedocs.io>`_ (``pip install
hypothesis``); nothing else in :mod:`trio_connmgr.testing` imports it.

Feed them to your own properties, and apply workloads to a live manager with
:func:`run_workload` (re-exported here), which checks SPEC §12 after every step::

    from hypothesis import given, settings
    import trio, trio.testing
    import trio_connmgr as cm
    from trio_connmgr.testing import strategies as st_cm

    @settings(max_examples=50, deadline=None)
    @given(st_cm.limits(), st_cm.workloads())
    def test_never_breaks(limits, workload):
        async def main():
            async with cm.open_connection_manager(limits=limits, grace_period=0) as mgr:
                await st_cm.run_workload(mgr, workload)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from .._config import Limits, Quota
from .._core._scoring import RecencyScorer
from ._scorers import (
    ConstantScorer,
    GarbageScorer,
    IdScorer,
    MetadataScorer,
    RaisingScorer,
)
from .workload import (
    PROTOCOLS,
    Advance,
    CloseBurst,
    CloseStream,
    Connect,
    Disconnect,
    Enrol,
    Leave,
    LockStream,
    Op,
    OpenBurst,
    OpenStream,
    Protect,
    Touch,
    Trim,
    Unlock,
    Workload,
    WorkloadReport,
    run_workload,
)

__all__ = [
    "Workload",
    "WorkloadReport",
    "garbage_values",
    "limits",
    "manager_options",
    "operations",
    "quotas",
    "run_workload",
    "scorers",
    "workloads",
]


@st.composite
def limits(draw: st.DrawFn, *, max_high: int = 20, hard: bool | None = None) -> Limits:
    """Valid :class:`Limits`: ``1 <= low <= high <= max_high``, ``high <= hard <= 2 * max_high``.

    Args:
        max_high: Largest ``high`` generated (keep it small: workloads are short).
        hard: ``True``: always a ``hard`` cap; ``False``: never; ``None``: either.
    """
    high = draw(st.integers(1, max_high))
    low = draw(st.integers(1, high))
    with_hard = draw(st.booleans()) if hard is None else hard
    cap = draw(st.integers(high, high + max_high)) if with_hard else None
    return Limits(low=low, high=high, hard=cap)


def _fraction() -> st.SearchStrategy[float]:
    return st.integers(0, 100).map(lambda n: n / 100)


@st.composite
def quotas(draw: st.DrawFn, *, max_connections: int = 20, relative: bool | None = None) -> Quota:
    """Valid :class:`Quota` values: absolute ``Quota(min, max)`` or ``Quota.share(fmin, fmax)``.

    Args:
        max_connections: Largest absolute ``max``.
        relative: ``True``: only shares; ``False``: only absolute; ``None``: both.
    """
    share = draw(st.booleans()) if relative is None else relative
    if share:
        a, b = sorted((draw(_fraction()), draw(_fraction())))
        return Quota.share(a, b)
    a, b = sorted((draw(st.integers(0, max_connections)), draw(st.integers(0, max_connections))))
    return Quota(a, b)


def garbage_values() -> st.SearchStrategy[Any]:
    """What a broken scorer may return: NaN, infinities, out-of-range numbers, non-numbers."""
    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1.5, 1e300, None, "high"]),
        st.floats(max_value=-1e-6) | st.floats(min_value=1.000001),
        st.integers(max_value=-1) | st.integers(min_value=2),
    )


def scorers(*, garbage: bool = True) -> st.SearchStrategy[Any]:
    """Scorers (callables ``Stream -> float``) for enrollments.

    Well-behaved ones (``well_behaved = True``): :class:`ConstantScorer`,
    :class:`IdScorer`, :class:`MetadataScorer`, and the default
    :class:`trio_connmgr.RecencyScorer` with a random half life. With
    ``garbage=True`` also :class:`GarbageScorer` (returns NaN, infinities,
    numbers outside ``[0, 1]``, non-numbers) and :class:`RaisingScorer` (raises
    every n-th call), both flagged ``well_behaved = False``. A ``RecencyScorer``
    has no flag: read ``getattr(scorer, "well_behaved", True)``.
    """
    good: list[st.SearchStrategy[Any]] = [
        _fraction().map(ConstantScorer),
        st.integers(0, 1000).map(IdScorer),
        _fraction().map(lambda d: MetadataScorer(default=d)),
        st.sampled_from([1.0, 10.0, 30.0, 300.0]).map(lambda h: RecencyScorer(half_life=h)),
    ]
    if not garbage:
        return st.one_of(good)
    bad: list[st.SearchStrategy[Any]] = [
        garbage_values().map(GarbageScorer),
        st.integers(1, 3).map(lambda n: RaisingScorer(every=n)),
    ]
    return st.one_of(*good, *bad)


@st.composite
def manager_options(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for :func:`trio_connmgr.open_connection_manager` (``limits`` aside).

    Short periods (``grace_period``, ``silence_period``, ``burst_linger``,
    ``max_lock_ttl``) so that workloads' :class:`Advance` steps cross them, and
    sometimes an explicit ``lock_budget``.
    """
    options: dict[str, Any] = {
        "grace_period": draw(st.sampled_from([0.0, 1.0, 5.0])),
        "silence_period": draw(st.sampled_from([0.0, 1.0, 10.0])),
        "burst_linger": draw(st.sampled_from([0.0, 2.0, 30.0])),
        "max_lock_ttl": draw(st.sampled_from([5.0, 300.0])),
    }
    if draw(st.booleans()):
        options["lock_budget"] = draw(st.integers(0, 5))
    return options


def operations(
    *,
    max_connections: int = 20,
    garbage_scorers: bool = True,
    tracked: bool = True,
) -> st.SearchStrategy[Op]:
    """One workload operation (see :mod:`trio_connmgr.testing.workload` for each kind).

    Args:
        max_connections: Largest absolute quota in :class:`Enrol` operations.
        garbage_scorers: Let :class:`Enrol` use garbage-returning and raising scorers.
        tracked: Let :class:`Connect` open tracked connections (``mgr.track``).
    """
    protocol = st.integers(0, len(PROTOCOLS) - 1)
    index = st.integers(0, 1000)
    direction = st.sampled_from(["inbound", "outbound"])
    enrol = st.builds(
        Enrol,
        protocol=protocol,
        quota=quotas(max_connections=max_connections),
        scorer=st.none() | scorers(garbage=garbage_scorers),
        weight=st.sampled_from([0.5, 1.0, 2.0]),
        strict=st.booleans(),
    )
    connect = st.builds(
        Connect,
        count=st.integers(1, 8),
        direction=direction,
        tracked=st.booleans() if tracked else st.just(False),
        close_delay=st.sampled_from([0.0, 0.0, 0.5]),
    )
    open_stream = st.builds(
        OpenStream,
        protocol=index,
        connection=index,
        in_burst=st.booleans(),
        direction=direction,
    )
    return st.one_of(
        enrol,
        st.builds(Leave, protocol=index),
        connect,
        connect,
        st.builds(Disconnect, connection=index),
        open_stream,
        open_stream,
        open_stream,
        st.builds(CloseStream, stream=index),
        st.builds(Touch, stream=index, nbytes=st.integers(0, 1 << 16)),
        st.builds(LockStream, stream=index, ttl=st.sampled_from([0.5, 5.0, 60.0])),
        st.builds(Unlock, lock=index),
        st.builds(OpenBurst, protocol=index),
        st.builds(CloseBurst, protocol=index),
        st.builds(Protect, connection=index, protect=st.booleans()),
        st.builds(Advance, seconds=st.sampled_from([0.0, 0.5, 1.0, 5.0, 31.0])),
        st.builds(Advance, seconds=st.sampled_from([1.0, 5.0])),
        st.builds(Trim, force=st.booleans()),
    )


def workloads(
    *,
    min_size: int = 5,
    max_size: int = 40,
    max_connections: int = 20,
    garbage_scorers: bool = True,
    tracked: bool = True,
) -> st.SearchStrategy[list[Op]]:
    """Sequences of operations for :func:`run_workload`.

    Each starts with a prelude (enrol a protocol, open some connections and
    streams, so that later operations have something to act on), then draws
    ``min_size`` to ``max_size`` operations from :func:`operations`.

    Args:
        min_size: Fewest drawn operations.
        max_size: Most drawn operations.
        max_connections: Largest absolute quota in :class:`Enrol` operations.
        garbage_scorers: Let protocols use garbage-returning and raising scorers.
        tracked: Let connections be tracked ones (``mgr.track`` with ``close()``).
    """
    ops = operations(
        max_connections=max_connections, garbage_scorers=garbage_scorers, tracked=tracked
    )
    prelude = st.tuples(
        st.builds(
            Enrol,
            protocol=st.just(0),
            quota=quotas(max_connections=max_connections),
            scorer=st.none() | scorers(garbage=garbage_scorers),
        ),
        st.lists(
            st.builds(
                Connect,
                count=st.integers(1, 8),
                direction=st.sampled_from(["inbound", "outbound"]),
            ),
            min_size=1,
            max_size=3,
        ),
        st.lists(
            st.builds(OpenStream, protocol=st.just(0), connection=st.integers(0, 1000)),
            max_size=6,
        ),
    )
    return st.builds(
        lambda head, body: [head[0], *head[1], *head[2], *body],
        prelude,
        st.lists(ops, min_size=min_size, max_size=max_size),
    )
