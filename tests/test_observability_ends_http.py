"""The metrics server at the ends of a request: a head near the size limit whose
blank line arrives in pieces (docs/observability.md, Prometheus)."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

import trio_connmgr as cm
from trio_connmgr.prometheus import MAX_REQUEST_BYTES, Collector, _handle


@pytest.mark.parametrize(
    ("size", "first", "status"),
    [
        (MAX_REQUEST_BYTES - 1, b"\r\n", b"200"),
        (MAX_REQUEST_BYTES, b"\r\n", b"200"),
        (MAX_REQUEST_BYTES, b"\r\n\r", b"200"),
        (MAX_REQUEST_BYTES + 1, b"\r\n", b"431"),
    ],
)
async def test_a_head_near_the_limit_whose_end_arrives_in_pieces_is_judged_by_its_size(
    size: int, first: bytes, status: bytes
) -> None:
    # The head is sent with the first piece of its blank line ("\r\n\r\n"), which
    # takes what was read over the limit; the rest of the blank line follows.
    start = b"GET /metrics HTTP/1.1\r\nX: "
    head = start + b"y" * (size - len(start))
    async with cm.open_connection_manager(limits=cm.Limits(low=1, high=2)) as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_handle, server, registry, "/metrics", trio.CapacityLimiter(1))
            await client.send_all(head + first)
            await trio.testing.wait_all_tasks_blocked()
            with contextlib.suppress(trio.BrokenResourceError):  # (answered already)
                await client.send_all(b"\r\n\r\n"[len(first) :])
            answer = b""
            while data := await client.receive_some():
                answer += data
        assert answer.split(b" ", 2)[1] == status, answer[:40]
