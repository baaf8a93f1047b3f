"""Environment sensing: sensors, and the controller of the global share (SPEC §9).

A :class:`Sensing` controller samples its sensors every ``interval`` seconds and
moves the manager's global share ``G`` (the effective ``high``; ``low`` scales
with it): additive increase while every sensor is healthy, multiplicative
decrease while any is under pressure, never above the ceiling (the configured
``high``, or less if a sensor says the file descriptors or the memory do not
allow it) nor below the floor. Every change re-runs quota allocation (protocols
are told through ``on_grant`` and ``wait_grant_changed()``), emits
:class:`~trio_connmgr.LimitsChanged` with its cause, and wakes the regulator when
the count is above the new ``high`` or, under pressure, above ``low``::

    sensing = cm.Sensing(
        [cm.sensing.FileDescriptors(), cm.sensing.Memory(), cm.sensing.DialHealth(),
         cm.sensing.LoopLag()],
        interval=5.0,
    )
    async with cm.open_connection_manager(limits=cm.Limits.auto(), sensing=sensing) as mgr:
        ...

Sensors are small objects: :meth:`Sensor.sample` returns a frozen
:class:`Reading` (figures, an optional ceiling, a pressure flag). Write your own
by subclassing :class:`Sensor`; use :class:`FakeSensor` in tests.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import statistics
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, final

import trio

from ._config import (
    MIN_PERIOD,
    Limits,
    check_count,
    check_fraction,
    check_not_async,
    check_open_fraction,
    check_period,
    check_positive_float,
    exact_floor,
)
from ._core._control import Decision as Decision
from ._core._control import Reading as Reading
from ._core._control import decide_share
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._manager import ConnectionManager

if sys.platform != "win32":
    import resource

__all__ = [
    "DEFAULT_BYTES_PER_CONNECTION",
    "Decision",
    "DialHealth",
    "FakeSensor",
    "FileDescriptors",
    "LoopLag",
    "Memory",
    "Reading",
    "Sensing",
    "Sensor",
    "auto_limits",
    "nofile_limit",
    "open_fds",
]

logger = logging.getLogger("trio_connmgr.sensing")

DEFAULT_BYTES_PER_CONNECTION = 256 * 1024
"""Estimated memory one connection costs (kernel socket buffers, Python objects,
protocol buffers): 256 KiB. Measure your own and pass it where it matters."""

CONTROLLER = "controller"
"""Key of the controller's own figures in ``statistics().sensors``."""


# ---------------------------------------------------------------- environment


def nofile_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` of this process, or ``None`` if unlimited or unknown."""
    if sys.platform == "win32":  # pragma: no cover
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return int(soft)


def open_fds() -> int | None:
    """How many file descriptors this process has open now, or ``None`` if unknown.

    Reads ``/proc/self/fd`` (Linux) or ``/dev/fd`` (macOS, BSD); falls back to psutil.
    """
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            try:
                # The listing holds one descriptor of its own while it runs.
                return max(0, len(os.listdir(path)) - 1)
            except OSError:  # pragma: no cover - exotic platforms
                break
    try:  # pragma: no cover - platforms without /proc or /dev/fd
        import psutil

        process = psutil.Process()
        if sys.platform == "win32":
            return int(process.num_handles())
        return int(process.num_fds())
    except Exception:  # pragma: no cover
        return None


def _psutil() -> Any:
    try:
        import psutil
    except ImportError as exc:  # pragma: no cover - psutil is an extra
        raise ImportError(
            "memory sensing needs psutil: pip install 'trio-connmgr[sensing]'"
        ) from exc
    return psutil


def _total_memory() -> int | None:
    try:
        return int(_psutil().virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil is an extra
        pass
    try:  # pragma: no cover
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def _check_optional_count(field: str, value: object) -> int | None:
    return None if value is None else check_count(field, value)


# ------------------------------------------------------------------- sensors


class Sensor:
    """Base class of sensors. Subclass it and override :meth:`sample`.

    A sensor is synchronous and cheap: :meth:`sample` is called once per
    interval from the controller task and must not block for long (reading a
    ``/proc`` file is fine, a network request is not: do that in :meth:`run`).

    Attributes:
        name: Key of the sensor's figures in ``statistics().sensors`` and its name
            in ``LimitsChanged`` causes. Unique within one :class:`Sensing`.
    """

    name: str = "sensor"
    keeps_state: ClassVar[bool] = True
    """Whether it keeps what a manager feeds it or its samples, or runs a task for
    it (then it serves one open manager at a time). Set it to False in a sensor
    that only reads the machine as it samples, so that several managers may
    share it."""

    def sample(self, now: float) -> Reading:
        """Measure now (``now`` is the manager's clock); return a :class:`Reading`."""
        raise NotImplementedError

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> None:
        """``mgr.report_dial`` was called (a dial's outcome and latency in seconds).

        Called synchronously on the adapter's path: keep it O(1).
        """

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work the sensor needs (override it; :class:`LoopLag` does).

        Started in the manager's service nursery when the manager opens and
        cancelled when it closes; call ``task_status.started()`` once ready. The
        default does nothing and is not started.
        """
        task_status.started()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _overrides(sensor: Sensor, method: str) -> bool:
    return getattr(type(sensor), method) is not getattr(Sensor, method)


_SENSING_SETTINGS: dict[str, Callable[[object], object]] = {
    "interval": lambda value: check_period(
        "Sensing.interval", value, allow_zero=False, minimum=MIN_PERIOD
    ),
    "floor": lambda value: _check_optional_count("Sensing.floor", value),
    "increase": lambda value: _check_optional_count("Sensing.increase", value),
    "decrease": lambda value: check_fraction(
        "Sensing.decrease", value, above_zero=True, below_one=True
    ),
}
"""The settings of a :class:`Sensing`, each with its check (when built and when set)."""

_SENSORS_IN_USE: set[int] = set()
"""The ids of the sensors that keep state (``Sensor.keeps_state``) of the Sensing
objects driving an open manager."""


@final
class FileDescriptors(Sensor):
    """File descriptors: the soft ``RLIMIT_NOFILE`` and how many are open.

    Figures: ``limit`` (soft limit; absent if unlimited), ``open``, ``used``
    (``open / limit``).

    * ceiling: ``floor(fraction * limit / per_connection)`` connections;
    * pressure: ``open >= pressure_at * limit``.

    Args:
        fraction: Share of the descriptors connections may take, in ``(0, 1]``
            (the rest is for files, pipes, listeners, the event loop).
        per_connection: Descriptors one connection holds.
        pressure_at: Used share of the limit that means pressure, in ``(0, 1]``.
    """

    name = "file-descriptors"
    keeps_state = False

    def __init__(
        self, *, fraction: float = 0.5, per_connection: int = 1, pressure_at: float = 0.9
    ) -> None:
        self.fraction = check_open_fraction("FileDescriptors.fraction", fraction)
        self.per_connection = check_count("FileDescriptors.per_connection", per_connection)
        self.pressure_at = check_open_fraction("FileDescriptors.pressure_at", pressure_at)

    def sample(self, now: float) -> Reading:
        """Read the soft limit and count the open descriptors."""
        limit = nofile_limit()
        count = open_fds()
        values: dict[str, float] = {}
        ceiling = None
        pressure = False
        detail = ""
        if count is not None:
            values["open"] = count
        if limit is not None:
            values["limit"] = limit
            ceiling = max(0, exact_floor(self.fraction * limit / self.per_connection))
            if count is not None:
                # The share as "used" reports it: 7 open of 100 reaches 0.07
                # (while 7 >= 0.07 * 100 is false in floating point).
                values["used"] = used = count / limit
                if used >= self.pressure_at:
                    pressure = True
                    detail = f"{count} of {limit} file descriptors open"
        return Reading(values, ceiling, pressure, detail)


@final
class Memory(Sensor):
    """Memory (psutil): the process's RSS against a budget, and available memory.

    Figures: ``rss``, ``available``, ``total``, ``budget`` (bytes) and ``used``
    (``rss / budget``).

    * ceiling: ``floor(budget / per_connection)`` connections;
    * pressure: ``rss >= pressure_at * budget`` or ``available < reserve``.

    Args:
        budget: Bytes this process may use (default: an eighth of the machine's
            memory, as go-libp2p's autoscaling assumes).
        per_connection: Estimated bytes one connection costs.
        pressure_at: Share of the budget whose use means pressure, in ``(0, 1]``.
        reserve: Available system memory below which there is pressure (default:
            5% of the machine's memory).

    Raises:
        ImportError: psutil is not installed (``pip install 'trio-connmgr[sensing]'``).
    """

    name = "memory"
    keeps_state = False

    def __init__(
        self,
        *,
        budget: int | None = None,
        per_connection: int = DEFAULT_BYTES_PER_CONNECTION,
        pressure_at: float = 0.9,
        reserve: int | None = None,
    ) -> None:
        budget = _check_optional_count("Memory.budget", budget)
        self.per_connection = check_count("Memory.per_connection", per_connection)
        self.pressure_at = check_open_fraction("Memory.pressure_at", pressure_at)
        reserve = (
            None if reserve is None else check_count("Memory.reserve", reserve, allow_zero=True)
        )
        psutil = _psutil()
        self._process = psutil.Process()
        self._virtual_memory = psutil.virtual_memory
        total = int(psutil.virtual_memory().total)
        self.budget: int = budget if budget is not None else max(1, total // 8)
        self.reserve: int = reserve if reserve is not None else total // 20

    def sample(self, now: float) -> Reading:
        """Read the process's RSS and the system's available memory."""
        rss = int(self._process.memory_info().rss)
        memory = self._virtual_memory()
        available = int(memory.available)
        values = {
            "rss": float(rss),
            "available": float(available),
            "total": float(memory.total),
            "budget": float(self.budget),
            "used": rss / self.budget,
        }
        details = []
        # (The share, not `rss >= pressure_at * budget`: see FileDescriptors.sample.)
        if values["used"] >= self.pressure_at:
            details.append(f"RSS {rss} bytes is {rss / self.budget:.0%} of the budget")
        if available < self.reserve:
            details.append(f"{available} bytes available, below the reserve of {self.reserve}")
        ceiling = self.budget // self.per_connection
        return Reading(values, ceiling, bool(details), "; ".join(details))


@final
class DialHealth(Sensor):
    """Dial health, fed by ``mgr.report_dial``: the "killing the routers" signal.

    Home routers and NATs fall over when a node holds or dials too many
    connections; the first symptoms are dials that fail and dials that get slow.
    Figures over the last ``window`` seconds: ``dials``, ``failed``,
    ``failure_ratio``, and, from successful dials that reported a latency,
    ``latency`` (median), ``baseline`` (a slow geometric moving average of every
    latency seen) and ``inflation`` (``latency / baseline``).

    * pressure: at least ``min_dials`` dials and ``failure_ratio >= ratio``, or
      at least ``min_dials`` latencies and ``inflation >= latency_factor``;
    * no ceiling.

    Reused by a later Trio run (whose clock may be behind the entries it holds),
    it forgets its window at that run's first dial or sample; the baseline stays.

    Args:
        window: Seconds of dial history considered.
        ratio: Failed share of dials that means pressure, in ``(0, 1]``.
        latency_factor: Latency inflation that means pressure (``> 1``).
        min_dials: Fewer dials (or latencies) than this within the window never
            mean pressure.
        baseline_dials: Memory of the baseline, in dials: each latency moves the
            (logarithmic) average by ``1 / baseline_dials`` (the first
            ``baseline_dials`` latencies weigh equally: the ``n``-th moves it by
            ``1 / n``).
    """

    name = "dial-health"
    MAX_HISTORY = 65536
    """Most dials (and latencies) kept within a window, or ``min_dials`` if that
    is more (older ones are forgotten early)."""

    def __init__(
        self,
        *,
        window: float = 30.0,
        ratio: float = 0.5,
        latency_factor: float = 3.0,
        min_dials: int = 10,
        baseline_dials: int = 200,
    ) -> None:
        self.window = check_positive_float("DialHealth.window", window)
        self.ratio = check_open_fraction("DialHealth.ratio", ratio)
        self.latency_factor = check_positive_float("DialHealth.latency_factor", latency_factor)
        if self.latency_factor <= 1.0:
            raise ConfigError(f"DialHealth.latency_factor must be > 1, got {latency_factor!r}")
        self.min_dials = check_count("DialHealth.min_dials", min_dials)
        self.baseline_dials = check_count("DialHealth.baseline_dials", baseline_dials)
        # (At least min_dials: fewer could never mean pressure.)
        self._history = max(self.MAX_HISTORY, self.min_dials)
        self._dials: deque[tuple[float, bool]] = deque()
        self._failed = 0
        self._latencies: deque[tuple[float, float]] = deque()
        self._log_baseline = 0.0
        self._baseline_n = 0

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> None:
        """Record a dial's outcome, and the latency of a successful one."""
        self._check_clock(now)
        self._dials.append((now, ok))
        if not ok:
            self._failed += 1
        if ok and latency is not None and latency > 0 and math.isfinite(latency):
            self._latencies.append((now, latency))
            self._baseline_n = min(self._baseline_n + 1, self.baseline_dials)
            self._log_baseline += (math.log(latency) - self._log_baseline) / self._baseline_n
        self._forget(now)

    def _check_clock(self, now: float) -> None:
        """Forget the window if ``now`` is before its last entry: the entries came
        from another Trio run's clock (a sensor reused by a later run, as in the
        next test of a session), and would otherwise stay "in the future" for ever."""
        dials = self._dials
        if dials and dials[-1][0] > now:
            dials.clear()
            self._failed = 0
            self._latencies.clear()

    def _forget(self, now: float) -> None:
        dials = self._dials
        # (`t + window < now`, not `now - t > window`: a dial exactly one window
        # old stays within it, which the difference may miss by a rounding.)
        while dials and (dials[0][0] + self.window < now or len(dials) > self._history):
            _, ok = dials.popleft()
            if not ok:
                self._failed -= 1
        latencies = self._latencies
        while latencies and (
            latencies[0][0] + self.window < now or len(latencies) > self._history
        ):
            latencies.popleft()

    @property
    def baseline(self) -> float | None:
        """The baseline latency in seconds (``None`` before the first latency)."""
        return math.exp(self._log_baseline) if self._baseline_n else None

    def sample(self, now: float) -> Reading:
        """Failed share and latency inflation over the window."""
        self._check_clock(now)
        self._forget(now)
        dials = len(self._dials)
        failed = self._failed
        failure_ratio = failed / dials if dials else 0.0
        values: dict[str, float] = {
            "dials": dials,
            "failed": failed,
            "failure_ratio": failure_ratio,
        }
        details = []
        if dials >= self.min_dials and failure_ratio >= self.ratio:
            details.append(f"{failed} of {dials} dials failed within {self.window:g}s")
        baseline = self.baseline
        if self._latencies and baseline is not None:
            latency = statistics.median(value for _, value in self._latencies)
            inflation = latency / baseline
            values.update(latency=latency, baseline=baseline, inflation=inflation)
            if len(self._latencies) >= self.min_dials and inflation >= self.latency_factor:
                details.append(
                    f"dial latency {latency * 1e3:.1f} ms is {inflation:.1f}x "
                    f"the baseline of {baseline * 1e3:.1f} ms"
                )
        return Reading(values, None, bool(details), "; ".join(details))


@final
class LoopLag(Sensor):
    """Event-loop lag: how late Trio wakes a task that asked to sleep.

    Its own small task (started in the manager's service nursery) sleeps
    ``period`` seconds at a time and records how late it woke: a busy or blocked
    event loop wakes it late. Figures over the last ``window`` seconds:
    ``lag_max``, ``lag_mean``, ``lag_last`` (seconds) and ``samples``.

    * pressure: ``lag_mean >= threshold``;
    * no ceiling.

    Times come from the manager's clock, so under ``trio.testing.MockClock`` the
    lag is always zero.

    Args:
        period: Seconds between two wake-ups, at least ``1e-6`` (a shorter one
            can vanish in the clock's rounding and keep the task busy).
        window: Seconds of lag history considered.
        threshold: Mean lag (seconds) that means pressure.
    """

    name = "loop-lag"

    def __init__(
        self, *, period: float = 0.25, window: float = 5.0, threshold: float = 0.05
    ) -> None:
        self.period = check_period("LoopLag.period", period, allow_zero=False, minimum=MIN_PERIOD)
        self.window = check_positive_float("LoopLag.window", window)
        self.threshold = check_positive_float("LoopLag.threshold", threshold)
        self._lags: deque[tuple[float, float]] = deque()

    def record(self, now: float, lag: float) -> None:
        """Record that a wake-up due at ``now - lag`` happened at ``now``."""
        self._lags.append((now, max(0.0, lag)))
        self._forget(now)

    def _forget(self, now: float) -> None:
        lags = self._lags
        # (A lag exactly one window old stays: see DialHealth._forget.)
        while lags and lags[0][0] + self.window < now:
            lags.popleft()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sleep ``period`` at a time and record how late each wake-up is."""
        self._lags.clear()
        task_status.started()
        while True:
            due = trio.current_time() + self.period
            await trio.sleep_until(due)
            now = trio.current_time()
            self.record(now, now - due)

    def sample(self, now: float) -> Reading:
        """Maximum, mean and last lag over the window."""
        self._forget(now)
        lags = [lag for _, lag in self._lags]
        if not lags:
            return Reading({"samples": 0.0})
        mean = sum(lags) / len(lags)
        values = {
            "lag_max": max(lags),
            "lag_mean": mean,
            "lag_last": lags[-1],
            "samples": float(len(lags)),
        }
        pressure = mean >= self.threshold
        detail = f"mean loop lag {mean * 1e3:.1f} ms over {len(lags)} wake-ups" if pressure else ""
        return Reading(values, None, pressure, detail)


@final
class FakeSensor(Sensor):
    """A sensor whose readings a test sets (or scripts) by hand.

    Set :attr:`ceiling`, :attr:`pressure` and :attr:`values` between intervals, or
    pass ``script``: readings returned one per sample, the last repeating.
    :attr:`samples` lists the times it was sampled; :attr:`dials` the dial
    reports it received; ``error`` (an exception instance) makes the next
    samples raise it.

    Args:
        name: Its name (unique within a :class:`Sensing`).
        ceiling: The ceiling it reports.
        pressure: Whether it reports pressure.
        values: The figures it reports.
        script: Readings to return in order instead, as they are (an entry
            that is not a :class:`Reading` plays a broken sensor).

    Raises:
        ConfigError: A bad name, ceiling, pressure or value, or a ``script``
            that is not iterable (one :class:`Reading` rather than a list).
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        ceiling: int | None = None,
        pressure: bool = False,
        values: Mapping[str, float] | None = None,
        script: Iterable[Reading] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"FakeSensor name must be a non-empty string, got {name!r}")
        try:  # the reading it will report, checked now rather than at each sample
            Reading(values or {}, ceiling, pressure)
        except ConfigError as exc:
            raise ConfigError(f"FakeSensor: {exc}") from None
        self.name = name
        self.ceiling = ceiling
        self.pressure = pressure
        self.values: Mapping[str, float] = dict(values or {})
        try:
            self.script: deque[Reading] = deque(() if script is None else script)
        except TypeError:
            raise ConfigError(
                f"FakeSensor script must be an iterable of Readings, got {script!r}"
            ) from None
        self.samples: list[float] = []
        self.dials: list[tuple[bool, float | None, float]] = []
        self.error: Exception | None = None

    def sample(self, now: float) -> Reading:
        """The next scripted reading, or one built from the attributes."""
        self.samples.append(now)
        if self.error is not None:
            # Raised afresh: raising one exception object again would add this
            # sample's traceback to those of every sample it failed before.
            raise self.error.with_traceback(None)
        if self.script:
            reading = self.script[0]
            if len(self.script) > 1:
                self.script.popleft()
            return reading
        return Reading(self.values, self.ceiling, self.pressure, "fake")

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> None:
        """Record the report."""
        self.dials.append((ok, latency, now))


# ---------------------------------------------------------------- controller


@final
class Sensing:
    """Samples sensors every ``interval`` seconds and moves the global share (AIMD).

    Pass it to ``open_connection_manager(sensing=...)``. Each interval it reads
    every sensor and computes::

        ceiling = max(floor, min(high, every sensor's ceiling))
        pressure: share' = min(share - 1, floor(share * decrease))
        healthy:  share' = share + increase
        share' held within [floor, ceiling]

    where ``high`` is the configured ``Limits.high``. A change moves the
    effective ``high`` to ``share'`` and ``low`` in proportion, re-runs quota
    allocation, emits ``LimitsChanged`` (cause ``"sensing pressure (...)"``,
    ``"sensing ceiling (...)"`` or ``"sensing recovery"``) and wakes the regulator
    if the count is above the new ``high``. While any sensor is under pressure,
    the regulator's rounds are emergencies (no silence period; they may revoke
    locks) and run while the count is above ``low``.

    A sensor that raises is logged (once per manager) and counted (``errors`` in
    its figures, for this manager); it counts as neither pressure nor ceiling for
    that interval. So does one whose ``sample`` returns no :class:`Reading`, or a
    ceiling too large for a float (its figures are floats).

    One ``Sensing`` drives one manager at a time, and so does each of its
    sensors, whichever ``Sensing`` carries it: opening a second manager with
    either while the first is open is a ``ConfigError``. A sensor class that
    only reads the machine as it samples says so with ``keeps_state = False``
    (as :class:`FileDescriptors` and :class:`Memory` do) and may serve several.

    Args:
        sensors: The :class:`Sensor` objects (unique names; at least one).
        interval: Seconds between two samples, at least ``1e-6`` (a shorter
            one can vanish in the clock's rounding and keep the task busy).
        floor: The share never goes below this many connections (default: half
            of ``Limits.low``, at least 1). Must be ``<= Limits.high``.
        increase: Connections added per healthy interval (default: 5% of
            ``Limits.high``, rounded half up, at least 1).
        decrease: Factor in ``(0, 1)`` applied per interval under pressure.

    ``interval``, ``floor``, ``increase`` and ``decrease`` may be set while a
    manager runs: each is checked as here and takes effect at the next interval.
    ``sensors`` cannot be changed.

    Raises:
        ConfigError: a bad argument (the message names it and its value), or a
            sensor whose ``sample`` or ``dial_reported`` is ``async`` (both are
            called synchronously).
    """

    def __init__(
        self,
        sensors: Sequence[Sensor],
        *,
        interval: float = 5.0,
        floor: int | None = None,
        increase: int | None = None,
        decrease: float = 0.7,
    ) -> None:
        if isinstance(sensors, Sensor) or not isinstance(sensors, Iterable):
            raise ConfigError(f"Sensing sensors must be a list of Sensor objects, got {sensors!r}")
        sensors = list(sensors)
        if not sensors:
            raise ConfigError("Sensing sensors must hold at least one Sensor, got []")
        names: set[str] = set()
        for sensor in sensors:
            if not isinstance(sensor, Sensor):
                raise ConfigError(f"Sensing sensors must be Sensor objects, got {sensor!r}")
            name = sensor.name
            if not isinstance(name, str) or not name or name == CONTROLLER:
                raise ConfigError(
                    f"Sensing sensor names must be non-empty strings other than "
                    f"{CONTROLLER!r}, got {name!r}"
                )
            if name in names:
                raise ConfigError(f"Sensing sensor names must be unique, got {name!r} twice")
            names.add(name)
            for method in ("sample", "dial_reported"):
                check_not_async(
                    f"Sensing sensor {name!r}: {type(sensor).__name__}.{method}()",
                    getattr(sensor, method),
                )
            if _overrides(sensor, "run") and not inspect.iscoroutinefunction(sensor.run):
                # It is awaited in a task: a plain function would only fail there.
                raise ConfigError(
                    f"Sensing sensor {name!r}: {type(sensor).__name__}.run() must be an "
                    f"async function (it runs as a task), got {sensor.run!r}"
                )
        self.sensors: tuple[Sensor, ...] = tuple(sensors)
        # (Checked by __setattr__, as when they are set later.)
        self.interval: float = interval
        self.floor: int | None = floor
        self.increase: int | None = increase
        self.decrease: float = decrease
        self.last: Decision | None = None
        """The last decision (``None`` before the first interval)."""
        self._dial_sensors = tuple(s for s in self.sensors if _overrides(s, "dial_reported"))
        self._errors: dict[str, int] = {}
        self._manager: ConnectionManager | None = None
        # Set synchronously by the manager being opened, until it has closed: two
        # managers opened at the same time cannot both take this Sensing (nor,
        # through another Sensing, one of its sensors that keep state).
        self._claimed = False
        self._claimed_sensors: set[int] = set()

    # -------------------------------------------------------------- settings

    def __setattr__(self, name: str, value: object) -> None:
        # The settings are read at every interval: one set while a manager runs
        # takes effect at the next, and is checked as the constructor checks it
        # (an interval of 0 would keep the controller busy for ever).
        check = _SENSING_SETTINGS.get(name)
        if check is not None:
            value = check(value)
        elif name == "sensors" and "sensors" in self.__dict__:
            raise AttributeError("Sensing.sensors cannot be changed: create another Sensing")
        object.__setattr__(self, name, value)

    def _claim(self) -> None:
        """Take this Sensing and its sensors that keep state (after :meth:`_check`,
        with nothing awaited since), until :meth:`_release`."""
        self._claimed = True
        self._claimed_sensors = {id(s) for s in self.sensors if type(s).keeps_state is not False}
        _SENSORS_IN_USE.update(self._claimed_sensors)

    def _release(self) -> None:
        """Free what :meth:`_claim` took (the manager has closed)."""
        self._claimed = False
        _SENSORS_IN_USE.difference_update(self._claimed_sensors)
        self._claimed_sensors = set()

    def _floor(self, limits: Limits) -> int:
        return self.floor if self.floor is not None else max(1, limits.low // 2)

    def _increase(self, limits: Limits) -> int:
        # 5%, rounded half up (round() would take 2.5 to 2 and 3.5 to 4).
        return self.increase if self.increase is not None else max(1, (limits.high + 10) // 20)

    def _check(self, limits: Limits) -> None:
        """Raise ConfigError if it cannot drive a manager with ``limits`` now."""
        if self._claimed:
            driven = "" if self._manager is None else f" ({self._manager!r})"
            raise ConfigError(
                f"this Sensing already drives another open connection manager{driven}; "
                f"create one Sensing per manager"
            )
        for sensor in self.sensors:
            if type(sensor).keeps_state is not False and id(sensor) in _SENSORS_IN_USE:
                # A DialHealth would mix both managers' dials, two LoopLag
                # tasks would clear each other's history.
                raise ConfigError(
                    f"sensor {sensor!r} already serves another open connection manager "
                    f"(through another Sensing); give each Sensing its own"
                )
        if self.floor is not None and self.floor > limits.high:
            raise ConfigError(
                f"Sensing.floor must be <= Limits.high, got floor={self.floor!r}, "
                f"high={limits.high!r}"
            )

    # ------------------------------------------------------------ the manager

    def dial_reported(self, ok: bool, latency: float | None, now: float) -> None:
        """Feed a dial outcome to the sensors that use it (the manager calls it)."""
        for sensor in self._dial_sensors:
            try:
                sensor.dial_reported(ok, latency, now)
            except Exception:
                self._error(sensor, "dial_reported")

    async def _attach(self, manager: ConnectionManager, nursery: trio.Nursery) -> None:
        """Start the sensors' tasks and the controller task in ``nursery`` (the
        manager has claimed this Sensing: see ``open_connection_manager``)."""
        self._manager = manager
        manager._sensing = self
        # Errors are counted (and the first one logged) per manager: a manager
        # opened after another one with this Sensing starts from none.
        self._errors = {}
        try:
            for sensor in self.sensors:
                if _overrides(sensor, "run"):
                    await nursery.start(self._run_sensor, sensor)
            await nursery.start(self._control, manager)
        except BaseException:
            self._manager = None
            raise

    async def _run_sensor(
        self, sensor: Sensor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False

        def mark(value: None = None) -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        status: Any = _Status(mark)
        try:
            await sensor.run(task_status=status)
        except Exception:
            self._error(sensor, "run")
        finally:
            if not started:
                # A sensor whose task failed is still sampled; the manager runs on.
                mark()

    async def _control(
        self,
        manager: ConnectionManager,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            self._step(manager)
            task_status.started()
            while True:
                await trio.sleep(self.interval)
                self._step(manager)
        finally:
            manager._regulator.pressure = False
            if self._manager is manager:
                self._manager = None

    def _error(self, sensor: Sensor, where: str) -> int:
        errors = self._errors[sensor.name] = self._errors.get(sensor.name, 0) + 1
        if errors == 1:
            logger.exception(
                "sensor %r raised in %s (logged once per manager)", sensor.name, where
            )
        else:
            logger.debug("sensor %r raised in %s", sensor.name, where, exc_info=True)
        return errors

    def _step(self, manager: ConnectionManager) -> Decision:
        """Sample every sensor and apply the controller's decision to ``manager``."""
        state = manager._state
        limits = state.limits
        now = trio.current_time()
        readings: dict[str, Reading] = {}
        figures = manager._sensor_readings
        for sensor in self.sensors:
            try:
                reading = sensor.sample(now)
                if not isinstance(reading, Reading):
                    raise TypeError(
                        f"{type(sensor).__name__}.sample() must return a Reading, got {reading!r}"
                    )
                entry = dict(reading.values)
                entry["pressure"] = float(reading.pressure)
                if reading.ceiling is not None:
                    # (OverflowError for a ceiling no float holds, as for values.)
                    entry["ceiling"] = float(reading.ceiling)
            except Exception:
                errors = self._error(sensor, "sample")
                figures[sensor.name] = {"errors": float(errors)}
                continue
            readings[sensor.name] = reading
            if sensor.name in self._errors:
                entry["errors"] = float(self._errors[sensor.name])
            figures[sensor.name] = entry
        floor = min(self._floor(limits), limits.high)
        decision = decide_share(
            state.high,
            readings,
            high=limits.high,
            floor=floor,
            increase=self._increase(limits),
            decrease=self.decrease,
        )
        self.last = decision
        manager._regulator.pressure = decision.pressure
        lowered = False
        if decision.cause is not None:
            old = state.high
            mins = {member: member.grant.min for member in state.members.values()}
            changed = state.set_share(decision.share, decision.cause)
            # (A share that grows may lower a grant.min too, by rounding.)
            lowered = state.high < old or any(m.grant.min < mins[m] for m in changed)
            logger.info(
                "global share %d -> %d (%s)%s",
                old,
                state.high,
                decision.cause,
                "".join(f"; {name}: {readings[name].detail}" for name in decision.pressing),
            )
        figures[CONTROLLER] = {
            "share": float(state.high),
            "ceiling": float(decision.ceiling),
            "floor": float(floor),
            "pressure": float(decision.pressure),
        }
        if state.count > state.high or (decision.pressure and state.count > state.low):
            # A lower grant.min (mostly from a smaller share): connections a
            # round left short had to keep for one may be prunable now.
            manager._regulator.poke(prunable_changed=lowered)
        return decision

    def __repr__(self) -> str:
        names = ", ".join(sensor.name for sensor in self.sensors)
        return f"<Sensing [{names}] interval={self.interval:g}s>"


@final
class _Status:
    """A ``task_status`` wrapper that lets the sensing layer know ``started()`` ran."""

    __slots__ = ("_mark",)

    def __init__(self, mark: Any) -> None:
        self._mark = mark

    def started(self, value: None = None) -> None:
        self._mark(value)


# --------------------------------------------------------------- Limits.auto


def auto_limits(
    *,
    nofile: int | None = None,
    memory: int | None = None,
    fd_fraction: float = 0.5,
    memory_fraction: float = 0.125,
    fds_per_connection: int = 1,
    bytes_per_connection: int = DEFAULT_BYTES_PER_CONNECTION,
    high_ratio: float = 0.8,
    low_ratio: float = 0.75,
    maximum: int | None = None,
) -> Limits:
    """Infer limits from file descriptors and memory (``Limits.auto(...)`` calls it).

    The formula, after go-libp2p's resource-manager autoscaling (half the file
    descriptors, an eighth of the memory)::

        by_fds    = floor(nofile * fd_fraction / fds_per_connection)
        by_memory = floor(memory * memory_fraction / bytes_per_connection)
        hard      = min(by_fds, by_memory, maximum)       # the bounds that are known
        high      = max(1, floor(hard * high_ratio))
        low       = max(1, floor(high * low_ratio))

    With the defaults and a soft limit of 1024 descriptors: ``hard=512``,
    ``high=409``, ``low=306``.

    Args:
        nofile: Soft ``RLIMIT_NOFILE`` to assume (default: this process's; an
            unlimited one gives no bound).
        memory: Total memory in bytes to assume (default: the machine's, from
            psutil or ``sysconf``).
        fd_fraction: Share of the descriptors connections may take, in ``(0, 1]``.
        memory_fraction: Share of the memory connections may take, in ``(0, 1]``.
        fds_per_connection: Descriptors one connection holds.
        bytes_per_connection: Estimated bytes one connection costs.
        high_ratio: ``high / hard``, in ``(0, 1]``.
        low_ratio: ``low / high``, in ``(0, 1]``.
        maximum: An upper bound on ``hard`` of your own.

    Raises:
        ConfigError: a bad argument, or no bound is known at all (no descriptor
            limit, no memory figure and no ``maximum``).
    """
    nofile = _check_optional_count("Limits.auto nofile", nofile)
    memory = _check_optional_count("Limits.auto memory", memory)
    fd_fraction = check_open_fraction("Limits.auto fd_fraction", fd_fraction)
    memory_fraction = check_open_fraction("Limits.auto memory_fraction", memory_fraction)
    fds_per_connection = check_count("Limits.auto fds_per_connection", fds_per_connection)
    bytes_per_connection = check_count("Limits.auto bytes_per_connection", bytes_per_connection)
    high_ratio = check_open_fraction("Limits.auto high_ratio", high_ratio)
    low_ratio = check_open_fraction("Limits.auto low_ratio", low_ratio)
    maximum = _check_optional_count("Limits.auto maximum", maximum)
    if nofile is None:
        nofile = nofile_limit()
    if memory is None:
        memory = _total_memory()
    bounds = []
    if nofile is not None:
        bounds.append(exact_floor(nofile * fd_fraction / fds_per_connection))
    if memory is not None:
        bounds.append(exact_floor(memory * memory_fraction / bytes_per_connection))
    if maximum is not None:
        bounds.append(maximum)
    if not bounds:
        raise ConfigError(
            "Limits.auto cannot infer limits: no file-descriptor limit and no memory "
            "figure are known; pass maximum=N"
        )
    hard = max(1, min(bounds))
    high = max(1, exact_floor(hard * high_ratio))
    low = max(1, exact_floor(high * low_ratio))
    return Limits(low, high, hard)
