"""Enrollment (SPEC §4): its nursery, leaving, errors out of the block."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_connmgr as cm


async def test_enrollment_attributes() -> None:
    quota = cm.Quota.share(0.2, 0.5)
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("/ipfs/kad/1.0.0", quota=quota) as kad,
    ):
        assert isinstance(kad, cm.Enrollment)
        assert kad.name == "/ipfs/kad/1.0.0"
        assert kad.quota is quota
        assert kad.grant == cm.Grant(2, 5)
        assert kad.usage == 0
        assert kad.streams == set()
        assert isinstance(kad.scorer, cm.RecencyScorer)
        assert "/ipfs/kad/1.0.0" in repr(kad)


async def test_tasks_run_and_leaving_cancels_them() -> None:
    events: list[str] = []
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:

        async def service(
            name: str, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started(f"{name} ready")
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                events.append(f"{name} cancelled")
                raise

        async with mgr.enroll("p", quota=cm.Quota(1, 4)) as p:
            assert await p.start(service, "a") == "a ready"
            p.start_soon(service, "b", name="service b")
            await trio.testing.wait_all_tasks_blocked()
            assert events == []
        assert sorted(events) == ["a cancelled", "b cancelled"]
        with pytest.raises(cm.ResourceClosed, match="'p'"):
            p.start_soon(service, "c")
        with pytest.raises(cm.ResourceClosed):
            await p.start(service, "c")


async def test_leaving_closes_streams_and_returns_quota() -> None:
    seen: list[str] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("a", quota=cm.Quota(6, 10)) as a,
        trio.open_nursery() as nursery,
        mgr.connection("peer", direction="outbound") as conn,
    ):
        async with mgr.enroll("b", quota=cm.Quota(6, 10)) as b:
            assert (a.grant, b.grant) == (cm.Grant(5, 10), cm.Grant(5, 10))
            tracked = b.track_stream(conn)

            async def outside_task() -> None:
                # A stream body in a task that is not b's: leaving still ends it.
                async with b.stream(conn) as stream:
                    try:
                        await trio.sleep_forever()
                    finally:
                        seen.append(f"outside stream closed={stream.closed}")
                seen.append("outside task went on")

            nursery.start_soon(outside_task)
            await trio.testing.wait_all_tasks_blocked()
            assert b.usage == 1
            assert conn.protocols == ("b",)
        assert tracked.closed
        assert b.streams == set()
        assert b.usage == 0
        assert conn.streams == set()
        assert conn.protocols == ()
        assert a.grant == cm.Grant(6, 10)
        assert "b" not in mgr.statistics().protocols
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["outside stream closed=True", "outside task went on"]
        # The connection itself is untouched.
        assert not conn.closed


async def test_crashing_task_propagates_as_a_group() -> None:
    body_saw: list[str] = []
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:

        async def crash() -> None:
            await trio.lowlevel.checkpoint()
            raise RuntimeError("protocol bug")

        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="protocol bug")):
            async with mgr.enroll("p", quota=cm.Quota(1, 4)) as p:
                p.start_soon(crash)
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    body_saw.append("cancelled")
                    raise
        assert body_saw == ["cancelled"]
        assert p.closed
        assert "p" not in mgr._state.members
        # The manager carries on; the name is free again.
        async with mgr.enroll("p", quota=cm.Quota(1, 4)) as again:
            assert again.grant == cm.Grant(1, 4)


async def test_a_crashing_task_and_a_failing_body_both_come_out() -> None:
    # As a nursery reports them: the task's error and the body's, in one group.
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:

        async def crash() -> None:
            await trio.lowlevel.checkpoint()
            raise RuntimeError("protocol bug")

        with pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="protocol bug"),
            pytest.RaisesExc(ValueError, match="cleanup failed"),
        ):
            async with mgr.enroll("p", quota=cm.Quota(1, 4)) as p:
                p.start_soon(crash)
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    raise ValueError("cleanup failed") from None
        assert "p" not in mgr._state.members


async def test_body_error_propagates_unwrapped() -> None:
    cancelled: list[str] = []
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:

        async def task() -> None:
            try:
                await trio.sleep_forever()
            finally:
                cancelled.append("task")

        with pytest.raises(KeyError, match="from the body") as info:
            async with mgr.enroll("p", quota=cm.Quota(1, 4)) as p:
                p.start_soon(task)
                await trio.testing.wait_all_tasks_blocked()
                raise KeyError("from the body")
        assert type(info.value) is KeyError
        assert cancelled == ["task"]
        assert p.closed


async def test_enroll_body_cancelled_from_outside_is_not_swallowed() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
        with trio.move_on_after(1) as outer:
            async with mgr.enroll("p", quota=cm.Quota(1, 4)) as p:
                outer.cancel()
                await trio.sleep_forever()
        assert outer.cancelled_caught
        assert p.closed


async def test_leaving_wakes_the_regulator_above_high(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Locks keep three connections above high=2; leaving releases two of them.
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(1, 2), grace_period=5, silence_period=100, lock_budget=3
        ) as mgr,
        mgr.enroll("q", quota=cm.Quota(0, 2)) as q,
    ):
        async with mgr.enroll("p", quota=cm.Quota(0, 2)) as p:
            conns = [
                mgr.track(i, direction="outbound", close=trio.lowlevel.checkpoint)
                for i in range(3)
            ]
            locks = [
                (p if i < 2 else q).lock((p if i < 2 else q).track_stream(conn), ttl=1000)
                for i, conn in enumerate(conns)
            ]
            for lock in locks:
                await lock.__aenter__()
            await trio.testing.wait_all_tasks_blocked()
            assert mgr.statistics().connections == 3
            await trio.sleep(20)  # past the grace period: rounds find only locks
            assert mgr.statistics().rounds.count >= 2
            assert mgr.statistics().connections == 3
        assert [lock.status for lock in locks] == ["released", "released", "held"]
        await trio.testing.wait_all_tasks_blocked()
        # Pruned at once, not after the silence period or a retry delay.
        assert trio.current_time() == pytest.approx(20.0)
        assert mgr.connections == (conns[2],)
        await locks[2].__aexit__(None, None, None)


async def test_a_stream_context_entered_twice_at_once_is_refused() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 4)) as p,
    ):
        conn = mgr.track("a", direction="outbound", close=trio.lowlevel.checkpoint)
        context = p.stream(conn)
        async with context as stream:
            with pytest.raises(cm.ConfigError, match="already entered"):
                async with context:
                    pytest.fail("entered twice")  # pragma: no cover
            assert p.streams == {stream}
        assert stream.closed
        assert p.streams == set()
        assert p.usage == 0
        # Once exited, it may be entered again: a new stream.
        async with context as again:
            assert again is not stream
            assert p.streams == {again}
        assert p.usage == 0
        conn.release()


async def test_async_callbacks_the_manager_does_not_await_are_config_errors() -> None:
    # Called, never awaited: an async one would only make a coroutine, never run.
    async def scorer(stream: cm.Stream) -> float:  # pragma: no cover
        return 1.0

    async def on_grant(grant: cm.Grant) -> None:  # pragma: no cover
        pass

    async with cm.open_connection_manager(limits=cm.Limits(1, 10)) as mgr:
        with pytest.raises(cm.ConfigError, match=r"enroll scorer must be a synchronous function"):
            async with mgr.enroll("/p", quota=cm.Quota(0, 5), scorer=scorer):  # type: ignore[arg-type]
                pass  # pragma: no cover
        with pytest.raises(cm.ConfigError, match=r"enroll on_grant must be a synchronous"):
            async with mgr.enroll("/p", quota=cm.Quota(0, 5), on_grant=on_grant):  # type: ignore[arg-type]
                pass  # pragma: no cover
        async with mgr.enroll("/p", quota=cm.Quota(0, 5)):  # the name was not taken
            pass


async def test_an_object_with_an_async_call_is_no_synchronous_callback() -> None:
    class Scorer:
        async def __call__(self, stream: cm.Stream) -> float:  # pragma: no cover
            return 1.0

    async with cm.open_connection_manager(limits=cm.Limits(1, 10)) as mgr:
        with pytest.raises(cm.ConfigError, match=r"enroll scorer must be a synchronous function"):
            async with mgr.enroll("/p", quota=cm.Quota(0, 5), scorer=Scorer()):  # type: ignore[arg-type]
                pass  # pragma: no cover
        with pytest.raises(cm.ConfigError, match=r"enroll on_grant must be a synchronous"):
            async with mgr.enroll("/p", quota=cm.Quota(0, 5), on_grant=Scorer()):  # type: ignore[arg-type]
                pass  # pragma: no cover


@pytest.mark.parametrize("hook", ["check", "connection_opened", "round_completed"])
async def test_an_async_trigger_hook_is_a_config_error(hook: str) -> None:
    class Async(cm.triggers.Trigger):
        name = "async"

    async def method(self: object, *args: object) -> bool:  # pragma: no cover
        return True

    setattr(Async, hook, method)
    with pytest.raises(
        cm.ConfigError, match=rf"trigger 'async': {hook}\(\) must be a synchronous"
    ):
        async with cm.open_connection_manager(limits=cm.Limits(1, 10), triggers=[Async()]):
            pass  # pragma: no cover


async def start_as_the_block_leaves(
    start: Callable[[cm.Enrollment], Awaitable[object]],
) -> list[BaseException]:
    """Call ``start(enrollment)`` from a task outside the enrollment just as its
    block exits, 40 times (whether it runs before the block has finished leaving
    is up to trio's scheduling: enough times to see both orders); return what
    was raised other than ResourceClosed."""
    errors: list[BaseException] = []

    async def starter(enrollment: cm.Enrollment, leaving: trio.Event) -> None:
        await leaving.wait()
        try:
            await start(enrollment)
        except cm.ResourceClosed:
            pass
        except RuntimeError as exc:
            errors.append(exc)

    async with cm.open_connection_manager(limits=cm.Limits(10, 20)) as mgr:
        for _ in range(40):
            leaving = trio.Event()
            async with (
                trio.open_nursery() as nursery,
                mgr.enroll("p", quota=cm.Quota(0, 5)) as p,
            ):
                nursery.start_soon(starter, p, leaving)
                await trio.testing.wait_all_tasks_blocked()
                leaving.set()
    return errors


async def test_starting_a_task_as_the_block_leaves_is_resource_closed() -> None:
    # The nursery has closed, but the block has not yet finished leaving: the
    # documented ResourceClosed, never trio's "Nursery is closed to new arrivals".
    async def start_soon(enrollment: cm.Enrollment) -> None:
        enrollment.start_soon(trio.lowlevel.checkpoint)

    assert await start_as_the_block_leaves(start_soon) == []


async def test_start_as_the_block_leaves_is_resource_closed_after_a_checkpoint() -> None:
    async def started(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def start(enrollment: cm.Enrollment) -> None:
        with trio.testing.assert_checkpoints():
            await enrollment.start(started)

    assert await start_as_the_block_leaves(start) == []
