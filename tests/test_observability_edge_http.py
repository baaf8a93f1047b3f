"""The metrics endpoint: HEAD requests it cannot parse, and collections that need a Trio run."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import urllib.request
from collections.abc import Iterator

import pytest
import trio
import trio.lowlevel
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from test_prometheus import metrics_server, raw_request

import trio_connmgr as cm
from trio_connmgr.prometheus import Collector, serve_metrics


@pytest.mark.parametrize(
    "request_line",
    [b"HEAD /metrics HTTP/1.1 extra", b"HEAD /metrics", b"HEAD  /metrics HTTP/1.1"],
    ids=["four-parts", "no-version", "two-spaces"],
)
async def test_a_malformed_head_request_gets_its_400_without_a_body(request_line: bytes) -> None:
    async with metrics_server(CollectorRegistry()) as port:
        answer = await raw_request(port, request_line + b"\r\n\r\n")
        get = await raw_request(port, b"GET" + request_line[4:] + b"\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert body == b""
    # The same headers as the answer to GET, Content-Length included.
    get_head, _, get_body = get.partition(b"\r\n\r\n")
    assert head == get_head
    assert get_body == b"malformed request\n"


class FromTrioCollector:
    """Reads a value in a Trio run with trio.from_thread, as a collector must that
    prometheus_client's threads call."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    def collect(self) -> Iterator[GaugeMetricFamily]:
        value = trio.from_thread.run_sync(trio.current_time, trio_token=self._token)
        yield GaugeMetricFamily("run_clock_seconds", "The Trio run's clock.", value)


async def test_a_collector_that_reads_the_serving_trio_run_is_served() -> None:
    registry = CollectorRegistry()
    registry.register(FromTrioCollector(trio.lowlevel.current_trio_token()))
    async with metrics_server(registry) as port:
        answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\nrun_clock_seconds " in answer


def test_managers_in_two_trio_runs_serving_one_registry_answer_scrapes_at_once() -> None:
    # Each run serves the registry; each scrape collects the other run's Collector,
    # which waits for that run. Both scrapes collect at once (the gate below), so
    # neither run may wait in its own thread: each must stay free for the other.
    registry = CollectorRegistry()
    both_scraped = threading.Barrier(2)

    class Gate:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            both_scraped.wait(timeout=30)  # (only a guard against a broken barrier)
            yield from ()

    registry.register(Gate())  # collected first
    ports: queue.SimpleQueue[int] = queue.SimpleQueue()
    stop = threading.Event()

    def serve(namespace: str) -> None:
        async def main() -> None:
            async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
                Collector(mgr, registry, namespace=namespace)
                async with trio.open_nursery() as nursery:
                    ports.put(await nursery.start(serve_metrics, registry))
                    await trio.to_thread.run_sync(stop.wait)
                    nursery.cancel_scope.cancel()

        trio.run(main)

    runs = [threading.Thread(target=serve, args=(ns,), daemon=True) for ns in ("a", "b")]
    for run in runs:
        run.start()
    try:
        at = [ports.get(timeout=30), ports.get(timeout=30)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # (The timeout only ends a test that would otherwise hang.)
            answers = list(pool.map(lambda port: fetch(port, timeout=30), at))
    finally:
        stop.set()
    for run in runs:
        run.join(timeout=30)
    for status, body in answers:
        assert status == 200
        assert b"\na_limit_connections{" in body
        assert b"\nb_limit_connections{" in body
    assert not any(run.is_alive() for run in runs)


def fetch(port: int, *, timeout: float) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as answer:
        return answer.status, answer.read()


async def test_a_scrape_is_answered_under_an_autojump_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The clock jumps while the collection runs in its thread: the collection is
    # not on the client's time, so the answer still goes out.
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        async with metrics_server(registry) as port:
            answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\ntrio_connmgr_limit_connections{" in answer
