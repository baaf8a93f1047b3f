"""The public API against SPEC §2: names, signatures, errors, and their edges."""

from __future__ import annotations

import copy
import pickle

import pytest
import trio
import trio.testing

import trio_connmgr as cm


def test_quota_denied_survives_pickle_and_copy() -> None:
    # Errors cross process boundaries (multiprocessing, test runners): every
    # attribute must survive, as it does for ConnectionRefused and LockDenied.
    error = cm.QuotaDenied("/ipfs/kad/1.0.0", cm.Grant(1, 2))
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is cm.QuotaDenied
        assert clone.name == "/ipfs/kad/1.0.0"
        assert clone.offer == cm.Grant(1, 2)
        assert str(clone) == str(error)


@pytest.mark.parametrize(
    "error",
    [
        cm.ConnectionRefused("hard", "inbound count at hard=3"),
        cm.LockDenied("budget", "lock budget of 2 locked connections is spent"),
    ],
)
def test_errors_with_a_reason_survive_pickle(error: cm.ConnMgrError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert clone.reason == error.reason  # type: ignore[attr-defined]
    assert clone.detail == error.detail  # type: ignore[attr-defined]


def test_error_family() -> None:
    for error in (
        cm.ConfigError,
        cm.ConnectionRefused,
        cm.QuotaDenied,
        cm.LockDenied,
        cm.ManagerClosed,
    ):
        assert issubclass(error, cm.ConnMgrError)
    assert issubclass(cm.ConfigError, ValueError)


async def test_start_on_a_left_enrollment_checkpoints() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(2, 4)) as mgr:
        async with mgr.enroll("kad", quota=cm.Quota(0, 1)) as kad:
            pass
        with (
            trio.testing.assert_checkpoints(),
            pytest.raises(cm.ResourceClosed, match="'kad' has left"),
        ):
            await kad.start(trio.sleep, 1)


async def test_api_defaults_and_live_attributes() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(2, 4, 6)) as mgr,
        mgr.enroll("kad", quota=cm.Quota.share(0.25, 0.5)) as kad,
        mgr.connection("p1", direction=cm.Direction.OUTBOUND, address="a") as conn,
        kad.stream(conn) as stream,
    ):
        assert (conn.peer, conn.direction, conn.address, conn.protocols) == (
            "p1",
            cm.Direction.OUTBOUND,
            "a",
            ("kad",),
        )
        assert stream.direction is cm.Direction.OUTBOUND
        assert stream.protocol == "kad"
        assert stream.metadata == {}
        assert (kad.grant, kad.usage, kad.streams) == (cm.Grant(1, 2), 1, {stream})
        async with kad.burst() as burst:
            extra = kad.track_stream(conn, direction="inbound")
            burst.enlist(extra)
            assert extra.burst is burst
            extra.close()
        async with kad.lock(stream, ttl=10) as lock:
            assert lock.held
            assert conn.locked
        assert not conn.locked
        assert mgr.unprotect("p1", "none") is False
        assert await mgr.trim() == []
