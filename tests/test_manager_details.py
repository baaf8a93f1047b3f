"""The manager in detail: checkpoints, admission's checks, tracked closes, explain()'s wording."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing
from helpers import Interrupt

import trio_connmgr as cm
from trio_connmgr.triggers import Trigger


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def open_manager(**kwargs: Any) -> AbstractAsyncContextManager[cm.ConnectionManager]:
    kwargs.setdefault("limits", cm.Limits(low=1, high=10))
    kwargs.setdefault("grace_period", 0)
    return cm.open_connection_manager(**kwargs)


# ------------------------------------------------------------- checkpoints


async def test_async_entries_checkpoint() -> None:
    async with open_manager() as mgr:
        with trio.testing.assert_checkpoints():
            async with mgr.connection("p", direction="inbound"):
                pass
        with trio.testing.assert_checkpoints():
            async with mgr.enroll("kad", quota=cm.Quota(0, 5)):
                pass
        with trio.testing.assert_checkpoints():
            async with mgr.subscribe():
                pass
        with trio.testing.assert_checkpoints():
            await mgr.trim()


async def test_a_cancelled_caller_is_neither_admitted_nor_enrolled() -> None:
    ran = []
    async with open_manager() as mgr:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with mgr.connection("p", direction="inbound"):
                ran.append("connection")
        with trio.CancelScope() as scope:
            scope.cancel()
            async with mgr.enroll("kad", quota=cm.Quota(0, 5)):
                ran.append("enroll")
        with trio.CancelScope() as scope:
            scope.cancel()
            await mgr.trim()
        stats = mgr.statistics()
    assert ran == []
    assert stats.connections_opened == 0
    assert stats.protocols == {}
    assert stats.rounds.count == 0


# -------------------------------------------------------------- admission


async def test_bad_peers_and_addresses_are_config_errors() -> None:
    async with open_manager() as mgr:
        bad_peers: list[Any] = [[1], None]
        for peer in bad_peers:
            with pytest.raises(cm.ConfigError, match="peer"):
                mgr.track(peer, direction="inbound", close=noop_close)
            with pytest.raises(cm.ConfigError, match="peer"):
                async with mgr.connection(peer, direction="outbound"):
                    pytest.fail("admitted")  # pragma: no cover
        with pytest.raises(cm.ConfigError, match=r"address .*b'10\.0\.0\.1'"):
            mgr.track("p", direction="inbound", address=b"10.0.0.1", close=noop_close)  # type: ignore[arg-type]
        with pytest.raises(cm.ConfigError, match=r"address .*5"):
            async with mgr.connection("p", direction="outbound", address=5):  # type: ignore[arg-type]
                pytest.fail("admitted")  # pragma: no cover
        # A peer need not be a string, and the address may be left out.
        conn = mgr.track(("10.0.0.1", 4001), direction="inbound", close=noop_close)
        assert conn.address is None
        assert mgr.connections == (conn,)
        assert mgr.statistics().connections_opened == 1


async def test_a_closed_manager_says_so_before_admission_refuses() -> None:
    admission = cm.Admission(deny=["10.0.0.0/8"], exempt_loopback=False)
    async with open_manager(admission=admission) as mgr:
        with pytest.raises(cm.ConnectionRefused):
            mgr.track("p", direction="inbound", address="10.0.0.1", close=noop_close)
    with pytest.raises(cm.ManagerClosed):
        mgr.track("p", direction="inbound", address="10.0.0.1", close=noop_close)
    with pytest.raises(cm.ManagerClosed):
        async with mgr.connection("p", direction="inbound", address="10.0.0.1"):
            pytest.fail("admitted")  # pragma: no cover
    assert mgr.statistics().refusals == {"deny": 1}


class OpenRecorder(Trigger):
    """Records the times ``connection_opened`` is given; never fires."""

    name = "open-recorder"

    def __init__(self) -> None:
        self.times: list[float] = []

    def connection_opened(self, now: float) -> bool:
        self.times.append(now)
        return False


async def test_open_hooks_get_each_connections_open_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, second = OpenRecorder(), OpenRecorder()
    async with open_manager(triggers=[first, second]) as mgr:
        await trio.sleep(5)
        a = mgr.track("a", direction="inbound", close=noop_close)
        await trio.sleep(1)
        async with mgr.connection("b", direction="outbound") as b:
            pass
    assert (a.opened_at, b.opened_at) == (5.0, 6.0)
    assert first.times == second.times == [5.0, 6.0]


class RoundRecorder(Trigger):
    """Never fires; counts the rounds it is told completed."""

    name = "round-recorder"

    def __init__(self) -> None:
        self.opened = 0
        self.completed = 0

    def connection_opened(self, now: float) -> bool:
        self.opened += 1
        return False

    def round_completed(self, now: float) -> None:
        self.completed += 1


async def test_a_hook_that_did_not_fire_during_a_round_is_told_it_completed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = RoundRecorder()
    async with open_manager(limits=cm.Limits(low=1, high=10), triggers=[recorder]) as mgr:

        def opening_scorer(stream: cm.Stream) -> float:
            # Called while the round plans: a connection opens meanwhile.
            if recorder.opened < 3:
                mgr.track("late", direction="inbound", close=noop_close)
            return 0.5

        async with mgr.enroll("kad", quota=cm.Quota(0, 5), scorer=opening_scorer) as kad:
            for peer in ("a", "b"):
                kad.track_stream(mgr.track(peer, direction="inbound", close=noop_close))
            await trio.sleep(1)
            await mgr.trim()
    assert recorder.opened == 3  # the third opened while the round ran
    assert recorder.completed == 1


async def test_a_trigger_hook_raising_a_base_exception_leaves_nothing_counted() -> None:
    class Interrupting(Trigger):
        name = "interrupting"

        def connection_opened(self, now: float) -> bool:
            raise Interrupt

    async with open_manager(triggers=[Interrupting()]) as mgr:
        with pytest.raises(Interrupt):
            mgr.track("p", direction="inbound", close=noop_close)
        with pytest.raises(Interrupt):
            async with mgr.connection("q", direction="outbound"):
                pytest.fail("admitted")  # pragma: no cover
        stats = mgr.statistics()
        assert mgr.connections == ()
    assert (stats.connections, stats.connections_opened, stats.connections_closed) == (0, 2, 2)


# ------------------------------------------------------------- validation


async def test_protection_and_dial_reports_check_their_arguments() -> None:
    async with open_manager() as mgr:
        with pytest.raises(cm.ConfigError, match=r"unprotect tag .*5"):
            mgr.unprotect("p", 5)  # type: ignore[arg-type]
        with pytest.raises(cm.ConfigError, match=r"report_dial peer .*\[1\]"):
            mgr.report_dial([1], ok=True)  # type: ignore[arg-type]
        with pytest.raises(cm.ConfigError, match="report_dial peer"):
            mgr.report_dial(None, ok=False)
        with pytest.raises(cm.ConfigError, match="report_dial ok must be True or False, got 'no'"):
            mgr.report_dial("p", ok="no")  # type: ignore[arg-type]
        mgr.track("p", direction="inbound", close=trio.lowlevel.checkpoint)
        with pytest.raises(cm.ConfigError, match="trim force must be True or False, got 'no'"):
            await mgr.trim(force="no")  # type: ignore[arg-type]
        assert mgr.statistics().rounds.count == 0


@pytest.mark.parametrize("value", [0, -1.0])
async def test_close_timeout_must_be_positive(value: float) -> None:
    with pytest.raises(cm.ConfigError, match=f"close_timeout .*{value}"):
        async with open_manager(close_timeout=value):
            pytest.fail("opened")  # pragma: no cover


# ---------------------------------------------------------- tracked closes


class CloseBug(BaseException):
    """Not an Exception: raised by a close(), it comes out of the manager."""


async def test_every_base_exception_from_closes_in_one_batch_comes_out() -> None:
    def failing(n: int) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            await trio.lowlevel.checkpoint()
            raise CloseBug(n)

        return close

    with pytest.RaisesGroup(CloseBug, CloseBug, CloseBug, flatten_subgroups=True) as caught:
        async with open_manager() as mgr:
            for n in range(3):
                mgr.track(n, direction="outbound", close=failing(n))
    errors = [e for e in _leaves(caught.value) if isinstance(e, CloseBug)]
    assert sorted(e.args[0] for e in errors) == [0, 1, 2]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


# ------------------------------------------------------------- lock timer


async def test_an_extended_lock_does_not_cut_short_the_wait_after_a_round_fell_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager(limits=cm.Limits(low=2, high=3), lock_budget=2, silence_period=10) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
    ):
        for peer in ("a", "b", "c"):
            mgr.protect(peer, "keep")
            mgr.track(peer, direction="inbound", close=noop_close)
        locked = mgr.track("d", direction="inbound", close=noop_close)
        async with kad.stream(locked) as stream, kad.lock(stream, ttl=5) as lock:
            await trio.sleep(1)
            # count 4 > high 3, and nothing is prunable: the round fell short.
            assert mgr.statistics().rounds.count == 1
            lock.extend(100)
            # The lock's first expiry (t=5) passes and nothing expires: no wake-up,
            # the regulator waits out the silence period before trying again.
            await trio.sleep(6)
            assert mgr.statistics().rounds.count == 1
            await trio.sleep(5)
            assert mgr.statistics().rounds.count == 2
            assert len(mgr.connections) == 4


# ---------------------------------------------------------------- explain


async def test_explain_a_closed_connection_of_a_protected_peer() -> None:
    async with open_manager() as mgr:
        conn = mgr.track("relay", direction="inbound", close=noop_close)
        mgr.protect("relay", "relay")
        conn.release()
        why = mgr.explain(conn)
    assert why.excluded_by == "closed"
    assert why.safe_because == ()
    assert (why.prunable, why.would_prune) == (False, False)
    assert "is closed (released)" in why.text


async def test_explain_at_low_and_at_high(autojump_clock: trio.testing.MockClock) -> None:
    async with open_manager(limits=cm.Limits(low=2, high=3), silence_period=1000) as mgr:
        first = mgr.track("a", direction="inbound", close=noop_close)
        await trio.sleep(1)
        mgr.track("b", direction="inbound", close=noop_close)
        await trio.sleep(1)
        at_low = mgr.explain(first)
        assert (at_low.prunable, at_low.would_prune) == (True, False)
        assert "is prunable (tally 0.000) but the count 2 is at or below low=2" in at_low.text
        mgr.track("c", direction="inbound", close=noop_close)
        await trio.sleep(1)
        at_high = mgr.explain(first)
        assert at_high.would_prune
        assert at_high.text.endswith(
            "(count 3 > low 2); no round starts on its own until the count exceeds high=3"
        )


async def test_explain_counts_the_victims_it_ranks_below(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager(limits=cm.Limits(low=1, high=10)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5), scorer=lambda s: 1.0) as kad,
    ):
        mgr.track("a", direction="inbound", close=noop_close)
        mgr.track("b", direction="inbound", close=noop_close)
        busy = mgr.track("c", direction="inbound", close=noop_close)
        kad.track_stream(busy)
        await trio.sleep(1)
        why = mgr.explain(busy)
    assert (why.prunable, why.would_prune) == (True, False)
    assert "ranks below the 2 victims a round would take now" in why.text


async def test_explain_names_each_locking_protocol_once_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_manager(limits=cm.Limits(low=4, high=10)) as mgr,
        mgr.enroll("b", quota=cm.Quota(0, 5)) as b,
        mgr.enroll("a", quota=cm.Quota(0, 5)) as a,
    ):
        conn = mgr.track("p", direction="inbound", close=noop_close)
        streams = [b.track_stream(conn), a.track_stream(conn), b.track_stream(conn)]
        async with (
            b.lock(streams[0], ttl=10),
            a.lock(streams[1], ttl=20),
            b.lock(streams[2], ttl=30),
        ):
            why = mgr.explain(conn)
    assert why.locked_by == ("a", "b")
    assert why.lock_expires_at == 30.0
    assert "it is locked by a, b until t=30.000" in why.text


async def test_the_bodys_error_survives_a_close_raising_a_base_exception_at_exit() -> None:
    async def failing() -> None:
        await trio.lowlevel.checkpoint()
        raise CloseBug("close")

    with pytest.RaisesGroup(CloseBug, ValueError, flatten_subgroups=True):
        async with open_manager() as mgr:
            mgr.track("p", direction="outbound", close=failing)
            raise ValueError("body")
