"""The live demonstration behind ``python -m trio_connmgr demo`` (and ``make demo``).

One process runs a *node* (a manager with explicit limits, sensing and
admission, three enrolled protocols) serving real loopback TCP, and a *load
generator* that connects to it and answers its dials. The load goes through
five phases: steady, a spike of inbound connections, a flood from one /24
subnet, a wave of failing dials, and calm. The node's state is shown live,
then summarised; the event trace and a timeline plot are written to ``--out``.

Every socket is on 127.0.0.1. So that admission sees distinct subnets, each
client stands for a remote peer with an *origin* address from 198.18.0.0/15
(the range reserved for network benchmarks, RFC 2544): the client binds its
socket to an ephemeral port on 127.0.0.1, notes the origin under that port,
then connects, and the node's ``serve_tcp(address_of=...)`` hands admission the
origin of the port it sees. Origins are labels: nothing binds or dials them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

import trio_connmgr as cm
from trio_connmgr import sensing, tcp, triggers
from trio_connmgr.admission import Admission

PHASES: tuple[tuple[str, float], ...] = (
    ("steady", 0.0),
    ("spike", 0.2),
    ("flood", 0.4),
    ("failing dials", 0.6),
    ("calm", 0.8),
)
LIMITS = cm.Limits(low=60, high=90, hard=130)
EXTRA = ("rich", "matplotlib")
"""What the ``demo`` extra installs: the live view and summary (rich), the plot (matplotlib)."""
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""
MESH_LOCK_TTL = 6.0
PROTECTED_MESH_PEERS = 3


@attrs.frozen
class DemoOptions:
    """Options of the demo (see ``python -m trio_connmgr demo --help``)."""

    duration: float = 60.0
    seed: int = 1
    live: bool = False
    out: Path = Path("demo-out")


@attrs.define
class Sample:
    """One point of the timeline."""

    t: float
    count: int
    low: int
    high: int
    hard: int | None
    usage: dict[str, int]
    phase: str


@attrs.define
class Observed:
    """What the demo saw, for the live view, the summary and the invariant checks."""

    samples: list[Sample] = attrs.Factory(list)
    rounds: list[cm.RoundCompleted] = attrs.Factory(list)
    high_at: list[tuple[float, int, int]] = attrs.Factory(list)
    pruned_peers: list[str] = attrs.Factory(list)
    protected_peers: set[str] = attrs.Factory(set)
    violations: list[str] = attrs.Factory(list)
    max_count: int = 0
    client_attempts: int = 0
    client_closed_by_node: int = 0
    dial_attempts: int = 0
    dial_failures: int = 0
    lookups: int = 0
    mesh_locks_denied: int = 0


def bitswap_score(stream: cm.Stream) -> float:
    """Bitswap values streams that moved bytes recently: recent bytes, decaying."""
    recent = min(1.0, stream.nbytes / 20_000)
    return float(recent * 0.5 ** (stream.idle_time / 2.0))


def mesh_score(stream: cm.Stream) -> float:
    """The mesh values every live stream highly (it locks the ones it needs most)."""
    return 0.9


async def _receive_line(sock: trio.abc.ReceiveStream, limit: int = 64) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = await sock.receive_some(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.strip()


class Demo:
    """The node, the load generator, the sampler and the views, in one Trio program."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.observed = Observed()
        self.phase = PHASES[0][0]
        self.started = 0.0
        self.node_port = 0
        self.farm_port = 0
        self.closed_port = 0
        # The origin address of each client, by its local port (see the module doc).
        self.origins: dict[int, str] = {}
        self.mgr: cm.ConnectionManager
        self.dht: cm.Enrollment
        self.mesh: cm.Enrollment
        self.bitswap: cm.Enrollment
        self.holders: trio.Nursery
        self.final: cm.Statistics | None = None

    # ------------------------------------------------------------------ node

    def _policies(self) -> dict[str, Any]:
        """Sensing, admission and triggers of the node."""
        return {
            "sensing": sensing.Sensing(
                [
                    # Both ends of every connection live in this process: two fds each.
                    sensing.FileDescriptors(per_connection=2),
                    sensing.DialHealth(window=4.0, ratio=0.3, min_dials=8),
                    sensing.LoopLag(threshold=0.25),
                ],
                interval=0.5,
                floor=30,
                increase=6,
                decrease=0.7,
            ),
            # The flood from 198.18.66.0/24 meets the subnet cap and the rate limit.
            "admission": Admission(ipv4_caps={24: 12}, rate=4.0, burst=8),
            "triggers": [
                triggers.Spike(connections=40, window=2.0),
                triggers.FailedDials(ratio=0.5, window=4.0, min_dials=8),
            ],
        }

    async def handle(self, sock: trio.SocketStream, conn: cm.Connection) -> None:
        """The node's handler for one inbound connection (in the connection's scope)."""
        kind = await _receive_line(sock)
        if kind == b"mesh":
            await self._mesh_peer(sock, conn)
        elif kind == b"bitswap":
            async with self.bitswap.stream(conn, direction="inbound") as stream:
                while data := await sock.receive_some(65536):
                    stream.touch(len(data))
        else:  # idle peers: connected, no protocol traffic
            while await sock.receive_some(4096):
                pass

    async def _mesh_peer(self, sock: trio.SocketStream, conn: cm.Connection) -> None:
        peer = str(conn.peer)
        if len(self.observed.protected_peers) < PROTECTED_MESH_PEERS:
            self.mgr.protect(conn.peer, "mesh-core")
            self.observed.protected_peers.add(peer)
        async with self.mesh.stream(conn, direction="inbound") as stream:
            try:
                lock = self.mesh.lock(stream, ttl=MESH_LOCK_TTL)
                async with lock:
                    while data := await sock.receive_some(4096):
                        stream.touch(len(data))
                        if lock.held and lock.expires_at - trio.current_time() < 2.0:
                            lock.extend(MESH_LOCK_TTL)
            except cm.LockDenied:
                self.observed.mesh_locks_denied += 1
                while data := await sock.receive_some(4096):
                    stream.touch(len(data))
                return
            finally:
                if conn.close_reason == "pruned" and lock.status == "dropped":
                    self.observed.violations.append(
                        f"locked connection #{conn.id} of {peer} was pruned ({conn.prune_reason})"
                    )

    async def dht_lookups(self) -> None:
        """A DHT-like protocol: a lookup in a Burst every so often, dialling out."""
        while True:
            await trio.sleep(1.0 + self.rng.random())
            failing = self.phase == "failing dials"
            port = self.closed_port if failing else self.farm_port
            fanout = 12 if failing else 8
            self.observed.lookups += 1
            async with self.dht.burst("lookup") as burst:
                done = trio.Semaphore(0)
                for _ in range(fanout):
                    self.holders.start_soon(self._dht_query, burst, port, done)
                for _ in range(fanout):
                    await done.acquire()

    async def _dht_query(self, burst: cm.Burst, port: int, done: trio.Semaphore) -> None:
        """One query of a lookup: ``done`` is released once it is over, however it ends."""
        self.observed.dial_attempts += 1
        answered = False
        try:
            async with tcp.open_tcp_connection(self.mgr, "127.0.0.1", port) as (sock, conn):
                async with self.dht.stream(conn, burst=burst) as stream:
                    await sock.send_all(b"FIND\n")
                    reply = await _receive_line(sock)
                    stream.touch(len(reply))
                answered = True
                done.release()
                # The routing table keeps the peer around until the manager prunes it.
                while await sock.receive_some(4096):
                    pass
        except (OSError, cm.ConnectionRefused, trio.BrokenResourceError):
            if not answered:
                self.observed.dial_failures += 1
        finally:
            if not answered:
                # Also when the manager pruned the connection before the answer
                # (the block then exits quietly): the lookup must not wait forever.
                done.release()

    # --------------------------------------------------------- load generator

    async def farm(self, sock: trio.SocketStream) -> None:
        """The remote DHT peers: answer one query, then stay connected."""
        try:
            if await _receive_line(sock) == b"FIND":
                await sock.send_all(b"PEERS 20\n")
            while await sock.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def origin_of(self, sock: trio.SocketStream) -> str:
        """The node's ``address_of``: the origin the client on that port stands for."""
        try:
            port = sock.socket.getpeername()[1]
        except OSError:
            return "127.0.0.1"
        return self.origins.get(port, "127.0.0.1")

    async def _connect(self, origin: str) -> trio.SocketStream | None:
        """Connect to the node from 127.0.0.1, noting ``origin`` under the local port."""
        sock = trio.socket.socket()
        try:
            await sock.bind(("127.0.0.1", 0))
            self.origins[sock.getsockname()[1]] = origin
            await sock.connect(("127.0.0.1", self.node_port))
        except OSError:
            sock.close()
            return None
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def client(self, kind: str, origin: str, lifetime: float = math.inf) -> None:
        """One remote peer, from ``origin``, connecting to the node."""
        self.observed.client_attempts += 1
        sock = await self._connect(origin)
        if sock is None:
            return
        async with sock:
            try:
                await sock.send_all(kind.encode() + b"\n")
                with trio.move_on_after(lifetime):
                    while True:
                        with trio.move_on_after(0.25 if kind != "idle" else math.inf):
                            if not await sock.receive_some(4096):
                                self.observed.client_closed_by_node += 1
                                return
                        if kind == "bitswap":
                            size = self.rng.choice((256, 4096, 16384))
                            await sock.send_all(b"b" * size)
                        elif kind == "mesh":
                            await sock.send_all(b"heartbeat\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.observed.client_closed_by_node += 1

    def _origin(self, subnet: int) -> str:
        return f"198.18.{subnet}.{self.rng.randrange(2, 250)}"

    async def load(self, nursery: trio.Nursery) -> None:
        """Drive the five phases."""
        duration = self.options.duration
        start = trio.current_time()
        for index, (name, at) in enumerate(PHASES):
            await trio.sleep_until(start + at * duration)
            self.phase = name
            end = start + (PHASES[index + 1][1] if index + 1 < len(PHASES) else 1.0) * duration
            if name == "steady":
                for i in range(12):
                    nursery.start_soon(self.client, "mesh", self._origin(1 + i % 6))
                for i in range(36):
                    nursery.start_soon(self.client, "bitswap", self._origin(10 + i % 9))
                    await trio.sleep(0.05)
            elif name == "spike":
                for i in range(80):
                    nursery.start_soon(self.client, "idle", self._origin(20 + i % 20))
                    await trio.sleep(0.01)
            elif name == "flood":
                # One /24 tries hard: the subnet cap and its rate limit answer.
                while trio.current_time() < end - 0.2 * duration * 0.2:
                    nursery.start_soon(self.client, "idle", self._origin(66), 3.0)
                    await trio.sleep(0.02)
            elif name == "failing dials":
                for i in range(10):
                    nursery.start_soon(self.client, "bitswap", self._origin(30 + i))
                    await trio.sleep(0.1)

    # --------------------------------------------------------------- watching

    async def sample(self) -> None:
        """Record the timeline, five times a second."""
        while True:
            stats = self.mgr.statistics()
            self.observed.max_count = max(self.observed.max_count, stats.connections)
            self.observed.samples.append(
                Sample(
                    trio.current_time() - self.started,
                    stats.connections,
                    stats.low,
                    stats.high,
                    stats.hard,
                    {name: p.usage for name, p in stats.protocols.items()},
                    self.phase,
                )
            )
            await trio.sleep(0.2)

    async def watch_events(self, events: trio.abc.ReceiveChannel[cm.Event]) -> None:
        """Follow rounds, limits and prunes; check the invariants as they happen."""
        high = LIMITS.high
        low = LIMITS.low
        async for event in events:
            if isinstance(event, cm.LimitsChanged):
                high, low = event.high, event.low
                self.observed.high_at.append((event.time - self.started, low, high))
            elif isinstance(event, cm.ConnectionPruned):
                self.observed.pruned_peers.append(event.peer)
                if event.peer in self.observed.protected_peers:
                    self.observed.violations.append(
                        f"protected peer {event.peer} was pruned ({event.reason})"
                    )
            elif isinstance(event, cm.RoundCompleted):
                self.observed.rounds.append(event)
                left = event.count_after - event.arrived  # (arrivals were not its to prune)
                # Judged by the high it started above and the low it worked to
                # (sensing may have moved the limits while it ran).
                started_high = high if event.high_before is None else event.high_before
                worked_low = low if event.low_planned is None else max(low, event.low_planned)
                if event.count_before > started_high and left > max(worked_low, event.unprunable):
                    self.observed.violations.append(
                        f"round {event.number} left {event.count_after} connections "
                        f"(high {started_high}, low {worked_low}, unprunable "
                        f"{event.unprunable}, arrived while it ran {event.arrived})"
                    )

    # -------------------------------------------------------------------- run

    async def run(self, render: Callable[[Demo], None] | None) -> None:
        """Run the whole demo."""
        out = self.options.out
        out.mkdir(parents=True, exist_ok=True)
        self.started = trio.current_time()
        closed = trio.socket.socket()
        await closed.bind(("127.0.0.1", 0))
        self.closed_port = closed.getsockname()[1]
        closed.close()  # nothing listens here: dials fail fast with ECONNREFUSED
        policies = self._policies()
        async with (
            trio.open_nursery() as outer,
            cm.open_connection_manager(
                limits=LIMITS,
                grace_period=1.0,
                silence_period=1.0,
                burst_linger=5.0,
                max_lock_ttl=MESH_LOCK_TTL,
                trace=out / "trace.jsonl",
                **policies,
            ) as mgr,
            mgr.subscribe(buffer=100_000) as events,
            mgr.enroll("/ipfs/kad/1.0.0", quota=cm.Quota.share(0.1, 0.4)) as dht,
            mgr.enroll("/meshsub/1.1.0", quota=cm.Quota(6, 20), scorer=mesh_score) as mesh,
            mgr.enroll(
                "/ipfs/bitswap/1.2.0",
                quota=cm.Quota.share(0.2, 0.6),
                scorer=bitswap_score,
                weight=1.5,
            ) as bitswap,
        ):
            self.mgr, self.dht, self.mesh, self.bitswap = mgr, dht, mesh, bitswap
            farm = await outer.start(
                functools.partial(trio.serve_tcp, self.farm, 0, host="127.0.0.1")
            )
            self.farm_port = farm[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                self.holders = nursery
                listeners = await nursery.start(
                    functools.partial(
                        tcp.serve_tcp, self.handle, 0, manager=mgr, address_of=self.origin_of
                    )
                )
                self.node_port = listeners[0].socket.getsockname()[1]
                nursery.start_soon(self.watch_events, events)
                nursery.start_soon(self.sample)
                dht.start_soon(self.dht_lookups)
                if render is not None:
                    nursery.start_soon(self._render_loop, render)
                async with trio.open_nursery() as clients:
                    with trio.move_on_after(self.options.duration):
                        await self.load(clients)
                        await trio.sleep_forever()
                    clients.cancel_scope.cancel()
                await trio.sleep(0.5)  # let the last events arrive
                self.final = mgr.statistics()
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()

    async def _render_loop(self, render: Callable[[Demo], None]) -> None:
        while True:
            render(self)
            await trio.sleep(0.25)


# ---------------------------------------------------------------------- views


def _bar(count: int, low: int, high: int, hard: int | None, width: int = 50) -> str:
    top = max(hard or high, count, 1)
    cells = []
    for i in range(width):
        at = (i + 0.5) * top / width
        if at <= count:
            cells.append("#" if at <= high else "!")
        elif abs(at - low) < top / width / 2 or abs(at - high) < top / width / 2:
            cells.append("|")
        else:
            cells.append(".")
    return "".join(cells)


def live_view(demo: Demo) -> Any:
    """A rich renderable of the node's state now."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    stats = demo.mgr.statistics()
    elapsed = trio.current_time() - demo.started
    head = (
        f"[bold]phase:[/] {demo.phase:<14} t={elapsed:5.1f}s / {demo.options.duration:.0f}s   "
        f"[bold]count[/] {stats.connections:>4}  low {stats.low}  high {stats.high}  "
        f"hard {stats.hard}  (in {stats.inbound} / out {stats.outbound})\n"
        f"{_bar(stats.connections, stats.low, stats.high, stats.hard)}"
    )
    protocols = Table(title="protocols", expand=True)
    for column in ("protocol", "grant", "usage", "streams", "locks", "bursts", "pruned"):
        protocols.add_column(column, justify="right" if column != "protocol" else "left")
    for p in stats.protocols.values():
        protocols.add_row(
            p.name,
            f"{p.grant_min}..{p.grant_max}",
            str(p.usage),
            str(p.streams),
            f"{p.locks_held} (revoked {p.locks_revoked})",
            f"{p.bursts_open} open, {p.bursts_lingering} lingering",
            str(p.pruned),
        )
    rounds = stats.rounds
    side = Table.grid(expand=True)
    side.add_column()
    side.add_column()
    side.add_row(
        f"[bold]rounds[/] {rounds.count}  last: {rounds.last_trigger} "
        f"({rounds.last_victims} pruned, {rounds.last_duration * 1e3:.1f} ms)\n"
        f"pruned by phase: {dict(rounds.victims_by_phase)}\n"
        f"refused by reason: {dict(stats.refusals)}",
        "[bold]sensors[/]\n"
        + "\n".join(
            f"{name}: " + ", ".join(f"{k}={v:.3g}" for k, v in values.items())
            for name, values in stats.sensors.items()
        ),
    )
    return Panel(Group(head, protocols, side), title="trio_connmgr demo")


def _print_progress(demo: Demo) -> None:
    stats = demo.mgr.statistics()
    print(
        f"t={trio.current_time() - demo.started:5.1f}s {demo.phase:<14} "
        f"count={stats.connections:<4} high={stats.high:<3} rounds={stats.rounds.count:<3} "
        f"pruned={stats.connections_pruned:<4} refused={sum(stats.refusals.values())}",
        flush=True,
    )


def summarise(demo: Demo) -> dict[str, Any]:
    """The summary figures (also written as summary.json)."""
    stats = demo.final
    assert stats is not None
    observed = demo.observed
    # A round's victims say whether it pruned; its counts do not (connections
    # arrive and close by themselves while it runs).
    rounds_that_pruned = sum(1 for r in observed.rounds if r.victims)
    return {
        "duration": demo.options.duration,
        "seed": demo.options.seed,
        "connections_opened": stats.connections_opened,
        "connections_closed": stats.connections_closed,
        "connections_pruned": stats.connections_pruned,
        "connections_open_at_end": stats.connections,
        "max_count": observed.max_count,
        "limits": {"low": LIMITS.low, "high": LIMITS.high, "hard": LIMITS.hard},
        "rounds": stats.rounds.count,
        "rounds_that_pruned": rounds_that_pruned,
        "pruned_by_phase": dict(stats.rounds.victims_by_phase),
        "refusals": dict(stats.refusals),
        "protocols": {
            name: {
                "grant": [p.grant_min, p.grant_max],
                "pruned": p.pruned,
                "locks_granted": p.locks_granted,
                "locks_revoked": p.locks_revoked,
                "bursts": p.bursts_opened,
            }
            for name, p in stats.protocols.items()
        },
        "lookups": observed.lookups,
        "dials": observed.dial_attempts,
        "dial_failures": observed.dial_failures,
        "client_attempts": observed.client_attempts,
        "clients_closed_by_node": observed.client_closed_by_node,
        "lowest_high": min((h for _, _, h in observed.high_at), default=LIMITS.high),
        "protected_peers": len(observed.protected_peers),
        "violations": list(observed.violations),
        "invariants_held": not observed.violations,
    }


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """Print the summary table and the verdict."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trio_connmgr demo: summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("connections admitted", summary["connections_opened"]),
        ("connections pruned", summary["connections_pruned"]),
        ("pruned by phase", summary["pruned_by_phase"]),
        ("refused at admission", summary["refusals"]),
        ("highest count seen", summary["max_count"]),
        ("limits low/high/hard", "{low}/{high}/{hard}".format(**summary["limits"])),
        ("lowest effective high (sensing)", summary["lowest_high"]),
        (
            "regulation rounds (that pruned)",
            f"{summary['rounds']} ({summary['rounds_that_pruned']})",
        ),
        (
            "DHT lookups / dials / failed",
            f"{summary['lookups']} / {summary['dials']} / {summary['dial_failures']}",
        ),
    ]
    for name, p in summary["protocols"].items():
        rows.append(
            (
                f"{name}",
                f"grant {p['grant']}, pruned {p['pruned']}, locks {p['locks_granted']}"
                f" (revoked {p['locks_revoked']}), bursts {p['bursts']}",
            )
        )
    for name, value in rows:
        table.add_row(name, str(value))
    console = Console()
    console.print(table)
    if summary["invariants_held"]:
        console.print(
            "[bold green]Invariants held:[/] after every round that started above high, "
            "the count (less the connections that arrived while it ran) was at most "
            "max(low, unprunable); no locked or protected connection was pruned."
        )
    else:
        console.print("[bold red]Invariants violated:[/]")
        for line in summary["violations"]:
            console.print(f"  - {line}")
    console.print(f"Wrote {out / 'trace.jsonl'}, {out / 'timeline.png'}, {out / 'summary.json'}")


def plot(demo: Demo, path: Path) -> None:
    """Save the timeline: count and limits, prunes per round, per-protocol usage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = demo.observed.samples
    times = [s.t for s in samples]
    fig, (ax_count, ax_rounds, ax_usage) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ax_count.plot(times, [s.count for s in samples], label="connections", color="black")
    ax_count.plot(times, [s.high for s in samples], label="high", linestyle="--")
    ax_count.plot(times, [s.low for s in samples], label="low", linestyle=":")
    if LIMITS.hard is not None:
        ax_count.axhline(LIMITS.hard, label="hard", color="red", linewidth=0.8)
    for name, at in PHASES:
        x = at * demo.options.duration
        for ax in (ax_count, ax_rounds, ax_usage):
            ax.axvline(x, color="grey", linewidth=0.5)
        ax_count.text(x + 0.2, ax_count.get_ylim()[1] * 0.95, name, fontsize=8, va="top")
    ax_count.set_ylabel("connections")
    ax_count.legend(loc="upper right", fontsize=8)
    phases = ("burst", "idle", "offender", "tally")
    bottoms = [0.0] * len(demo.observed.rounds)
    round_times = [r.time - demo.started for r in demo.observed.rounds]
    for phase in phases:
        heights = [dict(r.by_phase).get(phase, 0) for r in demo.observed.rounds]
        ax_rounds.bar(round_times, heights, bottom=bottoms, width=0.3, label=phase)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax_rounds.set_ylabel("pruned per round")
    ax_rounds.legend(loc="upper right", fontsize=8)
    names = sorted({name for s in samples for name in s.usage})
    for name in names:
        ax_usage.plot(times, [s.usage.get(name, 0) for s in samples], label=name)
    ax_usage.set_ylabel("usage (connections)")
    ax_usage.set_xlabel("seconds")
    ax_usage.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C alone (Trio may bring it out of nurseries in a group)."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(KeyboardInterrupt)
        return matched is not None and rest is None
    return isinstance(exc, KeyboardInterrupt)


def run_demo(options: DemoOptions) -> int:
    """Run the demo; return the exit status.

    0 when it ran and the invariants held; 1 when they did not, or when it could
    not start (the ``demo`` extra is missing, ``options.out`` cannot be created:
    a message says which, nothing runs); 2 for a duration that is not a finite
    number of seconds, at least 5; 130 after Ctrl-C (what ran is closed, the trace
    so far is in ``options.out``).
    """
    # The phases start at fractions of the duration: it must be finite.
    if not (math.isfinite(options.duration) and options.duration >= 5):
        print(
            f"--duration must be a finite number of seconds, at least 5, got {options.duration}",
            file=sys.stderr,
        )
        return 2
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"the demo needs the `demo` extra ({', '.join(missing)} not installed): "
            "pip install 'trio_connmgr[demo]'",
            file=sys.stderr,
        )
        return 1
    out = options.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"cannot create the output folder {out}: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_demo(options)
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        trace = out / "trace.jsonl"
        print(
            "\ntrio_connmgr demo: interrupted"
            + (f"; the trace so far is in {trace}" if trace.exists() else ""),
            file=sys.stderr,
        )
        return INTERRUPTED


def _run_demo(options: DemoOptions) -> int:
    demo = Demo(options)
    if options.live:
        from rich.live import Live

        with Live(refresh_per_second=4, transient=False) as live:
            trio.run(demo.run, lambda d: live.update(live_view(d)))
    else:
        print(
            f"trio_connmgr demo: {options.duration:.0f}s on loopback, seed {options.seed}, "
            f"limits {LIMITS.low}/{LIMITS.high}/{LIMITS.hard}",
            flush=True,
        )
        ticks = iter(range(1 << 30))

        def every_second(d: Demo) -> None:
            if next(ticks) % 4 == 0:
                _print_progress(d)

        trio.run(demo.run, every_second)
    summary = summarise(demo)
    out = options.out
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(demo, out / "timeline.png")
    print_summary(summary, out)
    return 0 if summary["invariants_held"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(DemoOptions()))
