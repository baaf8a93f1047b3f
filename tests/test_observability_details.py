"""Observability details: every metric reads its documented field, HTTP edge cases,
and read-only statistics snapshots (SPEC §11, docs/observability.md)."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_prometheus import failing_registry, metrics_server, raw_request

import trio_connmgr as cm
from trio_connmgr.prometheus import MAX_REQUEST_BYTES, Collector, serve_metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicated sample {key}"
            out[key] = sample.value
    return out


def odd_statistics() -> cm.Statistics:
    """A snapshot in which every figure differs from every other one."""
    kad = cm.ProtocolStatistics(
        name="kad",
        grant_min=101,
        grant_max=102,
        usage=103,
        streams=104,
        streams_opened=105,
        weight=106.5,
        locks_held=107,
        locks_granted=108,
        locks_denied={"closed": 109, "budget": 110, "grant": 111, "custom": 112},
        locks_revoked=113,
        locks_expired=114,
        bursts_open=115,
        bursts_lingering=116,
        bursts_opened=117,
        pruned=118,
        scorer_errors=119,
        scorer_clamped=120,
        bursts_closed=121,
    )
    return cm.Statistics(
        connections=30,
        inbound=11,
        outbound=19,
        low=21,
        high=22,
        hard=23,
        limits_source="memory pressure",
        streams=24,
        locked_connections=25,
        lock_budget=26,
        protected_peers=27,
        connections_opened=28,
        connections_closed=29,
        connections_pruned=31,
        streams_opened=32,
        protocols={"kad": kad},
        rounds=cm.RoundStatistics(
            count=41,
            last_trigger="high-water",
            last_duration=0.25,
            last_victims=42,
            last_at=43.0,
            victims_by_phase={"idle": 44, "tally": 45},
            failures=46,
            total_duration=47.5,
            locks_revoked=48,
        ),
        refusals={"hard": 51, "rate": 52, "other": 53},
        close_errors=54,
        close_timeouts=55,
        sensors={"fds": {"open": 56.0, "limit": 57.0}},
        events_emitted=58,
        events_dropped=59,
        configured_low=61,
        configured_high=62,
        configured_hard=63,
        subscribers=64,
    )


async def test_every_metric_reads_its_documented_field(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = odd_statistics()
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        monkeypatch.setattr(mgr, "statistics", lambda: stats)
        registry = CollectorRegistry()
        Collector(mgr, registry)
        found = samples(generate_latest(registry).decode())
    p = {"protocol": "kad"}
    expected: list[tuple[str, dict[str, str], float]] = [
        ("connections", {"direction": "inbound"}, 11),
        ("connections", {"direction": "outbound"}, 19),
        ("limit_connections", {"limit": "low"}, 21),
        ("limit_connections", {"limit": "high"}, 22),
        ("limit_connections", {"limit": "hard"}, 23),
        ("configured_limit_connections", {"limit": "low"}, 61),
        ("configured_limit_connections", {"limit": "high"}, 62),
        ("configured_limit_connections", {"limit": "hard"}, 63),
        ("limits_info", {"source": "memory pressure"}, 1),
        ("connections_opened_total", {}, 28),
        ("connections_closed_total", {}, 29),
        ("connections_pruned_total", {}, 31),
        ("admission_refusals_total", {"reason": "hard"}, 51),
        ("admission_refusals_total", {"reason": "rate"}, 52),
        ("admission_refusals_total", {"reason": "deny"}, 0),
        ("admission_refusals_total", {"reason": "subnet"}, 0),
        ("admission_refusals_total", {"reason": "other"}, 53),
        ("streams", {}, 24),
        ("streams_opened_total", {}, 32),
        ("locked_connections", {}, 25),
        ("lock_budget_connections", {}, 26),
        ("protected_peers", {}, 27),
        ("close_errors_total", {}, 54),
        ("close_timeouts_total", {}, 55),
        ("rounds_total", {}, 41),
        ("round_failures_total", {}, 46),
        ("round_victims_total", {"phase": "idle"}, 44),
        ("round_victims_total", {"phase": "tally"}, 45),
        ("round_victims_total", {"phase": "burst"}, 0),
        ("round_victims_total", {"phase": "offender"}, 0),
        ("round_locks_revoked_total", {}, 48),
        ("round_duration_seconds_count", {}, 41),
        ("round_duration_seconds_sum", {}, 47.5),
        ("last_round_duration_seconds", {}, 0.25),
        ("last_round_victims", {}, 42),
        ("last_round_info", {"trigger": "high-water"}, 1),
        ("protocol_grant_min_connections", p, 101),
        ("protocol_grant_max_connections", p, 102),
        ("protocol_usage_connections", p, 103),
        ("protocol_streams", p, 104),
        ("protocol_streams_opened_total", p, 105),
        ("protocol_weight", p, 106.5),
        ("protocol_locked_connections", p, 107),
        ("protocol_locks_granted_total", p, 108),
        ("protocol_locks_denied_total", {**p, "reason": "closed"}, 109),
        ("protocol_locks_denied_total", {**p, "reason": "budget"}, 110),
        ("protocol_locks_denied_total", {**p, "reason": "grant"}, 111),
        ("protocol_locks_denied_total", {**p, "reason": "custom"}, 112),
        ("protocol_locks_revoked_total", p, 113),
        ("protocol_locks_expired_total", p, 114),
        ("protocol_bursts_open", p, 115),
        ("protocol_bursts_lingering", p, 116),
        ("protocol_bursts_opened_total", p, 117),
        ("protocol_pruned_connections_total", p, 118),
        ("protocol_scorer_errors_total", p, 119),
        ("protocol_scorer_clamped_total", p, 120),
        ("protocol_bursts_closed_total", p, 121),
        ("sensor_value", {"sensor": "fds", "reading": "open"}, 56),
        ("sensor_value", {"sensor": "fds", "reading": "limit"}, 57),
        ("events_emitted_total", {}, 58),
        ("events_dropped_total", {}, 59),
        ("event_subscribers", {}, 64),
    ]
    wanted = {
        (f"trio_connmgr_{name}", frozenset(labels.items())): figure
        for name, labels, figure in expected
    }
    assert {key: found.get(key) for key in wanted} == wanted
    # Nothing else is exported (the _created samples of counters aside).
    assert {key for key in found if not key[0].endswith("_created")} == set(wanted)


async def test_limits_moved_by_sensing_are_exported_apart_from_the_configured_ones() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(low=4, high=10)) as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        mgr._state.set_share(5, "memory pressure")
        found = samples(generate_latest(registry).decode())
    assert found[("trio_connmgr_limit_connections", frozenset({("limit", "low")}))] == 2
    assert found[("trio_connmgr_limit_connections", frozenset({("limit", "high")}))] == 5
    configured = "trio_connmgr_configured_limit_connections"
    assert found[(configured, frozenset({("limit", "low")}))] == 4
    assert found[(configured, frozenset({("limit", "high")}))] == 10
    # No hard limit: no hard sample.
    assert not [labels for name, labels in found if ("limit", "hard") in labels]
    info = "trio_connmgr_limits_info"
    assert found == {**found, (info, frozenset({("source", "memory pressure")})): 1}


async def test_a_closed_manager_keeps_exporting_its_final_figures() -> None:
    registry = CollectorRegistry()
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        Collector(mgr, registry)
        mgr.track("a", direction="inbound", close=trio.lowlevel.checkpoint)
    assert registry.get_sample_value("trio_connmgr_connections_opened_total") == 1
    assert registry.get_sample_value("trio_connmgr_connections_closed_total") == 1


# --------------------------------------------------------------------- HTTP


def split_response(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


@asynccontextmanager
async def served_manager() -> AsyncIterator[int]:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        registry = CollectorRegistry()
        Collector(mgr, registry)
        async with metrics_server(registry) as port:
            yield port


async def test_every_answer_says_the_connection_closes() -> None:
    async with served_manager() as port:
        for request in (
            b"GET /metrics HTTP/1.1\r\n\r\n",
            b"HEAD /metrics HTTP/1.1\r\n\r\n",
            b"GET /other HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"nonsense\r\n\r\n",
        ):
            status, headers, _ = split_response(await raw_request(port, request))
            assert headers["connection"] == "close", status


async def test_head_answers_have_no_body_whatever_their_status() -> None:
    async with served_manager() as port, metrics_server(failing_registry()) as broken_port:
        for at, target, code in [
            (port, "/other", "404"),
            (port, "http://[x/metrics", "400"),
            (broken_port, "/metrics", "500"),
        ]:
            answer = await raw_request(at, f"HEAD {target} HTTP/1.1\r\n\r\n".encode())
            status, headers, body = split_response(answer)
            assert status.split(" ")[1] == code
            assert body == b""
            get = await raw_request(at, f"GET {target} HTTP/1.1\r\n\r\n".encode())
            _, get_headers, get_body = split_response(get)
            assert get_body
            assert headers["content-length"] == get_headers["content-length"] == str(len(get_body))


@pytest.mark.parametrize("target", ["/metricsx", "/metrics/", "/metrics/other", "/"])
async def test_only_the_exact_path_serves_metrics(target: str) -> None:
    async with served_manager() as port:
        answer = await raw_request(port, f"GET {target} HTTP/1.1\r\n\r\n".encode())
    status, _, body = split_response(answer)
    assert (status, body) == ("HTTP/1.1 404 Not Found", b"metrics are at /metrics\n")


async def test_a_failing_collection_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with metrics_server(failing_registry()) as port:
        answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ")
    [record] = [r for r in caplog.records if r.name == "trio_connmgr.prometheus"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "collecting metrics failed"
    assert record.exc_info is not None
    assert "collector bug" in str(record.exc_info[1])


async def test_header_values_may_hold_colons() -> None:
    async with served_manager() as port:
        answer = await raw_request(
            port, b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip, x:y\r\n\r\n"
        )
    _, headers, _ = split_response(answer)
    assert headers["content-encoding"] == "gzip"


async def test_a_request_head_of_exactly_the_limit_is_answered() -> None:
    start = b"GET /metrics HTTP/1.1\r\nX: "
    async with served_manager() as port:
        for extra, code in [(0, b"200"), (1, b"431")]:
            head = start + b"y" * (MAX_REQUEST_BYTES - len(start) + extra)
            assert len(head) == MAX_REQUEST_BYTES + extra
            answer = await raw_request(port, head + b"\r\n\r\n")
            assert answer.split(b" ")[1] == code


async def test_a_head_request_over_the_limit_gets_its_431_without_a_body() -> None:
    pad = b"X: " + b"y" * (MAX_REQUEST_BYTES + 100) + b"\r\n"
    async with served_manager() as port:
        for method, body in [(b"GET", b"too large\n"), (b"HEAD", b"")]:
            answer = await raw_request(port, method + b" /metrics HTTP/1.1\r\n" + pad + b"\r\n")
            status, headers, got = split_response(answer)
            assert status.split(" ")[1] == "431"
            assert got == body
            assert headers["content-length"] == "10"


async def test_a_client_that_resets_its_connection_does_not_stop_the_server() -> None:
    async with served_manager() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /met")
        # SO_LINGER with a zero timeout: close() sends a RST, the server's read fails.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_silent_client_has_the_documented_ten_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with metrics_server(CollectorRegistry()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\n")
            start = trio.current_time()
            assert await stream.receive_some() == b""
            assert trio.current_time() - start == pytest.approx(10.0)


@pytest.mark.parametrize(("host", "passed"), [("", None), ("127.0.0.1", "127.0.0.1")])
@pytest.mark.parametrize("port", [0, 65535])
async def test_serve_metrics_binds_every_valid_port_and_empty_host_means_every_interface(
    monkeypatch: pytest.MonkeyPatch, host: str, passed: str | None, port: int
) -> None:
    calls: list[tuple[int, str | None]] = []

    class Bound(Exception):
        pass

    async def record(port: int, *, host: str | None = None) -> object:
        await trio.lowlevel.checkpoint()
        calls.append((port, host))
        raise Bound

    monkeypatch.setattr(trio, "open_tcp_listeners", record)
    with pytest.raises(Bound):
        await serve_metrics(CollectorRegistry(), host=host, port=port)
    assert calls == [(port, passed)]


# --------------------------------------------------------------- statistics


async def test_sensor_readings_in_a_snapshot_are_read_only() -> None:
    async with cm.open_connection_manager(limits=cm.Limits(1, 2)) as mgr:
        mgr._sensor_readings["fds"] = {"open": 10.0}
        stats = mgr.statistics()
    with pytest.raises(TypeError):
        stats.sensors["memory"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        stats.sensors["fds"]["open"] = 11.0  # type: ignore[index]
    assert stats.sensors == {"fds": {"open": 10.0}}


def test_locks_denied_total_adds_the_denials_of_every_reason() -> None:
    figures = odd_statistics().protocols["kad"]
    assert figures.locks_denied_total == 109 + 110 + 111 + 112


async def test_a_burst_lingers_up_to_and_including_burst_linger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        cm.open_connection_manager(limits=cm.Limits(1, 2), burst_linger=30) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 2)) as kad,
    ):
        async with kad.burst():
            pass
        await trio.sleep(30)
        assert mgr.statistics().protocols["kad"].bursts_lingering == 1
        await trio.sleep(0.001)
        assert mgr.statistics().protocols["kad"].bursts_lingering == 0
