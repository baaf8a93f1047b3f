"""Logging under trio_connmgr.*: %-style, a line per round at INFO, a line per victim at DEBUG."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest
import trio
import trio.testing

import trio_connmgr as cm


async def noop_close() -> None:
    await trio.lowlevel.checkpoint()


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.split(".")[0] == "trio_connmgr"]


def test_the_library_installs_no_handlers() -> None:
    for module in pkgutil.walk_packages(cm.__path__, "trio_connmgr."):
        if module.name.startswith(("trio_connmgr.libp2p", "trio_connmgr.__main__")):
            continue  # a heavy optional import; the command line
        try:
            importlib.import_module(module.name)
        except ImportError:  # pragma: no cover - an extra that is not installed
            continue
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "trio_connmgr"]
    assert "trio_connmgr" in names
    for name in names:
        logger = logging.getLogger(name)
        assert logger.handlers == [], name
        assert logger.propagate, name
        assert logger.level == logging.NOTSET, name


async def test_a_round_logs_one_info_line_and_a_debug_line_per_victim(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_connmgr")
    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=10), grace_period=0) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5)) as kad,
    ):
        idle = mgr.track("idle", direction="inbound", close=noop_close)
        used = mgr.track("used", direction="inbound", close=noop_close)
        mgr.track("kept", direction="outbound", close=noop_close)
        kad.track_stream(used)
        mgr.protect("kept", "mine")
        await trio.sleep(1)
        caplog.clear()
        await mgr.trim()
    records = ours(caplog)
    infos = [r for r in records if r.levelno == logging.INFO]
    debugs = [r for r in records if r.levelno == logging.DEBUG]
    assert len(infos) == 1
    summary = infos[0]
    assert summary.name == "trio_connmgr.regulator"
    message = summary.getMessage()
    assert "\n" not in message
    assert message.startswith("round 1 (trim): 3 -> 1 connections, 2 pruned")
    assert "'idle': 1" in message
    assert "'tally': 1" in message
    assert [r.name for r in debugs] == ["trio_connmgr.regulator"] * 2
    assert f"#{idle.id}" in debugs[0].getMessage()
    assert "idle #1" in debugs[0].getMessage()
    assert f"#{used.id}" in debugs[1].getMessage()
    assert "tally #2" in debugs[1].getMessage()
    assert "trigger trim" in debugs[1].getMessage()


async def test_at_info_level_victims_are_not_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_connmgr")
    async with cm.open_connection_manager(limits=cm.Limits(low=1, high=2), grace_period=0) as mgr:
        for i in range(3):
            mgr.track(i, direction="inbound", close=noop_close)
        await trio.sleep(1)  # the high-water round runs
        assert mgr.statistics().rounds.count == 1
    records = ours(caplog)
    assert [r.levelno for r in records] == [logging.INFO]
    assert records[0].getMessage().startswith("round 1 (high-water): 3 -> 1 connections")


async def test_messages_use_percent_style_arguments(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_connmgr")

    def broken(stream: cm.Stream) -> float:
        raise ValueError("scorer bug")

    async def failing_close() -> None:
        await trio.lowlevel.checkpoint()
        raise OSError("gone")

    async with (
        cm.open_connection_manager(limits=cm.Limits(low=1, high=10), grace_period=0) as mgr,
        mgr.enroll("kad", quota=cm.Quota(0, 5), scorer=broken) as kad,
    ):
        for i in range(3):
            kad.track_stream(mgr.track(i, direction="inbound", close=failing_close))
        await mgr.trim()
        await mgr.trim(force=True)
    records = ours(caplog)
    assert {r.name for r in records} >= {
        "trio_connmgr",
        "trio_connmgr.regulator",
        "trio_connmgr.scoring",
    }
    for record in records:
        # Formatting is deferred to the handlers: the message is a template.
        assert isinstance(record.msg, str)
        assert record.args, record.msg
        assert "%" in record.msg
        assert record.getMessage() != record.msg
    # The broken scorer is logged once, with its traceback, however often it runs.
    scoring = [r for r in records if r.name == "trio_connmgr.scoring"]
    assert len(scoring) == 1
    assert scoring[0].levelno == logging.ERROR
    assert scoring[0].exc_info is not None
    assert "'kad'" in scoring[0].getMessage()
    closes = [r for r in records if r.name == "trio_connmgr" and "close()" in r.msg]
    assert len(closes) == 3  # two pruned, one closed with the manager: each close() raised


async def test_nothing_is_logged_when_nothing_happens(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_connmgr")
    async with cm.open_connection_manager(limits=cm.Limits(low=1, high=10)) as mgr:
        conn = mgr.track("p", direction="inbound", close=noop_close)
        conn.release()
    assert ours(caplog) == []
