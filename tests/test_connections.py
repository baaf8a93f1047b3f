"""Connections (SPEC §2, §12.7): cancel-scope semantics, pruning, tracked close callbacks."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trio_connmgr as cm
from trio_connmgr._core._planner import Phase
from trio_connmgr.triggers import Trigger


def reason(trigger: str = "test") -> cm.PruneReason:
    return cm.PruneReason(Phase.TALLY, None, 0.0, 1, trigger)


class CloseRecorder:
    """A tracked connection's ``close`` callback that counts its calls."""

    def __init__(self, delay: float = 0.0, error: BaseException | None = None) -> None:
        self.delay = delay
        self.error = error
        self.calls = 0
        self.finished = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.delay:
            await trio.sleep(self.delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        self.finished += 1


def open_manager(**kwargs: object) -> cm.ConnectionManager:
    arguments: dict[str, object] = {"limits": cm.Limits(100, 200), **kwargs}
    return cm.open_connection_manager(**arguments)  # type: ignore[arg-type, return-value]


# ----------------------------------------------------------- mgr.connection()


async def test_connection_attributes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager() as mgr:
        await trio.sleep(5)
        async with mgr.connection("peer-1", direction="inbound", address="10.1.2.3") as conn:
            assert conn.peer == "peer-1"
            assert conn.direction is cm.Direction.INBOUND
            assert conn.address == "10.1.2.3"
            assert conn.opened_at == trio.current_time()
            assert conn.streams == set()
            assert conn.protocols == ()
            assert not conn.closed
            assert conn.close_reason is None
            assert conn.prune_reason is None
            assert mgr.connections == (conn,)
            async with mgr.connection("peer-2", direction=cm.Direction.OUTBOUND) as other:
                assert other.id != conn.id
                assert other.address is None
                stats = mgr.statistics()
                assert (stats.connections, stats.inbound, stats.outbound) == (2, 1, 1)
            assert other.closed
            assert other.close_reason == "closed"
        assert conn.closed
        assert conn.close_reason == "closed"
        assert mgr.connections == ()
        assert mgr.statistics().connections_closed == 2


async def test_prune_cancels_the_body_quietly() -> None:
    seen: list[str] = []
    why = reason()
    async with open_manager() as mgr, trio.open_nursery() as nursery:
        conns: list[cm.Connection] = []

        async def body(task_status: trio.TaskStatus[None]) -> None:
            async with mgr.connection("p", direction="outbound") as conn:
                conns.append(conn)
                task_status.started()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    seen.append("cancelled")
                    raise
            seen.append(f"exited quietly: {conn.close_reason}")

        await nursery.start(body)
        conn = conns[0]
        assert mgr._prune(conn, why) is True
        # Synchronous effects first: no longer counted, reason recorded.
        assert conn.closed
        assert conn.close_reason == "pruned"
        assert conn.prune_reason is why
        assert mgr.statistics().connections == 0
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["cancelled", "exited quietly: pruned"]
        # Pruning twice is a no-op.
        assert mgr._prune(conn, why) is False
        assert mgr.statistics().connections_pruned == 1


async def test_prune_from_inside_the_body() -> None:
    async with open_manager() as mgr:
        async with mgr.connection("p", direction="inbound") as conn:
            mgr._prune(conn, reason())
            await trio.lowlevel.checkpoint()
            pytest.fail("the body went on after its connection was pruned")  # pragma: no cover
        assert conn.close_reason == "pruned"


async def test_prune_closes_streams_and_cancels_their_bodies() -> None:
    seen: list[str] = []
    async with (
        open_manager() as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 10)) as p,
        trio.open_nursery() as nursery,
    ):
        async with mgr.connection("peer", direction="inbound") as conn:
            tracked = p.track_stream(conn)

            async def stream_body() -> None:
                async with p.stream(conn) as stream:
                    try:
                        await trio.sleep_forever()
                    finally:
                        seen.append(f"stream closed={stream.closed}")

            nursery.start_soon(stream_body)
            await trio.testing.wait_all_tasks_blocked()
            assert p.usage == 1
            assert len(conn.streams) == 2
            mgr._prune(conn, reason())
            assert tracked.closed
            assert conn.streams == set()
            assert p.usage == 0
            await trio.testing.wait_all_tasks_blocked()
            assert seen == ["stream closed=True"]
            await trio.sleep_forever()
        assert conn.close_reason == "pruned"


async def test_body_exception_propagates_unchanged() -> None:
    async with open_manager() as mgr:
        with pytest.raises(KeyError, match="boom"):
            async with mgr.connection("p", direction="inbound") as conn:
                raise KeyError("boom")
        assert conn.closed
        assert conn.close_reason == "closed"
        assert mgr.statistics().connections == 0


async def test_outer_cancellation_is_not_swallowed() -> None:
    async with open_manager() as mgr:
        with trio.move_on_after(1) as outer:
            async with mgr.connection("p", direction="inbound") as conn:
                outer.cancel()
                await trio.sleep_forever()
        assert outer.cancelled_caught
        assert conn.close_reason == "closed"


async def test_hard_refuses_inbound_but_not_outbound() -> None:
    async with open_manager(limits=cm.Limits(1, 2, hard=2)) as mgr:
        a = mgr.track("a", direction="inbound", close=CloseRecorder())
        b = mgr.track("b", direction="inbound", close=CloseRecorder())
        with pytest.raises(cm.ConnectionRefused) as info:
            async with mgr.connection("c", direction="inbound"):
                pytest.fail("admitted above hard")  # pragma: no cover
        assert info.value.reason == "hard"
        assert "hard=2" in str(info.value)
        with pytest.raises(cm.ConnectionRefused):
            mgr.track("c", direction="inbound", close=CloseRecorder())
        out = mgr.track("d", direction="outbound", close=CloseRecorder())
        stats = mgr.statistics()
        assert stats.refusals == {"hard": 2}
        assert stats.connections == 3
        for conn in (a, b, out):
            conn.release()


# ------------------------------------------------------------- mgr.track()


async def test_tracked_close_awaited_once_when_pruned() -> None:
    close = CloseRecorder()
    async with open_manager() as mgr:
        conn = mgr.track("p", direction="outbound", address="x", close=close)
        assert conn.peer == "p"
        assert mgr.connections == (conn,)
        mgr._prune(conn, reason())
        assert mgr._prune(conn, reason()) is False
        await trio.testing.wait_all_tasks_blocked()
        assert (close.calls, close.finished) == (1, 1)
        assert conn.close_reason == "pruned"
    assert close.calls == 1


async def test_release_does_not_call_close() -> None:
    close = CloseRecorder()
    async with open_manager() as mgr, mgr.enroll("p", quota=cm.Quota(0, 5)) as p:
        conn = mgr.track("p", direction="inbound", close=close)
        stream = p.track_stream(conn)
        conn.release()
        conn.release()  # idempotent
        assert conn.closed
        assert conn.close_reason == "released"
        assert stream.closed
        assert mgr._prune(conn, reason()) is False
        await trio.testing.wait_all_tasks_blocked()
    assert close.calls == 0


async def test_tracked_closed_once_when_manager_exits() -> None:
    closes = [CloseRecorder() for _ in range(3)]
    async with open_manager() as mgr:
        conns = [mgr.track(i, direction="inbound", close=c) for i, c in enumerate(closes)]
        mgr._prune(conns[0], reason())
    assert [c.calls for c in closes] == [1, 1, 1]
    assert [c.finished for c in closes] == [1, 1, 1]
    assert [c.close_reason for c in conns] == ["pruned", "manager closed", "manager closed"]


async def test_close_finishes_when_the_caller_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    close = CloseRecorder(delay=3.0)
    with trio.move_on_after(1) as outer:
        async with open_manager() as mgr:
            conn = mgr.track("p", direction="outbound", close=close)
            await trio.sleep_forever()
    assert outer.cancelled_caught
    # The cancelled exit still waited for close() (shielded), and called it once.
    assert (close.calls, close.finished) == (1, 1)
    assert trio.current_time() == pytest.approx(4.0)
    assert conn.close_reason == "manager closed"


async def test_close_finishes_when_pruner_task_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    close = CloseRecorder(delay=2.0)
    async with open_manager() as mgr:
        conn = mgr.track("p", direction="outbound", close=close)
        with trio.CancelScope() as scope:
            mgr._prune(conn, reason())
            scope.cancel()
            await trio.sleep(10)
        await trio.sleep(5)
        assert (close.calls, close.finished) == (1, 1)


async def test_close_that_hangs_is_cut_off(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    close = CloseRecorder(delay=1000.0)
    async with open_manager(close_timeout=7.0) as mgr:
        conn = mgr.track("p", direction="outbound", close=close)
        mgr._prune(conn, reason())
        await trio.sleep(6.5)
        assert mgr.statistics().close_timeouts == 0
        await trio.sleep(1)
        assert mgr.statistics().close_timeouts == 1
        assert close.calls == 1
        assert close.finished == 0
        # Manager exit does not wait for a close that already timed out.
        hang = CloseRecorder(delay=1000.0)
        mgr.track("q", direction="outbound", close=hang)
        start = trio.current_time()
    assert trio.current_time() - start == pytest.approx(7.0)
    assert hang.calls == 1
    assert mgr.statistics().close_timeouts == 2
    assert any("did not finish" in r.getMessage() for r in caplog.records)


async def test_each_close_gets_its_whole_timeout_and_others_are_not_held_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hangs = CloseRecorder(delay=1000.0)
    quick = CloseRecorder(delay=1.0)
    later = CloseRecorder(delay=1000.0)
    async with open_manager(close_timeout=10.0) as mgr:
        # Pruned in the same step: their closes are awaited together.
        for peer, close in (("hangs", hangs), ("quick", quick)):
            mgr._prune(mgr.track(peer, direction="outbound", close=close), reason())
        await trio.sleep(2)
        # The quick close is done, though the other one still hangs.
        assert (quick.calls, quick.finished) == (1, 1)
        # A close requested later has the whole timeout from its own start.
        mgr._prune(mgr.track("later", direction="outbound", close=later), reason())
        await trio.sleep(8.5)
        assert mgr.statistics().close_timeouts == 1  # the first, cut off at t=10
        assert later.calls == 1
        await trio.sleep(2)
        assert mgr.statistics().close_timeouts == 2  # the later one, at t=12
    assert (hangs.finished, later.finished) == (0, 0)


class CloseBug(BaseException):
    """Not an Exception: a close() that raises it must still not cut off the others."""


async def test_a_base_exception_from_one_close_spares_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    others = [CloseRecorder(delay=1.0), CloseRecorder(delay=1.0)]

    async def buggy() -> None:
        raise CloseBug

    with pytest.RaisesGroup(CloseBug, flatten_subgroups=True):
        async with open_manager() as mgr:
            conns = [mgr.track("bug", direction="outbound", close=buggy)]
            conns += [mgr.track(i, direction="outbound", close=c) for i, c in enumerate(others)]
            for conn in conns:
                mgr._prune(conn, reason())
            await trio.sleep(2)
    # Both graceful closes ran to the end; the error still surfaced.
    assert [c.finished for c in others] == [1, 1]


async def test_a_close_that_ignores_its_timeout_does_not_delay_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hangs = CloseRecorder(delay=1000.0)
    stubborn_done = trio.Event()

    async def stubborn() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(100)  # e.g. insists on a graceful shutdown
            stubborn_done.set()
            raise

    async with open_manager(close_timeout=1.0) as mgr:
        for peer, close in (("hangs", hangs), ("stubborn", stubborn)):
            mgr._prune(mgr.track(peer, direction="outbound", close=close), reason())
        await trio.sleep(1.5)
        # The hanging close was cut off and counted at its deadline.
        assert mgr.statistics().close_timeouts == 1
        await stubborn_done.wait()
    assert mgr.statistics().close_timeouts == 2


async def test_close_that_raises_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    close = CloseRecorder(error=OSError("reset by peer"))
    with caplog.at_level(logging.ERROR, logger="trio_connmgr"):
        async with open_manager() as mgr:
            conn = mgr.track("p", direction="outbound", close=close)
            mgr._prune(conn, reason())
            await trio.testing.wait_all_tasks_blocked()
            assert mgr.statistics().close_errors == 1
            # The manager keeps working.
            async with mgr.connection("q", direction="inbound"):
                pass
    assert close.calls == 1
    assert any("close()" in r.getMessage() for r in caplog.records)


async def test_a_plain_function_as_close_is_called_counted_and_explained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def close() -> None:  # e.g. close=sock.close instead of an async aclose
        nonlocal calls
        calls += 1

    with caplog.at_level(logging.ERROR, logger="trio_connmgr"):
        async with open_manager() as mgr:
            conn = mgr.track("p", direction="outbound", close=close)  # type: ignore[arg-type]
            mgr._prune(conn, reason())
            await trio.testing.wait_all_tasks_blocked()
            assert mgr.statistics().close_errors == 1
    assert calls == 1
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None
    assert "returned None, not an awaitable: track(close=...) takes an async function" in str(
        record.exc_info[1]
    )


async def test_a_close_cut_off_with_an_error_of_its_own_is_counted_not_raised(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A close() using a nursery raises its own error in a group with the
    # cancellation of its deadline: the deadline is counted, the error logged
    # and counted, and neither reaches the manager.
    async def close() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise OSError("reset while being cut off") from None

    async with open_manager(close_timeout=1.0) as mgr:
        mgr._prune(mgr.track("p", direction="outbound", close=close), reason())
        async with mgr.connection("q", direction="inbound"):
            await trio.sleep(2)
        stats = mgr.statistics()
        assert (stats.close_timeouts, stats.close_errors) == (1, 1)
    assert "reset while being cut off" in caplog.text


async def test_a_trigger_hook_that_raises_leaves_nothing_counted() -> None:
    class Buggy(Trigger):
        name = "buggy"

        def connection_opened(self, now: float) -> bool:
            raise RuntimeError("trigger bug")

    close = CloseRecorder()
    async with open_manager(triggers=[Buggy()]) as mgr:
        with pytest.raises(RuntimeError, match="trigger bug"):
            async with mgr.connection("p", direction="inbound"):
                pytest.fail("admitted")  # pragma: no cover
        with pytest.raises(RuntimeError, match="trigger bug"):
            mgr.track("q", direction="outbound", close=close)
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.connections == ()
        stats = mgr.statistics()
        assert (stats.connections, stats.inbound, stats.outbound) == (0, 0, 0)
    assert close.calls == 0  # the caller got the error: its connection is its own


async def test_pruned_by_a_round_cancels_bodies() -> None:
    seen: list[int] = []
    async with (
        open_manager(limits=cm.Limits(2, 3), grace_period=0) as mgr,
        trio.open_nursery() as nursery,
    ):
        started: list[cm.Connection] = []

        async def hold(i: int, task_status: trio.TaskStatus[None]) -> None:
            async with mgr.connection(i, direction="inbound") as conn:
                started.append(conn)
                task_status.started()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    seen.append(i)
                    raise

        for i in range(3):
            await nursery.start(hold, i)
        # The fourth crosses high: the regulator prunes two (idle, oldest first).
        await nursery.start(hold, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(seen) == [0, 1]
        assert [c.close_reason for c in started] == ["pruned", "pruned", None, None]
        assert all(c.prune_reason and c.prune_reason.phase is Phase.IDLE for c in started[:2])
        nursery.cancel_scope.cancel()
