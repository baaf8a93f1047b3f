import os
from pathlib import Path

import pytest

import trio_connmgr as cm


class BytesPath:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> bytes:
        return os.fsencode(self.path)

    def __repr__(self) -> str:
        return f"BytesPath({self.path})"


async def test_a_path_like_object_giving_bytes_is_a_config_error(tmp_path: Path) -> None:
    trace = BytesPath(tmp_path / "trace.jsonl")
    with pytest.raises(cm.ConfigError, match="trace must be") as caught:
        async with cm.open_connection_manager(limits=cm.Limits(1, 2), trace=trace):  # type: ignore[arg-type]
            pass  # pragma: no cover
    assert repr(trace) in str(caught.value)
    assert not (tmp_path / "trace.jsonl").exists()
