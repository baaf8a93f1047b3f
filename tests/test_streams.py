"""Streams (SPEC §2, §4): attributes, usage, touch, metadata, closed resources."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

import trio_connmgr as cm


async def test_stream_attributes_and_usage(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
        mgr.enroll("ping", quota=cm.Quota(0, 5)) as ping,
        mgr.connection("a", direction="inbound") as a,
        mgr.connection("b", direction="outbound") as b,
    ):
        await trio.sleep(3)
        async with kad.stream(a, direction="inbound") as s1:
            assert isinstance(s1, cm.Stream)
            assert s1.protocol == "kad"
            assert s1.connection is a
            assert s1.direction is cm.Direction.INBOUND
            assert s1.opened_at == s1.last_active == trio.current_time()
            assert s1.metadata == {}
            assert not s1.closed
            assert s1.burst is None
            async with kad.stream(a) as s2:
                assert s2.direction is cm.Direction.OUTBOUND
                assert s2.id != s1.id
                # Two streams on one connection: usage counts connections.
                assert kad.usage == 1
                assert kad.streams == {s1, s2}
                assert a.streams == {s1, s2}
                s3 = kad.track_stream(b)
                s4 = ping.track_stream(b, direction=cm.Direction.INBOUND)
                assert kad.usage == 2
                assert ping.usage == 1
                assert sorted(b.protocols) == ["kad", "ping"]
                assert a.protocols == ("kad",)
                stats = mgr.statistics()
                assert stats.protocols["kad"].usage == 2
                assert stats.protocols["kad"].streams == 3
                assert stats.streams == 4
            assert s2.closed
            assert kad.usage == 2
            s3.close()
            s3.close()  # idempotent
            assert kad.usage == 1
            assert b.protocols == ("ping",)
            s4.close()
            assert b.protocols == ()
        assert s1.closed
        assert kad.usage == 0
        assert kad.streams == set()
        assert mgr.statistics().streams_opened == 4


async def test_touch_and_metadata(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5)) as p,
        mgr.connection("a", direction="inbound") as conn,
    ):
        stream = p.track_stream(conn)
        stream.metadata["rtt"] = 0.02
        assert stream.metadata is stream.metadata
        assert stream.metadata == {"rtt": 0.02}
        await trio.sleep(4)
        assert stream.idle_time == pytest.approx(4)
        stream.touch(100)
        stream.touch()
        stream.touch(nbytes=50)
        assert stream.nbytes == 150
        assert stream.last_active == trio.current_time() == conn.last_active
        assert stream.idle_time == 0
        await trio.sleep(2)
        assert stream.idle_time == pytest.approx(2)
        # nbytes is a count of bytes: anything else is refused and changes nothing.
        for bad in (-100, 2.5, 0.0, None, True, b"data"):
            with pytest.raises(
                cm.ConfigError, match=r"touch nbytes must be .*" + re.escape(repr(bad))
            ):
                stream.touch(bad)  # type: ignore[arg-type]
        assert stream.nbytes == 150
        assert stream.idle_time == pytest.approx(2)
        # Closing a stream is activity on its connection (the idle phase's order).
        await trio.sleep(3)
        stream.close()
        assert conn.last_active == trio.current_time() != stream.last_active


async def test_streams_on_closed_connections_and_left_enrollments() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5)) as p,
    ):
        async with mgr.connection("a", direction="inbound") as conn:
            pass
        with pytest.raises(cm.ResourceClosed, match="closed"):
            p.track_stream(conn)
        with pytest.raises(cm.ResourceClosed):
            async with p.stream(conn):
                pytest.fail("stream on a closed connection")  # pragma: no cover
        tracked = mgr.track("b", direction="outbound", close=trio.lowlevel.checkpoint)
        mgr._prune(tracked, None)
        with pytest.raises(cm.ResourceClosed):
            p.track_stream(tracked)
        live = mgr.track("c", direction="outbound", close=trio.lowlevel.checkpoint)
        async with mgr.enroll("q", quota=cm.Quota(0, 5)) as q:
            pass
        with pytest.raises(cm.ResourceClosed, match="'q'"):
            q.track_stream(live)
        with pytest.raises(cm.ResourceClosed):
            async with q.stream(live):
                pytest.fail("stream of a left enrollment")  # pragma: no cover
        # Nothing was counted by the refused attempts.
        assert p.usage == q.usage == 0
        assert live.streams == set()
        assert mgr.statistics().streams_opened == 0
        live.release()


async def test_closing_a_stream_cancels_its_body_quietly() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5)) as p,
        mgr.connection("a", direction="inbound") as conn,
    ):
        async with p.stream(conn) as stream:
            stream.close()
            assert stream.closed
            assert p.usage == 0
            await trio.lowlevel.checkpoint()
            pytest.fail("the body went on after close()")  # pragma: no cover
        assert not conn.closed
        # The connection body is not affected.
        await trio.lowlevel.checkpoint()


async def test_stream_body_exception_propagates() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5)) as p,
        mgr.connection("a", direction="inbound") as conn,
    ):
        with pytest.raises(ZeroDivisionError):
            async with p.stream(conn) as stream:
                1 / 0  # noqa: B018
        assert stream.closed
        assert p.usage == 0


async def test_pruning_cancels_stream_then_connection_body() -> None:
    seen: list[str] = []
    async with (
        cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr,
        mgr.enroll("p", quota=cm.Quota(0, 5)) as p,
        trio.open_nursery() as nursery,
    ):

        async def handler(task_status: trio.TaskStatus[cm.Connection]) -> None:
            async with mgr.connection("a", direction="inbound") as conn:
                async with p.stream(conn):
                    task_status.started(conn)
                    try:
                        await trio.sleep_forever()
                    except trio.Cancelled:
                        seen.append("stream body cancelled")
                        raise
                seen.append("after the stream block")  # pragma: no cover
            seen.append(f"connection block exited: {conn.close_reason}")

        conn = await nursery.start(handler)
        mgr._prune(conn, None)
        await trio.testing.wait_all_tasks_blocked()
        # Both scopes were cancelled: the Cancelled reaches the connection's scope.
        assert seen == ["stream body cancelled", "connection block exited: pruned"]
