"""Trace files the manager cannot write to synchronously are refused up front."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

import trio_connmgr as cm


async def test_a_trio_async_file_is_a_config_error(tmp_path: Path) -> None:
    # Its write() and flush() only make coroutines: nothing would ever be written.
    path = tmp_path / "trace.jsonl"
    file = await trio.open_file(path, "w", encoding="utf-8")
    async with file:
        with pytest.raises(cm.ConfigError, match=r"trace must be .*\(an async file\)") as caught:
            async with cm.open_connection_manager(limits=cm.Limits(1, 2), trace=file):
                pass  # pragma: no cover
        assert repr(file) in str(caught.value)
    assert path.read_text(encoding="utf-8") == ""


async def test_a_trio_wrapped_text_buffer_is_a_config_error() -> None:
    file = trio.wrap_file(io.StringIO())
    with pytest.raises(cm.ConfigError, match=r"\(an async file\)"):
        async with cm.open_connection_manager(limits=cm.Limits(1, 2), trace=file):
            pass  # pragma: no cover
