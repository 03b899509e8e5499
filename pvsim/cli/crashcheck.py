"""`pvsim crashcheck`: cut power at every durable step of an update and check the invariants."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pvsim.crashcheck import CrashReport, crashcheck, kinds
from shared.engine.config import BootLatch, Config, Ordering
from shared.errors import EXIT_INVALID, EXIT_OK, PvError


def register(subparsers: argparse._SubParsersAction) -> None:
    names = list(kinds())
    parser = subparsers.add_parser(
        "crashcheck",
        help="cut power at every durable step of an update; check invariants",
        description=(
            "Record the durable steps of a full update for each kind, cut power before and "
            "inside every step (and again during the recovery boot), boot, run to quiescence "
            "and check the invariants. Exit 1 when any invariant is violated."
        ),
    )
    parser.add_argument(
        "--ordering",
        choices=[o.value for o in Ordering],
        default=Ordering.HARDENED.value,
        help="write ordering of the engine (default: hardened)",
    )
    parser.add_argument(
        "--kind",
        action="append",
        choices=names,
        metavar="K",
        help="update kind (repeatable): " + ", ".join(names),
    )
    parser.add_argument(
        "--latch",
        choices=[b.value for b in BootLatch],
        default=BootLatch.SINGLE_SHOT.value,
        help="bootloader try latch: U-Boot single-shot (default) or a boot-attempt counter",
    )
    parser.add_argument(
        "--attempts", type=int, default=3, help="boot attempts of the counter latch (default 3)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--no-second-sweep", action="store_true", help="skip the cuts during the recovery boot"
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    if args.attempts < 1:
        raise PvError("--attempts must be at least 1", key="--attempts")
    config = Config(boot_latch=BootLatch(args.latch), boot_attempts=args.attempts)
    report = crashcheck(
        Ordering(args.ordering), args.kind, config, second_sweep=not args.no_second_sweep
    )
    print_report(report, Console())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return EXIT_INVALID if report.violation_count else EXIT_OK


def print_report(report: CrashReport, console: Console) -> None:
    table = Table(title=f"crashcheck — ordering {report.ordering}, latch {report.latch}")
    table.add_column("kind")
    table.add_column("durable steps", justify="right")
    table.add_column("crash points", justify="right")
    table.add_column("old", justify="right")
    table.add_column("new", justify="right")
    table.add_column("violations", justify="right")
    table.add_column("without a cut")
    table.add_column("s", justify="right")
    for k in report.kinds.values():
        table.add_row(
            k.kind,
            str(len(k.steps)),
            str(k.crash_points),
            str(k.outcomes.get("old", 0)),
            str(k.outcomes.get("new", 0)),
            f"[red]{len(k.violations)}[/red]" if k.violations else "0",
            k.reference,
            f"{k.seconds:.2f}",
        )
    console.print(table)
    for k in report.kinds.values():
        for violation in k.violations:
            console.print(f"[red]{k.kind}[/red]: {violation}", highlight=False)
    console.print(
        f"{report.total_crash_points} crash points, {report.violation_count} violations, "
        f"{report.seconds:.1f} s"
    )
