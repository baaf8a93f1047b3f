"""trio_connmgr.prometheus: a real scrape over loopback HTTP, checked against statistics()."""

from __future__ import annotations

import gzip
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trio_connmgr as cm
import trio_connmgr.prometheus
from trio_connmgr.prometheus import (
    MAX_REQUEST_BYTES,
    REQUEST_DEADLINE,
    Collector,
    serve_metrics,
)

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def fetch(
    port: int,
    path: str = "/metrics",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP request with urllib (run it in a thread)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


async def scrape(
    port: int, path: str = "/metrics", **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(lambda: fetch(port, path, **kwargs))


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@asynccontextmanager
async def busy_manager() -> AsyncIterator[cm.ConnectionManager]:
    """A manager with a bit of everything: directions, protocols, locks, bursts, a round."""
    async with (
        cm.open_connection_manager(
            limits=cm.Limits(low=2, high=7, hard=7), grace_period=0, lock_budget=2
        ) as mgr,
        mgr.enroll("/ipfs/kad/1.0.0", quota=cm.Quota.share(0.1, 0.4), weight=2.0) as kad,
        mgr.enroll("gossip", quota=cm.Quota(1, 3)) as gossip,
    ):
        conns = [mgr.track(f"in{i}", direction="inbound", close=noop_close) for i in range(5)]
        conns += [mgr.track(f"out{i}", direction="outbound", close=noop_close) for i in range(2)]
        with pytest.raises(cm.ConnectionRefused):
            mgr.track("late", direction="inbound", close=noop_close)
        kad.track_stream(conns[0])
        gossip.track_stream(conns[1])
        gossip.track_stream(conns[5])
        async with kad.burst("lookup") as burst:
            kad.track_stream(conns[6], burst=burst)
        with pytest.raises(cm.LockDenied):
            closed = gossip.track_stream(conns[1])
            closed.close()
            async with gossip.lock(closed, ttl=5):
                pass  # pragma: no cover
        await mgr.trim()
        mgr._sensor_readings["fds"] = {"open": 12.0, "limit": 1024.0}
        async with kad.lock(kad.track_stream(conns[0]), ttl=60), kad.burst("walk"):
            yield mgr


@asynccontextmanager
async def metrics_server(registry: CollectorRegistry) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, registry)
        yield port
        nursery.cancel_scope.cancel()


async def test_importing_and_collecting_never_touch_the_global_registry() -> None:
    def ours(registry: CollectorRegistry) -> list[str]:
        return [n for n in registry._names_to_collectors if n.startswith("trio_connmgr")]

    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        registry = CollectorRegistry()
        collector = Collector(mgr, registry)
        assert ours(REGISTRY) == []
        assert "trio_connmgr_connections" in ours(registry)
        assert collector.registry is registry
        collector.unregister()
        assert ours(registry) == []
        Collector(mgr, None)  # not registered anywhere
        assert ours(REGISTRY) == []


async def test_a_collector_used_as_a_context_manager_unregisters_at_its_end() -> None:
    limit = "trio_connmgr_configured_limit_connections"
    registry = CollectorRegistry()
    for _ in range(2):  # the second would clash with a collector left registered
        async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
            with Collector(mgr, registry) as collector:
                assert collector.registry is registry
                assert registry.get_sample_value(limit, {"limit": "low"}) == 1.0
            assert collector.registry is None
            assert registry.get_sample_value(limit, {"limit": "low"}) is None
            collector.unregister()  # again: nothing to do


async def test_connections_are_labelled_by_direction() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(5, 10)) as mgr:
        for i in range(3):
            mgr.track(f"in-{i}", direction="inbound", close=trio.lowlevel.checkpoint)
        mgr.track("out", direction="outbound", close=trio.lowlevel.checkpoint)
        registry = CollectorRegistry()
        Collector(mgr, registry)
        inbound = {"direction": "inbound"}
        outbound = {"direction": "outbound"}
        assert registry.get_sample_value("trio_connmgr_connections", inbound) == 3
        assert registry.get_sample_value("trio_connmgr_connections", outbound) == 1


async def test_a_real_scrape_matches_statistics() -> None:
    async with busy_manager() as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        async with metrics_server(registry) as port:
            stats = mgr.statistics()
            status, headers, body = await scrape(port)
            assert mgr.statistics() == stats  # nothing moved while scraping
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(body.decode())

    assert value(found, "trio_connmgr_connections", direction="inbound") == stats.inbound
    assert value(found, "trio_connmgr_connections", direction="outbound") == stats.outbound
    assert stats.connections == 2  # the round pruned down to low
    for limit in ("low", "high", "hard"):
        assert value(found, "trio_connmgr_limit_connections", limit=limit) == getattr(stats, limit)
        assert value(found, "trio_connmgr_configured_limit_connections", limit=limit) == getattr(
            stats, f"configured_{limit}"
        )
    assert value(found, "trio_connmgr_limits_info", source="configured") == 1
    assert value(found, "trio_connmgr_connections_opened_total") == stats.connections_opened == 7
    assert value(found, "trio_connmgr_connections_closed_total") == stats.connections_closed
    assert value(found, "trio_connmgr_connections_pruned_total") == stats.connections_pruned == 5
    assert value(found, "trio_connmgr_admission_refusals_total", reason="hard") == 1
    # The reasons not seen yet are there from the start, at 0 (rate() sees a first one).
    for reason in ("deny", "rate", "subnet"):
        assert value(found, "trio_connmgr_admission_refusals_total", reason=reason) == 0
    assert value(found, "trio_connmgr_streams") == stats.streams
    assert value(found, "trio_connmgr_streams_opened_total") == stats.streams_opened
    assert value(found, "trio_connmgr_locked_connections") == stats.locked_connections == 1
    assert value(found, "trio_connmgr_lock_budget_connections") == stats.lock_budget == 2
    assert value(found, "trio_connmgr_protected_peers") == 0

    rounds = stats.rounds
    assert value(found, "trio_connmgr_rounds_total") == rounds.count == 1
    assert value(found, "trio_connmgr_round_failures_total") == 0
    for phase in ("burst", "idle", "offender", "tally"):
        assert value(found, "trio_connmgr_round_victims_total", phase=phase) == (
            rounds.victims_by_phase.get(phase, 0)
        )
    assert value(found, "trio_connmgr_round_duration_seconds_count") == rounds.count
    assert value(found, "trio_connmgr_round_duration_seconds_sum") == pytest.approx(
        rounds.total_duration
    )
    assert value(found, "trio_connmgr_last_round_duration_seconds") == pytest.approx(
        rounds.last_duration
    )
    assert value(found, "trio_connmgr_last_round_victims") == rounds.last_victims == 5
    assert value(found, "trio_connmgr_last_round_info", trigger="trim") == 1
    assert value(found, "trio_connmgr_round_locks_revoked_total") == 0

    assert set(stats.protocols) == {"/ipfs/kad/1.0.0", "gossip"}
    for name, figures in stats.protocols.items():
        for metric, attribute in [
            ("protocol_grant_min_connections", "grant_min"),
            ("protocol_grant_max_connections", "grant_max"),
            ("protocol_usage_connections", "usage"),
            ("protocol_streams", "streams"),
            ("protocol_weight", "weight"),
            ("protocol_locked_connections", "locks_held"),
            ("protocol_bursts_open", "bursts_open"),
            ("protocol_bursts_lingering", "bursts_lingering"),
            ("protocol_streams_opened_total", "streams_opened"),
            ("protocol_locks_granted_total", "locks_granted"),
            ("protocol_locks_revoked_total", "locks_revoked"),
            ("protocol_locks_expired_total", "locks_expired"),
            ("protocol_bursts_opened_total", "bursts_opened"),
            ("protocol_bursts_closed_total", "bursts_closed"),
            ("protocol_pruned_connections_total", "pruned"),
            ("protocol_scorer_errors_total", "scorer_errors"),
            ("protocol_scorer_clamped_total", "scorer_clamped"),
        ]:
            assert value(found, f"trio_connmgr_{metric}", protocol=name) == getattr(
                figures, attribute
            ), (metric, name)
    kad = stats.protocols["/ipfs/kad/1.0.0"]
    assert (kad.weight, kad.locks_held, kad.bursts_open, kad.bursts_lingering) == (2.0, 1, 1, 1)
    assert (
        value(
            found, "trio_connmgr_protocol_locks_denied_total", protocol="gossip", reason="closed"
        )
        == stats.protocols["gossip"].locks_denied["closed"]
    )
    for name in stats.protocols:
        for reason in ("budget", "closed", "grant"):
            assert value(
                found, "trio_connmgr_protocol_locks_denied_total", protocol=name, reason=reason
            ) == stats.protocols[name].locks_denied.get(reason, 0)
    assert value(found, "trio_connmgr_sensor_value", sensor="fds", reading="open") == 12.0
    assert value(found, "trio_connmgr_sensor_value", sensor="fds", reading="limit") == 1024.0
    assert value(found, "trio_connmgr_events_emitted_total") == stats.events_emitted
    assert value(found, "trio_connmgr_events_dropped_total") == stats.events_dropped
    assert value(found, "trio_connmgr_event_subscribers") == stats.subscribers


async def test_metric_names_follow_the_conventions() -> None:
    async with busy_manager() as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        text = generate_latest(registry).decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.+)$", text, re.M))
    assert len(types) > 40
    for name, kind in types.items():
        assert name.startswith("trio_connmgr_")
        assert helps.get(name), f"{name} has no help text"
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        if "duration" in name:
            assert name.endswith("_seconds"), name
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= {"direction", "limit", "source", "reason", "phase",
                                          "trigger", "protocol", "sensor", "reading"}  # fmt: skip


async def test_scrapes_from_other_threads_are_routed_into_the_trio_run() -> None:
    async with busy_manager() as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        text = await trio.to_thread.run_sync(lambda: generate_latest(registry).decode())
        stats = mgr.statistics()
    found = samples(text)
    assert value(found, "trio_connmgr_connections_opened_total") == stats.connections_opened
    assert value(found, "trio_connmgr_protocol_streams", protocol="gossip") == (
        stats.protocols["gossip"].streams
    )


def test_after_the_trio_run_a_scrape_has_nothing() -> None:
    async def main() -> Collector:
        async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
            collector = Collector(mgr, CollectorRegistry())
            assert collector.describe()
            assert list(collector.collect())
            return collector

    collector = trio.run(main)
    assert list(collector.collect()) == []
    assert collector.registry is not None
    assert generate_latest(collector.registry) == b""


def test_a_later_trio_run_scrapes_past_a_finished_runs_collector() -> None:
    # The next test of a pytest-trio session, or an application's next trio.run,
    # serving a registry that still holds a collector of a finished run.
    registry = CollectorRegistry()

    async def first() -> None:
        async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
            Collector(mgr, registry)

    async def second() -> bytes:
        async with cm.open_connection_manager(limits=cm.Limits(3, 4)) as mgr:
            Collector(mgr, registry, namespace="next_connmgr")
            async with metrics_server(registry) as port:
                status, _, body = await scrape(port)
            assert status == 200
            return body

    trio.run(first)
    text = trio.run(second).decode()
    found = samples(text)
    assert value(found, "next_connmgr_limit_connections", limit="low") == 3
    assert not [name for name, _ in found if name.startswith("trio_connmgr_")]


async def test_a_scrape_from_another_live_trio_run_reads_the_managers_run() -> None:
    registry = CollectorRegistry()
    ready = threading.Event()
    done = threading.Event()

    def other_run() -> None:
        async def main() -> None:
            async with cm.open_connection_manager(limits=cm.Limits(3, 4)) as mgr:
                Collector(mgr, registry)
                ready.set()
                await trio.to_thread.run_sync(done.wait)

        trio.run(main)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, other_run)
        try:
            assert await trio.to_thread.run_sync(ready.wait, 30)
            text = generate_latest(registry).decode()  # blocks this run's thread a moment
        finally:
            done.set()
    assert value(samples(text), "trio_connmgr_limit_connections", limit="low") == 3


async def test_a_registry_refuses_the_same_names_twice_namespaces_share_it() -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2)) as a,
        cm.open_connection_manager(limits=cm.Limits(3, 4)) as b,
    ):
        registry = CollectorRegistry()
        Collector(a, registry)
        with pytest.raises(ValueError, match="Duplicated"):
            Collector(b, registry)
        second = Collector(b, registry, namespace="edge_connmgr")
        assert second.namespace == "edge_connmgr"
        found = samples(generate_latest(registry).decode())
    assert value(found, "trio_connmgr_limit_connections", limit="low") == 1
    assert value(found, "edge_connmgr_limit_connections", limit="low") == 3


@pytest.mark.parametrize("namespace", ["", "1abc", "a-b", None])
async def test_bad_namespace(namespace: object) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        with pytest.raises(cm.ConfigError, match="namespace"):
            Collector(mgr, None, namespace=namespace)  # type: ignore[arg-type]


@pytest.mark.parametrize("registry", ["edge_connmgr", REGISTRY.register])
async def test_bad_registry_is_a_config_error(registry: object) -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        with pytest.raises(cm.ConfigError, match=r"registry must be a CollectorRegistry or None"):
            Collector(mgr, registry)  # type: ignore[arg-type]


async def test_bad_manager() -> None:
    with pytest.raises(cm.ConfigError, match="manager must be a ConnectionManager"):
        Collector(CollectorRegistry(), None)  # type: ignore[arg-type]


async def test_a_collector_belongs_to_a_trio_run() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        with pytest.raises(RuntimeError):
            await trio.to_thread.run_sync(lambda: Collector(mgr, None))


async def test_http_details() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        async with metrics_server(registry) as port:
            status, _, body = await scrape(port, "/other")
            assert (status, body) == (404, b"metrics are at /metrics\n")
            status, headers, _ = await scrape(port, method="POST")
            assert (status, headers["Allow"]) == (405, "GET, HEAD")
            status, headers, body = await scrape(port, method="HEAD")
            assert (status, body) == (200, b"")
            assert int(headers["Content-Length"]) > 1000
            status, headers, body = await scrape(port, headers={"Accept-Encoding": "gzip"})
            assert headers["Content-Encoding"] == "gzip"
            assert b"trio_connmgr_connections" in gzip.decompress(body)
            status, headers, body = await scrape(
                port, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert headers["Content-Type"].startswith("application/openmetrics-text")
            assert body.endswith(b"# EOF\n")
            status, _, body = await scrape(
                port, "/metrics?name[]=trio_connmgr_rounds_total&name[]=trio_connmgr_streams"
            )
            names = {name for name, _ in samples(body.decode())}
            assert names == {"trio_connmgr_rounds_total", "trio_connmgr_streams"}


async def raw_request(port: int, data: bytes, *, eof: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if eof:
            await stream.send_eof()
        chunks = []
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


async def test_bad_requests_get_an_answer_and_the_server_keeps_going() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        async with metrics_server(registry) as port:
            answer = await raw_request(port, b"nonsense\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 20000)
            assert answer.startswith(b"HTTP/1.1 431 ")
            assert await raw_request(port, b"GET /met") == b""  # a client that gives up
            answer = await raw_request(port, b"GET http://[x/metrics HTTP/1.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            # A version prometheus_client cannot parse: the default format.
            status, headers, body = await scrape(
                port, headers={"Accept": "application/openmetrics-text; version=abc"}
            )
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain")
            assert b"trio_connmgr_connections" in body
            status, _, _ = await scrape(port)
            assert status == 200


async def test_a_silent_client_is_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    registry = CollectorRegistry()
    async with metrics_server(registry) as port:
        start = trio.current_time()
        assert await raw_request(port, b"GET /metrics HTTP/1.1\r\n", eof=False) == b""
        assert trio.current_time() - start == pytest.approx(REQUEST_DEADLINE)


def failing_registry() -> CollectorRegistry:
    """A registry whose one collector raises as it is collected."""

    class Broken:
        def collect(self) -> Iterable[Any]:
            raise RuntimeError("collector bug")

    registry = CollectorRegistry()
    registry.register(Broken())
    return registry


async def test_a_failing_collector_gives_a_500() -> None:
    async with metrics_server(failing_registry()) as port:
        status, _, body = await scrape(port)
    assert (status, body) == (500, b"collecting metrics failed\n")


async def test_a_request_that_cannot_be_answered_gets_a_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: bytes, registry: CollectorRegistry, path: str) -> bytes:
        raise KeyError("bug")

    registry = CollectorRegistry()
    async with metrics_server(registry) as port:
        with monkeypatch.context() as patch:
            patch.setattr(trio_connmgr.prometheus, "_answer", broken)
            answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert "answering a metrics request failed" in caplog.text
        status, _, _ = await scrape(port)  # still serving
        assert status == 200


async def test_the_server_stops_with_its_nursery() -> None:
    registry = CollectorRegistry()
    async with metrics_server(registry) as port:
        status, _, _ = await scrape(port)
        assert status == 200
    with pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_bad_path_is_a_config_error() -> None:
    with pytest.raises(cm.ConfigError, match="path"):
        await serve_metrics(CollectorRegistry(), path="metrics")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 70000}, "port must be an integer in [0, 65535], got 70000"),
        ({"port": -1}, "port must be an integer in [0, 65535], got -1"),
        ({"port": True}, "port must be an integer in [0, 65535], got True"),
        ({"port": "9100"}, "port must be an integer in [0, 65535], got '9100'"),
        ({"registry": None}, "registry must be a CollectorRegistry, got None"),
    ],
)
async def test_bad_serve_metrics_arguments_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], message: str
) -> None:
    async def never_bind(*args: object, **kwargs: object) -> object:
        raise AssertionError("serve_metrics tried to bind")

    # (Without the check, 70000 would bind port 4464: getaddrinfo wraps it.)
    monkeypatch.setattr(trio, "open_tcp_listeners", never_bind)
    arguments: dict[str, Any] = {"registry": CollectorRegistry(), **kwargs}
    with pytest.raises(cm.ConfigError, match=re.escape(message)):
        await serve_metrics(**arguments)


async def test_a_request_head_over_the_limit_gets_a_431_even_in_one_piece() -> None:
    registry = CollectorRegistry()
    async with metrics_server(registry) as port:
        pad = b"X: " + b"y" * (MAX_REQUEST_BYTES + 100) + b"\r\n"
        answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n" + pad + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:40]
        pad = b"X: " + b"y" * (MAX_REQUEST_BYTES - 100) + b"\r\n"
        answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n" + pad + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:40]


async def test_the_grafana_dashboard_uses_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
        if "expr" in target
    ]
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in re.findall(r"\btrio_connmgr_\w+", expr)}
    async with busy_manager() as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        exposed = {name for name, _ in samples(generate_latest(registry).decode())}
    assert used
    assert used <= exposed, f"unknown metrics in the dashboard: {sorted(used - exposed)}"
