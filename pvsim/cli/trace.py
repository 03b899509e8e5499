"""`pvsim trace CASE`: run one scripted device and print what Pantavisor would show."""

from __future__ import annotations

import argparse
import json

from pvsim.trace import load_case, render, run_trace
from shared.engine.config import Ordering
from shared.errors import EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="run one scripted device; print every record, env write and reboot",
        description=(
            "Run the device a trace case describes (docs/trace.md) through the engine and print, "
            "step by step, every progress record and whether the Hub is told, every boot env "
            "write, every reboot and boot, pv-ctrl's answers, and where the device ends."
        ),
    )
    parser.add_argument("case", help="trace case TOML file (see docs/trace.md)")
    parser.add_argument(
        "--ordering",
        choices=[o.value for o in Ordering],
        default=None,
        help="write ordering (default: the case's `ordering`, else faithful)",
    )
    parser.add_argument("--json", action="store_true", help="print the trace as a JSON list")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    entries = run_trace(load_case(args.case), args.ordering)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print(render(entries), end="")
    return EXIT_OK
