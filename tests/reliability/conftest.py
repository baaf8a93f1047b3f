"""Reliability tests: small by default (`make test`), full size with `make soak`.

`make soak` sets TRIO_CONNMGR_SOAK=1. Every test records its figures with the
``figures`` fixture; the session prints them as one table at the end.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

SOAK = os.environ.get("TRIO_CONNMGR_SOAK") == "1"

_FIGURES: list[tuple[str, str, str]] = []


def scale(small: int, soak: int) -> int:
    """``small`` under `make test`, ``soak`` under `make soak`."""
    return soak if SOAK else small


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def live_tasks() -> int:
    """Tasks alive in the current Trio run, the calling task included."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


class Figures:
    """Records (test, measure, value) rows for the end-of-session table."""

    def __init__(self, test: str) -> None:
        self.test = test

    def __setitem__(self, measure: str, value: object) -> None:
        _FIGURES.append((self.test, measure, str(value)))


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.name)


@pytest.fixture
def collected() -> Iterator[None]:
    gc.collect()
    yield
    gc.collect()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    width = max(len(t) for t, _, _ in _FIGURES)
    mwidth = max(len(m) for _, m, _ in _FIGURES)
    title = "reliability figures" + (" (soak)" if SOAK else " (small scale; `make soak` for full)")
    terminalreporter.section(title)
    for test, measure, value in _FIGURES:
        terminalreporter.write_line(f"{test:<{width}}  {measure:<{mwidth}}  {value}")
    out = Path(os.environ.get("TRIO_CONNMGR_FIGURES", ""))
    if out.name:
        out.write_text(
            "\n".join(f"{t}\t{m}\t{v}" for t, m, v in _FIGURES) + "\n", encoding="utf-8"
        )
