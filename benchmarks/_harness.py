"""Shared machinery: rows, scales, interleaved repeats, the table and the JSON file.

Every measurement is taken several times, interleaved with its baseline (A, B,
A, B, ...) so that drift on a shared machine hits both alike; a row reports the
median of each and their ratio. Absolute times are only meaningful next to
their baseline from the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

GROUPS = {
    "hot": "1. Hot paths (per operation)",
    "libp2p": "2. Against py-libp2p 0.8.1 (same process)",
    "planning": "3. Round planning at scale",
    "sockets": "4. Real sockets (loopback TCP)",
    "memory": "5. Memory (tracemalloc)",
}


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big and how often: :data:`FULL` for ``make bench``, :data:`TINY` for the smoke test.

    Attributes:
        repeats: Samples per hot-path measurement (and per baseline).
        hot_ops: Operations per hot-path sample.
        libp2p_ops: Operations per py-libp2p accounting sample.
        libp2p_peers: Distinct peer ids cycled through by the accounting rows.
        plan_sizes: Connection counts of the planning rows.
        plan_repeats: Samples per planning measurement.
        libp2p_sizes: Sizes at which py-libp2p's pruner is compared.
        block_repeats: Live rounds (fresh managers) per loop-blocking measurement.
        round_connections: Connections of the whole-round row.
        round_prune: Victims of the whole-round row.
        round_repeats: Samples of the whole round and of Trio's floor.
        churn_connections: TCP connections per churn sample.
        churn_workers: Concurrent clients during churn.
        churn_repeats: Churn samples (each side).
        spike_connections: Inbound connections of the spike.
        spike_low: ``Limits.low`` during the spike.
        spike_high: ``Limits.high`` during the spike.
        spike_repeats: Spikes measured.
        memory_objects: Connections (and streams) allocated for the memory rows.
    """

    repeats: int = 9
    hot_ops: int = 20_000
    libp2p_ops: int = 5_000
    libp2p_peers: int = 1_000
    plan_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    plan_repeats: int = 7
    libp2p_sizes: tuple[int, ...] = (1_000, 10_000)
    block_repeats: int = 3
    round_connections: int = 10_000
    round_prune: int = 5_000
    round_repeats: int = 7
    churn_connections: int = 1_000
    churn_workers: int = 8
    churn_repeats: int = 7
    spike_connections: int = 2_000
    spike_low: int = 100
    spike_high: int = 200
    spike_repeats: int = 3
    memory_objects: int = 10_000


FULL = Scale()
TINY = Scale(
    repeats=2,
    hot_ops=100,
    libp2p_ops=50,
    libp2p_peers=20,
    plan_sizes=(60, 120, 240),
    plan_repeats=2,
    libp2p_sizes=(60, 120),
    block_repeats=1,
    round_connections=80,
    round_prune=40,
    round_repeats=2,
    churn_connections=10,
    churn_workers=2,
    churn_repeats=2,
    spike_connections=40,
    spike_low=5,
    spike_high=10,
    spike_repeats=1,
    memory_objects=100,
)


@dataclasses.dataclass
class Row:
    """One line of the table.

    Attributes:
        group: Key of :data:`GROUPS`.
        name: What is measured.
        unit: Unit of ``value`` and ``baseline``.
        value: Median of the samples.
        baseline_name: What the baseline is (``None``: the row has none).
        baseline: Median of the baseline's samples, measured in the same run.
        ratio: ``value / baseline``.
        target: The target in words (``""``: none).
        met: Whether the target is met (``None``: no target).
        samples: Number of samples behind ``value``.
        note: Anything the reader should know.
    """

    group: str
    name: str
    unit: str
    value: float
    baseline_name: str | None = None
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    samples: int = 1
    note: str = ""


def row(
    group: str,
    name: str,
    unit: str,
    values: Sequence[float],
    baseline_name: str | None = None,
    baselines: Sequence[float] | None = None,
    *,
    target: str = "",
    check: Callable[[float, float | None], bool] | None = None,
    note: str = "",
) -> Row:
    """Build a :class:`Row` from samples; ``check(value, ratio)`` decides ``met``."""
    value = statistics.median(values)
    baseline = statistics.median(baselines) if baselines else None
    ratio = value / baseline if baseline else None
    met = check(value, ratio) if check is not None else None
    return Row(
        group, name, unit, value, baseline_name, baseline, ratio, target, met, len(values), note
    )


def clean() -> None:
    """Collect garbage before a sample, so one sample does not pay for another."""
    gc.collect()


class Collections:
    """How many full (oldest-generation) collections ran (see :func:`collector`)."""

    def __init__(self) -> None:
        self.full = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            self.full += 1


@contextlib.contextmanager
def collector(on: bool = True) -> Iterator[Collections]:
    """Count the full garbage collections run in the block, or pause the collector (``on=False``).

    Rows keep it on: its pauses are part of what a Python program pays. Paused,
    a row shows the same work without them, which one side of a comparison may
    trigger and the other not.
    """
    counts = Collections()
    if not on:
        gc.disable()
    gc.callbacks.append(counts._callback)
    try:
        yield counts
    finally:
        gc.callbacks.remove(counts._callback)
        if not on:
            gc.enable()


def interleave(samplers: Sequence[Callable[[], float]], repeats: int) -> list[list[float]]:
    """Run each sampler ``repeats`` times, interleaved; return the samples per sampler."""
    samples: list[list[float]] = [[] for _ in samplers]
    for _ in range(repeats):
        for sampler, out in zip(samplers, samples, strict=True):
            clean()
            out.append(sampler())
    return samples


async def ainterleave(
    samplers: Sequence[Callable[[], Awaitable[float]]], repeats: int
) -> list[list[float]]:
    """:func:`interleave` for async samplers (run in the current Trio run)."""
    samples: list[list[float]] = [[] for _ in samplers]
    for _ in range(repeats):
        for sampler, out in zip(samplers, samples, strict=True):
            clean()
            out.append(await sampler())
    return samples


class StepTimer(trio.abc.Instrument):
    """A Trio instrument: the longest single task step while installed.

    A task step is a stretch during which the event loop runs one task and
    nothing else: the longest one is how long the loop was blocked.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self.steps = 0
        # None until a step starts: the step that installs the instrument is not timed.
        self._started: float | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is None:
            return
        took = time.perf_counter() - self._started
        self._started = None
        self.steps += 1
        if took > self.longest:
            self.longest = took


def raise_fd_limit(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``needed`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return int(soft)


def machine() -> dict[str, Any]:
    """Where and when the run happened."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        libp2p_version = version("libp2p")
    except Exception:
        libp2p_version = None
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "trio": trio.__version__,
        "libp2p": libp2p_version,
    }


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "x" or abs(value) >= 1000:
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def _cells(r: Row) -> list[str]:
    met = {True: "yes", False: "NO", None: ""}[r.met]
    return [
        r.name,
        _number(r.value, r.unit),
        r.baseline_name or "—",
        _number(r.baseline, r.unit) if r.baseline is not None else "—",
        "—" if r.ratio is None else f"{r.ratio:.2f}x",
        r.target or "—",
        met,
    ]


HEADER = ["measurement", "median", "baseline", "baseline median", "ratio", "target", "met"]


def render(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """The table as Markdown (readable in a terminal too), grouped, with the machine."""
    lines = [
        f"trio_connmgr benchmarks, {meta['date']}: {meta['nproc']} x {meta['cpu']}, "
        f"{meta['implementation']} {meta['python']}, trio {meta['trio']}, "
        f"libp2p {meta['libp2p']}",
        "",
    ]
    for group, title in GROUPS.items():
        members = [r for r in rows if r.group == group]
        if not members:
            continue
        table = [HEADER, *(_cells(r) for r in members)]
        widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
        lines.append(f"**{title}**")
        lines.append("")
        for i, cells in enumerate(table):
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
            )
            if i == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines.append("")
    notes = [(r.name, r.note) for r in rows if r.note]
    if notes:
        lines.append("Notes:")
        lines.extend(f"- {name}: {note}" for name, note in notes)
    met = [r for r in rows if r.met is not None]
    lines.append("")
    lines.append(f"Targets met: {sum(1 for r in met if r.met)} of {len(met)}.")
    return "\n".join(lines)


def write_json(rows: Sequence[Row], meta: dict[str, Any], path: Path, elapsed: float) -> None:
    """Write the rows and the machine as JSON."""
    data = {
        "machine": meta,
        "elapsed_seconds": round(elapsed, 1),
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
