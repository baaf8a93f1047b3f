"""Every benchmark runs once at a tiny size, so the suite cannot rot.

The figures themselves are not checked (speed belongs to ``make bench``): only
that each suite runs to the end and yields well-formed rows, and that the table
and the JSON file can be written.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("libp2p")
# The suite lives next to the package, not in it: make it importable however pytest runs.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import hotpaths, memory, planning, sockets, versus_libp2p
from benchmarks._harness import GROUPS, TINY, Row, machine, render, write_json

SUITES = {
    "hotpaths": (hotpaths.run, 4),
    "versus_libp2p": (versus_libp2p.run, 2),
    # planning rows for 3 sizes x 2, pruner rows for 2 sizes, 3 loop-blocked rows,
    # the growth row and the six whole-round rows.
    "planning": (planning.run, 3 * 2 + 2 + 3 + 1 + 6),
    "sockets": (sockets.run, 3),
    "memory": (memory.run, 2),
}


def _check(rows: list[Row], expected: int) -> None:
    assert len(rows) == expected
    for r in rows:
        assert r.group in GROUPS
        assert r.name
        assert r.unit
        assert math.isfinite(r.value), r
        assert r.value > 0, r
        assert r.samples >= 1
        if r.baseline_name is not None:
            assert r.baseline is not None, r
            assert math.isfinite(r.baseline), r
            assert r.baseline > 0, r
            assert r.ratio == pytest.approx(r.value / r.baseline)
        if r.target:
            assert r.met in (True, False), r
        else:
            assert r.met is None, r


@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_runs_at_tiny_size(suite: str) -> None:
    run, expected = SUITES[suite]
    _check(run(TINY), expected)


def test_table_and_json(tmp_path: Path) -> None:
    rows = [
        Row("hot", "a", "µs", 1.5, "b", 3.0, 0.5, "≤ 1x", True, 3),
        Row("memory", "c", "B", 100.0, note="a note"),
    ]
    meta = machine()
    assert meta["nproc"] >= 1
    assert meta["python"]
    text = render(rows, meta)
    assert "| a " in text
    assert "0.50x" in text
    assert "a note" in text
    assert "Targets met: 1 of 1." in text
    path = tmp_path / "results" / "latest.json"
    write_json(rows, meta, path, elapsed=1.0)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [r["name"] for r in data["rows"]] == ["a", "c"]
    assert data["rows"][0]["ratio"] == 0.5
    assert data["machine"]["nproc"] == meta["nproc"]
