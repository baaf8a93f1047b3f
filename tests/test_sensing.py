"""Environment sensing under Trio: the controller moving the share, and real sensors.

Controller tests use fake sensors and ``autojump_clock``. Real sensors read this
machine: file descriptors move when sockets open, RSS is positive, and a blocked
event loop shows up as loop lag (with the real clock: a MockClock would hide it).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr.sensing import (
    DialHealth,
    FakeSensor,
    FileDescriptors,
    LoopLag,
    Memory,
    Reading,
    Sensing,
    Sensor,
)
from trio_connmgr.triggers import FailedDials

INTERVAL = 5.0
LIMITS = cm.Limits(low=40, high=100, hard=150)


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


async def next_event(receiver: Any, kind: type[Any]) -> Any:
    async for event in receiver:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"no {kind.__name__} event")


def manager(sensing: Sensing, **kwargs: Any) -> Any:
    kwargs.setdefault("limits", LIMITS)
    return cm.open_connection_manager(sensing=sensing, **kwargs)


# ------------------------------------------------------------- the controller


async def test_pressure_shrinks_health_regrows_floor_holds(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL, floor=20, increase=10, decrease=0.5)
    async with manager(sensing) as mgr, mgr.subscribe() as events:
        assert fake.samples == [trio.current_time()]  # sampled once at start
        await trio.sleep(INTERVAL / 2)  # stay between the controller's samples
        fake.pressure = True
        highs = []
        for _ in range(4):
            await trio.sleep(INTERVAL)
            highs.append(mgr.limits.high)
        assert highs == [50, 25, 20, 20]  # multiplicative, then the floor
        assert mgr.limits.low == 8  # low scales with the share: 40 * 20 / 100
        assert mgr._regulator.pressure
        change = await next_event(events, cm.LimitsChanged)
        assert (change.high, change.cause) == (50, "sensing pressure (fake)")
        fake.pressure = False
        highs = []
        for _ in range(10):
            await trio.sleep(INTERVAL)
            highs.append(mgr.limits.high)
        assert highs == [30, 40, 50, 60, 70, 80, 90, 100, 100, 100]  # additive, to high
        assert not mgr._regulator.pressure
        assert mgr.limits == LIMITS
        stats = mgr.statistics()
        assert stats.sensors["controller"] == {
            "share": 100.0,
            "ceiling": 100.0,
            "floor": 20.0,
            "pressure": 0.0,
        }
        assert stats.sensors["fake"]["pressure"] == 0.0
        assert len(fake.samples) == 1 + 14
    assert sensing.last is not None
    assert sensing.last.share == 100


async def test_sensor_ceiling_applies_at_start_and_caps_recovery(autojump_clock: Any) -> None:
    fake = FakeSensor(ceiling=60)
    sensing = Sensing([fake], interval=INTERVAL, increase=30)
    async with manager(sensing) as mgr:
        # The first sample runs before the manager's body starts.
        assert mgr.limits.high == 60
        assert mgr.statistics().limits_source == "sensing ceiling (fake)"
        fake.ceiling = 75
        await trio.sleep(INTERVAL * 1.5)
        assert mgr.limits.high == 75  # recovery stops at the ceiling, not at +30
        fake.ceiling = None
        await trio.sleep(INTERVAL)
        assert mgr.limits.high == 100


async def test_grants_recomputed_and_protocols_told(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL, floor=10, decrease=0.5)
    told: list[cm.Grant] = []
    waited: list[cm.Grant] = []
    async with (
        manager(sensing) as mgr,
        mgr.enroll("/kad", quota=cm.Quota.share(0.2, 0.5), on_grant=told.append) as kad,
    ):
        assert kad.grant == cm.Grant(20, 50)

        async def waiter() -> None:
            waited.append(await kad.wait_grant_changed())

        kad.start_soon(waiter)
        async with mgr.subscribe() as events:
            await trio.sleep(INTERVAL / 2)
            fake.pressure = True
            await trio.sleep(INTERVAL)
            grant = await next_event(events, cm.GrantChanged)
        assert kad.grant == cm.Grant(10, 25)  # ceil(0.2 * 50), floor(0.5 * 50)
        assert told == [cm.Grant(20, 50), cm.Grant(10, 25)]  # enrolment, then the change
        assert waited == [cm.Grant(10, 25)]
        assert (grant.protocol, grant.min, grant.max, grant.share) == ("/kad", 10, 25, 50)


async def test_a_round_follows_when_above_the_new_high(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL)
    async with manager(sensing, grace_period=0, silence_period=0) as mgr:
        conns = [mgr.track(f"peer{i}", direction="outbound", close=noop_close) for i in range(80)]
        await trio.sleep(INTERVAL / 2)
        assert mgr.statistics().rounds.count == 0  # 80 <= high = 100: nothing to do
        async with mgr.subscribe() as events:
            fake.ceiling = 50
            await trio.sleep(INTERVAL)
            change = await next_event(events, cm.LimitsChanged)
            assert (change.low, change.high, change.cause) == (20, 50, "sensing ceiling (fake)")
            done = await next_event(events, cm.RoundCompleted)
        assert done.trigger == "high-water"
        assert (done.count_before, done.count_after) == (80, 20)  # pruned to the new low
        assert mgr.statistics().connections == 20
        assert sum(conn.close_reason == "pruned" for conn in conns) == 60


async def test_pressure_makes_rounds_emergencies_down_to_low(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL, decrease=0.9)
    async with manager(sensing, grace_period=0, silence_period=60) as mgr:
        for i in range(60):
            mgr.track(f"peer{i}", direction="outbound", close=noop_close)
        await trio.sleep(INTERVAL / 2)
        async with mgr.subscribe() as events:
            fake.pressure = True
            await trio.sleep(INTERVAL)
            done = await next_event(events, cm.RoundCompleted)
        # 60 <= the new high (90), but pressure prunes down to low (36).
        assert mgr.limits.high == 90
        assert done.trigger == "pressure"
        assert done.count_after == mgr.limits.low == 36


async def test_report_dial_feeds_sensors(autojump_clock: Any) -> None:
    fake = FakeSensor()
    async with manager(Sensing([fake], interval=INTERVAL)) as mgr:
        mgr.report_dial("a", ok=False)
        mgr.report_dial("b", ok=True, latency=0.25)
        now = trio.current_time()
    assert fake.dials == [(False, None, now), (True, 0.25, now)]


class Broken(Sensor):
    """A user sensor whose task and samples fail."""

    name = "broken"

    def __init__(self) -> None:
        self.runs = 0

    def sample(self, now: float) -> Reading:
        raise OSError("no such sensor")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        await trio.lowlevel.checkpoint()
        raise RuntimeError("sensor task failed before it started")


async def test_failing_sensors_are_counted_not_fatal(autojump_clock: Any) -> None:
    fake = FakeSensor(pressure=True)
    wrong = FakeSensor("wrong", script=["not a reading"])  # type: ignore[list-item]
    broken = Broken()
    sensing = Sensing([broken, wrong, fake], interval=INTERVAL, decrease=0.5)
    async with manager(sensing) as mgr:
        await trio.sleep(INTERVAL * 1.5)
        sensors = mgr.statistics().sensors
        assert broken.runs == 1
        assert sensors["broken"] == {"errors": 3.0}  # run() once, sample() twice
        assert sensors["wrong"] == {"errors": 2.0}
        assert sensors["fake"]["pressure"] == 1.0
        assert mgr.limits.high == 25  # the healthy sensors still drive the share
        fake.error = ValueError("boom")
        fake.pressure = False
        await trio.sleep(INTERVAL)
        assert mgr.statistics().sensors["fake"] == {"errors": 1.0}
        assert mgr.limits.high == 30  # no reading at all counts as healthy


async def test_one_sensing_drives_one_manager_at_a_time(autojump_clock: Any) -> None:
    sensing = Sensing([FakeSensor()], interval=INTERVAL)
    async with manager(sensing):
        with pytest.raises(cm.ConfigError, match=r"already drives another open connection"):
            async with manager(sensing):
                pass  # pragma: no cover
    async with manager(sensing) as mgr:  # free again once the first one closed
        assert mgr._sensing is sensing


async def test_one_sensing_opened_by_two_managers_at_once(autojump_clock: Any) -> None:
    sensing = Sensing([FakeSensor()], interval=INTERVAL)
    opened: list[cm.ConnectionManager] = []
    refused: list[cm.ConfigError] = []

    async def open_one() -> None:
        try:
            async with manager(sensing) as mgr:
                opened.append(mgr)
                await trio.sleep(INTERVAL)
        except cm.ConfigError as exc:  # plain, not in an ExceptionGroup
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_one)
        nursery.start_soon(open_one)
    assert len(opened) == len(refused) == 1
    assert "already drives another open connection manager" in str(refused[0])
    assert opened[0]._sensing is sensing
    async with manager(sensing) as mgr:  # free again once both are done
        assert mgr._sensing is sensing


async def test_a_closed_managers_dial_reports_reach_no_sensing(autojump_clock: Any) -> None:
    fake = FakeSensor()
    sensing = Sensing([fake], interval=INTERVAL)
    async with manager(sensing) as first:
        first.report_dial("a", ok=True)
    assert [ok for ok, _, _ in fake.dials] == [True]
    # The same sensing now drives another manager: a late report of the first
    # (a dial that failed after it closed) must not count there, nor anywhere.
    async with manager(sensing) as second:
        first.report_dial("b", ok=False, latency=1.0)
        assert [ok for ok, _, _ in fake.dials] == [True]
        second.report_dial("c", ok=False)
        assert [ok for ok, _, _ in fake.dials] == [True, False]


async def test_sensing_config_errors_at_open() -> None:
    sensing = Sensing([FakeSensor()], floor=101)
    with pytest.raises(cm.ConfigError, match=r"Sensing.floor must be <= Limits.high"):
        async with manager(sensing):
            pass  # pragma: no cover
    with pytest.raises(cm.ConfigError, match=r"sensing must be a Sensing"):
        async with cm.open_connection_manager(limits=LIMITS, sensing=[FakeSensor()]):  # type: ignore[arg-type]
            pass  # pragma: no cover
    with pytest.raises(cm.ConfigError, match=r"admission must be an Admission"):
        async with cm.open_connection_manager(limits=LIMITS, admission="yes"):  # type: ignore[arg-type]
            pass  # pragma: no cover


# ------------------------------------------------------------ the real sensors


async def test_file_descriptors_count_real_sockets() -> None:
    sensor = FileDescriptors()
    before = sensor.sample(trio.current_time())
    limit = before.values["limit"]
    assert before.ceiling == int(limit // 2)
    assert not before.pressure
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    streams = []
    try:
        for _ in range(100):
            streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        during = sensor.sample(trio.current_time())
        assert during.values["open"] >= before.values["open"] + 100
        assert during.values["used"] == during.values["open"] / limit
    finally:
        for stream in streams:
            await stream.aclose()
        for listener in listeners:
            await listener.aclose()
    after = sensor.sample(trio.current_time())
    assert after.values["open"] <= during.values["open"] - 100


async def test_file_descriptor_pressure_near_the_limit() -> None:
    sensor = FileDescriptors(pressure_at=0.0001)  # any open descriptor is "near"
    reading = sensor.sample(trio.current_time())
    assert reading.pressure
    assert "file descriptors open" in reading.detail


async def test_memory_reads_this_process() -> None:
    sensor = Memory(per_connection=1 << 20)
    reading = sensor.sample(trio.current_time())
    values = reading.values
    assert values["rss"] > 0
    assert 0 < values["available"] <= values["total"]
    assert values["budget"] == values["total"] // 8
    assert reading.ceiling == int(values["budget"]) >> 20
    squeezed = Memory(budget=int(values["rss"]) // 2).sample(trio.current_time())
    assert squeezed.pressure
    assert "of the budget" in squeezed.detail


async def test_loop_lag_measures_a_blocked_loop() -> None:
    # The real clock: blocking the thread must show as lag.
    lag = LoopLag(period=0.01, window=10.0)
    sensing = Sensing([lag], interval=0.02)
    async with manager(sensing) as mgr:
        await trio.sleep(0.05)
        time.sleep(0.06)  # noqa: ASYNC251  (the point: block the event loop for 60 ms)
        await trio.sleep(0.1)
        figures = mgr.statistics().sensors["loop-lag"]
    assert figures["samples"] >= 2
    assert figures["lag_max"] >= 0.04
    assert figures["lag_max"] > figures["lag_mean"] >= 0


async def test_failed_dials_shrink_the_share_and_fire_failed_dials() -> None:
    # A port nothing listens on: bind one, note its number, close it.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    health = DialHealth(window=30.0, ratio=0.5, min_dials=10)
    sensing = Sensing([health], interval=0.05, floor=10)
    trigger = FailedDials(ratio=0.5, window=30.0, min_dials=10)
    async with manager(sensing, triggers=[trigger]) as mgr, mgr.subscribe() as events:
        for _ in range(12):
            started = trio.current_time()
            with pytest.raises(OSError, match="connect"):
                await trio.open_tcp_stream("127.0.0.1", port)
            mgr.report_dial(("127.0.0.1", port), ok=False, latency=trio.current_time() - started)
        with trio.fail_after(10):
            kinds: dict[type[Any], Any] = {}
            async for event in events:
                if isinstance(event, cm.LimitsChanged | cm.RoundCompleted):
                    kinds.setdefault(type(event), event)
                if len(kinds) == 2:
                    break
        round_ = kinds[cm.RoundCompleted]
        change = kinds[cm.LimitsChanged]
        assert round_.trigger == "failed-dials"
        assert change.cause == "sensing pressure (dial-health)"
        assert change.high == 70  # 100 * 0.7
        figures = mgr.statistics().sensors["dial-health"]
        # The controller may have sampled before the last two reports arrived.
        assert 10 <= figures["failed"] == figures["dials"] <= 12
        assert figures["failure_ratio"] == 1.0
        assert figures["pressure"] == 1.0
        reading = health.sample(trio.current_time())
        assert reading.values["dials"] == reading.values["failed"] == 12
        assert "12 of 12 dials failed" in reading.detail
        assert mgr.limits.high < LIMITS.high


async def test_real_ceilings_bound_the_share(autojump_clock: Any) -> None:
    fds, memory = FileDescriptors(), Memory()
    ceilings = [fds.sample(0.0).ceiling, memory.sample(0.0).ceiling]
    if None in ceilings:  # pragma: no cover - unlimited descriptors
        pytest.skip("no finite RLIMIT_NOFILE here")
    ceiling = min(c for c in ceilings if c is not None)
    limits = cm.Limits(low=ceiling // 2, high=ceiling + 100, hard=ceiling + 200)
    async with manager(Sensing([fds, memory]), limits=limits) as mgr:
        stats = mgr.statistics()
        assert mgr.limits.high <= ceiling
        assert stats.limits_source.startswith("sensing ")
        assert stats.sensors["controller"]["ceiling"] == ceiling
        assert stats.sensors["file-descriptors"]["open"] > 0
        assert stats.sensors["memory"]["rss"] > 0


# -------------------------------------------------------------- edge cases


class AsyncSample(Sensor):
    """A user sensor whose ``sample`` was written ``async`` by mistake."""

    name = "async-sample"

    async def sample(self, now: float) -> Reading:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        return Reading()


class AsyncDials(Sensor):
    """A user sensor whose ``dial_reported`` was written ``async`` by mistake."""

    name = "async-dials"

    def sample(self, now: float) -> Reading:
        return Reading()

    async def dial_reported(  # type: ignore[override]
        self, ok: bool, latency: float | None, now: float
    ) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(
    ("sensor", "method"), [(AsyncSample(), "sample"), (AsyncDials(), "dial_reported")]
)
def test_async_sample_or_dial_reported_is_a_config_error(sensor: Sensor, method: str) -> None:
    # Both are called synchronously: an async one would never run, only leave a
    # "coroutine was never awaited" warning behind at every call.
    message = rf"{sensor.name!r}: \w+\.{method}\(\) must be a synchronous function"
    with pytest.raises(cm.ConfigError, match=message):
        Sensing([FakeSensor(), sensor])


class PlainRun(Sensor):
    """A user sensor whose background ``run`` was written without ``async``."""

    name = "plain-run"

    def sample(self, now: float) -> Reading:
        return Reading()

    def run(  # type: ignore[override]
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()


def test_a_run_that_is_not_async_is_a_config_error() -> None:
    message = r"'plain-run': PlainRun\.run\(\) must be an async function"
    with pytest.raises(cm.ConfigError, match=message):
        Sensing([FakeSensor(), PlainRun()])


async def test_sensor_errors_are_counted_and_logged_per_manager(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeSensor()
    fake.error = OSError("sensor unplugged")
    sensing = Sensing([fake], interval=INTERVAL)
    for _ in range(2):  # one Sensing, free again once its manager closed
        caplog.clear()
        async with manager(sensing) as mgr:
            await trio.sleep(INTERVAL / 2)
            # This manager sampled once, and failed once: counted and logged for it.
            assert mgr.statistics().sensors["fake"] == {"errors": 1.0}
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "'fake'" in r.message]
        assert len(errors) == 1


def test_auto_limits_floor_without_binary_noise() -> None:
    # 0.57 * 100 is 56.99999999999999 in binary floating point: floor() must not
    # take the noise for a lower integer.
    limits = cm.Limits.auto(nofile=1 << 20, memory=1 << 40, maximum=100, high_ratio=0.57)
    assert (limits.hard, limits.high) == (100, 57)
    limits = cm.Limits.auto(nofile=10_000, memory=1 << 40, fd_fraction=0.57)
    assert limits.hard == 5700


def test_file_descriptor_ceiling_without_binary_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trio_connmgr.sensing.nofile_limit", lambda: 10_000)
    reading = FileDescriptors(fraction=0.57).sample(0.0)
    assert reading.ceiling == 5700  # floor(0.57 * 10000), not 5699


def test_dial_baseline_weighs_the_first_latencies_equally() -> None:
    # As documented: the first `baseline_dials` latencies weigh equally (the n-th
    # moves the logarithmic average by 1/n), then each moves it by 1/baseline_dials.
    health = DialHealth(baseline_dials=2)
    assert health.baseline is None
    health.dial_reported(True, 0.010, 0.0)
    assert health.baseline == pytest.approx(0.010)
    health.dial_reported(True, 0.040, 0.0)
    assert health.baseline == pytest.approx(0.020)  # the geometric mean
    health.dial_reported(True, 0.080, 0.0)
    assert health.baseline == pytest.approx(0.040)  # sqrt(0.020 * 0.080)
