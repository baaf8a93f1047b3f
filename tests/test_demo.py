"""`python -m trio_connmgr demo` runs for real on loopback and tells the truth."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_connmgr as cm
from trio_connmgr._demo import Demo, DemoOptions, print_summary, run_demo, summarise


def demo_command(*args: str) -> list[str]:
    """The command line of ``python -m trio_connmgr demo ARGS``."""
    return [sys.executable, "-m", "trio_connmgr", "demo", *args]


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Let the processes started in the block see Ctrl-C.

    A shell without job control starts a background command (``make test &`` in
    a script, a CI runner) with SIGINT ignored; its children inherit that, and
    Python then leaves SIGINT ignored: the demo would never see the Ctrl-C.
    """
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


needs_demo_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("rich", "matplotlib")),
    reason="the demo needs the `demo` extra (rich, matplotlib)",
)


@needs_demo_extra
@pytest.mark.timeout(120)
def test_demo_runs_and_its_trace_replays_to_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_connmgr",
            "demo",
            "--duration",
            "10",
            "--no-live",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invariants held" in result.stdout
    assert "summary" in result.stdout

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["invariants_held"] is True
    assert summary["violations"] == []
    # Every phase did something visible.
    assert summary["max_count"] > summary["limits"]["high"]  # the spike went over high
    assert summary["connections_pruned"] > 0
    assert summary["refusals"].get("subnet", 0) + summary["refusals"].get("rate", 0) > 0
    assert summary["dial_failures"] > 0
    assert summary["lowest_high"] < summary["limits"]["high"]  # sensing reacted
    assert summary["pruned_by_phase"].get("burst", 0) > 0

    png = out / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

    with (out / "trace.jsonl").open(encoding="utf-8") as lines:
        replayed = cm.replay_trace(lines)
    assert replayed["connections_opened"] == summary["connections_opened"]
    assert replayed["connections_pruned"] == summary["connections_pruned"]
    assert replayed["refusals"] == summary["refusals"]
    assert replayed["rounds"]["count"] == summary["rounds"]
    assert replayed["rounds"]["victims_by_phase"] == summary["pruned_by_phase"]
    for name, protocol in summary["protocols"].items():
        assert replayed["protocols"][name]["pruned"] == protocol["pruned"]
        assert replayed["protocols"][name]["locks_granted"] == protocol["locks_granted"]
    # The trace also covers shutdown: everything ends closed.
    assert replayed["connections"] == 0


@pytest.mark.parametrize("duration", ["1", "inf", "nan"])
def test_demo_rejects_a_too_short_or_endless_duration(tmp_path: Path, duration: str) -> None:
    result = subprocess.run(
        demo_command("--duration", duration, "--no-live", "--out", str(tmp_path / "out")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--duration" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def run_main_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trio_connmgr ARGS`` as if ``modules`` were not installed."""
    code = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    sys.modules[name] = None  # import fails: as if not installed\n"
        "from trio_connmgr.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_demo_without_the_demo_extra_says_so_before_running(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_main_without(
        ("rich", "matplotlib"), "demo", "--duration", "5", "--no-live", "--out", str(out)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "trio_connmgr[demo]" in result.stderr
    assert "rich" in result.stderr
    assert "matplotlib" in result.stderr
    assert not out.exists()  # it did not run a minute first


def test_live_demo_without_rich_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # as if not installed
    out = tmp_path / "out"
    assert run_demo(DemoOptions(duration=5, live=True, out=out)) == 1
    assert "trio_connmgr[demo]" in capsys.readouterr().err
    assert not out.exists()


@needs_demo_extra
def test_demo_with_an_output_folder_it_cannot_create_says_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    out = tmp_path / "file" / "out"
    result = subprocess.run(
        demo_command("--duration", "5", "--no-live", "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(out) in result.stderr


@needs_demo_extra
@pytest.mark.timeout(120)
def test_demo_exits_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with sigint_not_ignored():
        process = subprocess.Popen(
            demo_command("--duration", "60", "--no-live", "--out", str(out)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    with process:
        assert process.stdout is not None
        try:
            # A progress line with connections open: the node is up and serving.
            for line in process.stdout:
                count = re.search(r" count=(\d+)", line)
                if count and int(count[1]) > 0:
                    break
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    # Everything was closed on the way out, and the trace says so.
    with (out / "trace.jsonl").open(encoding="utf-8") as lines:
        replayed = cm.replay_trace(lines)
    assert replayed["connections_opened"] > 0
    assert replayed["connections"] == 0


def round_completed(number: int, before: int, after: int, victims: int, arrived: int) -> cm.Event:
    return cm.RoundCompleted(
        float(number), number, "high-water", False, before, after, victims,
        (("idle", victims),) if victims else (), 0.001, 0, 0, arrived,
    )  # fmt: skip


async def summary_of(rounds: list[cm.Event]) -> dict[str, Any]:
    """The demo's summary after it saw ``rounds`` (and a manager that ran none)."""
    demo = Demo(DemoOptions())
    send, receive = trio.open_memory_channel[cm.Event](len(rounds))
    for event in rounds:
        send.send_nowait(event)
    send.close()
    await demo.watch_events(receive)
    async with cm.open_connection_manager(limits=cm.Limits(60, 90)) as mgr:
        demo.final = mgr.statistics()
    return summarise(demo)


async def test_demo_summary_counts_the_rounds_that_pruned() -> None:
    rounds = [
        # Pruned 3 while 5 connections arrived: pruned all the same.
        round_completed(1, before=95, after=97, victims=3, arrived=5),
        # Pruned nothing; connections closed by themselves meanwhile.
        round_completed(2, before=80, after=78, victims=0, arrived=0),
        round_completed(3, before=95, after=60, victims=35, arrived=0),
        round_completed(4, before=91, after=91, victims=4, arrived=4),
    ]
    assert (await summary_of(rounds))["rounds_that_pruned"] == 3


@needs_demo_extra
async def test_demo_verdict_says_which_rounds_it_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A spike round below high that left the count above low is not checked
    # (invariant 1 is about rounds that started above high): the verdict says so.
    summary = await summary_of([round_completed(1, before=85, after=70, victims=15, arrived=0)])
    assert summary["invariants_held"] is True
    print_summary(summary, tmp_path)
    verdict = " ".join(capsys.readouterr().out.split())
    assert "Invariants held: after every round that started above high," in verdict


async def test_demo_dht_query_pruned_before_its_answer_still_completes() -> None:
    async def silent_peer(stream: trio.SocketStream) -> None:
        while await stream.receive_some(4096):  # never answers
            pass

    demo = Demo(DemoOptions())
    async with (
        trio.open_nursery() as nursery,
        cm.open_connection_manager(limits=cm.Limits(1, 1), grace_period=0) as mgr,
        mgr.enroll("/ipfs/kad/1.0.0", quota=cm.Quota(0, 10)) as dht,
        dht.burst("lookup") as burst,
    ):
        demo.mgr, demo.dht = mgr, dht
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, silent_peer, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        done = trio.Semaphore(0)
        for _ in range(2):
            nursery.start_soon(demo._dht_query, burst, port, done)
        # Two connections over high = low = 1: the manager prunes one while its
        # query waits for an answer. That query is over: it says so.
        with trio.fail_after(30):  # a guard: without the release this waits forever
            await done.acquire()
        assert mgr.statistics().connections_pruned == 1
        assert demo.observed.dial_attempts == 2
        assert demo.observed.dial_failures == 0  # the dial itself succeeded
        nursery.cancel_scope.cancel()
