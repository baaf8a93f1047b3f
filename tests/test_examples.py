"""Every script in examples/ runs by itself and finishes with a visible result."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))

# What each example must print (a regular expression), proof that it did its job
# and not only that it ran. The socket examples run in real time: their exact
# counts vary, their bounds do not.
EXPECTED = {
    "two_protocols.py": (
        r"after the round: 10 connections\n"
        r"pruned by phase: \{'offender': 11, 'tally': 9\}\n"
        r"  chat: usage 7 \(grant 2\.\.10\)\n"
        r"  sync: usage 3 \(grant 3\.\.9\)"
    ),
    "dht_and_pubsub.py": r"pruned by phase: \{'burst': 28\}",
    "tcp_echo_server.py": r"server count now [5-8] \(low=5, high=8\)",
    # (A pruned peer sees a reset or, under load, the end of the stream.)
    "libp2p_node.py": r"cut off \(Stream(Reset|EOF)\)",
}


def test_every_example_is_checked() -> None:
    assert {p.name for p in SCRIPTS} == set(EXPECTED)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs(script: Path) -> None:
    if script.name == "libp2p_node.py":
        pytest.importorskip("libp2p", reason="needs the `libp2p` extra")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=80, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip()
    assert re.search(EXPECTED[script.name], result.stdout), result.stdout[-2000:]
