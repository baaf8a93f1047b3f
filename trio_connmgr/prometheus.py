"""Prometheus metrics for a connection manager (extra ``prometheus``).

:class:`Collector` is a custom ``prometheus_client`` collector: every scrape
reads :meth:`ConnectionManager.statistics` once and turns it into metric
families named ``trio_connmgr_*``. It registers on the
:class:`~prometheus_client.CollectorRegistry` you pass, never on the global one
behind your back. :func:`serve_metrics` serves a registry over HTTP from a task
in your nursery::

    from prometheus_client import CollectorRegistry
    from trio_connmgr.prometheus import Collector, serve_metrics

    registry = CollectorRegistry()
    Collector(mgr, registry)
    port = await nursery.start(serve_metrics, registry)  # GET /metrics

``docs/observability.md`` lists every metric.
"""

from __future__ import annotations

import gzip
import logging
import queue
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Final, NoReturn, final
from urllib.parse import parse_qs, urlsplit

import outcome
import trio

from ._core._planner import Phase
from ._core._stats import RoundStatistics, Statistics
from ._errors import ConfigError

try:
    from prometheus_client.exposition import choose_encoder, gzip_accepted
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        Metric,
        SummaryMetricFamily,
    )
    from prometheus_client.registry import CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_connmgr.prometheus needs prometheus_client: pip install 'trio_connmgr[prometheus]'"
    ) from exc

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["Collector", "serve_metrics"]

logger = logging.getLogger("trio_connmgr.prometheus")

_NAMESPACE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_PHASES: Final = tuple(phase.value for phase in Phase)
# Every label value a counter can take is exported from the start, at 0: a series
# that first appears at 1 hides that first increase from rate() and increase().
_REFUSALS: Final = ("deny", "hard", "rate", "subnet")
_LOCK_DENIALS: Final = ("budget", "closed", "grant")


def _known_first(counts: Mapping[str, int], known: tuple[str, ...]) -> list[tuple[str, int]]:
    """``counts`` with every ``known`` key (0 if absent) first, then any others."""
    return [(key, counts.get(key, 0)) for key in (*known, *sorted(set(counts) - set(known)))]


MAX_REQUEST_BYTES = 16384
"""Largest HTTP request head :func:`serve_metrics` reads; bigger ones get a 431."""
REQUEST_DEADLINE = 10.0
"""Seconds a client has to send its request, and again to read the answer (the
collection in between is not on its time)."""


def _families(stats: Statistics, ns: str) -> list[Metric]:
    """Every metric family for one snapshot (``ns`` is the name prefix)."""
    out: list[Metric] = []

    def gauge(
        name: str, doc: str, value: float | None = None, labels: Sequence[str] | None = None
    ) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"{ns}_{name}", doc, value, labels)
        out.append(family)
        return family

    def counter(
        name: str, doc: str, value: float | None = None, labels: Sequence[str] | None = None
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(f"{ns}_{name}", doc, value, labels)
        out.append(family)
        return family

    family: GaugeMetricFamily | CounterMetricFamily
    # Connections and limits.
    family = gauge("connections", "Connections counted now, by direction.", labels=["direction"])
    family.add_metric(["inbound"], stats.inbound)
    family.add_metric(["outbound"], stats.outbound)
    family = gauge(
        "limit_connections",
        "Effective limits (low, high = the global share, hard = the inbound cap).",
        labels=["limit"],
    )
    family.add_metric(["low"], stats.low)
    family.add_metric(["high"], stats.high)
    if stats.hard is not None:
        family.add_metric(["hard"], stats.hard)
    family = gauge(
        "configured_limit_connections",
        "Configured limits (the ceilings of the effective ones).",
        labels=["limit"],
    )
    family.add_metric(["low"], stats.configured_low)
    family.add_metric(["high"], stats.configured_high)
    if stats.configured_hard is not None:
        family.add_metric(["hard"], stats.configured_hard)
    limits_info = InfoMetricFamily(
        f"{ns}_limits", "Where the effective limits come from (configured, or sensing's cause)."
    )
    limits_info.add_metric([], {"source": stats.limits_source})
    out.append(limits_info)
    counter("connections_opened", "Connections admitted.", stats.connections_opened)
    counter(
        "connections_closed",
        "Connections that stopped being counted.",
        stats.connections_closed,
    )
    counter(
        "connections_pruned",
        "Connections pruned (by rounds or admission evictions).",
        stats.connections_pruned,
    )
    family = counter("admission_refusals", "Admission refusals, by reason.", labels=["reason"])
    for reason, n in _known_first(stats.refusals, _REFUSALS):
        family.add_metric([reason], n)
    gauge("streams", "Open streams, all protocols.", stats.streams)
    counter("streams_opened", "Streams opened, all protocols.", stats.streams_opened)
    gauge("locked_connections", "Connections protected by a held lock.", stats.locked_connections)
    gauge("lock_budget_connections", "Most connections that may be locked.", stats.lock_budget)
    gauge("protected_peers", "Peers with at least one protection tag.", stats.protected_peers)
    counter("close_errors", "Tracked close() callbacks that raised.", stats.close_errors)
    counter(
        "close_timeouts",
        "Tracked close() callbacks cut off at close_timeout.",
        stats.close_timeouts,
    )

    # Rounds.
    rounds: RoundStatistics = stats.rounds
    counter("rounds", "Regulation rounds completed.", rounds.count)
    counter("round_failures", "Regulation rounds that raised.", rounds.failures)
    family = counter("round_victims", "Connections pruned by rounds, by phase.", labels=["phase"])
    for phase, n in _known_first(rounds.victims_by_phase, _PHASES):
        family.add_metric([phase], n)
    counter("round_locks_revoked", "Locks revoked by rounds under pressure.", rounds.locks_revoked)
    summary = SummaryMetricFamily(
        f"{ns}_round_duration_seconds",
        "Wall-clock time rounds took to plan and apply.",
        count_value=rounds.count,
        sum_value=rounds.total_duration,
    )
    out.append(summary)
    gauge(
        "last_round_duration_seconds",
        "Wall-clock time the last round took.",
        rounds.last_duration,
    )
    gauge("last_round_victims", "Connections the last round pruned.", rounds.last_victims)
    if rounds.last_trigger is not None:
        last = InfoMetricFamily(f"{ns}_last_round", "What started the last round.")
        last.add_metric([], {"trigger": rounds.last_trigger})
        out.append(last)

    # Protocols.
    labels = ["protocol"]
    per_protocol: list[tuple[str, str, str, str]] = [
        # (kind, name, attribute, documentation)
        ("gauge", "protocol_grant_min_connections", "grant_min", "Connections reserved."),
        ("gauge", "protocol_grant_max_connections", "grant_max", "Ceiling before offending."),
        ("gauge", "protocol_usage_connections", "usage", "Connections with its open streams."),
        ("gauge", "protocol_streams", "streams", "Its open streams."),
        ("gauge", "protocol_weight", "weight", "Its weight in tallies."),
        ("gauge", "protocol_locked_connections", "locks_held", "Connections it holds locks on."),
        ("gauge", "protocol_bursts_open", "bursts_open", "Its open bursts."),
        ("gauge", "protocol_bursts_lingering", "bursts_lingering", "Closed bursts lingering."),
        ("counter", "protocol_streams_opened", "streams_opened", "Streams it opened."),
        ("counter", "protocol_locks_granted", "locks_granted", "Locks granted."),
        ("counter", "protocol_locks_revoked", "locks_revoked", "Locks revoked under pressure."),
        ("counter", "protocol_locks_expired", "locks_expired", "Locks that reached their ttl."),
        ("counter", "protocol_bursts_opened", "bursts_opened", "Bursts opened."),
        ("counter", "protocol_bursts_closed", "bursts_closed", "Bursts closed."),
        ("counter", "protocol_pruned_connections", "pruned", "Pruned connections it used."),
        (
            "counter",
            "protocol_scorer_errors",
            "scorer_errors",
            "Scores that raised, were NaN or were not numbers.",
        ),
        ("counter", "protocol_scorer_clamped", "scorer_clamped", "Scores clamped into [0, 1]."),
    ]
    protocols = sorted(stats.protocols.items())
    for kind, name, attribute, doc in per_protocol:
        make = gauge if kind == "gauge" else counter
        family = make(name, f"Per protocol: {doc[0].lower()}{doc[1:]}", labels=labels)
        for protocol, figures in protocols:
            family.add_metric([protocol], getattr(figures, attribute))
    family = counter(
        "protocol_locks_denied",
        "Per protocol: locks denied, by reason.",
        labels=[*labels, "reason"],
    )
    for protocol, figures in protocols:
        for reason, n in _known_first(figures.locks_denied, _LOCK_DENIALS):
            family.add_metric([protocol, reason], n)

    # Sensing and events.
    family = gauge(
        "sensor_value",
        "Latest sensor readings, by sensor and reading.",
        labels=["sensor", "reading"],
    )
    for sensor, readings in sorted(stats.sensors.items()):
        for reading, value in sorted(readings.items()):
            family.add_metric([sensor, reading], value)
    counter("events_emitted", "Events produced while somebody listened.", stats.events_emitted)
    counter("events_dropped", "Events dropped by full subscriber buffers.", stats.events_dropped)
    gauge("event_subscribers", "Event subscriptions open now.", stats.subscribers)
    return out


_EMPTY = Statistics(
    0, 0, 0, 1, 1, None, "configured", 0, 0, 0, 0, 0, 0, 0, 0, {},
    RoundStatistics(0, "", 0.0, 0, None, {}), {},
)  # fmt: skip


@final
class Collector:
    """A ``prometheus_client`` collector reading a manager's statistics at scrape time.

    Create it inside the manager's Trio run. A scrape takes one
    :meth:`~ConnectionManager.statistics` snapshot; scrapes from other threads
    (``prometheus_client.start_http_server``, ``generate_latest`` in a worker
    thread) or from another Trio run are routed into the manager's Trio run
    (:meth:`trio.lowlevel.TrioToken.run_sync_soon`), so the state is never read
    while Trio changes it. Once that Trio run has finished, a scrape yields no
    metrics.

    It stays registered until :meth:`unregister`; used as a context manager
    (``with Collector(mgr, registry):``) it unregisters when the block ends,
    which a registry that outlives the manager needs (the next collector under
    the same namespace would clash with it)::

        async with cm.open_connection_manager(limits=limits) as mgr:
            with Collector(mgr, prometheus_client.REGISTRY):
                ...

    Args:
        manager: The :class:`~trio_connmgr.ConnectionManager` to expose.
        registry: The :class:`~prometheus_client.CollectorRegistry` to register
            on (pass ``prometheus_client.REGISTRY`` explicitly for the global
            one), or ``None`` to register it yourself.
        namespace: Prefix of every metric name. Two managers can share a
            registry only under different namespaces.

    Attributes:
        registry: The registry it registered on (``None`` if none, or after
            :meth:`unregister`).

    Raises:
        ConfigError: ``manager`` is not a ConnectionManager, ``registry`` is not
            a CollectorRegistry (or ``None``), or ``namespace`` is not a valid
            metric name prefix.
        RuntimeError: Not called from a Trio run.
        ValueError: The registry already has these names (``prometheus_client``'s error).
    """

    def __init__(
        self,
        manager: ConnectionManager,
        registry: CollectorRegistry | None,
        *,
        namespace: str = "trio_connmgr",
    ) -> None:
        from ._manager import check_manager

        check_manager("manager", manager)
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise ConfigError(f"registry must be a CollectorRegistry or None, got {registry!r}")
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            raise ConfigError(f"namespace must be a valid metric name prefix, got {namespace!r}")
        self._manager = manager
        self._namespace = namespace
        self._token = trio.lowlevel.current_trio_token()
        self.registry = registry
        if registry is not None:
            registry.register(self)

    @property
    def namespace(self) -> str:
        """The prefix of every metric name."""
        return self._namespace

    def _statistics(self) -> Statistics | None:
        try:
            here = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        if here is self._token:
            return self._manager.statistics()
        # Another thread, or another Trio run (a later one, such as the next test
        # of a session, or one in another thread), where trio.from_thread refuses
        # to block: waiting here for the manager's run, in its own thread, is safe
        # unless the manager's run waits for this one meanwhile (serve_metrics
        # collects in a worker thread, leaving its run free).
        answer: queue.SimpleQueue[outcome.Outcome[Statistics]] = queue.SimpleQueue()
        try:
            self._token.run_sync_soon(
                lambda: answer.put(outcome.capture(self._manager.statistics))
            )
        except trio.RunFinishedError:
            return None
        return answer.get().unwrap()

    def describe(self) -> list[Metric]:
        """The metric families with placeholder values, for the registry's name checks."""
        return _families(_EMPTY, self._namespace)

    def collect(self) -> Iterator[Metric]:
        """Take a statistics snapshot and yield its metric families."""
        stats = self._statistics()
        if stats is not None:
            yield from _families(stats, self._namespace)

    def unregister(self) -> None:
        """Remove this collector from the registry it registered on (if any)."""
        if self.registry is not None:
            self.registry.unregister(self)
            self.registry = None

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unregister()

    def __repr__(self) -> str:
        return f"<Collector {self._namespace}_* of {self._manager!r}>"


# --------------------------------------------------------------------- HTTP


def _response(status: str, headers: Sequence[tuple[str, str]], body: bytes, head: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)


def _text(status: str, message: str, head: bool, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    headers = [("Content-Type", "text/plain; charset=utf-8"), *extra]
    return _response(status, headers, message.encode() + b"\n", head)


def _answer(request: bytes, registry: CollectorRegistry, path: str) -> bytes:
    """The whole HTTP response to one request head."""
    # An answer to HEAD has no body, whatever its status (a malformed request too).
    head = request.startswith(b"HEAD ")
    try:
        lines = request.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
    except ValueError:
        return _text("400 Bad Request", "malformed request", head)
    if method not in ("GET", "HEAD"):
        return _text(
            "405 Method Not Allowed", "only GET and HEAD", False, [("Allow", "GET, HEAD")]
        )
    try:
        url = urlsplit(target)
    except ValueError:  # e.g. an unbalanced "[" in the host part
        return _text("400 Bad Request", "malformed request target", head)
    if url.path != path:
        return _text("404 Not Found", f"metrics are at {path}", head)
    try:
        encoder, content_type = choose_encoder(headers.get("accept", ""))
    except Exception:  # a malformed version in Accept: serve the default format
        encoder, content_type = choose_encoder("")
    names = parse_qs(url.query).get("name[]")
    source = registry.restricted_registry(names) if names else registry
    try:
        body = encoder(source)
    except Exception:
        logger.exception("collecting metrics failed")
        return _text("500 Internal Server Error", "collecting metrics failed", head)
    out = [("Content-Type", content_type)]
    if gzip_accepted(headers.get("accept-encoding", "")):
        body = gzip.compress(body)
        out.append(("Content-Encoding", "gzip"))
    return _response("200 OK", out, body, head)


async def _handle(
    stream: trio.abc.Stream,
    registry: CollectorRegistry,
    path: str,
    limiter: trio.CapacityLimiter,
) -> None:
    try:
        with trio.move_on_after(REQUEST_DEADLINE) as reading:
            buffer = b""
            # A head within the limit ends by MAX_REQUEST_BYTES + 4 bytes, its blank
            # line included (which may arrive in pieces after the limit).
            while b"\r\n\r\n" not in buffer and len(buffer) < MAX_REQUEST_BYTES + 4:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buffer += data
        if reading.cancelled_caught:
            return
        head = buffer.split(b"\r\n\r\n", 1)[0]
        # An answer to HEAD has no body, whatever its status.
        is_head = buffer.startswith(b"HEAD ")
        # The read that ends a head may also take it over the limit.
        if len(head) > MAX_REQUEST_BYTES:
            response = _text("431 Request Header Fields Too Large", "too large", is_head)
        else:
            try:
                # Collected in a worker thread, as prometheus_client's own server
                # does: this run stays free for what collectors ask of it. (A
                # Collector scraped from another Trio run's server waits for its
                # manager's run, which may be waiting for this one; collectors
                # reading a run with trio.from_thread cannot wait in its thread.)
                # Outside the client's deadlines: the collection takes the server's
                # time (and an autojump_clock jumps while the thread works).
                response = await trio.to_thread.run_sync(
                    _answer, head, registry, path, limiter=limiter
                )
            except Exception:
                # One odd request must never take the server (and its nursery) down.
                logger.exception("answering a metrics request failed")
                response = _text("500 Internal Server Error", "internal error", is_head)
        with trio.move_on_after(REQUEST_DEADLINE):
            await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        await trio.aclose_forcefully(stream)


async def serve_metrics(
    registry: CollectorRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    path: str = "/metrics",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``registry`` over HTTP until cancelled: ``GET path`` returns the metrics.

    Start it with ``port = await nursery.start(serve_metrics, registry)``: it
    binds, reports the bound port through ``task_status`` (useful with
    ``port=0``) and serves each request in a task of its own, in the Prometheus
    text format (OpenMetrics if the scraper asks for it, gzipped if it accepts
    gzip, restricted to ``name[]`` query parameters if given). It collects the
    registry in a worker thread (one collection at a time), as
    ``prometheus_client``'s own server does, so the Trio run stays free
    meanwhile (a :class:`Collector` routes its part back into its manager's
    run). Cancelling it (or its nursery) closes the listener and every open
    request (a collection under way is waited for).

    Args:
        registry: The registry to serve (with a :class:`Collector` on it).
        host: Address to bind (loopback by default; ``""`` for every interface).
        port: Port to bind; ``0`` picks a free one (a port per address if
            ``host`` has several, as ``""`` has: only the first is reported).
        path: The URL path of the metrics.

    Raises:
        ConfigError: ``registry`` is not a CollectorRegistry, ``port`` is not an
            integer in [0, 65535], or ``path`` does not start with ``/``.
        OSError: The address cannot be bound.
    """
    if not isinstance(registry, CollectorRegistry):
        raise ConfigError(f"registry must be a CollectorRegistry, got {registry!r}")
    # Checked here: getaddrinfo would quietly wrap 70000 round to port 4464.
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in [0, 65535], got {port!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"path must start with '/', got {path!r}")
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    try:
        bound: int = listeners[0].socket.getsockname()[1]
        # One collection at a time, in a thread of its own: a flood of scrapes
        # never takes the threads of trio.to_thread's default limiter from the
        # rest of the program.
        limiter = trio.CapacityLimiter(1)
        handler = partial(_handle, registry=registry, path=path, limiter=limiter)
        task_status.started(bound)
        await trio.serve_listeners(handler, listeners)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
    raise AssertionError("serve_listeners returned")  # pragma: no cover
