"""The trio_connmgr command line: ``python -m trio_connmgr demo [options]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trio_connmgr``."""
    parser = argparse.ArgumentParser(
        prog="python -m trio_connmgr", description="trio_connmgr command line"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the live demonstration on real loopback traffic",
        description=(
            "Run a node with a connection manager and three protocols against a load "
            "generator on loopback TCP, through steady load, a spike, a subnet flood, "
            "failing dials and calm; show it live, then write a summary, a JSON-lines "
            "trace and a timeline plot."
        ),
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    demo.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    demo.add_argument(
        "--no-live",
        action="store_true",
        help="no live view (automatic when stdout is not a terminal)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out/)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import DemoOptions, run_demo

        if not args.duration >= 5:
            print("--duration must be at least 5 seconds", file=sys.stderr)
            return 2
        live = not args.no_live and sys.stdout.isatty()
        options = DemoOptions(duration=args.duration, seed=args.seed, live=live, out=args.out)
        return run_demo(options)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
