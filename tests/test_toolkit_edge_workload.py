"""Workload operations, and the toolkit's flags, refuse values they would misread.

The runner reads some fields itself (how many connections to open, whether
they are tracked, whether to protect or to open in a burst): a bad value is a
:class:`ConfigError` naming the field and the value as the operation is built,
never a workload that silently does something else (``bool("no")`` is true).
So are flags that would otherwise let a failing check pass.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import trio_connmgr as cm
from trio_connmgr.testing import check_invariants, run_workload
from trio_connmgr.testing import workload as w


@pytest.mark.parametrize(
    ("build", "field", "value"),
    [
        (lambda: w.Connect(count=-1), "Connect.count", "-1"),
        (lambda: w.Connect(count=2.5), "Connect.count", "2.5"),
        (lambda: w.Connect(count=True), "Connect.count", "True"),
        (lambda: w.Connect(tracked="no"), "Connect.tracked", "'no'"),
        (lambda: w.Connect(close_delay=-1.0), "Connect.close_delay", "-1.0"),
        (lambda: w.OpenStream(0, 0, in_burst="no"), "OpenStream.in_burst", "'no'"),
        (lambda: w.Protect(0, protect="no"), "Protect.protect", "'no'"),
        (lambda: w.Protect(0, protect=0), "Protect.protect", "0"),
        (lambda: w.Enrol(1.5, cm.Quota(1, 2)), "Enrol.protocol", "1.5"),  # type: ignore[arg-type]
        (lambda: w.Leave("0"), "Leave.protocol", "'0'"),  # type: ignore[arg-type]
        (lambda: w.OpenStream(0, None), "OpenStream.connection", "None"),  # type: ignore[arg-type]
        (lambda: w.CloseStream(True), "CloseStream.stream", "True"),
        (lambda: w.Unlock(0.0), "Unlock.lock", "0.0"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_field_is_refused_as_the_operation_is_built(
    build: Callable[[], w.Op], field: str, value: str
) -> None:
    with pytest.raises(cm.ConfigError, match=rf"{field} .*, got {value}$"):
        build()


async def test_check_invariants_refuses_a_flag_that_is_no_bool(autojump_clock: object) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr:
        mgr._state.rounds.failures = 1  # a round raised
        with pytest.raises(AssertionError, match="1 regulation round"):
            check_invariants(mgr, allow_round_failures=False)
        with pytest.raises(
            cm.ConfigError, match=r"check_invariants allow_round_failures .*, got 'no'"
        ):
            check_invariants(mgr, allow_round_failures="no")  # type: ignore[arg-type]
        mgr._state.rounds.failures = 0


async def test_run_workload_refuses_a_check_flag_that_is_no_bool(autojump_clock: object) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=2, high=4)) as mgr:
        with pytest.raises(cm.ConfigError, match=r"run_workload check .*, got 0"):
            await run_workload(mgr, [w.Connect(count=1)], check=0)  # type: ignore[arg-type]
        assert mgr.statistics().connections_opened == 0
