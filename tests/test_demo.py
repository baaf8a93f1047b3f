"""`python -m trio_connmgr demo` runs for real on loopback and tells the truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import trio_connmgr as cm

pytest.importorskip("rich", reason="the demo needs the `demo` extra (rich, matplotlib)")
pytest.importorskip("matplotlib", reason="the demo needs the `demo` extra (rich, matplotlib)")


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


def test_demo_rejects_a_too_short_duration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_connmgr", "demo", "--duration", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--duration" in result.stderr
