"""`pvsim bench`: the twin's event rate against raw SimPy, events and time per device-update,
memory per device (the measurements are pvsim.bench's)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pvsim.bench import bench


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="event rate, events per device-update, memory per device",
        description="Measure the twin against a raw SimPy timeout loop in the same process, and "
        "time the quickstart rollout at --devices.",
    )
    parser.add_argument("--devices", type=int, default=20_000, help="fleet size for the quickstart run (default 20000)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    figures = bench(args.devices)
    table = Table(title=f"pvsim bench ({args.devices} devices, scenarios/quickstart.toml)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int | float) else str(value))
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0
