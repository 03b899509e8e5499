"""`pvsim crashcheck`: cut power at every durable step of an update and check the invariants."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pvsim.crashcheck import CrashReport, as_expected, both_to_json, crashcheck, kinds
from shared.engine.config import BootLatch, Config, Ordering
from shared.engine.invariants import (
    KIND_COLUMNS,
    kind_rows,
    shown_violations,
    summary_line,
    verdict_line,
    window_rows,
)
from shared.errors import EXIT_INVALID, EXIT_OK, PvError


def register(subparsers: argparse._SubParsersAction) -> None:
    names = list(kinds())
    parser = subparsers.add_parser(
        "crashcheck",
        help="cut power at every durable step of an update; check invariants",
        description=(
            "Record the durable steps of a full update for each kind, cut power before and "
            "inside every step (and again during the recovery boot), boot, run to quiescence "
            "and check the invariants. Without --ordering both orderings run: faithful "
            "(Pantavisor's own order; its violations are named by power-loss window W1-W4) and "
            "hardened (none expected); exit 1 when hardened has a violation or faithful one that "
            "no known window explains. With --ordering, exit 1 when any invariant is violated."
        ),
    )
    parser.add_argument(
        "--ordering",
        choices=[o.value for o in Ordering],
        default=None,
        help="only this write ordering (default: both, faithful then hardened)",
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
    orderings = [Ordering(args.ordering)] if args.ordering else [Ordering.FAITHFUL, Ordering.HARDENED]
    console = Console()
    reports = []
    for ordering in orderings:
        report = crashcheck(ordering, args.kind, config, second_sweep=not args.no_second_sweep)
        print_report(report, console, every_violation=len(orderings) == 1)
        reports.append(report)
    if len(reports) > 1:
        print_summary(reports, console)
    if args.json:
        doc = reports[0].to_json() if len(reports) == 1 else both_to_json(reports)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if len(reports) == 1:
        return EXIT_INVALID if reports[0].violation_count else EXIT_OK
    return EXIT_OK if all(map(as_expected, reports)) else EXIT_INVALID


def print_report(report: CrashReport, console: Console, *, every_violation: bool = True) -> None:
    """The table of one ordering; every violation with its window, or (`every_violation`
    False) one example of each window."""
    table = Table(title=f"crashcheck — ordering {report.ordering}, latch {report.latch}")
    for column in KIND_COLUMNS:
        table.add_column(column, justify="left" if column in ("kind", "without a cut") else "right")
    for *head, count, reference, seconds in kind_rows(report):
        table.add_row(*head, f"[red]{count}[/red]" if count != "0" else "0", reference, seconds)
    console.print(table)
    for window, kind, violation in shown_violations(report, every=every_violation):
        console.print(f"[red]{window} {kind}[/red]: {violation}", highlight=False)
    console.print(summary_line(report), highlight=False)


def print_summary(reports: list[CrashReport], console: Console) -> None:
    """Both orderings side by side, with the windows named."""
    table = Table(title="crashcheck — both orderings")
    table.add_column("window")
    table.add_column("C function")
    for r in reports:
        table.add_column(r.ordering, justify="right")
    for row in window_rows(reports):
        table.add_row(*row)
    console.print(table)
    for r in reports:
        console.print(verdict_line(r, "as expected", "[red]NOT as expected[/red]"), highlight=False)
