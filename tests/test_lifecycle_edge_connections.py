"""Connection lifecycle edges: a connection context used again while open."""

from __future__ import annotations

import pytest

import trio_connmgr as cm


async def test_a_connection_context_entered_again_while_open_is_a_config_error() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(4, 8)) as mgr:
        context = mgr.connection("a", direction="outbound")
        async with context as conn:
            with pytest.raises(cm.ConfigError, match="already entered"):
                async with context:
                    pytest.fail("entered while open")  # pragma: no cover
            # Nothing counted for the refused entry; the open one is untouched.
            assert mgr.connections == (conn,)
            assert not conn.closed
        assert conn.close_reason == "closed"
        assert mgr.connections == ()
        # Once it has exited, entering it again counts a new connection.
        async with context as again:
            assert again is not conn
            assert mgr.connections == (again,)
        assert mgr.connections == ()
