"""``python -m benchmarks``: run every group, print one table, write the JSON.

Options:
    --quick         smaller sizes and fewer repeats (~25 s instead of ~75 s)
    --only SUITE    run only these suites (repeatable): hot, libp2p (the
                    accounting rows of group 2), planning (group 3 and the
                    pruner rows of group 2), sockets, memory
    --output PATH   where to write the JSON (default benchmarks/results/latest.json)
    --no-write      print the table, write nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import hotpaths, memory, planning, sockets, versus_libp2p
from ._harness import FULL, GROUPS, Row, Scale, machine, render, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

# The suites, each a module's run() (planning also yields the pruner rows of
# group 2, "libp2p"; rows are put in group order afterwards).
SUITES: dict[str, Callable[[Scale], list[Row]]] = {
    "hot": hotpaths.run,
    "libp2p": versus_libp2p.run,
    "planning": planning.run,
    "sockets": sockets.run,
    "memory": memory.run,
}

QUICK = dataclasses.replace(
    FULL,
    repeats=5,
    hot_ops=5_000,
    plan_sizes=(1_000, 10_000),
    plan_repeats=3,
    block_repeats=1,
    round_repeats=3,
    churn_connections=300,
    churn_repeats=3,
    spike_repeats=1,
)


def run(scale: Scale, only: list[str] | None = None) -> list[Row]:
    """Run the selected suites; return their rows in table order."""
    rows: list[Row] = []
    for name, suite in SUITES.items():
        if only and name not in only:
            continue
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(suite(scale))
        print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    order = list(GROUPS)
    return sorted(rows, key=lambda r: order.index(r.group))


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", action="append", choices=list(SUITES), help="suite to run")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON file to write")
    parser.add_argument("--no-write", action="store_true", help="write no JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    scale = QUICK if args.quick else FULL
    rows = run(scale, args.only)
    elapsed = time.perf_counter() - started
    meta = machine()
    meta["scale"] = {"name": "quick" if args.quick else "full", **dataclasses.asdict(scale)}
    print(render(rows, meta))
    print(f"\n({elapsed:.0f} s)")
    if not args.no_write:
        write_json(rows, meta, args.output, elapsed)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
